"""``scores.csv``: the per-class table every selection run writes (class, score, decision,
particle count, resolution, reason), and reading it back."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.selection import Selection

#: Columns of ``scores.csv`` (``kind`` only when the truth is known).
SCORE_COLUMNS: tuple[str, ...] = (
    "class_number",
    "score",
    "selected",
    "particle_count",
    "resolution_A",
    "reason",
)


def check_matches(classes: ClassAverages, selection: Selection) -> None:
    """``ValueError`` unless ``selection`` is about exactly these classes, in order."""
    n = len(classes)
    for name in ("class_numbers", "scores", "selected"):
        got = np.shape(getattr(selection, name))
        if got != (n,):
            raise ValueError(f"selection.{name} has shape {got}, expected ({n},)")
    if len(selection.reasons) != n:
        raise ValueError(
            f"selection has {len(selection.reasons)} reasons for {n} classes"
        )
    if not np.array_equal(selection.class_numbers, classes.class_numbers):
        raise ValueError("selection and class averages list different class numbers")


def write_scores_csv(path: Path, classes: ClassAverages, selection: Selection) -> Path:
    """Write the per-class table, one row per class in class-number order.

    Columns: :data:`SCORE_COLUMNS`, plus ``kind`` when any class's kind is known.
    ``score`` is the probability of "good" (6 decimals), ``selected`` is 1 or 0,
    ``particle_count`` and ``resolution_A`` (Å) are empty where unknown, ``reason`` is
    empty for kept classes and says why a class was rejected otherwise.
    """
    check_matches(classes, selection)
    with_kind = any(classes.kinds)
    counts = classes.field("particle_count")
    resolution = classes.field("resolution_A")
    order = np.argsort(classes.class_numbers, kind="stable")
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*SCORE_COLUMNS, *(["kind"] if with_kind else [])])
        for i in order:
            row = [
                str(int(classes.class_numbers[i])),
                f"{float(selection.scores[i]):.6f}",
                "1" if selection.selected[i] else "0",
                "" if math.isnan(counts[i]) else str(round(counts[i])),
                "" if math.isnan(resolution[i]) else f"{resolution[i]:.2f}",
                selection.reasons[i],
            ]
            writer.writerow(row + ([classes.kinds[i]] if with_kind else []))
    return path


def read_scores_csv(
    path: Path,
) -> tuple[
    npt.NDArray[np.int64],
    npt.NDArray[np.float64],
    npt.NDArray[np.bool_],
    npt.NDArray[np.float64],
    list[str],
]:
    """Read a table :func:`write_scores_csv` wrote: ``(n,)`` class numbers, scores (as
    written, 6 decimals), selected, particle counts (NaN where empty) and reasons, in
    the file's order.

    Raises
    ------
    InputError
        A missing file, a missing column or value, or no rows.
    """
    if not path.is_file():
        raise InputError(path, "file not found (the run's scores)")
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        numbers = np.asarray([int(r["class_number"]) for r in rows], dtype=np.int64)
        scores = np.asarray([float(r["score"]) for r in rows], dtype=np.float64)
        selected = np.asarray([r["selected"] == "1" for r in rows], dtype=bool)
        counts = np.asarray(
            [float(r.get("particle_count") or "nan") for r in rows], dtype=np.float64
        )
        reasons = [r.get("reason") or "" for r in rows]
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise InputError(path, f"not a scores table of a run ({err})") from err
    if numbers.size == 0:
        raise InputError(path, "no classes")
    return numbers, scores, selected, counts, reasons
