"""Score 2D class averages: keep the good classes, reject the junk.

INPUT is a RELION Class2D run_itNNN_data.star or run_itNNN_model.star (or the job
folder), a cryoSPARC 2D classification job folder or one of its .cs files, or a bare
.mrcs stack of class averages (class numbers are then stack positions, 1-based).

Writes into DIR: scores.csv (class_number, score, selected, particle_count,
resolution_A, reason), gallery.png (kept and rejected classes, best first),
score_histogram.png, review.html (open it in a browser: move the threshold, flip
classes, export selection.csv for `cryodiscovery apply-selection`) and run_record.json;
with --explain also explain/class_NNN.png
(what drove each decision) and explain/overview.png. When no class is kept, it writes
nothing and ends with one line naming the best score (exit status 2).

Examples:
  cryodiscovery score Class2D/job013/run_it025_data.star --out cd_job013
  cryodiscovery score J42 --out cd_J42 --target-fnr 0.01 --explain
  cryodiscovery score classes.mrcs --out cd_stack --threshold 0.3
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cryodiscovery.core.commands.selection_args import (
    add_selection_args,
    selection_config,
    selection_options,
)
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.io.readers import read_class_averages
from cryodiscovery.core.model.checkpoint import load_scorer
from cryodiscovery.core.outputs import check_output_folder
from cryodiscovery.core.person_selection import selection_record
from cryodiscovery.core.report.explain import METHODS
from cryodiscovery.core.report.selection_files import (
    format_summary,
    write_selection_outputs,
)
from cryodiscovery.core.selection import require_selection, select_classes

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``cryodiscovery score``."""
    parser.add_argument(
        "input", type=Path, metavar="INPUT", help="class averages to score"
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="output folder"
    )
    parser.add_argument(
        "--angpix",
        type=float,
        metavar="A",
        help="optional pixel size in Å (default: from the input; for a bare stack, "
        "its header). Scores do not depend on it for a bare stack (the model frames "
        "each particle by its own extent); it is only recorded. For RELION and "
        "cryoSPARC inputs it overrides the recorded value",
    )
    add_selection_args(parser)
    parser.add_argument(
        "--explain", action="store_true", help="write per-class saliency overlays"
    )
    parser.add_argument(
        "--explain-method",
        choices=METHODS,
        default=METHODS[0],
        help=f"saliency method (default {METHODS[0]})",
    )


def main(args: argparse.Namespace) -> int:
    """Run ``cryodiscovery score``; returns the exit code."""
    options = selection_options(args)
    check_output_folder(args.out, "score")  # refused before minutes of scoring
    source = Path(args.input)
    if (
        Path(args.out).resolve()
        == (source if source.is_dir() else source.parent).resolve()
    ):
        raise InputError(
            args.out, "is the input's own folder; give a new folder for the outputs"
        )
    classes = read_class_averages(args.input, args.angpix)
    scorer = load_scorer(args.model)
    selection = select_classes(classes, options, scorer)
    require_selection(selection)
    outputs = write_selection_outputs(
        args.out,
        classes,
        selection,
        argv=getattr(args, "_argv", None),
        command="score",
        explain=args.explain,
        scorer=scorer,
        config={
            "input_path": str(args.input),
            "angpix": args.angpix,
            **selection_config(args),
            **selection_record(model=selection),
            "working_dir": str(Path.cwd()),
        },
        explain_method=args.explain_method,
    )
    print(format_summary(classes, selection, outputs))
    return 0
