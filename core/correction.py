"""One output folder of an earlier selection run, to be written again from a person's
selection: its run record, the model's selection as that run wrote it (``scores.csv``),
the person's, and where the run's relative input paths resolve.

Each tool that writes a selection has a rewriter (:data:`Rewriter`): ``score`` here, the
RELION and cryoSPARC jobs in their adapters, registered under the ``cryodiscovery.
apply_selection`` entry-point group by the run record's ``command`` (so core imports no
adapter code). A rewriter re-reads the inputs and writes the job's outputs again with
the same writers the tool uses.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.person_selection import (
    PersonChoice,
    apply_choice,
    read_person_choice,
    require_person_selection,
    selection_record,
)
from cryodiscovery.core.selection import Selection

if TYPE_CHECKING:
    from cryodiscovery.core.model.scorer import ClassScorer

log = logging.getLogger(__name__)

#: The option of each tool that names its output folder (to find where it ran).
_OUT_FLAGS = ("--out", "--o")


@dataclass(frozen=True)
class Correction:
    """An output folder and the person's selection to write it again with.

    Parameters
    ----------
    job_dir:
        The output folder.
    record:
        Its ``run_record.json``.
    working_dir:
        The folder the run was started from: relative paths in the record resolve here.
    model, person:
        The model's selection (scores, threshold and decisions of the run) and the
        person's (same scores, the person's decisions).
    choice:
        The person's selection file, as read.
    argv:
        This command line, for the new run record.
    """

    job_dir: Path
    record: dict[str, Any]
    working_dir: Path
    model: Selection
    person: Selection
    choice: PersonChoice
    argv: list[str] | None

    @property
    def command(self) -> str:
        """The command that made the folder (``score``, ``cryodiscovery-relion``...)."""
        return str(self.record.get("command", ""))

    @property
    def config(self) -> dict[str, Any]:
        """The ``config`` of the run record."""
        config = self.record.get("config")
        return config if isinstance(config, dict) else {}

    def path(self, key: str) -> Path:
        """The path the record holds under ``config[key]``, resolved against the run's
        working folder; an :class:`InputError` when the record has none."""
        value = self.config.get(key)
        if not value:
            raise InputError(self.record_path, f"no {key} in its config")
        path = Path(str(value))
        return path if path.is_absolute() else self.working_dir / path

    @property
    def record_path(self) -> Path:
        """The run record file."""
        return self.job_dir / "run_record.json"

    def record_config(self) -> dict[str, Any]:
        """The config for the new run record: the run's own, with who selected and the
        working folder."""
        return {
            **self.config,
            **selection_record(self.choice, self.model, self.person),
            "working_dir": str(self.working_dir),
        }

    def check_classes(self, class_numbers: npt.ArrayLike, source: str | Path) -> None:
        """Refuse inputs whose classes are not the ones the run scored (changed since)."""
        numbers = np.sort(np.asarray(class_numbers, dtype=np.int64))
        if not np.array_equal(numbers, np.sort(self.model.class_numbers)):
            raise InputError(
                source,
                f"has {numbers.size} classes, but {self.job_dir / 'scores.csv'} lists "
                f"{self.model.class_numbers.size} other ones: the input changed since "
                "the run",
            )

    def in_input_order(self, class_numbers: npt.ArrayLike) -> Selection:
        """The person's selection in the order of the re-read input's classes."""
        numbers = np.asarray(class_numbers, dtype=np.int64)
        order = np.argsort(self.person.class_numbers)
        at = order[np.searchsorted(self.person.class_numbers[order], numbers)]
        return replace(
            self.person,
            class_numbers=numbers,
            scores=self.person.scores[at],
            selected=self.person.selected[at],
            reasons=tuple(self.person.reasons[i] for i in at),
        )

    def explain_scorer(self) -> ClassScorer | None:
        """The run's model when the run drew saliency overlays and the same model (by
        SHA-256) can be loaded, so the overlays are drawn again; else ``None``."""
        if not self.config.get("explain"):
            return None
        from cryodiscovery.core.model.checkpoint import load_scorer

        model_path = self.config.get("model_path")
        try:
            scorer = load_scorer(
                None if model_path is None else self.path("model_path")
            )
        except (InputError, OSError) as err:
            log.warning("saliency overlays not drawn again: %s", err)
            return None
        if scorer.sha256 != self.record.get("model_sha256"):
            log.warning(
                "saliency overlays not drawn again: the model changed since the run"
            )
            return None
        return scorer


#: Writes a folder's outputs again from ``Correction.person``; returns a summary.
Rewriter = Callable[[Correction], str]


def read_run_record(job_dir: Path) -> dict[str, Any]:
    """``job_dir/run_record.json``; an :class:`InputError` when ``job_dir`` is not the
    output folder of a cryodiscovery run."""
    if not job_dir.is_dir():
        raise InputError(job_dir, "no such folder")
    path = job_dir / "run_record.json"
    if not path.is_file():
        raise InputError(
            job_dir,
            "no run_record.json: not the output folder of a cryodiscovery run (score, "
            "cryodiscovery-relion, cryodiscovery-cryosparc --out)",
        )
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(path, f"not a readable run record ({err})") from err
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise InputError(path, "not a run record (no config)")
    return record


def recorded_selection(job_dir: Path, record: dict[str, Any]) -> Selection:
    """The model's selection as the run wrote it: scores and decisions from
    ``scores.csv``, threshold and model from the record (after an earlier correction,
    the model's decisions are the ones that record kept)."""
    path = job_dir / "scores.csv"
    config = record["config"]
    numbers, scores, selected, reasons = _read_scores(path)
    earlier = config.get("model_selection")
    if config.get("selection_source") == "person" and isinstance(earlier, dict):
        kept = {int(c) for c in earlier.get("kept", [])}
        why = earlier.get("reasons", {})
        selected = np.isin(numbers, sorted(kept))
        reasons = [str(why.get(str(int(c)), "")) for c in numbers]
    source = str(config.get("threshold_source", "model"))
    return Selection(
        class_numbers=numbers,
        scores=scores,
        selected=selected,
        threshold=float(config.get("threshold", math.nan)),
        threshold_source=source.removesuffix(", overridden by a person"),
        mode=str(config.get("mode", "")),
        model_sha256=str(record.get("model_sha256") or ""),
        model_name=str(config.get("model_name", "")),
        reasons=tuple(reasons),
    )


def _read_scores(
    path: Path,
) -> tuple[
    npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.bool_], list[str]
]:
    if not path.is_file():
        raise InputError(path, "file not found (the run's scores)")
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        numbers = np.asarray([int(r["class_number"]) for r in rows], dtype=np.int64)
        scores = np.asarray([float(r["score"]) for r in rows], dtype=np.float64)
        selected = np.asarray([r["selected"] == "1" for r in rows], dtype=bool)
        reasons = [r.get("reason") or "" for r in rows]
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise InputError(path, f"not a scores table of a run ({err})") from err
    if numbers.size == 0:
        raise InputError(path, "no classes")
    return numbers, scores, selected, reasons


