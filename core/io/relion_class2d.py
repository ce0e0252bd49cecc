"""RELION 2D classification: read ``Class2D/jobNNN`` outputs and Select-job labels.

A Class2D job (RELION 3.0-5.0, EM or VDAM) writes, per iteration ``NNN``:
``run_itNNN_data.star`` (``data_optics`` + ``data_particles`` with ``rlnClassNumber`` per
particle), ``run_itNNN_model.star`` (``data_model_general``; ``data_model_classes`` with
``rlnReferenceImage = 000001@Class2D/jobNNN/run_itNNN_classes.mrcs``, one row per class in
class-number order; per-class spectra tables), ``run_itNNN_optimiser.star`` (first line
``# RELION optimiser; version X.Y``) and the float32 stack ``run_itNNN_classes.mrcs``. VDAM
runs (``--grad``, RELION 4.0+) add ``rlnGradMoment1/2`` to ``data_model_classes`` and set
``rlnDoStochasticGradientDescent`` in the optimiser. Paths inside STAR files are relative to
the RELION project folder, the one holding ``Class2D/``. Writers of realistic job folders
(for the generator and round-trip tests) are in :mod:`cryodiscovery.core.synthetic.relion_jobs`
and :mod:`cryodiscovery.core.synthetic.relion_pipeline`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from cryodiscovery.core.classes import ClassAverages, Label, Provenance
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.io.stack import read_mrc_images
from cryodiscovery.core.io.star_tables import (
    loop_table,
    numeric_column,
    read_loop_column,
    read_star,
    require_columns,
    star_version,
)

log = logging.getLogger(__name__)

RUN_FILE_RE = re.compile(
    r"^(?P<root>.+?)_it(?P<it>\d{3,})_(?P<kind>data|model|optimiser|sampling)\.star$"
)
_JOB_RE = re.compile(r"^job\d{3,}$")
_REF_RE = re.compile(r"^\s*(\d+)@(\S+)\s*$")
_OPT_VERSION_RE = re.compile(r"RELION optimiser; version\s+(\d+)\.(\d+)")


@dataclass(frozen=True)
class RelionClass2DJob:
    """One iteration of a RELION Class2D job, read or written.

    Parameters
    ----------
    classes:
        Images from ``classes_mrcs``, metadata from model.star, particle counts from
        data.star (NaN when data.star is absent).
    project_dir:
        The RELION project folder; paths inside the STAR files are relative to it.
    data_star, model_star, optimiser_star, classes_mrcs:
        The files of this iteration (``data_star`` may not exist when only a model.star
        was available; ``optimiser_star`` is None when absent).
    iteration:
        The iteration number ``NNN`` of ``run_itNNN``.
    version:
        ``"3.0"``, ``"3.1"``, ``"4.0"`` or ``"5.0"`` (from the optimiser header, the STAR
        ``# version`` line and the columns).
    algorithm:
        ``"EM"`` or ``"VDAM"``.
    model_classes:
        The ``data_model_classes`` table of model.star as read, one row per class in
        class-number order (for writers that copy its columns without reading it again).
    """

    classes: ClassAverages
    project_dir: Path
    data_star: Path
    model_star: Path
    optimiser_star: Path | None
    classes_mrcs: Path
    iteration: int
    version: str
    algorithm: str
    model_classes: pd.DataFrame

    @property
    def job(self) -> str:
        """The job name, e.g. ``"Class2D/job013"``."""
        return self.classes.provenance.job


def read_relion_class2d(
    path: Path, project_dir: Path | None = None
) -> RelionClass2DJob:
    """Read a RELION Class2D iteration.

    Parameters
    ----------
    path:
        ``run_itNNN_data.star`` (what RELION passes an External job as ``--in_parts``),
        ``run_itNNN_model.star`` or ``run_itNNN_optimiser.star``; or a Class2D job folder
        (its latest iteration is read).
    project_dir:
        The RELION project folder; default: the folder two levels above
        ``Class2D/jobNNN``, or whichever ancestor (or the working folder) holds the stack
        named in ``rlnReferenceImage``.

    Raises
    ------
    InputError
        A missing or malformed file, a missing column, an unsupported STAR version, a
        class count or box size that differs from the stack, or bad images.
    """
    folder, root, iteration = _locate_run(Path(path))
    stem = f"{root}_it{iteration:03d}"
    model_star = folder / f"{stem}_model.star"
    data_star = folder / f"{stem}_data.star"
    opt = folder / f"{stem}_optimiser.star"
    optimiser_star = opt if opt.is_file() else None
    if not model_star.is_file():
        raise InputError(
            model_star, f"file not found (the model.star beside {Path(path).name})"
        )
    general, table, star_ver = _read_model(model_star)
    idx, ref_file = _stack_references(table, model_star)
    project, stack = _locate_stack(folder, ref_file, project_dir)
    images, voxel = read_mrc_images(stack)
    n = len(idx)
    declared = int(general.get("rlnNrClasses", n))
    if declared != n:
        raise InputError(
            model_star,
            f"rlnNrClasses is {declared} but data_model_classes has {n} rows",
        )
    if len(images) != n:
        raise InputError(
            model_star, f"{n} classes but the stack {stack} has {len(images)} images"
        )
    optics = _read_optics(data_star)
    _check_box(images.shape[-1], stack, general, model_star, optics, data_star)
    opt_general, opt_version = _read_optimiser(optimiser_star)
    algorithm = _algorithm(table, opt_general)
    version = _version(star_ver, general, opt_version, algorithm)
    pixel_size = _pixel_size(general, optics, voxel)
    metadata = _class_metadata(table, pixel_size)
    if data_star.is_file():
        metadata["particle_count"] = _particle_counts(data_star, n)
    else:
        log.warning("%s not found: particle counts unknown", data_star)
    sources = tuple(
        str(p)
        for p in (data_star, model_star, optimiser_star, stack)
        if p and p.is_file()
    )
    classes = ClassAverages.create(
        images[idx - 1],
        pixel_size=pixel_size,
        class_numbers=idx,
        metadata=metadata,
        provenance=Provenance("relion", sources, _job_name(folder)),
    )
    return RelionClass2DJob(
        classes,
        project,
        data_star,
        model_star,
        optimiser_star,
        stack,
        iteration,
        version,
        algorithm,
        table.reset_index(drop=True),
    )


def _locate_run(path: Path) -> tuple[Path, str, int]:
    """(folder, root, iteration) of a run file, or of the latest model.star in a folder."""
    if path.is_dir():
        runs = [RUN_FILE_RE.match(p.name) for p in path.glob("*_it*_model.star")]
        found = [(int(m["it"]), m["root"] == "run", m["root"]) for m in runs if m]
        if not found:
            raise InputError(
                path, "no run_itNNN_model.star in this folder (not a Class2D job?)"
            )
        it, _, root = max(found)
        return path, root, it
    match = RUN_FILE_RE.match(path.name)
    if match is None:
        raise InputError(
            path,
            "not a RELION Class2D output (expected run_itNNN_data.star, _model.star or _optimiser.star)",
        )
    if not path.is_file():
        raise InputError(path, "file not found")
    return path.parent, match["root"], int(match["it"])


def _read_model(model_star: Path) -> tuple[dict[str, Any], pd.DataFrame, int | None]:
    star_ver = star_version(model_star)
    if star_ver not in (None, 30001, 50001):
        raise InputError(
            model_star,
            f"unsupported STAR version {star_ver} (known: 30001 = RELION 3.1/4.0, 50001 = RELION 5.0)",
        )
    blocks = read_star(model_star, n_blocks=2)
    general = blocks.get("model_general")
    if not isinstance(general, dict):
        raise InputError(
            model_star, "no data_model_general block (not a RELION model.star?)"
        )
    if "model_bodies" in blocks:
        raise InputError(
            model_star, "a multi-body refinement model, not a 2D classification"
        )
    dim = int(general.get("rlnReferenceDimensionality", 2))
    if dim != 2:
        raise InputError(
            model_star, f"reference dimensionality {dim}: not a 2D classification"
        )
    table = loop_table(blocks, "model_classes", model_star)
    require_columns(
        table,
        ["rlnReferenceImage", "rlnClassDistribution"],
        model_star,
        "model_classes",
    )
    if len(table) == 0:
        raise InputError(model_star, "data_model_classes has no rows")
    return general, table, star_ver


def _stack_references(
    table: pd.DataFrame, star: Path
) -> tuple[npt.NDArray[np.int64], str]:
    """1-based stack indices and the one stack file of ``rlnReferenceImage``."""
    indices: list[int] = []
    files: set[str] = set()
    for ref in table["rlnReferenceImage"].astype(str):
        match = _REF_RE.match(ref)
        if match is None:
            raise InputError(
                star, f"rlnReferenceImage {ref!r} is not of the form NNNNNN@file.mrcs"
            )
        indices.append(int(match[1]))
        files.add(match[2])
    if len(files) != 1:
        raise InputError(
            star, f"rlnReferenceImage names {len(files)} stacks; expected one"
        )
    idx = np.asarray(indices, dtype=np.int64)
    if idx.min() < 1 or len(set(indices)) != len(indices):
        raise InputError(
            star, "rlnReferenceImage indices must be distinct and start at 1"
        )
    return idx, files.pop()


def _locate_stack(
    folder: Path, ref_file: str, project_dir: Path | None
) -> tuple[Path, Path]:
    """(project folder, stack path) for a stack named relative to the project."""
    here = folder.absolute()
    job_like = _JOB_RE.match(here.name) is not None
    default = here.parent.parent if job_like else Path.cwd()
    candidates = (
        [project_dir.absolute()]
        if project_dir is not None
        else [default, *here.parents, Path.cwd()]
    )
    for cand in candidates:
        if (cand / ref_file).is_file():
            return cand, cand / ref_file
    beside = here / Path(ref_file).name
    if beside.is_file():
        return candidates[0], beside
    raise InputError(
        candidates[0] / ref_file,
        "class-average stack not found (named by rlnReferenceImage; is the RELION project folder right?)",
    )


def _read_optimiser(path: Path | None) -> tuple[dict[str, Any], str | None]:
    if path is None:
        return {}, None
    with open(path, errors="replace") as fh:
        head = fh.read(2048)
    match = _OPT_VERSION_RE.search(head)
    version = None
    if match:
        major, minor = int(match[1]), int(match[2])
        version = {5: "5.0", 4: "4.0"}.get(
            major, "3.1" if (major, minor) >= (3, 1) else "3.0"
        )
        if major > 5 or major < 3:
            raise InputError(path, f"unsupported RELION version {major}.{minor}")
    general = read_star(path, n_blocks=1).get("optimiser_general")
    return (general if isinstance(general, dict) else {}), version


def _algorithm(table: pd.DataFrame, opt_general: dict[str, Any]) -> str:
    vdam = "rlnGradMoment1" in table.columns
    vdam = vdam or int(opt_general.get("rlnDoStochasticGradientDescent", 0) or 0) == 1
    return "VDAM" if vdam else "EM"


def _version(
    star_ver: int | None,
    general: dict[str, Any],
    opt_version: str | None,
    algorithm: str,
) -> str:
    if opt_version is not None:
        return opt_version
    if star_ver == 50001:
        return "5.0"
    if star_ver == 30001:
        return "4.0" if "rlnNrOpticsGroups" in general or algorithm == "VDAM" else "3.1"
    return "3.0"


#: Columns of data.star's ``data_optics`` that the reader uses.
_OPTICS_COLUMNS = ("rlnImageSize", "rlnImagePixelSize")


def _read_optics(data_star: Path) -> pd.DataFrame:
    """The used columns of ``data_optics`` of a RELION 3.1+ data.star, streamed from the
    top of the file only (starfile would load the whole file); an empty table for a
    RELION 3.0 file (no ``# version`` line, no optics) or none."""
    if not data_star.is_file() or star_version(data_star) is None:
        return pd.DataFrame()
    columns = {}
    for name in _OPTICS_COLUMNS:
        try:
            columns[name] = read_loop_column(data_star, "optics", name)
        except InputError:
            continue
    if len({len(v) for v in columns.values()}) > 1:
        raise InputError(data_star, "data_optics has rows of different lengths")
    return pd.DataFrame(columns)


def _check_box(
    box: int,
    stack: Path,
    general: dict[str, Any],
    model_star: Path,
    optics: pd.DataFrame,
    data_star: Path,
) -> None:
    """The box the STAR files state must be the stack's: a stack of another job (or a
    re-extraction) would otherwise be scored and passed on under this job's name."""
    stated = general.get("rlnOriginalImageSize")
    if isinstance(stated, int | float) and int(stated) != box:
        raise InputError(
            model_star,
            f"rlnOriginalImageSize is {int(stated)} px but the stack {stack} has "
            f"{box} px images",
        )
    if "rlnImageSize" in optics.columns:
        sizes = set(numeric_column(optics, "rlnImageSize").tolist())
        if sizes != {float(box)}:
            shown = ", ".join(f"{s:g}" for s in sorted(sizes))
            raise InputError(
                data_star,
                f"data_optics rlnImageSize is {shown} px but the stack {stack} has "
                f"{box} px images",
            )


def _pixel_size(
    general: dict[str, Any], optics: pd.DataFrame, voxel: float | None
) -> float | None:
    """rlnPixelSize of model_general, else the optics table's, else the stack header's."""
    value = general.get("rlnPixelSize")
    if isinstance(value, int | float) and value > 0:
        return float(value)
    if "rlnImagePixelSize" in optics.columns and len(optics):
        size = float(numeric_column(optics, "rlnImagePixelSize")[0])
        if size > 0:
            return size
    return voxel


def _class_metadata(
    table: pd.DataFrame, pixel_size: float | None
) -> dict[str, npt.ArrayLike]:
    n = len(table)
    missing = np.full(n, np.nan)
    meta: dict[str, npt.ArrayLike] = {
        "class_distribution": numeric_column(table, "rlnClassDistribution")
    }
    for name, col in (
        ("accuracy_rotation_deg", "rlnAccuracyRotations"),
        ("resolution_A", "rlnEstimatedResolution"),
        ("fourier_completeness", "rlnOverallFourierCompleteness"),
    ):
        meta[name] = (
            numeric_column(table, col) if col in table.columns else missing.copy()
        )
    if "rlnAccuracyTranslationsAngst" in table.columns:
        meta["accuracy_translation_A"] = numeric_column(
            table, "rlnAccuracyTranslationsAngst"
        )
    elif "rlnAccuracyTranslations" in table.columns and pixel_size is not None:
        px = numeric_column(table, "rlnAccuracyTranslations")  # RELION <= 3.0: pixels
        meta["accuracy_translation_A"] = np.where(px >= 999, px, px * pixel_size)
    return meta


def _particle_counts(data_star: Path, n_classes: int) -> npt.NDArray[np.float64]:
    numbers = read_loop_column(data_star, None, "rlnClassNumber")
    if len(numbers) == 0:
        return np.zeros(n_classes)
    try:
        numbers = np.asarray(numbers, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise InputError(data_star, "rlnClassNumber has non-integer values") from exc
    bad = (numbers < 1) | (numbers > n_classes)
    if bad.any():
        raise InputError(
            data_star,
            f"rlnClassNumber {int(numbers[bad][0])} outside 1-{n_classes} (model.star has {n_classes} classes)",
        )
    return np.bincount(numbers, minlength=n_classes + 1)[1:].astype(np.float64)


def _job_name(folder: Path) -> str:
    folder = folder.absolute()
    return (
        f"{folder.parent.name}/{folder.name}"
        if _JOB_RE.match(folder.name)
        else folder.name
    )


def read_relion_selection(
    path: Path, n_classes: int | None = None
) -> npt.NDArray[np.int8]:
    """Per-class labels from a RELION Select job's output.

    Parameters
    ----------
    path:
        ``backup_selection.star`` (``rlnSelected`` per class; 0 not selected, 1 selected,
        2-6 GUI colours, also counted as selected), ``class_averages.star`` (the selected
        classes, by ``rlnClassNumber`` or the ``NNNNNN@run_itNNN_classes.mrcs`` index) or
        the Select job's ``particles.star`` (the classes its particles come from).
    n_classes:
        Number of classes of the Class2D job; required for the last two kinds, checked
        against ``backup_selection.star``.

    Returns
    -------
    numpy.ndarray
        ``(n_classes,)`` int8 :class:`Label` values (1 selected, 0 rejected).
    """
    if "particles" in path.name:
        selected = np.unique(
            np.asarray(read_loop_column(path, None, "rlnClassNumber"), dtype=np.int64)
        )
        return _labels_from_numbers(path, selected, n_classes)
    blocks = read_star(path)
    table = next((b for b in blocks.values() if isinstance(b, pd.DataFrame)), None)
    if table is None:  # a one-row loop comes back as a dict
        table = loop_table(blocks, next(iter(blocks)), path)
    if "rlnSelected" in table.columns:
        values = numeric_column(table, "rlnSelected")
        if np.isnan(values).any():
            raise InputError(path, "rlnSelected has non-numeric values")
        if n_classes is not None and len(values) != n_classes:
            raise InputError(
                path, f"{len(values)} rows but the Class2D job has {n_classes} classes"
            )
        return np.where(values >= 1, Label.SELECTED, Label.REJECTED).astype(np.int8)
    if "rlnClassNumber" in table.columns:
        numbers = numeric_column(table, "rlnClassNumber")
    elif "rlnReferenceImage" in table.columns and len(table):
        idx, stack = _stack_references(table, path)
        if not re.search(r"_it\d{3,}_classes\.mrcs$", stack):
            raise InputError(
                path, f"no rlnClassNumber, and {stack} is not a Class2D stack"
            )
        numbers = idx.astype(np.float64)
    elif len(table) == 0:
        numbers = np.zeros(0)
    else:
        raise InputError(
            path, "no rlnSelected, rlnClassNumber or rlnReferenceImage column"
        )
    if np.isnan(numbers).any():
        raise InputError(path, "rlnClassNumber has non-numeric values")
    return _labels_from_numbers(path, numbers.astype(np.int64), n_classes)


def _labels_from_numbers(
    path: Path, selected: npt.NDArray[np.int64], n_classes: int | None
) -> npt.NDArray[np.int8]:
    if n_classes is None:
        raise InputError(
            path, "needs the number of classes of the Class2D job it selected from"
        )
    if len(selected) and (selected.min() < 1 or selected.max() > n_classes):
        raise InputError(path, f"class numbers outside 1-{n_classes}")
    labels = np.full(n_classes, Label.REJECTED, dtype=np.int8)
    labels[selected - 1] = Label.SELECTED
    return labels
