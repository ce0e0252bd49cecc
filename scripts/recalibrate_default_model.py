"""Apply the calibration targets of ``train_default_model.py`` to the shipped weights,
without training again.

The networks, their stored validation scores and the validation jobs stay exactly as
``make model`` made them; both thresholds are calibrated again by the one calibration path
(:meth:`ClassScorer.recalibrated`) for ``TARGET_FNR`` and ``IMAGE_ONLY_TARGET_FNR``, and the
image-only test metrics of the card are recomputed on the regenerated test runs (same
seeds, same structures). The result is what ``make model`` now writes, to the bit for the
weights and to the threshold for the calibration.

    .venv/bin/python scripts/recalibrate_default_model.py [--model PATH] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from cryodiscovery.core.cli import configure_logging
from cryodiscovery.core.model.checkpoint import (
    DEFAULT_MODEL_PATH,
    load_scorer,
    save_scorer,
    write_model_card,
)
from cryodiscovery.core.model.ensemble import member_scores
from cryodiscovery.core.report.metrics import classification_report
from cryodiscovery.core.synthetic.library import find_structures

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_default_model as recipe


def main(argv: list[str] | None = None) -> int:
    """Recalibrate the model file in place and rewrite its card."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--structures", type=Path, default=recipe.DEFAULT_STRUCTURES)
    args = parser.parse_args(argv)
    configure_logging()
    torch.set_num_threads(args.threads)
    old = load_scorer(args.model)
    if old.validation_labels is None or old.validation_scores is None:
        print(f"{args.model}: no stored validation scores to recalibrate on")
        return 2
    new = old.recalibrated(
        old.validation_labels,
        old.validation_scores,
        old.validation_scores_image_only,
        old.validation_groups,
        recipe.TARGET_FNR,
        recipe.IMAGE_ONLY_TARGET_FNR,
    )
    runs = new.info["training_data"]["runs"]["test"]
    names = set(new.info["training_data"].get("structures", []))
    structures = tuple(
        str(p) for p in find_structures(args.structures) if p.name in names
    )
    if len(structures) != len(names):
        print(
            f"the model was trained with {len(names)} structures; found {len(structures)}"
        )
        return 2
    workers = max(1, min(args.threads, os.cpu_count() or 1))
    test = recipe.generate(range(*runs), workers, "test", structures)
    y = test.labels.numpy().astype(int)
    image_only = member_scores(new.members, new.rule, test, new.preprocess, meta=False)
    report = classification_report(y, image_only, new.image_only_threshold, test.kinds)
    new.info["test_metrics_image_only"] = report.to_dict()
    digest = save_scorer(new, args.model)
    write_model_card(new, args.model.with_suffix(".json"))
    print(
        f"{args.model}: sha256 {digest[:12]}; threshold {old.threshold:.3f} -> "
        f"{new.threshold:.3f}, image-only {old.image_only_threshold:.3f} -> "
        f"{new.image_only_threshold:.3f}; generated test image-only FNR "
        f"{report.fnr:.3f}, FPR {report.fpr:.3f}, AUC {report.auc:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