def working_dir_of(job_dir: Path, record: dict[str, Any]) -> Path:
    """The folder the run was started from: as recorded, else the folder its relative
    output path (``--out``/``--o`` in the recorded command line) was relative to, else
    the current folder."""
    recorded = record["config"].get("working_dir")
    if recorded:
        return Path(str(recorded))
    argv = [str(a) for a in record.get("argv") or []]
    here = job_dir.resolve()
    for flag in _OUT_FLAGS:
        if flag in argv[:-1]:
            given = Path(argv[argv.index(flag) + 1])
            parts = given.parts
            if not given.is_absolute() and here.parts[-len(parts) :] == parts:
                return here.parents[len(parts) - 1]
    return Path.cwd()


def prepare_correction(
    job_dir: Path, selection_file: Path, argv: list[str] | None
) -> Correction:
    """Read the folder's record and scores and the person's file; check them against
    each other. Reads only: nothing is written.

    Raises
    ------
    InputError
        Not an output folder of a selection run, a malformed selection file, or one of
        another job (unknown classes, another class count, other scores), or a selection
        that keeps no class.
    """
    record = read_run_record(job_dir)
    model = recorded_selection(job_dir, record)
    choice = read_person_choice(
        selection_file, n_classes=int(model.class_numbers.max())
    )
    person = apply_choice(model, choice)
    require_person_selection(person, choice)
    return Correction(
        job_dir=job_dir,
        record=record,
        working_dir=working_dir_of(job_dir, record),
        model=model,
        person=person,
        choice=choice,
        argv=argv,
    )
