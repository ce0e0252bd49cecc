"""A person's selection in place of the model's: read the file a person exported
(``selection.csv`` from the review page, or RELION's ``backup_selection.star``), check
that it belongs to the job, and turn the model's
:class:`~cryodiscovery.core.selection.Selection` into the person's.

Scores and the threshold stay the model's; only ``selected`` changes, and every reason
says it was a person's choice (``"person: kept"``, ``"person: rejected"``), followed by
the model's decision where that differed or had a reason (``"person: kept (model:
score)"``, ``"person: rejected (model: kept)"``). The run record of a person-corrected
output says so (:func:`selection_record`: ``"selection_source": "person"``), which makes
it a person's label for training (:mod:`cryodiscovery.core.io.history`).
"""

from __future__ import annotations

import csv
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
    """

    path: Path
    sha256: str
    class_numbers: npt.NDArray[np.int64]
    selected: npt.NDArray[np.bool_]
    scores: npt.NDArray[np.float64]


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
    if not file.is_file():
        raise InputError(file, "file not found")
    if file.suffix.lower() == ".star":
        labels = read_relion_selection(file, n_classes)
        numbers = np.arange(1, len(labels) + 1, dtype=np.int64)
        selected = np.asarray(labels) == 1
        scores = np.full(len(labels), math.nan)
    else:
        numbers, selected, scores = _read_csv(file)
    if numbers.size == 0:
        raise InputError(file, "no classes in the selection")
    return PersonChoice(file, sha256_file(file), numbers, selected, scores)


def _read_csv(
    path: Path,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
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
    unique, counts = np.unique(numbers, return_counts=True)
    if np.any(counts > 1):
        raise InputError(path, f"class {int(unique[counts > 1][0])} is listed twice")
    return (
        np.asarray(numbers, dtype=np.int64),
        np.asarray(selected, dtype=bool),
        np.asarray(scores, dtype=np.float64),
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


def check_choice(choice: PersonChoice, class_numbers: npt.ArrayLike) -> None:
    """Refuse a choice that is not about exactly the classes ``class_numbers`` of the job.

    Raises
    ------
    InputError
        The file names a class the job does not have, or does not name every class of
        the job (a selection of another job).
    """
    numbers = np.asarray(class_numbers, dtype=np.int64)
    unknown = np.setdiff1d(choice.class_numbers, numbers)
    span = f"classes {numbers.min()}-{numbers.max()}" if numbers.size else "no classes"
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


def apply_choice(model: Selection, choice: PersonChoice) -> Selection:
    """The person's selection: ``model`` with the person's ``selected`` and reasons.

    Raises
    ------
    InputError
        The choice is not about the model's classes (:func:`check_choice`), or its
        scores differ from the model's (a selection of another job).
    """
    check_choice(choice, model.class_numbers)
    order = np.argsort(choice.class_numbers)
    position = order[np.searchsorted(choice.class_numbers[order], model.class_numbers)]
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


def require_person_selection(selection: Selection, choice: PersonChoice) -> None:
    """Raise :class:`~cryodiscovery.core.errors.NothingSelected` (naming the file) when
    the person kept no class, as every tool ends when its selection keeps none."""
    if selection.n_selected == 0:
        raise NothingSelected(
            choice.path,
            f"no class kept: the selection keeps none of the {len(selection.scores)} "
            "classes: nothing to pass on; keep at least one class",
        )


def choose(
    model: Selection, choice: PersonChoice | None
) -> tuple[Selection, dict[str, Any]]:
    """The selection to pass on, the person's when there is a ``choice`` (refused when
    it keeps no class), and what the run record says about it
    (:func:`selection_record`)."""
    if choice is None:
        return model, selection_record()
    person = apply_choice(model, choice)
    require_person_selection(person, choice)
    return person, selection_record(choice, model, person)


def selection_record(
    choice: PersonChoice | None = None,
    model: Selection | None = None,
    person: Selection | None = None,
) -> dict[str, Any]:
    """What a run record says about who selected: ``{"selection_source": "model"}``, or
    for a person's choice ``"person"`` with the file's path and SHA-256, the classes
    flipped relative to the model, and the model's own decisions (so that applying
    another selection later still compares with the model)."""
    if choice is None or model is None or person is None:
        return {"selection_source": "model"}
    flipped = model.class_numbers[model.selected != person.selected]
    return {
        "selection_source": PERSON,
        "person_selection": {
            "file": str(choice.path.resolve()),
            "sha256": choice.sha256,
            "n_flipped": int(flipped.size),
            "flipped_classes": sorted(int(c) for c in flipped),
            "n_selected": person.n_selected,
        },
        "model_selection": {
            "kept": sorted(int(c) for c in model.class_numbers[model.selected]),
            "reasons": {
                str(int(c)): r
                for c, r in zip(model.class_numbers, model.reasons, strict=True)
                if r
            },
        },
    }


def person_corrected(record: Any) -> bool:
    """Whether a run record (parsed ``run_record.json``) is of a person's selection."""
    if not isinstance(record, dict):
        return False
    config = record.get("config")
    return isinstance(config, dict) and config.get("selection_source") == PERSON
