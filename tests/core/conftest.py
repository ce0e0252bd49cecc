"""Shared fixtures for core tests: small class-average sets and the real RELION 3.1 files."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cryodiscovery.core.classes import ClassAverages
from support.models import save_tiny_model

#: Real RELION 3.1 tutorial STAR files beside the project (absent on a fresh clone).
SHARED_RELION31 = (
    Path(__file__).resolve().parents[3] / "shared/data/relion31_tutorial_metadata"
)


def make_classes(
    n: int = 12, box: int = 32, seed: int = 0, pixel_size: float | None = 2.5
) -> ClassAverages:
    """``n`` random class averages with every metadata field set and 0/1 labels."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(5, 60, n)
    return ClassAverages.create(
        rng.normal(size=(n, box, box)).astype(np.float32),
        pixel_size=pixel_size,
        metadata={
            "particle_count": counts,
            "class_distribution": rng.dirichlet(np.ones(n)),
            "resolution_A": rng.uniform(6.0, 30.0, n),
            "accuracy_rotation_deg": rng.uniform(1.0, 12.0, n),
            "accuracy_translation_A": rng.uniform(0.5, 4.0, n),
            "fourier_completeness": rng.uniform(0.7, 1.0, n),
            "eca": rng.uniform(1.0, 3.0, n),
            "mean_posterior": rng.uniform(0.4, 0.99, n),
        },
        labels=np.arange(n) % 2,
        kinds=["good" if i % 2 else "junk" for i in range(n)],
    )


@pytest.fixture
def class_factory() -> Callable[..., ClassAverages]:
    """``class_factory(n=12, box=32, seed=0, pixel_size=2.5)`` -> ClassAverages."""
    return make_classes


@pytest.fixture
def relion31_project(tmp_path: Path) -> Path:
    """A writable copy of the real RELION 3.1 tutorial files with stand-in class stacks.

    The shared files have no class images: job008 gets a 50-image and job013 a
    100-image stack of 64 px (the box the STAR files state), so the readers can run on
    the real STAR files.
    """
    if not SHARED_RELION31.is_dir():
        pytest.skip(f"real RELION files not available at {SHARED_RELION31}")
    from cryodiscovery.core.io.stack import write_stack

    project = tmp_path / "relion31"
    shutil.copytree(SHARED_RELION31, project)
    for path in project.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    rng = np.random.default_rng(1)
    for job, n in (("job008", 50), ("job013", 100)):
        write_stack(
            project / "Class2D" / job / "run_it025_classes.mrcs",
            rng.normal(size=(n, 64, 64)),
            3.54,
        )
    return project


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained three-network model file (32 px), one per test module."""
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt")
