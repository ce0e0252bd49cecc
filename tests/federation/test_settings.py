"""Run config -> ServerSettings: every key typed, unknown keys and bad combinations refused."""

from __future__ import annotations

import itertools
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
        (
            {"dp-clipping-norm": 1.0, "strategy": "krum"},
            "'dp-clipping-norm' has a bad value (central DP runs with strategy fedavg",
        ),
        ({"lr-decay": "step"}, "'lr-decay' has a bad value (one of none, cosine"),
        (
            {"local-lr-schedule": "cyclic"},
            "'local-lr-schedule' has a bad value (one of onecycle, constant",
        ),
    ],
)
def test_bad_run_config_names_the_key(config: dict[str, object], message: str) -> None:
    with pytest.raises(
        ValueError, match=message.replace("(", r"\(").replace("+", r"\+")
    ):
        settings_from_run_config(config)


def test_cosine_decay_anneals_the_rate_over_the_run() -> None:
    s = settings_from_run_config(
        {"num-rounds": 5, "learning-rate": 0.002, "lr-decay": "cosine"}
    )
    rates = [s.round_learning_rate(r) for r in range(1, 6)]
    assert rates[0] == 0.002 and rates[-1] == pytest.approx(0.0001)
    assert all(a > b for a, b in itertools.pairwise(rates))
    assert rates[2] == pytest.approx((0.002 + 0.0001) / 2)
    flat = settings_from_run_config({"num-rounds": 5, "learning-rate": 0.002})
    assert {flat.round_learning_rate(r) for r in range(1, 6)} == {0.002}
