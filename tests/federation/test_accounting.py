"""Site-level privacy accounting of local DP (Gaussian mechanism, RDP composition)."""

from __future__ import annotations

import math

import pytest
from cryodiscovery.federation.accounting import (
    central_dp_record,
    rdp_epsilon,
    rdp_epsilon_of,
)


def _closed_form(sigma: float, rounds: int, delta: float) -> float:
    """The minimum over real orders alpha > 1 of R alpha/(2 sigma^2) + log(1/delta)/(alpha-1)."""
    a = rounds / (2 * sigma**2)
    b = math.log(1 / delta)
    alpha = 1 + math.sqrt(b / a)
    return a * alpha + b / (alpha - 1)


@pytest.mark.parametrize(
    ("sigma", "rounds"), [(1.0, 1), (1.0, 10), (2.0, 100), (5.0, 30), (0.7, 3)]
)
def test_epsilon_matches_the_optimum_over_orders(sigma: float, rounds: int) -> None:
    exact = _closed_form(sigma, rounds, 1e-5)
    got = rdp_epsilon(sigma, rounds, 1e-5)
    assert exact <= got <= exact * 1.01  # a grid of orders: never below the optimum


def test_more_rounds_cost_more_and_more_noise_costs_less() -> None:
    assert rdp_epsilon(1.0, 10) < rdp_epsilon(1.0, 100)
    assert rdp_epsilon(2.0, 10) < rdp_epsilon(1.0, 10)
    assert rdp_epsilon(1.0, 10, delta=1e-3) < rdp_epsilon(1.0, 10, delta=1e-7)
    # one release at sigma = 1, delta = 1e-5: 0.5 + sqrt(2 ln 1e5) = 5.30
    assert rdp_epsilon(1.0, 1) == pytest.approx(5.298, abs=0.01)


def test_edge_cases() -> None:
    assert rdp_epsilon(1.0, 0) == 0.0
    assert rdp_epsilon(0.0, 3) == math.inf
    for bad in ((-1.0, 1, 1e-5), (1.0, -1, 1e-5), (1.0, 1, 0.0), (1.0, 1, 1.0)):
        with pytest.raises(ValueError):
            rdp_epsilon(*bad)


def test_central_dp_record_composes_the_model_lineage() -> None:
    fresh = central_dp_record(2.0, 1.5, 3, {})  # e.g. the shipped default model
    assert fresh["epsilon"] == fresh["lineage_epsilon"] == rdp_epsilon(2.0, 3)
    assert fresh["inverse_variance_sum"] == pytest.approx(3 / 4)
    continued = central_dp_record(4.0, 1.5, 2, {"federation": {"central_dp": fresh}})
    assert continued["epsilon"] == rdp_epsilon(4.0, 2)
    assert continued["lineage_epsilon"] == pytest.approx(
        rdp_epsilon_of([2.0] * 3 + [4.0] * 2)
    )
    # a starting model from a federated run without central DP: no lineage guarantee
    plain = central_dp_record(2.0, 1.5, 1, {"federation": {"server_round": 4}})
    assert plain["lineage_epsilon"] == math.inf and math.isfinite(plain["epsilon"])
