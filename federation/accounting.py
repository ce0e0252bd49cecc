"""What differential privacy costs over many rounds.

**Local DP** (``privacy.dp``): a site clips each round's weights delta to L2 norm ``C``
and adds Gaussian noise of std ``sigma * C`` (Flower's ``LocalDpMod``). Neighbouring
inputs are any two sets of the site's data (site-level privacy), so two clipped deltas
differ by up to ``2 C``: one release is the Gaussian mechanism with noise multiplier
``sigma / 2`` over that sensitivity (:func:`local_dp_epsilon`). Its Renyi DP of order
``alpha`` is ``alpha / (2 (sigma/2)^2)`` (Mironov 2017, Prop. 7); releases compose by
adding, and the (eps, delta)-DP guarantee for the weights the site sent is Google's
``dp-accounting`` RDP accountant's (its conversion from RDP is tighter than Mironov's
``min_alpha RDP(alpha) + log(1/delta) / (alpha - 1)``). No subsampling
amplification is claimed (a site takes part in every round it is asked). The scalar
metrics a site sends are not noised and not covered.

**Central DP** (run config ``dp-clipping-norm``/``dp-noise-multiplier``): sites clip to
``C``, the server averages ``m`` updates with equal weights and adds noise of std
``sigma * C / m``; adding or removing one site moves the mean by at most ``C / m``, so
each round is the Gaussian mechanism with multiplier ``sigma`` (:func:`rdp_epsilon`).

Releases at different noise levels (a facility's runs over the years) compose the same
way: the RDP of order ``alpha`` is ``alpha / 2 * sum_i 1 / sigma_i^2``
(:func:`rdp_epsilon_of`).

A model's central-DP record (:func:`central_dp_record`, stored in the model's info)
also carries the inverse-variance sum of its whole lineage: a run that starts from a
model made by an earlier DP run adds to that run's; one that starts from a model made by
a federated run *without* central DP has no central guarantee for that earlier data
(lineage eps ``inf``).

Public API: ``DP_DELTA``, ``local_dp_epsilon(noise_multipliers, delta) -> float``,
``central_dp_record(noise_multiplier, clipping_norm, rounds,
initial_info) -> dict``, ``rdp_epsilon(noise_multiplier, rounds, delta=1e-5) -> float``,
``rdp_epsilon_of(noise_multipliers, delta=1e-5) -> float``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

#: The delta of every (eps, delta) this package reports for DP.
DP_DELTA = 1e-5


def rdp_epsilon(noise_multiplier: float, rounds: int, delta: float = 1e-5) -> float:
    """(eps, ``delta``)-DP of ``rounds`` Gaussian releases with noise std
    ``noise_multiplier`` x sensitivity; ``inf`` without noise.

    Raises
    ------
    ValueError
        ``rounds < 0``, ``noise_multiplier < 0`` or ``delta`` not in (0, 1).
    """
    if rounds < 0 or noise_multiplier < 0 or not 0 < delta < 1:
        raise ValueError("need rounds >= 0, noise_multiplier >= 0, 0 < delta < 1")
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    return _epsilon(rounds / noise_multiplier**2, delta)


def rdp_epsilon_of(noise_multipliers: Sequence[float], delta: float = 1e-5) -> float:
    """(eps, ``delta``)-DP of one Gaussian release per entry of ``noise_multipliers``
    (each the noise std over the sensitivity); ``inf`` if any is 0.

    Raises
    ------
    ValueError
        A negative noise multiplier, or ``delta`` not in (0, 1).
    """
    if any(s < 0 for s in noise_multipliers) or not 0 < delta < 1:
        raise ValueError("need noise multipliers >= 0 and 0 < delta < 1")
    if not noise_multipliers:
        return 0.0
    if min(noise_multipliers) == 0:
        return math.inf
    return _epsilon(sum(1 / s**2 for s in noise_multipliers), delta)


def local_dp_epsilon(
    noise_multipliers: Sequence[float], delta: float = DP_DELTA
) -> float:
    """Site-level eps of local-DP releases at these noise multipliers (sensitivity
    ``2 C``, see the module docstring)."""
    return rdp_epsilon_of([s / 2 for s in noise_multipliers], delta)


def central_dp_record(
    noise_multiplier: float,
    clipping_norm: float,
    rounds: int,
    initial_info: Mapping[str, Any],
) -> dict[str, float]:
    """What a model published after ``rounds`` central-DP rounds of this run spent.

    ``initial_info`` is the info of the model the run started from. Returns
    ``noise_multiplier``, ``clipping_norm``, ``rounds`` (this run), ``delta``,
    ``epsilon`` (this run), ``inverse_variance_sum`` and ``lineage_epsilon`` (this run
    and every DP run the starting model came from; ``inf`` if it came from a federated
    run without central DP).
    """
    prior = 0.0
    federation = initial_info.get("federation")
    if isinstance(federation, Mapping):
        record = federation.get("central_dp")
        prior = (
            float(record.get("inverse_variance_sum", math.inf))
            if isinstance(record, Mapping)
            else math.inf
        )
    this_run = rounds / noise_multiplier**2 if noise_multiplier > 0 else math.inf
    total = prior + this_run
    return {
        "noise_multiplier": noise_multiplier,
        "clipping_norm": clipping_norm,
        "rounds": float(rounds),
        "delta": DP_DELTA,
        "epsilon": rdp_epsilon(noise_multiplier, rounds, DP_DELTA),
        "inverse_variance_sum": total,
        "lineage_epsilon": _epsilon(total, DP_DELTA)
        if math.isfinite(total)
        else math.inf,
    }


def _epsilon(inverse_variance_sum: float, delta: float) -> float:
    """eps at ``delta`` of Gaussian releases whose ``1 / sigma^2`` add up to
    ``inverse_variance_sum``: under RDP they compose to one Gaussian release with
    ``sigma = inverse_variance_sum ** -0.5``, accounted by Google's ``dp-accounting``."""
    import dp_accounting  # ~1 s to import: only when a budget is computed

    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(inverse_variance_sum**-0.5))
    return float(accountant.get_epsilon(delta))
