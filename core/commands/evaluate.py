"""Measure a model on labelled class averages, with ROC and score plots.

Prints accuracy, balanced accuracy, precision, recall, false-negative rate, ROC AUC, the
confusion matrix and, when the kind of each class is known, the fraction decided
correctly per kind.

Each SRC is searched for labelled 2D classifications: RELION projects (a Class2D job
and the Select job that selected from it, labels from backup_selection.star), cryoSPARC
job folders with Select 2D outputs, and folders written by `cryodiscovery simulate` or
`cryodiscovery demo`. Thresholds are applied per job as `cryodiscovery score` would.

With --out DIR also writes metrics.json, scores.csv, roc.png, score_distribution.png and
run_record.json.

Examples:
  cryodiscovery evaluate --data /data/projects/beta_gal --out eval_betagal
  cryodiscovery evaluate --data demo/relion_project --model my_model.pt --target-fnr 0.05
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.commands.selection_args import (
    add_selection_args,
    selection_config,
    selection_options,
)
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.io.history import find_labelled_sets
from cryodiscovery.core.model.checkpoint import load_scorer
from cryodiscovery.core.report.evaluation import (
    evaluate_sets,
    format_evaluation,
    write_evaluation_outputs,
)

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``cryodiscovery evaluate``."""
    parser.add_argument(
        "--data",
        type=Path,
        nargs="+",
        required=True,
        metavar="SRC",
        help="folders to search for labelled 2D classifications",
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="write metrics and plots here"
    )
    add_selection_args(parser)


def _labelled_sets(sources: list[Path]) -> list[ClassAverages]:
    sets: list[ClassAverages] = []
    for src in sources:
        if not src.exists():
            raise InputError(src, "not found")
        found = [s for s in find_labelled_sets(src) if (s.labels >= 0).any()]
        if not found:
            raise InputError(
                src,
                "no labelled 2D classification found (expected a RELION Select job, "
                "cryoSPARC Select 2D outputs or a generated folder)",
            )
        log.info("%s: %d labelled set(s)", src, len(found))
        sets += found
    return sets


def main(args: argparse.Namespace) -> int:
    """Run ``cryodiscovery evaluate``; returns the exit code."""
    options = selection_options(args)
    sets = _labelled_sets(list(args.data))
    scorer = load_scorer(args.model)
    evaluation = evaluate_sets(sets, scorer, options)
    print(format_evaluation(evaluation))
    if args.out is not None:
        config = {
            "data": [str(p) for p in args.data],
            **selection_config(args),
        }
        paths = write_evaluation_outputs(
            args.out, evaluation, argv=getattr(args, "_argv", None), config=config
        )
        print("  outputs    " + ", ".join(str(p) for p in paths.values()))
    return 0
