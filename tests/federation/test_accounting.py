"""Site-level privacy accounting of local DP (Gaussian mechanism, RDP composition,
Google's dp-accounting)."""

from __future__ import annotations

import math

import dp_accounting
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
def test_epsilon_is_at_most_the_classical_rdp_bound(sigma: float, rounds: int) -> None:
    classical = _closed_form(sigma, rounds, 1e-5)
    got = rdp_epsilon(sigma, rounds, 1e-5)
    # dp-accounting converts RDP to (eps, delta) more tightly than Mironov's bound
    assert 0.85 * classical <= got <= classical


def test_mixed_noise_levels_compose_as_separate_releases() -> None:
    sigmas = [0.8, 2.0, 2.0, 5.0]
    accountant = dp_accounting.rdp.RdpAccountant()
    for sigma in sigmas:
        accountant.compose(dp_accounting.GaussianDpEvent(sigma))
    assert rdp_epsilon_of(sigmas) == pytest.approx(accountant.get_epsilon(1e-5))


def test_more_rounds_cost_more_and_more_noise_costs_less() -> None:
    assert rdp_epsilon(1.0, 10) < rdp_epsilon(1.0, 100)
    assert rdp_epsilon(2.0, 10) < rdp_epsilon(1.0, 10)
    assert rdp_epsilon(1.0, 10, delta=1e-3) < rdp_epsilon(1.0, 10, delta=1e-7)
    # one release at sigma = 1, delta = 1e-5 (Mironov's bound: 5.30)
    assert rdp_epsilon(1.0, 1) == pytest.approx(4.73, abs=0.01)


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
