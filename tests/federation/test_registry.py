"""The model registry's index keeps every metric, infinite ones included; its public
index names no facility."""

from __future__ import annotations

import json
import math
from pathlib import Path

from cryodiscovery.core.model.checkpoint import save_scorer
from cryodiscovery.core.outputs import sha256_file
from cryodiscovery.federation.registry import (
    PUBLIC_INDEX_NAME,
    Contribution,
    ModelRegistry,
    parse_index,
)
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


def test_public_index_names_no_facility_and_site_results_stay_private(
    tmp_path: Path,
) -> None:
    """What nginx serves (``public-index.json``) has checksums, rounds and central
    metrics but no site names, per-site counts, site results or settings."""
    registry = ModelRegistry(tmp_path / "registry")
    contributions = (
        Contribution("facility-a", 12321, True),
        Contribution("facility-b", 4554, False, "update norm too large"),
    )
    run = {"run_id": 7, "strategy": "fedavg", "settings": "registry=/srv/secret"}
    v1 = registry.publish(
        lambda p: save_scorer(tiny_scorer(), p),
        server_round=1,
        metrics={"auc": 0.9},
        contributions=contributions,
        run=run,
    )
    gate = {"accepted": 1.0, "auc": 0.8, "reason": "candidate auc 0.8 vs current 0.7"}
    updated = registry.record_site_results(v1.version, {"facility-a": gate})
    assert updated.sha256 == v1.sha256 == sha256_file(v1.checkpoint)
    (back,) = ModelRegistry(registry.root).versions()
    assert back.site_results == {"facility-a": gate}
    assert back.contributions == contributions
    assert json.loads((v1.checkpoint.parent / "version.json").read_text())[
        "site_results"
    ] == {"facility-a": gate}

    public_text = (registry.root / PUBLIC_INDEX_NAME).read_text()
    for secret in ("facility", "12321", "4554", "secret", "norm", "0.8", "reason"):
        assert secret not in public_text, secret
    (entry,) = parse_index(public_text, "public", None)
    assert (entry.sha256, entry.server_round, entry.metrics) == (
        v1.sha256,
        1,
        {"auc": 0.9},
    )
    assert entry.checkpoint == Path("v0001/model.pt")
    assert json.loads(public_text)["versions"][0]["sites"] == 1
