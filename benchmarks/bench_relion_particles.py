"""Benchmark: writing particles.star for the selected classes of a 1,000,000-particle
run_itNNN_data.star, with the RELION External job's streaming filter and, as the I/O
baseline, an ``awk`` filter on the class column. Prints wall time and peak RSS of each
(best of ``--repeats`` runs, each in a fresh process) and checks both outputs are identical.

    python benchmarks/bench_relion_particles.py [--particles 1000000] [--classes 100]

Targets (issue 4): at most 3x the awk time and 4 GB peak RSS.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# RELION 3.1+ particle columns of a Class2D run_itNNN_data.star; rlnClassNumber late in the
# row (as relion_refine appends it after the extraction columns), the harder case.
COLUMNS = (
    "rlnCoordinateX rlnCoordinateY rlnAutopickFigureOfMerit rlnAnglePsi rlnImageName "
    "rlnMicrographName rlnOpticsGroup rlnCtfMaxResolution rlnCtfFigureOfMerit rlnDefocusU "
    "rlnDefocusV rlnDefocusAngle rlnCtfBfactor rlnCtfScalefactor rlnPhaseShift "
    "rlnGroupNumber rlnAngleRot rlnAngleTilt rlnOriginXAngst rlnOriginYAngst rlnClassNumber "
    "rlnNormCorrection rlnLogLikeliContribution rlnMaxValueProbDistribution "
    "rlnNrOfSignificantSamples"
).split()
OPTICS_COLUMNS = (
    "rlnOpticsGroupName rlnOpticsGroup rlnMicrographOriginalPixelSize rlnVoltage "
    "rlnSphericalAberration rlnAmplitudeContrast rlnImagePixelSize rlnImageSize "
    "rlnImageDimensionality"
).split()
OPTICS_ROW = "opticsGroup1 1 0.885000 300.000000 2.700000 0.100000 3.540000 64 2"


def _loop_header(name: str, columns: list[str]) -> str:
    """A table header as RELION writes it (with its trailing spaces)."""
    labels = "".join(f"_{c} #{i} \n" for i, c in enumerate(columns, 1))
    return f"\n# version 30001\n\ndata_{name}\n\nloop_ \n{labels}"


def write_data_star(path: Path, n: int, n_classes: int, seed: int = 0) -> None:
    """A RELION-formatted data.star with ``n`` particles in ``n_classes`` classes."""
    rng = np.random.default_rng(seed)
    chunk = 100_000
    with open(path, "w") as fh:
        fh.write(_loop_header("optics", OPTICS_COLUMNS) + OPTICS_ROW + " \n \n")
        fh.write(_loop_header("particles", COLUMNS))
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            xy = rng.uniform(0, 4000, (m, 2))
            cls = rng.integers(1, n_classes + 1, m)
            psi, dfu = rng.uniform(-180, 180, m), rng.uniform(5000, 30000, m)
            fh.writelines(
                f"{xy[k, 0]:12.6f} {xy[k, 1]:12.6f}     0.595012 {psi[k]:12.6f} "
                f"{(i % 300) + 1:06d}@Extract/job012/Movies/mic_{i // 300:05d}.mrcs "
                f"MotionCorr/job002/Movies/mic_{i // 300:05d}.mrc            1     4.809192 "
                f"    0.131144 {dfu[k]:12.6f} {dfu[k] - 300:12.6f}    77.967194     0.000000 "
                f"    1.000000     0.000000            1     0.000000     0.000000 "
                f"    -3.01885     -3.01885 {cls[k]:12d}     0.907872  9971.224010 "
                f"    0.926400            1 \n"
                for k, i in enumerate(range(start, start + m))
            )
        fh.write(" \n")


def _peak_rss_mb(pid: int) -> float | None:
    """``VmHWM`` (peak RSS of the running program image) from /proc, in MiB."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def run_measured(cmd: list[str], stdout: Path | None = None) -> tuple[float, float]:
    """Run ``cmd`` in a fresh process; (wall seconds, peak RSS in MiB) of that process.

    The peak is polled from /proc every 5 ms (``ru_maxrss`` of a child would include the
    memory of this Python process, which the child shares until it execs).
    """
    with open(stdout or os.devnull, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out)
        peak = 0.0
        while proc.poll() is None:
            peak = max(peak, _peak_rss_mb(proc.pid) or 0.0)
            time.sleep(0.005)
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return wall, peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="default: a temp folder"
    )
    args = parser.parse_args(argv)
    awk = shutil.which("awk")
    if awk is None:
        print("awk not found: no baseline")
        return 1
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_relion_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _bench(args, awk, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def _bench(args: argparse.Namespace, awk: str, work: Path) -> int:
    data = work / "run_it025_data.star"
    t0 = time.perf_counter()
    write_data_star(data, args.particles, args.classes)
    print(
        f"generated {data.stat().st_size / 1e6:.0f} MB data.star in {time.perf_counter() - t0:.1f} s"
    )
    keep = sorted(
        np.random.default_rng(1).choice(
            np.arange(1, args.classes + 1), args.classes // 2, replace=False
        )
    )
    col = COLUMNS.index("rlnClassNumber") + 1
    keep_text = " ".join(map(str, keep))
    # header and other tables pass; rows of the particle table pass when their class is kept
    program = (
        f'BEGIN {{ n = split("{keep_text}", k, " "); for (i = 1; i <= n; i++) keep[k[i]] = 1 }}'
        f" /^data_particles/ {{ p = 1 }} p && NF >= {col} {{ if (${col} in keep) print; next }} {{ print }}"
    )
    ours = (
        "import sys; from cryodiscovery.relion_external.particles import filter_particles; "
        "filter_particles(sys.argv[1], sys.argv[2], [int(c) for c in sys.argv[3].split()])"
    )
    awk_out, our_out = work / "particles_awk.star", work / "particles.star"
    runs: dict[str, list[tuple[float, float]]] = {"awk": [], "cryodiscovery": []}
    for _ in range(args.repeats):
        runs["awk"].append(run_measured([awk, program, str(data)], stdout=awk_out))
        runs["cryodiscovery"].append(
            run_measured(
                [sys.executable, "-c", ours, str(data), str(our_out), keep_text]
            )
        )
    same = filecmp.cmp(awk_out, our_out, shallow=False)
    kept = (
        sum(1 for _ in open(our_out, "rb"))
        - sum(1 for _ in open(data, "rb"))
        + args.particles
    )
    awk_wall, awk_rss = min(w for w, _ in runs["awk"]), max(r for _, r in runs["awk"])
    our_wall, our_rss = (
        min(w for w, _ in runs["cryodiscovery"]),
        max(r for _, r in runs["cryodiscovery"]),
    )
    ratio = our_wall / awk_wall
    print(
        f"particles.star from {args.particles:,} particles, {args.classes} classes, {len(keep)} kept: {kept:,} particles written"
    )
    print(
        f"{'':28s}{'wall (s, best of ' + str(args.repeats) + ')':>22s}{'peak RSS (MiB)':>16s}"
    )
    print(
        f"{'awk filter (' + Path(os.path.realpath(awk)).name + ')':28s}{awk_wall:22.2f}{awk_rss:16.1f}"
    )
    print(f"{'cryodiscovery filter':28s}{our_wall:22.2f}{our_rss:16.1f}")
    verdict = "PASS" if ratio <= 3.0 and our_rss <= 4096 else "MISS"
    print(f"ratio {ratio:.2f}x awk; targets <= 3x awk and <= 4096 MB: {verdict}")
    print(f"outputs identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
