"""Run config -> ServerSettings: every key typed, unknown keys and bad combinations refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryodiscovery.federation.settings import RUN_CONFIG_KEYS, settings_from_run_config


def test_defaults_and_conversion() -> None:
    s = settings_from_run_config(
        {
            "num-rounds": 5,
            "strategy": "krum",
            "krum-byzantine": 1,
            "round-timeout": 30,
            "registry": "~/reg",
            "validation-seeds": "1, 2,3",
            "secagg-clipping-range": 2,
        }
    )
    assert s.num_rounds == 5 and s.strategy.name == "krum"
    assert s.strategy.krum_byzantine == 1 and s.strategy.round_timeout_s == 30.0
    assert s.registry == Path("~/reg").expanduser() and s.initial_model is None
    assert s.validation_seeds == (1, 2, 3) and s.secagg_clipping_range == 2.0
    assert settings_from_run_config({}).strategy.name == "fedavg"
    assert "dp-clipping-norm" in RUN_CONFIG_KEYS and "secagg" in RUN_CONFIG_KEYS


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"num-round": 3}, "unknown run config key 'num-round'"),
        ({"num-rounds": 2.5}, "'num-rounds' must be a whole number"),
        ({"secagg": "yes"}, "'secagg' must be true or false"),
        ({"num-rounds": 0}, "'num-rounds' has a bad value"),
        ({"validation-seeds": "a,b"}, "'validation-seeds' must be integers"),
        ({"secagg": True, "strategy": "median"}, "SecAgg+ runs with strategy fedavg"),
        (
            {"secagg": True, "dp-clipping-norm": 1.0},
            "SecAgg+ runs with strategy fedavg",
        ),
        ({"strategy": "fedsgd"}, "'strategy' must be one of"),
    ],
)
def test_bad_run_config_names_the_key(config: dict[str, object], message: str) -> None:
    with pytest.raises(
        ValueError, match=message.replace("(", r"\(").replace("+", r"\+")
    ):
        settings_from_run_config(config)
