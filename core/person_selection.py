"""A person's selection in place of the model's: read the file a person exported
(``selection.csv`` from the review page, or RELION's ``backup_selection.star``), check
that it belongs to the job, and turn the model's
:class:`~cryodiscovery.core.selection.Selection` into the person's.

Scores and the threshold stay the model's; only ``selected`` changes, and every reason
says it was a person's choice (``"person: kept"``, ``"person: rejected"``), followed by
the model's decision where that differed or had a reason (``"person: kept (model:
score)"``, ``"person: rejected (model: kept)"``). The run record says how many classes a
person decided (:func:`selection_record`): ``"selection_source": "person"`` only when at
least one was, which makes the output a person's labels for training
(:mod:`cryodiscovery.core.io.history`); a file that only repeats the model's decisions
(the review page exported untouched) is written but is no label.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from cryodiscovery.core.errors import InputError, NothingSelected
from cryodiscovery.core.io.relion_class2d import read_relion_selection
from cryodiscovery.core.outputs import sha256_file
from cryodiscovery.core.selection import Selection

log = logging.getLogger(__name__)

#: Columns ``selection.csv`` must have (``score`` and ``source`` are optional).
REQUIRED_COLUMNS: tuple[str, ...] = ("class_number", "selected")
#: Largest difference between the scores in a ``selection.csv`` and the job's own before
#: the file counts as another job's (the review page rounds scores for display).
SCORE_TOLERANCE = 1e-3
#: ``selection_source`` of a run record whose selection a person made or corrected.
PERSON = "person"


@dataclass(frozen=True)
class PersonChoice:
    """A person's decision per class, as read from the file (not yet checked against
    a job).

    Parameters
    ----------
    path:
        The file it was read from.
    sha256:
        Hex SHA-256 of the file's bytes.
    class_numbers:
        ``(n,)`` int64 1-based class numbers, unique.
    selected:
        ``(n,)`` bool, True where the person kept the class.
    scores:
        ``(n,)`` float64 scores the file shows (0-1), NaN where it has none.
    marked:
        ``(n,)`` bool, True where the file's ``source`` column says ``person`` (all
        False without one).
    numbered_rows:
        True for a STAR file of one ``rlnSelected`` row per class number 1..n: rows
        for numbers the job lacks (gaps in its numbering) are allowed when 0.
    """

    path: Path
    sha256: str
    class_numbers: npt.NDArray[np.int64]
    selected: npt.NDArray[np.bool_]
    scores: npt.NDArray[np.float64]
    marked: npt.NDArray[np.bool_]
    numbered_rows: bool = False


def read_person_choice(path: str | Path, n_classes: int | None = None) -> PersonChoice:
    """Read ``selection.csv`` (``class_number,selected[,score,source]``, selected 1/0)
    or a RELION ``backup_selection.star`` (``rlnSelected`` per class in class order).

    ``n_classes`` (the job's class count) is needed only for a STAR file that lists the
    selected classes instead of one ``rlnSelected`` per class.

    Raises
    ------
    InputError
        A missing or malformed file (a missing column, a value that is not a class
        number or not 0/1, a class listed twice, no rows), named with the line.
    """
    file = Path(path)
    if file.is_dir():
        raise InputError(
            file, "is a folder; give the selection file (selection.csv or a .star)"
        )
    if not file.is_file():
        raise InputError(file, "file not found")
    if file.suffix.lower() == ".star":
        labels = read_relion_selection(file, n_classes)
        numbers = np.arange(1, len(labels) + 1, dtype=np.int64)
        selected = np.asarray(labels) == 1
        scores = np.full(len(labels), math.nan)
        marked = np.zeros(len(labels), dtype=bool)
    else:
        numbers, selected, scores, marked = _read_csv(file)
    if numbers.size == 0:
        raise InputError(file, "no classes in the selection")
    numbered = file.suffix.lower() == ".star"
    return PersonChoice(
        file, sha256_file(file), numbers, selected, scores, marked, numbered
    )


def _read_csv(
    path: Path,
) -> tuple[
    npt.NDArray[np.int64],
    npt.NDArray[np.bool_],
    npt.NDArray[np.float64],
    npt.NDArray[np.bool_],
]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(path, f"not a readable CSV file ({err})") from err
    if not rows:
        raise InputError(path, "empty file: expected a header class_number,selected")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise InputError(
            path,
            f"no {' or '.join(missing)} column (header: {','.join(header)}); expected "
            "class_number,selected,score,source",
        )
    col = {name: header.index(name) for name in header}
    numbers: list[int] = []
    selected: list[bool] = []
    scores: list[float] = []
    marked: list[bool] = []
    for lineno, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise InputError(
                path, f"line {lineno}: {len(row)} fields, the header has {len(header)}"
            )
        numbers.append(_class_number(path, lineno, row[col["class_number"]]))
        flag = row[col["selected"]].strip()
        if flag not in ("0", "1"):
            raise InputError(path, f"line {lineno}: selected {flag!r} is not 1 or 0")
        selected.append(flag == "1")
        scores.append(_score(path, lineno, row[col["score"]] if "score" in col else ""))
        source = row[col["source"]] if "source" in col else ""
        marked.append(source.strip().lower() == PERSON)
    unique, counts = np.unique(numbers, return_counts=True)
    if np.any(counts > 1):
        raise InputError(path, f"class {int(unique[counts > 1][0])} is listed twice")
    return (
        np.asarray(numbers, dtype=np.int64),
        np.asarray(selected, dtype=bool),
        np.asarray(scores, dtype=np.float64),
        np.asarray(marked, dtype=bool),
    )


def _class_number(path: Path, lineno: int, text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(path, f"line {lineno}: class_number {text!r} is not a class")
    return value


def _score(path: Path, lineno: int, text: str) -> float:
    if not text.strip():
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise InputError(
            path, f"line {lineno}: score {text!r} is not a number"
        ) from None


def check_choice(choice: PersonChoice, class_numbers: npt.ArrayLike) -> PersonChoice:
    """Refuse a choice that is not about exactly the classes ``class_numbers`` of the
    job; return it restricted to them (a STAR file's rows for class numbers the job
    lacks, which must be 0, dropped).

    Raises
    ------
    InputError
        The file names (or, in a STAR file, keeps) a class the job does not have, or
        does not name every class of the job (a selection of another job).
    """
    numbers = np.asarray(class_numbers, dtype=np.int64)
    unknown = np.setdiff1d(choice.class_numbers, numbers)
    span = f"classes {numbers.min()}-{numbers.max()}" if numbers.size else "no classes"
    if unknown.size and choice.numbered_rows:
        known = np.isin(choice.class_numbers, numbers)
        kept = choice.class_numbers[~known & choice.selected]
        if kept.size:
            raise InputError(
                choice.path,
                f"keeps class {int(kept[0])}, which the job does not have (it has "
                f"{numbers.size} classes, {span}); a selection of another job?",
            )
        choice = replace(
            choice,
            class_numbers=choice.class_numbers[known],
            selected=choice.selected[known],
            scores=choice.scores[known],
            marked=choice.marked[known],
        )
        unknown = unknown[:0]
    if unknown.size:
        shown = ", ".join(str(int(c)) for c in unknown[:5])
        raise InputError(
            choice.path,
            f"unknown class{'es' if unknown.size > 1 else ''} {shown}: the job has "
            f"{numbers.size} classes ({span}); a selection of another job?",
        )
    if choice.class_numbers.size != numbers.size:
        raise InputError(
            choice.path,
            f"{choice.class_numbers.size} classes but the job has {numbers.size}; "
            "a selection of another job?",
        )
    return choice


def positions(numbers: npt.ArrayLike, wanted: npt.ArrayLike) -> npt.NDArray[np.intp]:
    """Where each of ``wanted`` is in ``numbers`` (unique class numbers, any order):
    ``numbers[positions(numbers, wanted)] == wanted``. Every one must be there."""
    have = np.asarray(numbers, dtype=np.int64)
    order = np.argsort(have)
    at = order[np.searchsorted(have[order], np.asarray(wanted, dtype=np.int64))]
    return np.asarray(at, dtype=np.intp)


def apply_choice(model: Selection, choice: PersonChoice) -> Selection:
    """The person's selection: ``model`` with the person's ``selected`` and reasons.

    Raises
    ------
    InputError
        The choice is not about the model's classes (:func:`check_choice`), or its
        scores differ from the model's (a selection of another job).
    """
    choice = check_choice(choice, model.class_numbers)
    position = positions(choice.class_numbers, model.class_numbers)
    scores = choice.scores[position]
    known = np.isfinite(scores)
    diff = np.abs(scores[known] - np.asarray(model.scores)[known])
    if diff.size and diff.max() > SCORE_TOLERANCE:
        i = int(np.flatnonzero(known)[np.argmax(diff)])
        raise InputError(
            choice.path,
            f"class {int(model.class_numbers[i])} scores {scores[i]:.3f} here but "
            f"{float(model.scores[i]):.3f} in the job; a selection of another job?",
        )
    selected = choice.selected[position]
    reasons = tuple(
        _reason(bool(s), bool(m), r)
        for s, m, r in zip(selected, model.selected, model.reasons, strict=True)
    )
    return replace(
        model,
        selected=selected,
        reasons=reasons,
        threshold_source=f"{model.threshold_source}, overridden by a person",
        warnings=tuple(w for w in model.warnings if not w.startswith("no class kept")),
    )


def _reason(person: bool, model: bool, model_reason: str) -> str:
    text = f"person: {'kept' if person else 'rejected'}"
    if model and not person:
        return f"{text} (model: kept)"
    return f"{text} (model: {model_reason})" if model_reason else text


def require_person_selection(
    selection: Selection,
    choice: PersonChoice,
    particle_counts: npt.ArrayLike | None = None,
) -> None:
    """Raise :class:`~cryodiscovery.core.errors.NothingSelected` (naming the file) when
    the person kept no class, or only classes without particles (``particle_counts``,
    ``(n,)`` in the selection's order, NaN where unknown), as every tool ends when its
    selection keeps none."""
    n = len(selection.scores)
    if selection.n_selected == 0:
        raise NothingSelected(
            choice.path,
            f"no class kept: the selection keeps none of the {n} classes: nothing to "
            "pass on; keep at least one class",
        )
    if particle_counts is None:
        return
    counts = np.asarray(particle_counts, dtype=np.float64)[selection.selected]
    if np.all(counts == 0):
        raise NothingSelected(
            choice.path,
            f"no particles kept: the {counts.size} class(es) kept have 0 particles: "
            "nothing to pass on; keep at least one class with particles",
        )


def choose(
    model: Selection,
    choice: PersonChoice | None,
    particle_counts: npt.ArrayLike | None = None,
) -> tuple[Selection, dict[str, Any]]:
    """The selection to pass on, the person's when there is a ``choice`` (refused when
    it keeps no class, or only classes of 0 ``particle_counts``; the model's, reasons
    included, when the choice decides no class otherwise, :func:`selection_record`),
    and what the run record says about it."""
    if choice is None:
        return model, selection_record(model=model)
    person = apply_choice(model, choice)
    require_person_selection(person, choice, particle_counts)
    record = selection_record(choice, model, person)
    return (person if record["selection_source"] == PERSON else model), record


def selection_record(
    choice: PersonChoice | None = None,
    model: Selection | None = None,
    person: Selection | None = None,
) -> dict[str, Any]:
    """What a run record says about who selected.

    ``"selection_source"`` is ``"person"`` when a person decided at least one class:
    marked ``person`` in the file's ``source`` column, or decided otherwise than the
    model (``n_person``; a file without a ``source`` column, such as
    ``backup_selection.star``, counts the flips only), else ``"model"`` (a file that
    repeats the model's decisions is recorded, with a warning, but is no label). With
    a choice, ``"person_selection"`` holds the file's path and SHA-256, ``n_person``
    and the classes flipped relative to the model. ``"model_selection"`` holds the
    model's own decisions and full-precision scores (``scores.csv`` rounds them), so
    that applying a selection later compares with the model exactly.
    """
    record: dict[str, Any] = {"selection_source": "model"}
    if model is not None:
        record["model_selection"] = {
            "kept": sorted(int(c) for c in model.class_numbers[model.selected]),
            "reasons": {
                str(int(c)): r
                for c, r in zip(model.class_numbers, model.reasons, strict=True)
                if r
            },
            "scores": {
                str(int(c)): float(s)
                for c, s in zip(model.class_numbers, model.scores, strict=True)
            },
        }
    if choice is None or model is None or person is None:
        return record
    flips = model.selected != person.selected
    flipped = model.class_numbers[flips]
    choice = check_choice(choice, model.class_numbers)
    marked = choice.marked[positions(choice.class_numbers, model.class_numbers)]
    n_person = int(np.count_nonzero(flips | marked))
    if n_person == 0:
        log.warning(
            "%s: no class differs from the model's selection: not counted as a "
            "person's labels",
            choice.path,
        )
    record["selection_source"] = PERSON if n_person else "model"
    record["person_selection"] = {
        "file": str(choice.path.resolve()),
        "sha256": choice.sha256,
        "n_person": n_person,
        "n_flipped": int(flipped.size),
        "flipped_classes": sorted(int(c) for c in flipped),
        "n_selected": person.n_selected,
    }
    return record


def person_corrected(record: Any) -> bool:
    """Whether a run record (parsed ``run_record.json``) is of a person's selection: a
    ``"person"`` source with at least one class a person decided (older records, without
    ``n_person``: at least one class flipped)."""
    if not isinstance(record, dict):
        return False
    config = record.get("config")
    if not isinstance(config, dict) or config.get("selection_source") != PERSON:
        return False
    done = config.get("person_selection")
    if not isinstance(done, dict):
        return False
    decided = done.get("n_person", done.get("n_flipped", 0))
    return isinstance(decided, int) and decided > 0
