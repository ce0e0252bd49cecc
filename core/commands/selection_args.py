"""The selection options shared by the commands that score (``score``, ``evaluate``):
one set of flags, one conversion to :class:`~cryodiscovery.core.selection.SelectionOptions`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryodiscovery.core.selection import SelectionOptions


def add_selection_args(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--threshold`` | ``--target-fnr``, ``--[no-]adaptive``,
    ``--min-particles``."""
    parser.add_argument(
        "--model",
        type=Path,
        metavar="PATH",
        help="model file (default: the shipped model)",
    )
    limit = parser.add_mutually_exclusive_group()
    limit.add_argument(
        "--threshold", type=float, metavar="T", help="keep classes scoring >= T (0-1)"
    )
    limit.add_argument(
        "--target-fnr",
        type=float,
        metavar="F",
        help="threshold for this false-negative rate on the model's validation data",
    )
    parser.add_argument(
        "--adaptive",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="adapt the threshold to each job's score distribution (default); "
        "--no-adaptive: the threshold stored with the model",
    )
    parser.add_argument(
        "--min-particles",
        type=int,
        default=0,
        metavar="N",
        help="also reject classes with fewer than N particles",
    )


def selection_options(args: argparse.Namespace) -> SelectionOptions:
    """The :class:`SelectionOptions` that :func:`add_selection_args` flags ask for."""
    return SelectionOptions(
        model_path=args.model,
        threshold=args.threshold,
        target_fnr=args.target_fnr,
        adaptive=args.adaptive,
        min_particles=args.min_particles,
    )


def selection_config(args: argparse.Namespace) -> dict[str, object]:
    """The same options as plain values, for the run record."""
    return {
        "model_path": None if args.model is None else str(args.model),
        "threshold": args.threshold,
        "target_fnr": args.target_fnr,
        "adaptive": args.adaptive,
        "min_particles": args.min_particles,
    }
