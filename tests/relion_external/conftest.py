"""Small RELION project folders for the External job tests, written with the package's own
RELION writers: one Class2D job (and a default_pipeline.star) per project."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.synthetic.relion_jobs import write_relion_class2d
from cryodiscovery.core.synthetic.relion_pipeline import write_default_pipeline

CLASS2D = "Class2D/job001"
DATA_STAR = f"{CLASS2D}/run_it025_data.star"

ProjectFactory = Callable[..., Path]


def make_classes(n: int = 10, box: int = 32, seed: int = 0) -> ClassAverages:
    """``n`` class averages: even classes a bright centred disc, odd ones noise; every
    class has particles except class 2 (empty, as RELION leaves some)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:box, :box] - box / 2
    disc = (np.hypot(yy, xx) < box / 5).astype(np.float32)
    images = rng.normal(0, 0.3, (n, box, box)).astype(np.float32)
    images[::2] += disc
    counts = rng.integers(20, 80, n)
    counts[1] = 0
    return ClassAverages.create(
        images,
        pixel_size=3.5,
        metadata={
            "particle_count": counts,
            "class_distribution": counts / counts.sum(),
            "resolution_A": np.where(np.arange(n) % 2 == 0, 9.0, 25.0),
            "accuracy_rotation_deg": np.where(np.arange(n) % 2 == 0, 3.0, 999.0),
            "accuracy_translation_A": np.where(np.arange(n) % 2 == 0, 1.5, 999.0),
        },
    )


@pytest.fixture
def relion_project(tmp_path: Path) -> ProjectFactory:
    """Factory: ``relion_project(version="5.0", n=10, pipeline=True) -> project folder``
    holding ``Class2D/job001/run_it025_*`` and (optionally) ``default_pipeline.star``."""

    def build(version: str = "5.0", n: int = 10, pipeline: bool = True) -> Path:
        project = tmp_path / f"project{version}"
        write_relion_class2d(make_classes(n), project, CLASS2D, version=version)
        if pipeline:
            write_default_pipeline(project, version, [(CLASS2D, "relion.class2d")])
        return project

    return build
