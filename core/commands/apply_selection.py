"""Write a job's outputs again from a person's selection instead of the model's.

JOB_OUTPUT_DIR is the output folder of an earlier run of `cryodiscovery score`, of the
RELION External job (cryodiscovery-relion) or of the cryoSPARC job offline
(cryodiscovery-cryosparc --out). Its run_record.json names the inputs, which are read
again; the outputs are written again with the person's decisions (scores stay the
model's), all or nothing. The run record says how many classes a person decided
(rows marked person in selection.csv, or classes that differ from the model's
decision): when at least one, training harvests the folder as a person's labels; a file
that only repeats the model's decisions (the review page exported untouched) is written
with a warning but is no label. --selection takes the review page's selection.csv
(class_number,selected,score,source; selected 1 or 0) or RELION's
backup_selection.star. A selection of another job, one that keeps no class (or only
classes without particles), inputs that are gone, or a RELION job with a leftover
RELION_JOB_ABORT_NOW end with one line (exit status 2) and change nothing; a failure
while writing (a full disk) ends with one line (exit status 1) and leaves the folder
as it was.

Examples:
  cryodiscovery apply-selection External/job010 --selection ~/Downloads/selection.csv
  cryodiscovery apply-selection cd_J42 --selection backup_selection.star
"""

from __future__ import annotations

import argparse
import logging
from importlib.metadata import entry_points
from pathlib import Path

from cryodiscovery.core.correction import (
    Rewriter,
    prepare_correction,
    read_run_record,
    rewrite_score,
)
from cryodiscovery.core.errors import InputError

log = logging.getLogger(__name__)

#: Entry-point group of the adapters' rewriters, named by their run-record command.
GROUP = "cryodiscovery.apply_selection"


def add_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``cryodiscovery apply-selection``."""
    parser.add_argument(
        "job_dir",
        type=Path,
        metavar="JOB_OUTPUT_DIR",
        help="output folder of score, cryodiscovery-relion or cryodiscovery-cryosparc",
    )
    parser.add_argument(
        "--selection",
        type=Path,
        required=True,
        metavar="FILE",
        help="the person's selection: selection.csv or backup_selection.star",
    )


def rewriter_for(command: str, record_path: Path) -> Rewriter:
    """The rewriter of the tool that wrote the folder; an :class:`InputError` for a
    command that writes no selection."""
    if command in ("score", "demo"):  # the demo's score folder is a score output
        return rewrite_score
    for ep in entry_points(group=GROUP):
        if ep.name == command:
            loaded: Rewriter = ep.load()
            return loaded
    raise InputError(
        record_path,
        f"written by {command or 'an unknown command'}, which writes no selection to "
        "correct (give the output folder of score, cryodiscovery-relion or "
        "cryodiscovery-cryosparc)",
    )


def main(args: argparse.Namespace) -> int:
    """Run ``cryodiscovery apply-selection``; returns the exit code."""
    # which tool wrote the folder, first: a folder of another command is named as such
    record = read_run_record(args.job_dir)
    rewrite = rewriter_for(
        str(record.get("command") or ""), args.job_dir / "run_record.json"
    )
    correction = prepare_correction(
        args.job_dir, args.selection, getattr(args, "_argv", None), record
    )
    summary = rewrite(correction)
    done = correction.who["person_selection"]
    whose = "a person's" if done["n_person"] else "the model's decisions, no label"
    print(
        f"{summary}\n  selection  {args.selection} ({whose}; {done['n_flipped']} "
        "class(es) differ from the model)"
    )
    return 0
