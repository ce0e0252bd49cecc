"""Helpers for tests of a person's selection (``apply-selection``, ``--selection``): a
generated RELION project's External job and ``score`` runs, the review page's
``selection.csv``, and snapshots of folders that must stay untouched."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pandas as pd
from cryodiscovery.core import cli

DATA_STAR = "Class2D/job001/run_it025_data.star"
JOB = "External/job010"
KEEP_ALL = ["--threshold", "0"]


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: SHA-256 and mtime."""
    return {
        str(p.relative_to(folder)): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            p.stat().st_mtime_ns,
        )
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def scores(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "scores.csv", keep_default_na=False)


def write_selection(path: Path, table: pd.DataFrame, kept: set[int]) -> Path:
    """A review page's selection.csv: the classes and scores of ``table`` (the model's
    decisions), ``kept`` selected; as the page marks them, classes that differ from
    ``table``'s decision have source ``person``, the others ``model``."""
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["class_number", "selected", "score", "source"])
        for row in table.itertuples():
            keep = int(row.class_number) in kept
            source = "person" if keep != bool(row.selected) else "model"
            out.writerow([row.class_number, int(keep), f"{row.score:.4f}", source])
    return path


def kept_of(table: pd.DataFrame) -> set[int]:
    return {int(c) for c in table.loc[table["selected"] == 1, "class_number"]}


def flipped(table: pd.DataFrame) -> set[int]:
    """Two kept classes rejected, and every class with particles that was rejected
    kept: the person's selection."""
    kept = sorted(kept_of(table))
    with_particles = table["particle_count"].astype(str).str.strip() != "0"
    rejected = set(table.loc[with_particles, "class_number"]) - set(kept)
    return (set(kept[2:]) | {int(c) for c in rejected}) or {kept[0]}


def apply(job: Path, selection: Path) -> int:
    return cli.main(["apply-selection", str(job), "--selection", str(selection)])
