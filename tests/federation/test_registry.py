"""The model registry's index keeps every metric, infinite ones included."""

from __future__ import annotations

import math
from pathlib import Path

from cryodiscovery.core.checkpoint import save_scorer
from cryodiscovery.federation.registry import ModelRegistry
from fed_fixtures import tiny_scorer


def test_non_finite_metrics_survive_the_index(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    metrics = {"auc": 0.9, "central_dp_lineage_epsilon": math.inf, "fnr": math.nan}
    registry.publish(
        lambda p: save_scorer(tiny_scorer(), p),
        server_round=1,
        metrics=metrics,
        contributions=(),
    )
    (version,) = ModelRegistry(tmp_path / "registry").versions()  # read back from disk
    assert version.metrics["auc"] == 0.9
    assert version.metrics["central_dp_lineage_epsilon"] == math.inf  # not "no value"
    assert math.isnan(version.metrics["fnr"])
