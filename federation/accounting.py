"""What local differential privacy costs over many rounds.

With ``privacy.dp`` a site clips each round's weights delta to L2 norm ``C`` and adds
Gaussian noise of std ``sigma * C`` (Flower's ``LocalDpMod``). One such release is the
Gaussian mechanism with sensitivity ``C`` for the site's whole update (site-level
privacy: neighbouring inputs are any two sets of the site's data). Its Renyi DP of order
``alpha`` is ``alpha / (2 sigma^2)`` (Mironov 2017, Prop. 7); ``R`` releases compose by
adding, and ``eps = min_alpha R alpha / (2 sigma^2) + log(1/delta) / (alpha - 1)`` is an
(eps, delta)-DP guarantee for everything the site sent in ``R`` rounds (Prop. 3). No
subsampling amplification is claimed (a site takes part in every round it is asked).

Public API: ``rdp_epsilon(noise_multiplier, rounds, delta=1e-5) -> float``.
"""

from __future__ import annotations

import math

#: Renyi orders searched (the optimum for practical settings lies well inside).
ORDERS: tuple[float, ...] = tuple(
    [1 + x / 100 for x in range(1, 100)] + [2 + x / 10 for x in range(0, 980)]
)


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
    per_order = rounds / (2 * noise_multiplier**2)
    return min(a * per_order + math.log(1 / delta) / (a - 1) for a in ORDERS)
