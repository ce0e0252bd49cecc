"""One output folder of an earlier selection run, to be written again from a person's
selection: its run record, the model's selection as that run wrote it (``scores.csv``),
the person's, and where the run's relative input paths resolve.

Each tool that writes a selection has a rewriter (:data:`Rewriter`): ``score`` here
(:func:`rewrite_score`), the RELION and cryoSPARC jobs in their adapters, registered under the ``cryodiscovery.
apply_selection`` entry-point group by the run record's ``command`` (so core imports no
adapter code). A rewriter re-reads the inputs and writes the job's outputs again with
the same writers the tool uses.
"""

from __future__ import annotations

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
from cryodiscovery.core.io.readers import read_class_averages
from cryodiscovery.core.person_selection import (
    PersonChoice,
    choose,
    positions,
    read_person_choice,
)
from cryodiscovery.core.report.scores_table import read_scores_csv
from cryodiscovery.core.report.selection_files import (
    format_summary,
    write_selection_outputs,
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
        person's (same scores, the person's decisions; the model's selection when the
        file decides no class otherwise).
    choice:
        The person's selection file, as read.
    who:
        What the run record says about who selected
        (:func:`~cryodiscovery.core.person_selection.selection_record`).
    argv:
        This command line, for the new run record.
    """

    job_dir: Path
    record: dict[str, Any]
    working_dir: Path
    model: Selection
    person: Selection
    choice: PersonChoice
    who: dict[str, Any]
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
        path = recorded_path(self.record, key, self.job_dir)
        if path is None:
            raise InputError(self.record_path, f"no {key} in its config")
        return path

    @property
    def record_path(self) -> Path:
        """The run record file."""
        return self.job_dir / "run_record.json"

    def record_config(self) -> dict[str, Any]:
        """The config for the new run record: the run's own, with who selected, the
        working folder and the command line that scored (``scored_argv``; the record's
        ``argv`` becomes this one). The RELION job's ``selection_file`` (a ``--selection``
        given when it scored) is dropped: ``person_selection`` names the file now."""
        config = {k: v for k, v in self.config.items() if k != "selection_file"}
        return {
            **config,
            **self.who,
            "working_dir": str(self.working_dir),
            "scored_argv": self.config.get("scored_argv", self.record.get("argv")),
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
        at = positions(self.person.class_numbers, numbers)
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
    if job_dir.is_file():
        raise InputError(
            job_dir,
            "is a file; give the job's output folder (the selection file goes after "
            "--selection)",
        )
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


def recorded_selection(
    job_dir: Path, record: dict[str, Any]
) -> tuple[Selection, npt.NDArray[np.float64]]:
    """The model's selection as the run made it, and the ``(n,)`` particle counts per
    class (NaN where unknown), from ``scores.csv``; the model's decisions and
    full-precision scores from the record's ``model_selection`` where it has them
    (``scores.csv`` rounds scores to 6 decimals and, after a correction, holds the
    person's decisions), threshold and model from the record."""
    config = record["config"]
    numbers, scores, selected, counts, reasons = read_scores_csv(job_dir / "scores.csv")
    earlier = config.get("model_selection")
    if isinstance(earlier, dict):
        kept = {int(c) for c in earlier.get("kept", [])}
        why = earlier.get("reasons", {})
        exact = earlier.get("scores") or {}
        selected = np.isin(numbers, sorted(kept))
        reasons = [str(why.get(str(int(c)), "")) for c in numbers]
        scores = np.asarray(
            [
                float(exact.get(str(int(c)), s))
                for c, s in zip(numbers, scores, strict=True)
            ]
        )
    source = str(config.get("threshold_source", "model"))
    model = Selection(
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
    return model, counts


def working_dir_candidates(job_dir: Path, record: dict[str, Any]) -> list[Path]:
    """Where the run's relative paths may be relative to, most likely first: the
    recorded working folder, then where the job folder is now less the relative output
    path the scoring command line gave (``--out``/``--o``, also ``--out=X``; a RELION
    project moved or copied elsewhere), then the current folder."""
    config = record.get("config") or {}
    found: list[Path] = []
    recorded = config.get("working_dir")
    if recorded:
        found.append(Path(str(recorded)))
    argv = [str(a) for a in config.get("scored_argv") or record.get("argv") or []]
    here = job_dir.resolve()
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if flag not in _OUT_FLAGS or (not eq and i + 1 >= len(argv)):
            continue
        given = Path(value if eq else argv[i + 1])
        parts = given.parts
        if parts and not given.is_absolute() and here.parts[-len(parts) :] == parts:
            found.append(here.parents[len(parts) - 1])
    found.append(Path.cwd())
    return list(dict.fromkeys(found))


def working_dir_of(job_dir: Path, record: dict[str, Any]) -> Path:
    """The folder the run was started from (:func:`working_dir_candidates`' first)."""
    return working_dir_candidates(job_dir, record)[0]


def recorded_path(record: Any, key: str, job_dir: Path) -> Path | None:
    """The path a run record holds under ``config[key]``; a relative one resolved
    against the first of :func:`working_dir_candidates` where it exists, so a project
    copied or moved as a whole reads its own inputs when the original is gone or the
    record predates the copy (else against the recorded working folder, so that the
    error names the path the run used); ``None`` without one."""
    config = record.get("config") if isinstance(record, dict) else None
    if not isinstance(config, dict) or not config.get(key):
        return None
    path = Path(str(config[key]))
    if path.is_absolute():
        return path
    bases = working_dir_candidates(job_dir, record)
    # A copy of the whole project beside the original: its own inputs come first.
    moved = [b for b in bases[1:] if b != Path.cwd()] + bases[:1] + [Path.cwd()]
    for base in dict.fromkeys(moved):
        if (base / path).exists():
            return base / path
    return bases[0] / path


def prepare_correction(
    job_dir: Path,
    selection_file: Path,
    argv: list[str] | None,
    record: dict[str, Any] | None = None,
) -> Correction:
    """Read the folder's record (unless given, as :func:`read_run_record` read it) and
    scores and the person's file; check them against each other. Reads only: nothing is
    written.

    Raises
    ------
    InputError
        Not an output folder of a selection run, a malformed selection file, or one of
        another job (unknown classes, another class count, other scores), or a selection
        that keeps no class or only classes without particles.
    """
    if record is None:
        record = read_run_record(job_dir)
    model, counts = recorded_selection(job_dir, record)
    choice = read_person_choice(
        selection_file, n_classes=int(model.class_numbers.max())
    )
    person, who = choose(model, choice, counts)
    return Correction(
        job_dir=job_dir,
        record=record,
        working_dir=working_dir_of(job_dir, record),
        model=model,
        person=person,
        choice=choice,
        who=who,
        argv=argv,
    )


def rewrite_score(correction: Correction) -> str:
    """Write a ``score`` output folder again from the person's selection."""
    config = correction.config
    source = correction.path("input_path")
    classes = read_class_averages(source, config.get("angpix"))
    correction.check_classes(classes.class_numbers, source)
    scorer = correction.explain_scorer()
    outputs = write_selection_outputs(
        correction.job_dir,
        classes,
        correction.in_input_order(classes.class_numbers),
        argv=correction.argv,
        command=correction.command,  # "score", or "demo" for the demo's folder
        explain=scorer is not None,
        scorer=scorer,
        config=correction.record_config(),
        explain_method=str(config.get("explain") or "gradient-x-input"),
    )
    return format_summary(classes, correction.person, outputs)
