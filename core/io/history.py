"""Harvesting of labelled past selections: every labelled Class2D result (a job plus the
Select job that selected from it) under a folder, skipping selections a program made
unless a person corrected them (``cryodiscovery apply-selection``, ``--selection``).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.correction import recorded_path
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.io.cryosparc_class2d import (
    read_cryosparc_class2d,
    read_cryosparc_selection,
    selection_source,
)
from cryodiscovery.core.io.readers import read_class_averages
from cryodiscovery.core.io.relion_class2d import (
    RUN_FILE_RE,
    read_relion_class2d,
    read_relion_selection,
)
from cryodiscovery.core.io.star_tables import read_star
from cryodiscovery.core.person_selection import person_corrected
from cryodiscovery.core.report.scores_table import read_scores_csv

log = logging.getLogger(__name__)

_SELECT_CS = re.compile(r"^(J\d+_)?templates_(selected|excluded)\.cs$")
_CLASS2D_STACK = re.compile(
    r"^(?P<job>.+)/(?P<root>[^/]+)_it(?P<it>\d{3,})_classes\.mrcs$"
)
_INPUT_RE = re.compile(r"--i\s+(\S+)")
_SKIP_DIRS = {".venv", "node_modules", "__pycache__", ".git"}
#: Run-record commands whose selections are labels: generated ground truth.
_GROUND_TRUTH_COMMANDS = frozenset({"simulate"})
_OWN_EXE_RE = re.compile(r"(?:^|[\s`/])cryodiscovery-relion\b")
_FN_EXE_RE = re.compile(r"^\s*fn_exe\s+(\S+)", re.MULTILINE)
_EXTERNAL_STAR_RE = re.compile(
    r"^\s*_rlnJobType(?:Label)?\s+(?:relion\.external|99)\s*$", re.MULTILINE
)
_SNOWFLAKE_RE = re.compile(r'"type":\s*"snowflake"')
_AUTO_JOB_RE = re.compile(r'"type":\s*"[^"]*auto')


def find_labelled_sets(root: Path) -> list[ClassAverages]:
    """Every labelled 2D classification under ``root``, each with its labels.

    Found: RELION ``Select/jobNNN`` folders with ``backup_selection.star`` (the Class2D
    source from the Select job's ``job.star``, ``note.txt``, ``class_averages.star`` or the
    project's ``default_pipeline.star``), RELION Class2D folders with a
    ``backup_selection.star`` beside the run files, cryoSPARC Select 2D folders
    (``templates_selected.cs``/``templates_excluded.cs``) with the 2D job they point at,
    and outputs of this project a person corrected (``cryodiscovery apply-selection``,
    ``--selection``): RELION External jobs (``backup_selection.star``), cryoSPARC
    offline outputs (``templates_*.cs``) and ``score`` outputs (``scores.csv``), each
    led back to its input by its run record (relative paths against the recorded
    working folder, so also when written outside the project). A Class2D job selected
    more than once is returned once, with the labels of the selection whose label file
    (``backup_selection.star``, ``templates_*.cs``, ``scores.csv``) was written last
    (ties: the higher job number). Automatic selections are not a person's labels and
    are skipped (see :func:`automatic_selection`; above all this project's own outputs,
    which would otherwise train the model on its own predictions, and corrections in
    which no class was decided by a person), as are sets that cannot be read (e.g. a
    missing stack, with a warning).
    """
    found: dict[tuple[str, int], tuple[tuple[int, int, str], ClassAverages]] = {}
    for folder, files in _walk(Path(root)):
        if "backup_selection.star" in files:
            read_set = _relion_set
        elif any(_SELECT_CS.match(f) for f in files):
            read_set = _cryosparc_set
        elif {"scores.csv", "run_record.json"} <= files:
            read_set = _score_set
        else:
            continue
        maker = automatic_selection(folder)
        if maker is not None:
            log.info("%s: selected by %s, not by a person: skipped", folder, maker)
            continue
        item = read_set(folder)
        if item is None:
            continue
        key, classes = item
        if key in found:
            log.info(
                "%s selected again in %s; the later selection is kept", key[0], folder
            )
        order = _job_order(folder, files)
        if key not in found or found[key][0] < order:
            found[key] = (order, classes)
    return [classes for _, (_, classes) in sorted(found.items())]


def _job_order(folder: Path, files: set[str]) -> tuple[int, int, str]:
    """Sort key of a labelled folder: when its label file was last written, then its
    job number (job014, J43; a corrected ``cd_job001`` ranks by time, not by digits
    that number another kind of job), then its path."""
    labels = [
        f
        for f in files
        if f in ("backup_selection.star", "scores.csv") or _SELECT_CS.match(f)
    ]
    times = []
    for name in labels:
        try:
            times.append((folder / name).stat().st_mtime_ns)
        except OSError:
            continue
    digits = re.findall(r"\d+", folder.name)
    return (max(times, default=-1), int(digits[-1]) if digits else -1, str(folder))


def _walk(root: Path) -> Iterator[tuple[Path, set[str]]]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(".")
        )
        yield Path(dirpath), set(filenames)


def _relion_set(folder: Path) -> tuple[tuple[str, int], ClassAverages] | None:
    selection = folder / "backup_selection.star"
    recorded = _recorded_input(folder, "in_parts")
    try:
        if any(RUN_FILE_RE.match(p.name) for p in folder.glob("*_it*_model.star")):
            job = read_relion_class2d(
                folder
            )  # generated: ground truth beside the run files
        elif recorded is not None:  # a corrected External job, wherever it is
            job = read_relion_class2d(recorded)
        else:
            project = folder.parent.parent
            source = _relion_select_source(folder, project)
            if source is None:
                log.debug("%s: no Class2D source found", folder)
                return None
            job = read_relion_class2d(project / source, project)
        labels = read_relion_selection(selection, n_classes=len(job.classes))
    except InputError as exc:
        log.warning("skipping %s: %s", folder, exc)
        return None
    key = (str(job.model_star.parent.resolve()), job.iteration)
    return key, job.classes.with_labels(labels)


def automatic_selection(folder: Path) -> str | None:
    """What made the selection in ``folder`` when a program did, else ``None``.

    A program's selection is a prediction, never a person's label. Recognised:

    - this project's outputs: a ``run_record.json`` (written by every scoring command:
      ``cryodiscovery-relion``, ``cryodiscovery-cryosparc --out``, ``score``...; not
      ``simulate``, whose Select jobs hold the generated ground truth, nor an output a
      person corrected, whose record says ``"selection_source": "person"``: both are
      labels, whatever else marks the folder);
    - RELION External jobs (a folder under ``External/``, or a ``job.star`` of type
      ``relion.external``/99 or whose ``fn_exe`` is ``cryodiscovery-*``, or a
      ``note.txt`` running ``cryodiscovery-relion``) and relion_class_ranker's
      auto-selecting Select jobs (``note.txt``, ``class2dauto`` in ``job.star``);
    - cryoSPARC External jobs (``job.json`` type ``snowflake``, as cryosparc-tools
      creates them) and automatic selection jobs (a type containing ``auto``).
    """
    record = folder / "run_record.json"
    if record.is_file():
        content = _record(record)
        if person_corrected(content):
            return None
        command = str(content.get("command", "")) if isinstance(content, dict) else ""
        if command not in _GROUND_TRUTH_COMMANDS:
            return f"cryodiscovery ({command or 'run_record.json'})"
    if folder.parent.name == "External":
        return "a RELION External job"
    note = _text(folder / "note.txt")
    if "relion_class_ranker" in note:
        return "relion_class_ranker"
    if _OWN_EXE_RE.search(note):
        return "cryodiscovery-relion (note.txt)"
    job_star = _text(folder / "job.star")
    if "class2dauto" in job_star:
        return "relion_class_ranker (job.star)"
    if _EXTERNAL_STAR_RE.search(job_star):
        return "a RELION External job (job.star)"
    exe = _FN_EXE_RE.search(job_star)
    if exe and Path(exe[1]).name.startswith("cryodiscovery"):
        return f"{Path(exe[1]).name} (job.star)"
    job_json = _text(folder / "job.json")
    if _SNOWFLAKE_RE.search(job_json):
        return "a cryoSPARC External job (job.json)"
    if _AUTO_JOB_RE.search(job_json):
        return "an automatic cryoSPARC job (job.json)"
    return None


def _record(path: Path) -> Any:
    """A run record as parsed; ``None`` if unreadable (still this project's)."""
    try:
        return json.loads(path.read_text(errors="replace"))
    except (OSError, ValueError):
        return None


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace") if path.is_file() else ""
    except OSError:
        return ""


def _relion_select_source(select_dir: Path, project: Path) -> str | None:
    """The Class2D run file (relative to the project) a Select job read, if any."""
    candidates: list[str] = []
    job_star = select_dir / "job.star"
    if job_star.is_file():
        try:
            values = read_star(job_star).get("joboptions_values")
        except InputError:
            values = None
        if isinstance(values, pd.DataFrame) and {
            "rlnJobOptionVariable",
            "rlnJobOptionValue",
        } <= set(values.columns):
            opts = dict(
                zip(
                    values["rlnJobOptionVariable"],
                    values["rlnJobOptionValue"],
                    strict=True,
                )
            )
            candidates.append(str(opts.get("fn_model", "")))
    note = select_dir / "note.txt"
    if note.is_file():
        candidates.extend(_INPUT_RE.findall(note.read_text(errors="replace")))
    candidates.extend(_class_averages_source(select_dir))
    candidates.extend(_pipeline_sources(project, select_dir))
    for cand in candidates:
        if RUN_FILE_RE.match(Path(cand).name) and (project / cand).is_file():
            return cand
    return None


def _class_averages_source(select_dir: Path) -> list[str]:
    path = select_dir / "class_averages.star"
    if not path.is_file():
        return []
    try:
        blocks = read_star(path)
    except InputError:
        return []
    out = []
    for table in blocks.values():
        if (
            isinstance(table, pd.DataFrame)
            and "rlnReferenceImage" in table.columns
            and len(table)
        ):
            ref = str(table["rlnReferenceImage"].iloc[0]).split("@", 1)[-1]
            match = _CLASS2D_STACK.match(ref)
            if match:
                out.append(f"{match['job']}/{match['root']}_it{match['it']}_model.star")
    return out


def _pipeline_sources(project: Path, select_dir: Path) -> list[str]:
    path = project / "default_pipeline.star"
    if not path.is_file():
        return []
    try:
        edges = read_star(path).get("pipeline_input_edges")
    except InputError:
        return []
    if (
        not isinstance(edges, pd.DataFrame)
        or "rlnPipeLineEdgeProcess" not in edges.columns
    ):
        return []
    process = f"{select_dir.parent.name}/{select_dir.name}/"
    rows = edges[edges["rlnPipeLineEdgeProcess"].astype(str) == process]
    return [str(v) for v in rows.get("rlnPipeLineEdgeFromNode", [])]


def _cryosparc_set(folder: Path) -> tuple[tuple[str, int], ClassAverages] | None:
    try:
        source = _recorded_input(folder, "job_dir") or selection_source(folder)
        job = read_cryosparc_class2d(source)
        index = job.classes.class_numbers - 1
        labels = read_cryosparc_selection(folder, n_classes=int(index.max()) + 1)
    except InputError as exc:
        log.warning("skipping %s: %s", folder, exc)
        return None
    iteration = int(
        re.findall(r"_(\d{3,})_class_averages", job.classes.provenance.sources[0])[0]
    )
    key = (str(job.job_dir.resolve()), iteration)
    return key, job.classes.with_labels(np.asarray(labels)[index])


def _recorded_input(folder: Path, key: str) -> Path | None:
    """The input path ``config[key]`` of a person-corrected output's run record (a
    relative one resolved against the run's working folder), else ``None``."""
    record = _record(folder / "run_record.json")
    if not person_corrected(record):
        return None
    return recorded_path(record, key, folder)


def _score_set(folder: Path) -> tuple[tuple[str, int], ClassAverages] | None:
    """A ``score`` output a person corrected: its input, labelled from ``scores.csv``
    (only these reach here; the model's own are skipped before)."""
    record = _record(folder / "run_record.json")
    source = _recorded_input(folder, "input_path")
    if source is None or record.get("command") != "score":
        return None
    config = record["config"]
    try:
        classes = read_class_averages(source, config.get("angpix"))
        numbers, _, selected, _, _ = read_scores_csv(folder / "scores.csv")
        kept = dict(zip(numbers.tolist(), selected.tolist(), strict=True))
        labels = [int(kept[int(c)]) for c in classes.class_numbers]
    except (InputError, OSError, KeyError) as exc:
        log.warning("skipping %s: %s", folder, exc)
        return None
    first = (
        Path(classes.provenance.sources[0]) if classes.provenance.sources else source
    )
    found = re.findall(r"_it(\d{3,})_|_(\d{3,})_class_averages", first.name)
    iteration = int(next((a or b for a, b in found), -1))
    return (str(first.resolve().parent), iteration), classes.with_labels(labels)
