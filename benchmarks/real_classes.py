"""The labelled real class averages beside the project (``../shared/data/real_classes``),
read the way ``cryodiscovery score`` reads a stack, with the metadata of ``labels.csv``
added the way the RELION and cryoSPARC readers would give it.

Each set is a folder with ``classes.mrcs`` and ``labels.csv`` (``index`` = 1-based stack
position, ``class_number``, ``label`` 1 good / 0 bad / -1 unsure, and metadata). These
classes are for measuring and choosing only, never for fitting weights; they are not in
the repository, so every script that reads them must skip cleanly without them.
"""

from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
from cryodiscovery.core.classes import METADATA_FIELDS, ClassAverages
from cryodiscovery.core.io.readers import read_class_averages

ROOT = Path(__file__).resolve().parents[1]
#: Where the shared data live, relative to the repository root.
DEFAULT_REAL_DIR = ROOT.parent / "shared" / "data" / "real_classes"

#: labels.csv column -> :data:`METADATA_FIELDS` name, as the readers fill it: cryoSPARC's
#: per-class ESS is the mean ``class_ess`` of its particles, i.e. the ECA.
CSV_METADATA = {
    "n_particles": "particle_count",
    "ess": "eca",
    **{name: name for name in METADATA_FIELDS},
}


@dataclass(frozen=True, eq=False)
class RealSet:
    """One labelled set of real class averages.

    Attributes
    ----------
    name:
        The folder name.
    classes:
        As a RELION/cryoSPARC reader would give them: images, header pixel size, class
        numbers, labels (-1 unsure, 0 bad, 1 good) and the metadata of ``labels.csv``.
    bare:
        The same classes as ``cryodiscovery score classes.mrcs`` reads them: images and
        header pixel size only (image-only scoring), with the same class numbers and
        labels.
    metadata_columns:
        The ``labels.csv`` columns that became metadata.
    """

    name: str
    classes: ClassAverages
    bare: ClassAverages
    metadata_columns: tuple[str, ...]

    @property
    def labels(self) -> npt.NDArray[np.int8]:
        """``(n,)`` labels, -1 unsure."""
        return self.classes.labels


def add_real_dir_arg(parser: argparse.ArgumentParser) -> None:
    """``--real-dir DIR``, defaulting to ``../shared/data/real_classes`` from the repo."""
    parser.add_argument(
        "--real-dir",
        type=Path,
        default=DEFAULT_REAL_DIR,
        metavar="DIR",
        help="folder of labelled real sets (default: ../shared/data/real_classes "
        "relative to the repository root)",
    )


def real_set_folders(real_dir: Path) -> list[Path]:
    """Folders under ``real_dir`` holding both ``classes.mrcs`` and ``labels.csv``,
    sorted by name; empty when ``real_dir`` does not exist."""
    if not real_dir.is_dir():
        return []
    return sorted(
        p
        for p in real_dir.iterdir()
        if (p / "classes.mrcs").is_file() and (p / "labels.csv").is_file()
    )


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def read_real_set(folder: Path) -> RealSet:
    """Read one set; ``ValueError`` when ``labels.csv`` does not match the stack."""
    stack = read_class_averages(folder / "classes.mrcs")
    with (folder / "labels.csv").open(newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: int(r["index"]))
    index = [int(r["index"]) for r in rows]
    if index != list(range(1, len(stack) + 1)):
        raise ValueError(
            f"{folder}/labels.csv indexes {index[:3]}... do not cover the "
            f"{len(stack)} images of classes.mrcs"
        )
    labels = np.array([int(r["label"]) for r in rows], dtype=np.int8)
    numbers = np.array([int(r["class_number"]) for r in rows], dtype=np.int64)
    columns = [c for c in (rows[0] if rows else {}) if c in CSV_METADATA]
    metadata = {
        CSV_METADATA[c]: np.array([_number(r[c]) for r in rows]) for c in columns
    }
    # The cryoSPARC reader's class distribution is count / total particles.
    if "particle_count" in metadata and "class_distribution" not in metadata:
        counts = metadata["particle_count"]
        metadata["class_distribution"] = counts / np.nansum(counts)
    bare = replace(stack, class_numbers=numbers, labels=labels)
    classes = ClassAverages.create(
        stack.images,
        pixel_size=stack.pixel_size,
        class_numbers=numbers,
        metadata=metadata,
        labels=labels,
        provenance=replace(stack.provenance, job=folder.name),
    )
    return RealSet(folder.name, classes, bare, tuple(columns))


def read_real_sets(real_dir: Path) -> list[RealSet]:
    """Every set under ``real_dir`` (see :func:`real_set_folders`)."""
    return [read_real_set(folder) for folder in real_set_folders(real_dir)]


def missing_message(real_dir: Path) -> str:
    """What a script prints when there are no real sets to measure."""
    return (
        f"no labelled real class averages under {real_dir} (folders with classes.mrcs "
        "and labels.csv): nothing to measure; pass --real-dir"
    )
