"""Options of the External job, converted once from RELION's ``--label value`` arguments.

RELION builds the command line as ``<exe> --o External/jobNNN/ [--in_parts FILE]
[--<label> <value> ...] --j N [additional arguments]`` and runs it through a shell, so an
empty GUI value simply disappears: ``--explain --j 4``. Every option therefore takes an
optional value, and values are checked here, inside the job, so that a bad value ends the
job with ``RELION_JOB_EXIT_FAILURE`` and a clear message instead of an argparse exit.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cryodiscovery.core.errors import InputError
from cryodiscovery.core.selection import SelectionOptions
from cryodiscovery.relion_external.nodes import normalise_version

log = logging.getLogger(__name__)

_TRUE = {"", "yes", "y", "true", "1", "on"}
_FALSE = {"no", "n", "false", "0", "off"}
#: Values of --threshold / --model that mean "what the model ships with".
_DEFAULT_WORDS = {"", "auto", "default", "model", "none"}


@dataclass(frozen=True)
class ExternalJobConfig:
    """Everything one run of the External job needs.

    Parameters
    ----------
    out_dir:
        The job folder, as RELION gave it (``External/job010/``), relative to the project
        folder (the working folder).
    control_dir:
        Where the exit markers go and the abort file is polled: ``--pipeline_control``
        when given, else ``out_dir``.
    in_parts:
        The Class2D ``run_itNNN_data.star``.
    threads:
        ``--j``: CPU threads for scoring.
    selection:
        Threshold, target FNR, adaptive on/off, model and minimum particle count: the
        options every tool shares (:class:`~cryodiscovery.core.selection.SelectionOptions`,
        which refuses bad values and combinations).
    explain:
        Also write saliency overlays (``explain/``).
    selection_file:
        A person's selection (``selection.csv`` or ``backup_selection.star``) to use
        instead of the model's decisions; classes are still scored.
    relion_version:
        ``"3.1"``, ``"4.0"`` or ``"5.0"`` to force the node-label dialect; None: detect.
    ignored:
        Arguments not understood (kept for the log and the run record).
    """

    out_dir: Path
    control_dir: Path
    in_parts: Path
    threads: int = 1
    selection: SelectionOptions = field(default_factory=SelectionOptions)
    explain: bool = False
    selection_file: Path | None = None
    relion_version: str | None = None
    ignored: tuple[str, ...] = field(default=())

    def record(self) -> dict[str, Any]:
        """The options as JSON-friendly values, for ``run_record.json``."""
        values = {
            f.name: getattr(self, f.name) for f in fields(self) if f.name != "selection"
        }
        return {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in values.items()},
            **self.selection.record(),
        }


#: Options RELION passes as ``--label value`` from the GUI's Params tab; the value may be
#: empty (and then vanishes from the command line), so each takes an optional value.
_LABELLED: tuple[tuple[str, str, str], ...] = (
    (
        "threshold",
        "S",
        "keep classes scoring >= S (0-1); 'auto'/empty: adapted to the job",
    ),
    ("min_score", "S", "the same as --threshold (the name RELION's Select job uses)"),
    (
        "target_fnr",
        "F",
        "instead of a threshold: share of good classes the model may reject",
    ),
    (
        "adaptive",
        "YES/NO",
        "adapt the threshold to the job's scores (default Yes); No: the model's own",
    ),
    ("model", "PT", "a checkpoint to use instead of the shipped model"),
    (
        "min_particles",
        "N",
        "reject classes with fewer than N particles (default 0; empty classes always)",
    ),
    (
        "explain",
        "YES/NO",
        "also write saliency overlays to explain/ (a flag, or Yes/No)",
    ),
    (
        "relion_version",
        "V",
        "3.1, 4.0 or 5.0: node labels (default: default_pipeline.star)",
    ),
    ("device", "D", "where the networks run: auto (CUDA when available), cpu, cuda"),
    (
        "selection",
        "FILE",
        "a person's selection (selection.csv or backup_selection.star) instead of the "
        "model's decisions; scores are still computed",
    ),
)


def add_args(parser: argparse.ArgumentParser) -> None:
    """RELION's shapes: ``--o``, ``--in_parts``, ``--j`` and ``--<label> [value]``."""
    parser.add_argument("--o", metavar="DIR", help="job folder, e.g. External/job010/")
    parser.add_argument(
        "--in_parts", metavar="STAR", help="Class2D run_itNNN_data.star"
    )
    parser.add_argument("--j", metavar="N", default="1", help="CPU threads (default 1)")
    for name, metavar, text in _LABELLED:
        parser.add_argument(
            f"--{name}", nargs="?", const="", metavar=metavar, help=text
        )
    parser.add_argument(
        "--pipeline_control",
        metavar="DIR",
        help="where RELION expects the exit markers (default: --o)",
    )


def _number(name: str, text: str) -> float:
    """A number as RELION passes it; its range is checked by the selection options."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InputError(None, f"--{name} {text!r}: expected a number")
    return value


def _flag(name: str, text: str | None, default: bool = False) -> bool:
    if text is None:
        return default
    word = text.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise InputError(None, f"--{name} {text!r}: expected Yes or No")


def _integer(name: str, text: str, low: int | None) -> int:
    """A whole number; ``low`` checked here when the selection options do not."""
    try:
        value = int(text)
    except ValueError:
        raise InputError(None, f"--{name} {text!r}: expected a whole number") from None
    if low is not None and value < low:
        raise InputError(None, f"--{name} {text!r}: expected a whole number >= {low}")
    return value


def _threshold(ns: argparse.Namespace) -> float | None:
    given = [
        (n, v) for n in ("threshold", "min_score") if (v := getattr(ns, n)) is not None
    ]
    values = [(n, v) for n, v in given if v.strip().lower() not in _DEFAULT_WORDS]
    if len(values) > 1:
        raise InputError(None, "give --threshold or --min_score, not both")
    return _number(*values[0]) if values else None


def config_from_args(ns: argparse.Namespace, unknown: list[str]) -> ExternalJobConfig:
    """Check the parsed arguments and build the config; :class:`InputError` on a bad one."""
    if not ns.o:
        raise InputError(
            None, "--o is missing: give the job folder, e.g. --o External/job010/"
        )
    if not ns.in_parts:
        raise InputError(
            None,
            "--in_parts is missing: choose the run_itNNN_data.star of a Class2D job as "
            "'Input particles' on the External job's Input tab",
        )
    fnr_text = (ns.target_fnr or "").strip()
    model_text = (ns.model or "").strip()
    min_parts = (ns.min_particles or "").strip() or "0"
    version_text = (ns.relion_version or "").strip()
    selection_text = (ns.selection or "").strip()
    selection = SelectionOptions(  # checks ranges and combinations, as for every tool
        model_path=None if model_text.lower() in _DEFAULT_WORDS else Path(model_text),
        threshold=_threshold(ns),
        target_fnr=_number("target_fnr", fnr_text) if fnr_text else None,
        adaptive=_flag("adaptive", ns.adaptive, default=True),
        min_particles=_integer("min_particles", min_parts, None),
        device=(ns.device or "").strip().lower() or "auto",
    )
    return ExternalJobConfig(
        out_dir=Path(ns.o),
        control_dir=Path(ns.pipeline_control or ns.o),
        in_parts=Path(ns.in_parts),
        threads=_integer("j", (ns.j or "").strip() or "1", 1),
        selection=selection,
        explain=_flag("explain", ns.explain),
        selection_file=Path(selection_text) if selection_text else None,
        relion_version=normalise_version(version_text)
        if version_text and version_text.lower() != "auto"
        else None,
        ignored=tuple(unknown),
    )
