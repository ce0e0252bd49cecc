"""Plain-text summaries of a selection for the cryoSPARC event log and the terminal."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.cryosparc_job.partition import Partition

if TYPE_CHECKING:
    from cryodiscovery.core.selection import Selection


def summary_line(classes: ClassAverages, selection: Selection, parts: Partition) -> str:
    """One line: classes and particles kept, threshold and model."""
    kept = int(np.count_nonzero(selection.selected))
    counts = parts.counts()
    n_particles = counts["particles_selected"] + counts["particles_excluded"]
    share = 100.0 * counts["particles_selected"] / n_particles if n_particles else 0.0
    return (
        f"Kept {kept} of {len(classes)} classes and {counts['particles_selected']:,} of "
        f"{n_particles:,} particles ({share:.1f}%); threshold {selection.threshold:.3f} "
        f"({selection.threshold_source}), model {selection.model_name} "
        f"[{selection.model_sha256[:12]}], {selection.mode}"
    )


def _number(value: float, fmt: str) -> str:
    return "" if math.isnan(value) else format(value, fmt)


def score_table(classes: ClassAverages, selection: Selection) -> str:
    """A fixed-width table, one class per line in class-number order."""
    counts = classes.field("particle_count")
    resolution = classes.field("resolution_A")
    lines = [
        f"{'class':>5}  {'score':>6}  {'kept':>4}  {'particles':>9}  {'res (Å)':>7}  reason"
    ]
    for i in np.argsort(classes.class_numbers, kind="stable"):
        lines.append(
            f"{int(classes.class_numbers[i]):>5}  {float(selection.scores[i]):>6.3f}  "
            f"{'yes' if selection.selected[i] else 'no':>4}  "
            f"{_number(counts[i], ',.0f'):>9}  {_number(resolution[i], '.1f'):>7}  "
            f"{selection.reasons[i]}"
        )
    return "\n".join(lines)
