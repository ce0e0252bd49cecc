"""Model files and generated jobs for tests: an untrained three-network scorer at 32 px
(fast to run), and one simulated job written for both RELION and cryoSPARC."""

from __future__ import annotations

from pathlib import Path

import torch
from cryodiscovery.core.model.checkpoint import save_scorer
from cryodiscovery.core.model.nets import ClassNet, NetConfig
from cryodiscovery.core.model.preprocess import PreprocessConfig
from cryodiscovery.core.model.scorer import ClassScorer
from cryodiscovery.core.synthetic.export import (
    write_cryosparc_project,
    write_relion_project,
)
from cryodiscovery.core.synthetic.generator import SimulationConfig, simulate_run


def save_tiny_model(path: Path, name: str = "tiny-test-model") -> Path:
    """Write an untrained boosted3 scorer (random weights, seed 0) to ``path``."""
    torch.manual_seed(0)
    cfg = NetConfig(in_size=32, stem=8, widths=(8, 16, 16))
    scorer = ClassScorer(
        [ClassNet(cfg) for _ in range(3)],
        cfg,
        PreprocessConfig(size=32),
        "boosted3",
        0.5,
        name=name,
    )
    save_scorer(scorer, path)
    return path


def write_generated_projects(root: Path, n_classes: int, seed: int) -> dict[str, Path]:
    """One simulated job (64 px) as a RELION project ``root/relion`` and as cryoSPARC
    folders ``root/cryosparc``; returns both folders by name."""
    run = simulate_run(SimulationConfig(n_classes=n_classes, box_sizes=(64,)), seed)
    write_relion_project(run, root / "relion")
    write_cryosparc_project(run, root / "cryosparc")
    return {"relion": root / "relion", "cryosparc": root / "cryosparc"}
