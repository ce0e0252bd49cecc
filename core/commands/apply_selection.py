"""Write a job's outputs again from a person's selection instead of the model's.

JOB_OUTPUT_DIR is the output folder of an earlier run of `cryodiscovery score`, of the
RELION External job (cryodiscovery-relion) or of the cryoSPARC job offline
(cryodiscovery-cryosparc --out). Its run_record.json names the inputs, which are read
again; the outputs are written again with the person's decisions (scores stay the
model's), all or nothing, and the run record says a person selected (then training
harvests the folder as a person's labels). --selection takes the review page's
selection.csv (class_number,selected,score,source; selected 1 or 0) or RELION's
backup_selection.star. A selection of another job, one that keeps no class, or inputs
that are gone end with one line (exit status 2) and change nothing.

Examples:
  cryodiscovery apply-selection External/job010 --selection ~/Downloads/selection.csv
  cryodiscovery apply-selection cd_J42 --selection backup_selection.star
"""

from __future__ import annotations

import argparse
import logging
from importlib.metadata import entry_points
from pathlib import Path

from cryodiscovery.core.correction import Correction, Rewriter, prepare_correction
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.io.readers import read_class_averages
from cryodiscovery.core.report.selection_files import (
    format_summary,
    write_selection_outputs,
)

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
        command="score",
        explain=scorer is not None,
        scorer=scorer,
        config=correction.record_config(),
        explain_method=str(config.get("explain") or "gradient-x-input"),
    )
    return format_summary(classes, correction.person, outputs)


def rewriter_for(command: str, record_path: Path) -> Rewriter:
    """The rewriter of the tool that wrote the folder; an :class:`InputError` for a
    command that writes no selection."""
    if command == "score":
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
    correction = prepare_correction(
        args.job_dir, args.selection, getattr(args, "_argv", None)
    )
    rewrite = rewriter_for(correction.command, correction.record_path)
    summary = rewrite(correction)
    flipped = correction.record_config()["person_selection"]["n_flipped"]
    print(
        f"{summary}\n  selection  {args.selection} (a person's; {flipped} class(es) "
        "differ from the model)"
    )
    return 0
