"""Scoring speed of the shipped model: classes/s after loading, and the wall time and peak
memory of a whole ``cryodiscovery score`` run on 200 classes at 128 and 256 px.

Targets (issues 3 and 14): >= 500 classes/s after load; the whole command <= 5 s on 2 cores.

    .venv/bin/python benchmarks/bench_score.py [--classes 200] [--boxes 128 256]
"""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.io.stack import write_stack
from cryodiscovery.core.model.checkpoint import load_scorer
from cryodiscovery.core.model.preprocess import PreprocessConfig, prepare_inputs
from cryodiscovery.core.synthetic.generator import (
    SimulationConfig,
    simulate_class_averages,
)

#: ``cryodiscovery score`` in a fresh interpreter that prints its own peak resident memory
#: (VmHWM of its own address space): a child's ``ru_maxrss`` also counts the benchmark's
#: memory, which the child shares between fork and exec.
_SCORE = (
    "import atexit, sys\n"
    "def peak():\n"
    "    try:\n"
    "        with open('/proc/self/status') as fh:\n"
    "            kb = [line.split()[1] for line in fh if line.startswith('VmHWM:')]\n"
    "        print(f'peak_rss_kb {kb[0]}', file=sys.stderr)\n"
    "    except (OSError, IndexError):\n"
    "        pass\n"
    "atexit.register(peak)\n"
    "from cryodiscovery.core import cli\n"
    "sys.exit(cli.main(['score', *sys.argv[1:]]))\n"
)


def make_classes(n: int, box: int, seed: int = 900_123) -> ClassAverages:
    """``n`` generated class averages in a ``box`` px box (seed outside training)."""
    return simulate_class_averages(
        SimulationConfig(n_classes=n, box_sizes=(box,), pixel_size_range=(1.5, 1.5)),
        seed,
    )


def throughput(classes: ClassAverages, repeats: int = 3) -> tuple[float, float, float]:
    """Classes/s of the whole predict path and of its two parts (preprocess, networks)."""
    scorer = load_scorer()
    scorer.predict(classes.subset(np.arange(8)))  # warm-up
    networks = scorer.inference_networks()  # what predict runs
    best = best_pre = best_net = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        scorer.predict(classes)
        best = min(best, time.perf_counter() - t0)
        t0 = time.perf_counter()
        images, meta = prepare_inputs(classes, PreprocessConfig())
        best_pre = min(best_pre, time.perf_counter() - t0)
        t0 = time.perf_counter()
        scorer.combine(scorer.member_logits(images, meta, networks))
        best_net = min(best_net, time.perf_counter() - t0)
    n = len(classes)
    return n / best, n / best_pre, n / best_net


def whole_command(classes: ClassAverages, workdir: Path) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (MiB) and exit code of ``cryodiscovery score`` on a stack."""
    stack = workdir / f"classes_{classes.box_size}.mrcs"
    write_stack(stack, classes.images, classes.pixel_size)
    out = workdir / f"out_{classes.box_size}"
    cmd = [sys.executable, "-c", _SCORE, str(stack), "--out", str(out)]
    cmd += ["--angpix", str(classes.pixel_size)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode:
        print(proc.stderr[-2000:], file=sys.stderr)
    own = re.findall(r"^peak_rss_kb (\d+)$", proc.stderr, re.MULTILINE)
    # Without /proc: the children's peak, an upper bound (see _SCORE).
    peak = (
        int(own[-1]) if own else resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    )
    return wall, peak / 1024.0, proc.returncode


def main(argv: list[str] | None = None) -> int:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--boxes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    scorer = load_scorer()
    print(
        f"model {scorer.name} ({scorer.rule}, {len(scorer.members)} network(s)), "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        "box  classes  classes/s  (preprocess/s, networks/s)  command_wall_s  peak_rss_MiB"
    )
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for box in args.boxes:
            classes = make_classes(args.classes, box)
            rate, pre, net = throughput(classes)
            wall, rss, rc = whole_command(classes, Path(tmp))
            failed |= rc
            print(
                f"{box:<4d} {len(classes):<8d} {rate:9.0f}  ({pre:8.0f} / {net:8.0f})"
                f"  {wall:14.2f}  {rss:11.0f}{'  (command failed)' if rc else ''}"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
