"""Train or fine-tune a class scorer on labelled 2D classifications.

Each SRC is searched for labelled sets: RELION projects (a Class2D job and the Select job
that selected from it; labels from backup_selection.star), cryoSPARC job folders with
Select 2D outputs, and generated folders (`cryodiscovery simulate`). The classes are split
(stratified, seeded) into training, validation (early stopping, threshold calibration)
and test (ensemble decision, reported metrics) parts. The three boosted networks are
trained one after the other; the ensemble is kept only if it beats each single network
on the test part. A model card (JSON) is written beside the model file.

Example:
    cryodiscovery train --data ProjectA/ ProjectB/ --out my_model.pt --init default
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.model.checkpoint import (
    load_scorer,
    save_scorer,
    write_model_card,
)
from cryodiscovery.core.model.device import DEVICES, resolve_device
from cryodiscovery.core.model.ensemble import BoostConfig, fit_scorer
from cryodiscovery.core.model.nets import NetConfig
from cryodiscovery.core.model.preprocess import PreprocessConfig
from cryodiscovery.core.model.training import (
    TrainConfig,
    build_training_set,
    split_training_set,
)

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``cryodiscovery train``."""
    parser.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="SRC",
        help="folders holding labelled Class2D jobs",
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="CKPT",
        help="model file to write (.pt); a .json model card goes beside it",
    )
    parser.add_argument(
        "--init",
        metavar="CKPT",
        help="fine-tune from this model file ('default': the shipped model)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="maximum epochs per network (default 20, or 8 when fine-tuning)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--target-fnr",
        type=float,
        default=0.03,
        help="false-negative rate the stored threshold is set for",
    )
    parser.add_argument(
        "--image-only-target-fnr",
        type=float,
        default=None,
        metavar="F",
        help="the same for the image-only threshold (bare stacks; default: "
        "--target-fnr; the shipped model uses 0.15, see the README's Thresholds)",
    )
    parser.add_argument("--name", default=None, help="model name (default: file stem)")
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="where the networks train (default auto: CUDA when available)",
    )


def _load_sets(sources: list[str]) -> list[ClassAverages]:
    from cryodiscovery.core.io.history import find_labelled_sets

    sets: list[ClassAverages] = []
    for src in sources:
        path = Path(src)
        if not path.exists():
            raise InputError(path, "not found")
        found = find_labelled_sets(path)
        if not found:
            raise InputError(path, "no labelled 2D classification found here")
        log.info("%s: %d labelled sets", path, len(found))
        sets.extend(found)
    return sets


def main(args: argparse.Namespace) -> int:
    """Run ``cryodiscovery train``."""
    if args.epochs is not None and args.epochs < 1:
        raise InputError(None, f"--epochs must be at least 1, got {args.epochs}")
    for flag, value in (
        ("--target-fnr", args.target_fnr),
        ("--image-only-target-fnr", args.image_only_target_fnr),
    ):
        if value is not None and not 0.0 <= value < 1.0:
            raise InputError(None, f"{flag} must be in [0, 1), got {value}")
    device = resolve_device(args.device).type
    sets = _load_sets(args.data)
    net_config, pre = NetConfig(), PreprocessConfig()
    init = None
    cfg = TrainConfig(epochs=args.epochs or 20, seed=args.seed, device=device)
    if args.init:
        base = load_scorer(None if args.init == "default" else Path(args.init))
        net_config, pre = base.net_config, base.preprocess
        init = [m.state_dict() for m in base.members]
        cfg = TrainConfig(
            epochs=args.epochs or 8, seed=args.seed, lr=5e-4, device=device
        )
        log.info("fine-tuning from %s (%s)", base.name, base.sha256[:12])
    data = build_training_set(sets, pre)
    if int(data.labels.sum()) < 3 or int((1 - data.labels).sum()) < 3:
        raise InputError(
            None, "need at least 3 selected and 3 rejected classes to train"
        )
    train, val, test = split_training_set(data, (0.15, 0.15), args.seed)
    torch.manual_seed(args.seed)
    scorer = fit_scorer(
        train,
        val,
        test,
        net_config,
        pre,
        cfg,
        boost=BoostConfig(
            target_fnr=args.target_fnr,
            image_only_target_fnr=args.image_only_target_fnr,
        ),
        init=init,
        name=args.name or args.out.stem,
        info={
            "training_data": {
                "sources": [str(s) for s in args.data],
                "sets": len(sets),
            },
            "init": args.init,
        },
    )
    digest = save_scorer(scorer, args.out)
    card = write_model_card(scorer, args.out.with_suffix(".json"))
    m = scorer.info["test_metrics"]
    print(
        f"{args.out}: {scorer.rule} ({len(scorer.members)} network(s)), threshold "
        f"{scorer.threshold:.3f}; test AUC {m['auc']:.3f}, balanced accuracy "
        f"{m['balanced_accuracy']:.3f}, FNR {m['fnr']:.3f}; sha256 {digest[:12]}; card {card}"
    )
    return 0
