"""cryoSPARC 2D classification jobs and Select 2D labels, read without a server.

Layout of a cryoSPARC project folder (``CS-<name>/``, "project folder" below) as v3-v4 jobs
leave it, which the writers in :mod:`cryodiscovery.core.synthetic.cryosparc_jobs`
reproduce:

``J42/`` (2D Classification, final iteration 020 of 20):
    ``J42_020_class_averages.cs``: one row per class: ``uid``, ``blob/path``
    (``J42/J42_020_class_averages.mrc``, relative to the project folder), ``blob/idx`` (the
    0-based class index, also the section in the stack), ``blob/shape``, ``blob/psize_A``,
    ``blob/sign``, ``blob/res_A`` (estimated resolution).
    ``J42_020_class_averages.mrc``: the float32 stack of class averages.
    ``J42_020_particles.cs``: ``uid``, ``blob/*`` and ``alignments2D/*`` per particle
    (``class`` = class index, ``class_posterior``, ``class_ess``, ``pose``, ``shift``...).
    ``J42_passthrough_particles.cs``: ``uid``, ``ctf/*``, ``location/*``.
    Earlier iterations (``J42_019_...``) may be present; the latest is read. cryoSPARC v2
    named files ``cryosparc_P3_J42_020_class_averages.cs``; those are read too.
``J43/`` (Select 2D): ``templates_selected.cs`` / ``templates_excluded.cs`` (the class rows,
    ``blob/*`` only) and ``particles_selected.cs`` / ``particles_excluded.cs`` (``blob/*`` +
    ``alignments2D/*``); an output is written only when it has rows. ``J43_``-prefixed names
    are read too.

Per class, the particle count, ECA (mean ``class_ess``) and mean ``class_posterior`` are
computed from the particles, as cryoSPARC's Select 2D does, by
:func:`class_averages_from_datasets` (also used on datasets downloaded from a server).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
from cryodiscovery.core.classes import ClassAverages, Label, Provenance
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.io.stack import read_mrc_images
from cryosparc.dataset import Dataset

log = logging.getLogger(__name__)

_CLASSES_RE = re.compile(r"^(?:cryosparc_P\d+_)?(J\d+)_(\d{3,})_class_averages\.cs$")
_PARTICLES_RE = re.compile(r"^(?:cryosparc_P\d+_)?(J\d+)_(\d{3,})_particles\.cs$")
_JOB_UID_RE = re.compile(r"^J\d+$")
_SELECT_NAMES = ("templates_selected", "templates_excluded")
#: alignments2D fields as cryoSPARC 2D classification writes them (name, dtype[, shape]).
ALIGNMENTS2D = [
    ("alignments2D/split", "<u4"),
    ("alignments2D/shift", "<f4", (2,)),
    ("alignments2D/pose", "<f4"),
    ("alignments2D/psize_A", "<f4"),
    ("alignments2D/error", "<f4"),
    ("alignments2D/error_min", "<f4"),
    ("alignments2D/resid_pow", "<f4"),
    ("alignments2D/slice_pow", "<f4"),
    ("alignments2D/image_pow", "<f4"),
    ("alignments2D/cross_cor", "<f4"),
    ("alignments2D/alpha", "<f4"),
    ("alignments2D/alpha_min", "<f4"),
    ("alignments2D/weight", "<f4"),
    ("alignments2D/pose_ess", "<f4"),
    ("alignments2D/shift_ess", "<f4"),
    ("alignments2D/class_posterior", "<f4"),
    ("alignments2D/class", "<u4"),
    ("alignments2D/class_ess", "<f4"),
]
BLOB = [
    ("blob/path", "O"),
    ("blob/idx", "<u4"),
    ("blob/shape", "<u4", (2,)),
    ("blob/psize_A", "<f4"),
    ("blob/sign", "<f4"),
]


@dataclass(frozen=True)
class CryosparcClass2DJob:
    """A cryoSPARC 2D classification result.

    Parameters
    ----------
    classes:
        Images from the class-average stack, metadata from the templates and particles.
    job_dir:
        The job folder (``.../CS-project/J42``); ``blob/path`` values are relative to its
        parent.
    class_averages:
        The templates, one row per class (``blob/*``).
    particles:
        The particles with ``alignments2D/*`` (empty when the file is absent).
    """

    classes: ClassAverages
    job_dir: Path
    class_averages: Dataset
    particles: Dataset


def _load(path: Path, prefixes: list[str] | None = None) -> Dataset:
    """Load a .cs file (only fields under ``prefixes``, plus uid, when given)."""
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        return Dataset.load(path, prefixes=prefixes)
    except Exception as exc:  # numpy/cryosparc raise many kinds on a bad file
        raise InputError(
            path, f"not a readable cryoSPARC .cs file ({type(exc).__name__}: {exc})"
        ) from exc


def _require(data: Dataset, fields: list[str], path: str | Path) -> None:
    have = set(data.fields())
    for name in fields:
        if name not in have:
            raise InputError(path, f"no field {name}")


def find_class2d_files(path: Path) -> tuple[Path, Path | None]:
    """(class_averages.cs, particles.cs or None) for a job folder or one of its .cs files."""
    if path.is_dir():
        found = [
            (int(m[2]), p)
            for p in path.glob("*_class_averages.cs")
            if (m := _CLASSES_RE.match(p.name))
        ]
        if not found:
            raise InputError(
                path,
                "no JNN_NNN_class_averages.cs in this folder (not a 2D classification job?)",
            )
        classes_cs = max(found)[1]
    elif (m := _PARTICLES_RE.match(path.name)) is not None:
        classes_cs = path.with_name(
            path.name.replace("_particles.cs", "_class_averages.cs")
        )
    elif _CLASSES_RE.match(path.name) or path.suffix == ".cs":
        classes_cs = path
    else:
        raise InputError(path, "not a cryoSPARC .cs file or job folder")
    if not classes_cs.is_file():
        raise InputError(classes_cs, "file not found")
    particles = classes_cs.with_name(
        classes_cs.name.replace("_class_averages.cs", "_particles.cs")
    )
    return classes_cs, (
        particles if particles.is_file() and particles != classes_cs else None
    )


def read_cryosparc_class2d(path: Path) -> CryosparcClass2DJob:
    """Read a cryoSPARC 2D classification job folder, or its class_averages/particles .cs.

    Raises
    ------
    InputError
        Missing files or fields, a stack whose image count differs from the classes,
        particle class indices beyond the classes, or bad images.
    """
    classes_cs, particles_cs = find_class2d_files(Path(path))
    templates = _load(classes_cs)
    _require(templates, ["blob/path", "blob/idx"], classes_cs)
    if "alignments2D/class" in templates.fields():
        raise InputError(
            classes_cs,
            "a particle dataset; give the class_averages.cs or the job folder",
        )
    job_dir = classes_cs.parent
    stack = _stack_path(job_dir, templates, classes_cs)
    images, voxel = read_mrc_images(stack)
    if len(images) != len(templates):
        raise InputError(
            classes_cs,
            f"{len(templates)} classes but the stack {stack} has {len(images)} images",
        )
    particles = None
    if particles_cs is not None:
        particles = _load(particles_cs, ["alignments2D"])
    else:
        log.warning(
            "%s: no particles .cs beside it; counts, ECA and posteriors unknown",
            classes_cs,
        )
    sources = tuple(str(p) for p in (classes_cs, particles_cs, stack) if p is not None)
    classes = class_averages_from_datasets(
        templates,
        particles,
        images,
        provenance=Provenance("cryosparc", sources, _job_label(job_dir)),
        what=classes_cs,
        particles_what=particles_cs,
    )
    if classes.pixel_size is None and voxel and voxel > 0:
        classes = replace(classes, pixel_size=voxel)  # older jobs: header only
    if particles is None:
        particles = Dataset.allocate(0, ALIGNMENTS2D)
    return CryosparcClass2DJob(classes, job_dir, templates, particles)


def class_averages_from_datasets(
    class_averages: Dataset,
    particles: Dataset | None,
    images: npt.ArrayLike,
    *,
    provenance: Provenance | None = None,
    what: str | Path = "class averages",
    particles_what: str | Path | None = None,
) -> ClassAverages:
    """Class averages of a 2D classification from its datasets, in template-row order.

    The one place where the per-class statistics are computed (for job folders and for
    datasets from a server alike): particle count and share, ECA (mean ``class_ess``)
    and mean ``class_posterior``, as Select 2D shows them.

    Parameters
    ----------
    class_averages:
        The templates, one row per class: unique ``blob/idx`` (0-based class index and
        section in ``images``), optionally ``blob/psize_A`` (Å; used when > 0) and
        ``blob/res_A`` (Å; non-finite becomes missing).
    particles:
        ``alignments2D/class`` and optionally ``alignments2D/class_ess`` and
        ``alignments2D/class_posterior``; ``None`` leaves the particle metadata missing.
    images:
        ``(m, h, w)`` class-average stack (or one ``(h, w)`` image), ``m`` > every
        ``blob/idx``.
    provenance:
        Recorded with the result (default: format ``"cryosparc"`` only).
    what, particles_what:
        Name the templates and the particles in errors (a path or e.g. ``"P3/J42
        particles"``); ``particles_what`` defaults to ``what``.

    Raises
    ------
    InputError
        A missing field, a class index twice, a stack too short, a ``blob/shape`` that
        is not the stack's, or particles in classes that have no class average.
    """
    _require(class_averages, ["blob/idx"], what)
    idx = np.asarray(class_averages["blob/idx"], dtype=np.int64)
    values, counts = np.unique(idx, return_counts=True)
    if np.any(counts > 1):
        raise InputError(
            what, f"class index {int(values[counts > 1][0])} appears twice"
        )
    stack = np.asarray(images, dtype=np.float32)
    stack = stack[None] if stack.ndim == 2 else stack
    if stack.ndim != 3 or idx.size == 0:
        raise InputError(
            what,
            f"expected a stack of class averages, got shape {stack.shape} "
            f"for {idx.size} classes",
        )
    if idx.max() >= len(stack):
        raise InputError(
            what,
            f"class index {int(idx.max())} is past the {len(stack)} images of the stack",
        )
    fields = set(class_averages.fields())
    if "blob/shape" in fields:
        _check_shape(np.asarray(class_averages["blob/shape"]), stack.shape[1:], what)
    psize = (
        float(class_averages["blob/psize_A"][0]) if "blob/psize_A" in fields else 0.0
    )
    metadata: dict[str, npt.ArrayLike] = {}
    if "blob/res_A" in fields:
        res = np.asarray(class_averages["blob/res_A"], dtype=np.float64)
        metadata["resolution_A"] = np.where(np.isfinite(res), res, np.nan)
    if particles is not None:
        where = what if particles_what is None else particles_what
        metadata.update(_particle_stats(particles, idx, where))
    return ClassAverages.create(
        stack[idx],
        pixel_size=psize if psize > 0 else None,
        class_numbers=idx + 1,
        metadata=metadata,
        provenance=provenance or Provenance("cryosparc", (), ""),
    )


def _check_shape(
    shapes: npt.NDArray[np.generic], box: tuple[int, ...], what: str | Path
) -> None:
    """``blob/shape`` (rows of ``(h, w)`` px) must be the stack's image shape: another
    job's stack would otherwise be scored under this job's name."""
    stated = {tuple(int(v) for v in row) for row in shapes.reshape(len(shapes), -1)}
    if stated and stated != {tuple(box)}:
        shown = ", ".join("x".join(map(str, s)) for s in sorted(stated))
        raise InputError(
            what,
            f"blob/shape is {shown} px but the class-average stack has "
            f"{'x'.join(map(str, box))} px images",
        )


def _particle_stats(
    particles: Dataset, idx: npt.NDArray[np.int64], what: str | Path
) -> dict[str, npt.NDArray[np.float64]]:
    """Per class (in ``idx`` order): count, share, ECA and mean posterior."""
    _require(particles, ["alignments2D/class"], what)
    cls = np.asarray(particles["alignments2D/class"], dtype=np.int64)
    stray = np.setdiff1d(cls, idx)
    if stray.size:
        raise InputError(
            what,
            f"alignments2D/class has class indices with no class average: "
            f"{int(np.isin(cls, stray).sum())} particles in class index {int(stray[0])}",
        )
    size = int(idx.max()) + 1
    counts = np.bincount(cls, minlength=size).astype(np.float64)
    stats = {
        "particle_count": counts[idx],
        "class_distribution": counts[idx] / max(len(cls), 1),
    }
    for name, field in (
        ("eca", "alignments2D/class_ess"),
        ("mean_posterior", "alignments2D/class_posterior"),
    ):
        if field in particles.fields():
            sums = np.bincount(
                cls,
                weights=np.asarray(particles[field], dtype=np.float64),
                minlength=size,
            )
            with np.errstate(invalid="ignore", divide="ignore"):
                stats[name] = (sums / counts)[idx]  # 0/0: an empty class, NaN
    return stats


def _stack_path(job_dir: Path, templates: Dataset, cs_path: Path) -> Path:
    paths = {str(p) for p in templates["blob/path"]}
    if len(paths) != 1:
        raise InputError(
            cs_path, f"class averages are in {len(paths)} stacks; expected one"
        )
    rel = paths.pop().lstrip(">")  # cryoSPARC marks paths outside the project with '>'
    for cand in (job_dir.parent / rel, job_dir / Path(rel).name):
        if cand.is_file():
            return cand
    raise InputError(
        job_dir.parent / rel,
        "class-average stack not found (blob/path of the class averages)",
    )


def _job_label(job_dir: Path) -> str:
    job_dir = job_dir.absolute()
    project = job_dir.parent.name
    return f"{project}/{job_dir.name}" if project else job_dir.name


def read_cryosparc_selection(
    path: Path, n_classes: int | None = None
) -> npt.NDArray[np.int8]:
    """Per-class labels from a Select 2D job (folder, or its templates_selected/excluded .cs).

    Parameters
    ----------
    path:
        The Select 2D job folder or one of its ``templates_*.cs`` files.
    n_classes:
        Number of classes of the 2D classification; default: the largest class index
        in the two files + 1.

    Returns
    -------
    numpy.ndarray
        ``(n_classes,)`` int8, indexed by class index (class number - 1): 1 selected,
        0 excluded. cryoSPARC writes an output only when it has rows, so when one of
        the two files is absent, its classes are the complement of the other.
    """
    files = select_files(Path(path))
    parts = {name: _load(p) for name, p in files.items()}
    for name, data in parts.items():
        _require(data, ["blob/idx"], files[name])
    idx = {name: np.asarray(d["blob/idx"], dtype=np.int64) for name, d in parts.items()}
    top = max((int(v.max()) + 1 for v in idx.values() if len(v)), default=0)
    n = top if n_classes is None else n_classes
    if top > n:
        raise InputError(
            next(iter(files.values())), f"class index {top - 1} beyond {n} classes"
        )
    labels = np.full(n, Label.UNKNOWN, dtype=np.int8)
    if "templates_selected" not in idx:
        labels[:] = Label.SELECTED
    if "templates_excluded" not in idx:
        labels[:] = Label.REJECTED
    labels[idx.get("templates_selected", [])] = Label.SELECTED
    labels[idx.get("templates_excluded", [])] = Label.REJECTED
    if (
        "templates_selected" in idx
        and "templates_excluded" in idx
        and (labels < 0).any()
    ):
        log.warning(
            "%s: %d classes neither selected nor excluded",
            path,
            int((labels < 0).sum()),
        )
    return labels


def select_files(path: Path) -> dict[str, Path]:
    """``{"templates_selected": ..., "templates_excluded": ...}`` (those present) of a Select 2D job."""
    folder = path if path.is_dir() else path.parent
    found: dict[str, Path] = {}
    for name in _SELECT_NAMES:
        for cand in [folder / f"{name}.cs", *sorted(folder.glob(f"J*_{name}.cs"))]:
            if cand.is_file() and "passthrough" not in cand.name:
                found.setdefault(name, cand)
    if not found:
        raise InputError(
            path,
            "no templates_selected.cs or templates_excluded.cs (not a Select 2D job?)",
        )
    return found


def selection_source(path: Path) -> Path:
    """The 2D classification job folder a Select 2D job selected from (by ``blob/path``)."""
    files = select_files(path)
    first = next(iter(files.values()))
    data = _load(first, ["blob"])
    rel = str(data["blob/path"][0]).lstrip(">") if len(data) else ""
    if not rel:
        raise InputError(first, "no blob/path rows")
    return (first.parent.parent / rel).parent
