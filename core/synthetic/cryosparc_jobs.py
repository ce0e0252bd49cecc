"""Write realistic cryoSPARC 2D classification and Select 2D job folders (no server needed).

The layout, field names and dtypes are those described in
:mod:`cryodiscovery.core.io.cryosparc_class2d`; uids are random 64-bit numbers from the seed.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
from cryodiscovery.core.classes import ClassAverages, Label
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.io.cryosparc_class2d import (
    ALIGNMENTS2D,
    BLOB,
    CryosparcClass2DJob,
    find_class2d_files,
    read_cryosparc_class2d,
)
from cryodiscovery.core.io.stack import write_stack
from cryodiscovery.core.outputs import atomic_path, staged_outputs
from cryosparc.dataset import Dataset

log = logging.getLogger(__name__)

_JOB_UID_RE = re.compile(r"^J\d+$")


def write_cryosparc_class2d(
    classes: ClassAverages, job_dir: Path, *, seed: int = 0
) -> CryosparcClass2DJob:
    """Write ``classes`` as a cryoSPARC 2D classification job folder (see module doc).

    Parameters
    ----------
    classes:
        Class averages with a pixel size and finite ``particle_count``; ``eca`` and
        ``mean_posterior`` (when finite) become the per-class means of the particles'
        ``class_ess`` and ``class_posterior``.
    job_dir:
        ``<project folder>/JNN``, created.
    seed:
        Seed for uids and particle-level fields.

    Returns
    -------
    CryosparcClass2DJob
        The job as read back, with the labels and kinds of ``classes``.
    """
    job_dir = Path(job_dir)
    uid = job_dir.name
    if not _JOB_UID_RE.match(uid):
        raise ValueError(f"job_dir must end in a job folder like J42, got {job_dir}")
    if classes.pixel_size is None:
        raise ValueError("a cryoSPARC job needs a pixel size")
    counts = classes.field("particle_count")
    if not np.isfinite(counts).all() or (counts < 0).any() or (counts % 1).any():
        raise ValueError(
            "particle_count must be a known whole number >= 0 for every class"
        )
    rng = np.random.default_rng(seed)
    prefix = f"{uid}_020"
    with staged_outputs(job_dir) as stage:
        write_stack(
            stage / f"{prefix}_class_averages.mrc", classes.images, classes.pixel_size
        )
        _save(
            _class_average_rows(classes, f"{uid}/{prefix}_class_averages.mrc", rng),
            stage / f"{prefix}_class_averages.cs",
        )
        parts, passthrough = _particle_rows(classes, counts.astype(np.int64), rng)
        _save(parts, stage / f"{prefix}_particles.cs")
        _save(passthrough, stage / f"{uid}_passthrough_particles.cs")
        _write_job_json(
            stage / "job.json",
            uid,
            job_dir,
            "class_2D_new",
            [],
            {"class2D_K": len(classes)},
        )
    written = read_cryosparc_class2d(job_dir)
    return replace(
        written,
        classes=replace(
            written.classes, labels=classes.labels.copy(), kinds=classes.kinds
        ),
    )


def _uids(rng: np.random.Generator, n: int) -> npt.NDArray[np.uint64]:
    return rng.integers(1, 2**63, size=n, dtype=np.int64).astype(np.uint64)


def _class_average_rows(
    classes: ClassAverages, rel_path: str, rng: np.random.Generator
) -> Dataset:
    n, box = len(classes), classes.box_size
    data = Dataset.allocate(n, [*BLOB, ("blob/res_A", "<f4")])
    data["uid"] = _uids(rng, n)
    data["blob/path"] = [rel_path] * n
    data["blob/idx"] = np.arange(n)
    data["blob/shape"] = np.tile([box, box], (n, 1))
    data["blob/psize_A"] = classes.pixel_size or 0.0
    data["blob/sign"] = 1.0
    res = classes.field("resolution_A")
    data["blob/res_A"] = np.where(np.isfinite(res), res, np.inf)
    return data


def _particle_rows(
    classes: ClassAverages, counts: npt.NDArray[np.int64], rng: np.random.Generator
) -> tuple[Dataset, Dataset]:
    """Particles (blob + alignments2D) and their passthrough (ctf + location)."""
    n, k = int(counts.sum()), len(classes)
    apix, box = float(classes.pixel_size or 1.0), classes.box_size
    cls = rng.permutation(np.repeat(np.arange(k), counts))
    mic = np.sort(rng.integers(0, max(1, n // 120 + 1), n))
    parts = Dataset.allocate(n, [*BLOB, ("blob/import_sig", "<u8"), *ALIGNMENTS2D])
    parts["uid"] = _uids(rng, n)
    parts["blob/path"] = [
        f"J12/extract/{m:021d}_mic_{m:04d}_particles.mrc" for m in mic
    ]
    parts["blob/idx"] = (
        np.concatenate([np.arange(c) for c in np.bincount(mic)]) if n else []
    )
    parts["blob/shape"] = np.tile([box, box], (n, 1))
    parts["blob/psize_A"] = apix
    parts["blob/sign"] = -1.0
    parts["alignments2D/split"] = rng.integers(0, 2, n)
    parts["alignments2D/shift"] = rng.normal(0.0, 1.5, (n, 2))
    parts["alignments2D/pose"] = rng.uniform(-np.pi, np.pi, n)
    parts["alignments2D/psize_A"] = apix
    err = rng.normal(9000.0, 300.0, n)
    parts["alignments2D/error"], parts["alignments2D/error_min"] = (
        err,
        err - np.abs(rng.normal(40.0, 10.0, n)),
    )
    parts["alignments2D/image_pow"] = err + rng.normal(40.0, 5.0, n)
    parts["alignments2D/resid_pow"], parts["alignments2D/slice_pow"] = (
        err,
        rng.gamma(2.0, 20.0, n),
    )
    parts["alignments2D/cross_cor"] = rng.gamma(4.0, 15.0, n)
    parts["alignments2D/alpha"], parts["alignments2D/alpha_min"] = (
        1.0,
        rng.normal(1.0, 0.1, n),
    )
    parts["alignments2D/weight"] = 1.0
    parts["alignments2D/pose_ess"], parts["alignments2D/shift_ess"] = (
        rng.gamma(2.0, 1.0, n) + 1,
        rng.gamma(2.0, 1.0, n) + 1,
    )
    parts["alignments2D/class"] = cls
    ess, post = _per_particle(classes, cls, rng)
    parts["alignments2D/class_ess"], parts["alignments2D/class_posterior"] = ess, post
    passthrough = _passthrough(parts["uid"], mic, rng)
    return parts, passthrough


def _per_particle(
    classes: ClassAverages, cls: npt.NDArray[np.int64], rng: np.random.Generator
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """class_ess >= 1 and class_posterior in (0, 1] whose class means are the given ECA/posterior."""
    res = np.nan_to_num(classes.field("resolution_A"), nan=30.0)
    eca = classes.field("eca")
    eca = np.where(np.isfinite(eca), eca, 1.0 + np.clip((res - 6.0) / 8.0, 0.05, 4.0))
    post = classes.field("mean_posterior")
    post = np.where(np.isfinite(post), post, np.clip(1.1 - res / 40.0, 0.2, 0.99))
    w = rng.gamma(4.0, 0.25, len(cls))
    d = rng.normal(0.0, 1.0, len(cls))
    for c in np.unique(cls):
        sel = cls == c
        w[sel] /= w[sel].mean()
        d[sel] -= d[sel].mean()
        m = post[c]
        span = max(float(np.abs(d[sel]).max()), 1e-12)
        d[sel] *= min(0.15, (1.0 - m) * 0.999, m * 0.999) / span
    return 1.0 + (eca[cls] - 1.0) * w, post[cls] + d


def _passthrough(
    uid: npt.NDArray[np.uint64], mic: npt.NDArray[np.int64], rng: np.random.Generator
) -> Dataset:
    n, n_mics = len(uid), int(mic.max()) + 1 if len(mic) else 1
    fields = [
        ("ctf/type", "O"),
        ("ctf/exp_group_id", "<u4"),
        ("ctf/accel_kv", "<f4"),
        ("ctf/cs_mm", "<f4"),
        ("ctf/amp_contrast", "<f4"),
        ("ctf/df1_A", "<f4"),
        ("ctf/df2_A", "<f4"),
        ("ctf/df_angle_rad", "<f4"),
        ("ctf/phase_shift_rad", "<f4"),
        ("ctf/scale", "<f4"),
        ("ctf/scale_const", "<f4"),
        ("ctf/shift_A", "<f4", (2,)),
        ("ctf/tilt_A", "<f4", (2,)),
        ("ctf/trefoil_A", "<f4", (2,)),
        ("ctf/tetra_A", "<f4", (4,)),
        ("ctf/anisomag", "<f4", (4,)),
        ("ctf/bfactor", "<f4"),
        ("location/micrograph_uid", "<u8"),
        ("location/exp_group_id", "<u4"),
        ("location/micrograph_path", "O"),
        ("location/micrograph_shape", "<u4", (2,)),
        ("location/center_x_frac", "<f4"),
        ("location/center_y_frac", "<f4"),
    ]
    data = Dataset.allocate(n, fields)
    data["uid"] = uid
    defocus = rng.uniform(5000.0, 30000.0, n_mics)[mic]
    astig = rng.uniform(50.0, 600.0, n_mics)[mic]
    data["ctf/type"] = ["spline"] * n
    data["ctf/accel_kv"], data["ctf/cs_mm"], data["ctf/amp_contrast"] = 300.0, 2.7, 0.1
    data["ctf/df1_A"], data["ctf/df2_A"] = defocus + astig, defocus - astig
    data["ctf/df_angle_rad"] = rng.uniform(0.0, np.pi, n_mics)[mic]
    data["ctf/scale"], data["ctf/scale_const"] = 1.0, 1.0
    mic_uids = _uids(rng, n_mics)
    data["location/micrograph_uid"] = mic_uids[mic]
    data["location/micrograph_path"] = [
        f"J8/motioncorrected/{u:021d}_mic_{m:04d}_patch_aligned_doseweighted.mrc"
        for u, m in zip(mic_uids[mic], mic, strict=True)
    ]
    data["location/micrograph_shape"] = np.tile([4092, 5760], (n, 1))
    data["location/center_x_frac"], data["location/center_y_frac"] = rng.uniform(
        0.05, 0.95, (2, n)
    )
    return data


def _save(data: Dataset, path: Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            data.save(fh)


def _write_job_json(
    path: Path,
    uid: str,
    job_dir: Path,
    job_type: str,
    parents: list[str],
    params: dict[str, int],
) -> None:
    project = job_dir.absolute().parent.name
    record = {
        "uid": uid,
        "project_uid": project if re.match(r"^P\d+$", project) else "P1",
        "type": job_type,
        "status": "completed",
        "job_dir": uid,
        "parents": parents,
        "params_spec": {k: {"value": v} for k, v in params.items()},
    }
    path.write_text(json.dumps(record, indent=2) + "\n")


def write_cryosparc_selection(
    job: CryosparcClass2DJob, labels: npt.ArrayLike, select_dir: Path
) -> Path:
    """Write a Select 2D job's outputs for per-class ``labels`` (1 selected, 0 excluded).

    Writes the non-empty ones of ``templates_selected.cs``, ``templates_excluded.cs``,
    ``particles_selected.cs`` and ``particles_excluded.cs``, and ``job.json``; returns
    ``select_dir``.
    """
    labs = np.asarray(labels, dtype=np.int64)
    n = len(job.classes)
    if labs.shape != (n,) or not np.isin(labs, (Label.REJECTED, Label.SELECTED)).all():
        raise ValueError(f"labels must be ({n},) values 0/1, got shape {labs.shape}")
    select_dir = Path(select_dir)
    if not _JOB_UID_RE.match(select_dir.name):
        raise ValueError(
            f"select_dir must end in a job folder like J43, got {select_dir}"
        )
    chosen = job.classes.class_numbers[labs == Label.SELECTED] - 1
    t_mask = np.isin(np.asarray(job.class_averages["blob/idx"], dtype=np.int64), chosen)
    blob_fields = ["uid"] + [
        f for f in job.class_averages.fields() if f.startswith("blob/")
    ]
    templates = job.class_averages.filter_fields(blob_fields)
    outputs = {
        "templates_selected": templates.mask(t_mask),
        "templates_excluded": templates.mask(~t_mask),
    }
    if len(job.particles):
        full = Dataset.load(_particles_file(job))
        keep = ["uid"] + [
            f for f in full.fields() if f.startswith(("blob/", "alignments2D/"))
        ]
        full = full.filter_fields(keep)
        p_mask = np.isin(np.asarray(full["alignments2D/class"], dtype=np.int64), chosen)
        outputs.update(
            {
                "particles_selected": full.mask(p_mask),
                "particles_excluded": full.mask(~p_mask),
            }
        )
    with staged_outputs(select_dir) as stage:
        for name, data in outputs.items():
            if len(data):
                _save(data, stage / f"{name}.cs")
        _write_job_json(
            stage / "job.json",
            select_dir.name,
            select_dir,
            "select_2D",
            [job.job_dir.name],
            {},
        )
    return select_dir


def _particles_file(job: CryosparcClass2DJob) -> Path:
    _, particles = find_class2d_files(job.job_dir)
    if particles is None:
        raise InputError(job.job_dir, "no particles .cs")
    return particles
