"""Simulate a 2D classification job with known good and junk classes (ground truth).

`relion` writes a RELION project: Class2D/job001/run_it025_{data,model,optimiser}.star
and run_it025_classes.mrcs, the true selection as Select/job002 (backup_selection.star),
default_pipeline.star. `cryosparc` writes cryoSPARC-style job folders: J1 (2D
classification .cs files and class averages) and J2 (Select 2D). Both add truth.csv
(class_number,label,kind,snr,n_particles), montage.png and run_record.json. The same
seed gives byte-identical images.

Example:
  cryodiscovery simulate relion --out sim --n-classes 100 --seed 3
  cryodiscovery simulate cryosparc --out sim_cs --n-classes 50 --box 128 --angpix 2.1 \\
      --snr-range 0.02 0.1 --junk-fraction 0.5 --junk-kinds ice carbon_edge featureless_blob
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cryodiscovery.core.errors import InputError
from cryodiscovery.core.outputs import staged_outputs
from cryodiscovery.core.synthetic.export import (
    write_cryosparc_project,
    write_record,
    write_relion_project,
)
from cryodiscovery.core.synthetic.generator import (
    JUNK_KINDS,
    SHAPE_FAMILIES,
    SimulationConfig,
    simulate_run,
)

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``cryodiscovery simulate``."""
    parser.add_argument("format", choices=("relion", "cryosparc"), help="what to write")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="output folder (new or empty)",
    )
    parser.add_argument(
        "--n-classes", type=int, default=50, metavar="N", help="classes (default 50)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="S", help="random seed (default 0)"
    )
    parser.add_argument(
        "--box",
        type=int,
        metavar="B",
        help="box size in pixels (default: random 64-256)",
    )
    parser.add_argument(
        "--angpix",
        type=float,
        metavar="A",
        help="pixel size in Å (default: random 1-5)",
    )
    parser.add_argument(
        "--snr-range",
        type=float,
        nargs=2,
        default=(0.01, 0.5),
        metavar=("LO", "HI"),
        help="particle SNR range (default 0.01 0.5)",
    )
    parser.add_argument(
        "--junk-fraction",
        type=float,
        default=0.45,
        metavar="F",
        help="fraction of junk classes (default 0.45)",
    )
    parser.add_argument(
        "--junk-kinds",
        nargs="+",
        choices=JUNK_KINDS,
        default=list(JUNK_KINDS),
        metavar="KIND",
        help=f"junk kinds to use (default all: {' '.join(JUNK_KINDS)})",
    )
    parser.add_argument(
        "--shapes",
        nargs="+",
        choices=SHAPE_FAMILIES,
        default=list(SHAPE_FAMILIES),
        metavar="SHAPE",
        help=f"molecule families to draw from (default all: {' '.join(SHAPE_FAMILIES)})",
    )
    parser.add_argument(
        "--version",
        choices=("3.1", "4.0", "5.0"),
        default="5.0",
        help="RELION version of the files (default 5.0)",
    )
    parser.add_argument(
        "--no-nuisance",
        action="store_true",
        help="write every class the RELION way (no random sign, normalisation or outside-mask changes)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="allow a non-empty output folder"
    )


def config_from_args(args: argparse.Namespace) -> SimulationConfig:
    """The :class:`SimulationConfig` the options ask for; bad values are an ``InputError``."""
    if getattr(args, "seed", 0) < 0:
        raise InputError(None, f"--seed must be 0 or more, got {args.seed}")
    try:
        return SimulationConfig(
            n_classes=args.n_classes,
            box_sizes=(args.box,) if args.box else SimulationConfig.box_sizes,
            pixel_size_range=(args.angpix, args.angpix)
            if args.angpix
            else SimulationConfig.pixel_size_range,
            snr_range=(float(args.snr_range[0]), float(args.snr_range[1])),
            junk_fraction=args.junk_fraction,
            junk_kinds=tuple(dict.fromkeys(args.junk_kinds)),
            shapes=tuple(dict.fromkeys(args.shapes)),
            nuisance=not args.no_nuisance,
            metadata_style=args.format,
        )
    except ValueError as exc:
        raise InputError(None, f"bad simulation option: {exc}") from exc


def main(args: argparse.Namespace) -> int:
    """Run ``cryodiscovery simulate``; returns the exit code."""
    config = config_from_args(args)
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise InputError(out, "is not empty; choose a new folder or pass --overwrite")
    run = simulate_run(config, args.seed)
    with staged_outputs(out) as stage:
        if args.format == "relion":
            paths = write_relion_project(
                run, stage, version=args.version, seed=args.seed
            )
        else:
            paths = write_cryosparc_project(run, stage, seed=args.seed)
        write_record(stage, run, config, getattr(args, "_argv", None), args.seed)
        # Named now, while the staged files exist; the writers may return absolute
        # paths where ``out`` (and so ``stage``) is relative.
        base = stage.resolve()
        names = {k: p.resolve().relative_to(base) for k, p in paths.items()}
    c = run.classes
    log.info(
        "simulated %d classes (%d good, %d junk), %s molecule, box %d, %.2f Å/px, SNR %.3f",
        len(c),
        int((c.labels == 1).sum()),
        int((c.labels == 0).sum()),
        run.shape,
        c.box_size,
        c.pixel_size or 0.0,
        run.snr,
    )
    for name, rel in names.items():
        log.info("%s: %s", name, out / rel)
    return 0
