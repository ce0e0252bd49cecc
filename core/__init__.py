"""cryodiscovery.core: the shared model library (data model, readers and writers,
synthetic data, preprocessing, networks, training, scoring). It imports no RELION,
cryoSPARC or Flower adapter code.

Sub-packages: ``io`` (file formats, one reader for any of them, labelled-set harvest),
``model`` (preprocessing, nets, training, ensemble, scorer, model files), ``report``
(selection files, galleries, saliency, evaluation, metrics), ``synthetic`` (the
simulator and the job-folder writers it needs) and ``commands`` (``cryodiscovery``
subcommands). This module re-exports, lazily, the names the adapters use, so that
``import cryodiscovery.core`` stays light (no torch or matplotlib until a name is used).
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("cryodiscovery")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

if TYPE_CHECKING:  # the same names, typed; at run time __getattr__ imports them
    from cryodiscovery.core.classes import ClassAverages, Label, Provenance
    from cryodiscovery.core.cli import configure_logging
    from cryodiscovery.core.errors import InputError
    from cryodiscovery.core.io.cryosparc_class2d import (
        class_averages_from_datasets,
        find_class2d_files,
        read_cryosparc_class2d,
    )
    from cryodiscovery.core.io.history import find_labelled_sets
    from cryodiscovery.core.io.readers import read_class_averages
    from cryodiscovery.core.io.relion_class2d import (
        RelionClass2DJob,
        read_relion_class2d,
    )
    from cryodiscovery.core.io.star_tables import loop_table, read_star, write_star
    from cryodiscovery.core.model.calibration import threshold_for_fnr
    from cryodiscovery.core.model.checkpoint import load_scorer, save_scorer
    from cryodiscovery.core.model.ensemble import BoostConfig, train_members
    from cryodiscovery.core.model.nets import ClassNet, NetConfig
    from cryodiscovery.core.model.preprocess import PreprocessConfig
    from cryodiscovery.core.model.scorer import ClassScorer
    from cryodiscovery.core.model.training import (
        LR_SCHEDULES,
        TrainConfig,
        TrainingSet,
        build_training_set,
    )
    from cryodiscovery.core.outputs import atomic_path, sha256_file, staged_outputs
    from cryodiscovery.core.report.metrics import classification_report
    from cryodiscovery.core.report.selection_files import (
        render_gallery,
        write_selection_outputs,
    )
    from cryodiscovery.core.selection import Selection, SelectionOptions, select_classes
    from cryodiscovery.core.synthetic.generator import (
        SimulationConfig,
        simulate_class_averages,
    )
    from cryodiscovery.core.synthetic.relion_jobs import write_relion_class2d
    from cryodiscovery.core.synthetic.relion_pipeline import write_relion_selection

#: Each re-exported name, by its module under ``cryodiscovery.core``.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "classes": ("ClassAverages", "Label", "Provenance"),
    "cli": ("configure_logging",),
    "errors": ("InputError",),
    "io.cryosparc_class2d": (
        "class_averages_from_datasets",
        "find_class2d_files",
        "read_cryosparc_class2d",
    ),
    "io.history": ("find_labelled_sets",),
    "io.readers": ("read_class_averages",),
    "io.relion_class2d": ("RelionClass2DJob", "read_relion_class2d"),
    "io.star_tables": ("loop_table", "read_star", "write_star"),
    "model.calibration": ("threshold_for_fnr",),
    "model.checkpoint": ("load_scorer", "save_scorer"),
    "model.ensemble": ("BoostConfig", "train_members"),
    "model.nets": ("ClassNet", "NetConfig"),
    "model.preprocess": ("PreprocessConfig",),
    "model.scorer": ("ClassScorer",),
    "model.training": (
        "LR_SCHEDULES",
        "TrainConfig",
        "TrainingSet",
        "build_training_set",
    ),
    "outputs": ("atomic_path", "sha256_file", "staged_outputs"),
    "report.metrics": ("classification_report",),
    "report.selection_files": ("render_gallery", "write_selection_outputs"),
    "selection": ("Selection", "SelectionOptions", "select_classes"),
    "synthetic.generator": ("SimulationConfig", "simulate_class_averages"),
    "synthetic.relion_jobs": ("write_relion_class2d",),
    "synthetic.relion_pipeline": ("write_relion_selection",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

# A literal list, so that linters see the re-exports (tests/packaging checks it matches).
__all__ = [
    "LR_SCHEDULES",
    "BoostConfig",
    "ClassAverages",
    "ClassNet",
    "ClassScorer",
    "InputError",
    "Label",
    "NetConfig",
    "PreprocessConfig",
    "Provenance",
    "RelionClass2DJob",
    "Selection",
    "SelectionOptions",
    "SimulationConfig",
    "TrainConfig",
    "TrainingSet",
    "__version__",
    "atomic_path",
    "build_training_set",
    "class_averages_from_datasets",
    "classification_report",
    "configure_logging",
    "find_class2d_files",
    "find_labelled_sets",
    "load_scorer",
    "loop_table",
    "read_class_averages",
    "read_cryosparc_class2d",
    "read_relion_class2d",
    "read_star",
    "render_gallery",
    "save_scorer",
    "select_classes",
    "sha256_file",
    "simulate_class_averages",
    "staged_outputs",
    "threshold_for_fnr",
    "train_members",
    "write_relion_class2d",
    "write_relion_selection",
    "write_selection_outputs",
    "write_star",
]


def __getattr__(name: str) -> Any:
    """Import a re-exported name's module on first use (PEP 562)."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
