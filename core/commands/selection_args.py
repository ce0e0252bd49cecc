"""The selection flags of every command that selects classes (``score``, ``evaluate`` and
``cryodiscovery-cryosparc``): one set of flags, one conversion to
:class:`~cryodiscovery.core.selection.SelectionOptions`, which refuses bad values and
combinations (the RELION job converts its own ``--label value`` shapes to the same
options, so every tool refuses them with the same line).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Protocol

from cryodiscovery.core.model.device import DEVICES
from cryodiscovery.core.selection import SelectionOptions


class _ArgumentAdder(Protocol):
    """An argument parser or one of its argument groups."""

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action: ...


def add_selection_args(parser: _ArgumentAdder) -> None:
    """``--model``, ``--threshold``, ``--target-fnr``, ``--[no-]adaptive``,
    ``--min-particles``, ``--device``; to ``parser`` or one of its argument groups."""
    parser.add_argument(
        "--model",
        type=Path,
        metavar="PATH",
        help="model file (default: the shipped model)",
    )
    parser.add_argument(
        "--threshold", type=float, metavar="T", help="keep classes scoring >= T (0-1)"
    )
    parser.add_argument(
        "--target-fnr",
        type=float,
        metavar="F",
        help="instead of --threshold: the threshold for this false-negative rate on "
        "the model's validation data",
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
        help="also reject classes with fewer than N particles (classes with none are "
        "always rejected)",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="where the networks run (default auto: CUDA when available)",
    )


def selection_options(args: argparse.Namespace) -> SelectionOptions:
    """The :class:`SelectionOptions` that :func:`add_selection_args` flags ask for;
    :class:`~cryodiscovery.core.errors.InputError` (one line) for a bad value or
    combination."""
    return SelectionOptions(
        model_path=args.model,
        threshold=args.threshold,
        target_fnr=args.target_fnr,
        adaptive=args.adaptive,
        min_particles=args.min_particles,
        device=args.device,
    )


def selection_config(args: argparse.Namespace) -> dict[str, object]:
    """The same options as plain values, for the run record."""
    return selection_options(args).record()
