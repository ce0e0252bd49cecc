"""Score a generated RELION Class2D job and compare with the truth.

Simulates a Class2D job with known good and junk classes, scores it with the shipped
model (or --model) and prints how the selection compares with the truth.

Writes DIR/relion_project (Class2D/job001 and the true selection as Select/job002, a
RELION project you can open or score again) and DIR/score (scores.csv, gallery.png with
each class's true kind under its tile, score_histogram.png, review.html to open in a
browser, run_record.json).

Example:
  cryodiscovery demo --out demo
  cryodiscovery demo --out demo --classes 100 --seed 7 --explain
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.io.readers import read_class_averages
from cryodiscovery.core.model.checkpoint import load_scorer
from cryodiscovery.core.outputs import check_output_folder
from cryodiscovery.core.report.evaluation import decision_report
from cryodiscovery.core.report.selection_files import (
    format_summary,
    write_selection_outputs,
)
from cryodiscovery.core.selection import SelectionOptions, select_classes
from cryodiscovery.core.synthetic.generator import (
    SimulationConfig,
    simulate_class_averages,
)
from cryodiscovery.core.synthetic.relion_jobs import write_relion_class2d
from cryodiscovery.core.synthetic.relion_pipeline import (
    write_default_pipeline,
    write_relion_selection,
)

log = logging.getLogger(__name__)

CLASS2D_JOB, SELECT_JOB = "Class2D/job001", "Select/job002"


def add_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``cryodiscovery demo``."""
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="output folder"
    )
    parser.add_argument(
        "--classes",
        type=int,
        default=50,
        metavar="N",
        help="number of classes (default 50)",
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="simulation seed (default 1)"
    )
    parser.add_argument(
        "--model",
        type=Path,
        metavar="PATH",
        help="model file (default: the shipped model)",
    )
    parser.add_argument(
        "--explain", action="store_true", help="write saliency overlays"
    )


def simulate_project(
    out: Path, n_classes: int, seed: int
) -> tuple[Path, ClassAverages]:
    """Simulate one Class2D job into ``out/relion_project``; returns its data.star and the
    simulated classes (with the true labels and kinds)."""
    truth = simulate_class_averages(SimulationConfig(n_classes=n_classes), seed)
    project = out / "relion_project"
    job = write_relion_class2d(truth, project, CLASS2D_JOB, seed=seed)
    write_relion_selection(job, truth.labels, SELECT_JOB)
    write_default_pipeline(
        project,
        job.version,
        [(CLASS2D_JOB, "relion.class2d"), (SELECT_JOB, "relion.select.interactive")],
    )
    return job.data_star, truth


def main(args: argparse.Namespace) -> int:
    """Run ``cryodiscovery demo``; returns the exit code."""
    if not 2 <= args.classes <= 1000:
        raise InputError(None, f"--classes must be in 2-1000, got {args.classes}")
    check_output_folder(args.out, "demo")  # never into another program's job folder
    scorer = load_scorer(args.model)  # first: a missing model fails before any work
    data_star, truth = simulate_project(args.out, args.classes, args.seed)
    classes = read_class_averages(data_star)
    # Class numbers are 1..n in simulation order; the truth's kinds go under each tile.
    order = np.asarray(classes.class_numbers) - 1
    classes = replace(classes, kinds=tuple(truth.kinds[i] for i in order))
    labels = truth.labels[order]
    selection = select_classes(classes, SelectionOptions(model_path=args.model), scorer)
    outputs = write_selection_outputs(
        args.out / "score",
        classes,
        selection,
        argv=getattr(args, "_argv", None),
        command="demo",
        explain=args.explain,
        scorer=scorer,
        # what `score` records too, so `apply-selection DIR/score` can read it again
        config={
            "classes": args.classes,
            "seed": args.seed,
            "input_path": str(data_star),
            "angpix": None,
            "working_dir": str(Path.cwd()),
        },
    )
    report = decision_report(
        labels, selection.scores, selection.selected, classes.kinds, selection.threshold
    )
    print(
        f"Simulated {len(classes)} classes ({report.n_good} good) in {data_star.parent}"
    )
    print(format_summary(classes, selection, outputs))
    lost, kept_junk = report.confusion[1][0], report.confusion[0][1]
    print(
        f"  vs truth   accuracy {report.accuracy:.3f}, balanced accuracy "
        f"{report.balanced_accuracy:.3f}, false-negative rate {report.fnr:.3f} "
        f"({lost} good {'class' if lost == 1 else 'classes'} rejected, {kept_junk} junk "
        f"{'class' if kept_junk == 1 else 'classes'} kept), ROC AUC {report.auc:.3f}"
    )
    print(
        f"Look at {outputs['gallery']} or open {outputs['review']} in a browser; "
        "score it again with:"
    )
    print(f"  {command_path()} score {data_star} --out {args.out / 'rescore'}")
    return 0


def command_path() -> str:
    """How to run ``cryodiscovery`` from this shell: the bare name when ``PATH`` finds
    this installation's entry point (an activated venv), else that entry point's path
    (``.venv/bin/cryodiscovery``), so the printed command works as it is."""
    exe = Path(sys.executable).with_name(
        "cryodiscovery"
    )  # not resolved: the venv's bin
    found = shutil.which("cryodiscovery")
    if not exe.is_file() or (found and Path(found).resolve() == exe.resolve()):
        return "cryodiscovery"
    try:
        return str(exe.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(exe)
