"""Model files for tests: an untrained three-network scorer at 32 px (fast to run)."""

from __future__ import annotations

from pathlib import Path

import torch
from cryodiscovery.core.model.checkpoint import save_scorer
from cryodiscovery.core.model.nets import ClassNet, NetConfig
from cryodiscovery.core.model.preprocess import PreprocessConfig
from cryodiscovery.core.model.scorer import ClassScorer


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
