"""The ServerApp's settings, converted once from Flower's run config
(``[tool.flwr.app.config]`` in the app's pyproject.toml, or ``flwr run --run-config``).

Unknown keys are an error naming the key. Flower lets ``--run-config`` override only keys
the app's ``[tool.flwr.app.config]`` declares, so that table must list every key of
:data:`RUN_CONFIG_KEYS` (``federation/flwr_app/pyproject.toml``).

==========================  =========  =================================================
key                         default    meaning
==========================  =========  =================================================
num-rounds                  3          federated rounds
strategy                    "fedavg"   fedavg fedprox fedadam fedyogi trimmed-mean
                                       median krum
min-sites                   2          sites needed to start a round and to aggregate
fraction-train              1.0        fraction of connected sites asked to train
round-timeout               600        seconds to wait for replies per phase
wait-for-sites              300        seconds to wait for min-sites to connect
local-epochs                1          epochs per round (a site may cap it lower)
evaluate-every              1          sites evaluate the global model of every Nth round
                                       on their validation split, before training on it
                                       in the next round (one message per site and round;
                                       see :mod:`evaluation`; sites not sampled for
                                       training do not report); the last round's model in
                                       an evaluate message (where their gate runs)
learning-rate               0.001      local learning rate
lr-decay                    "none"     "cosine": the rate sent in round r falls from
                                       learning-rate to 5% of it over num-rounds
                                       (:meth:`ServerSettings.round_learning_rate`)
local-lr-schedule           "constant" the rate within a site's round: "constant", or
                                       "onecycle" (warm up, then anneal to ~0: every
                                       round ends at the site's own optimum)
proximal-mu                 0.01       FedProx proximal weight
server-lr, tau              0.01,1e-3  FedAdam/FedYogi server step and adaptivity
trim-beta                   0.2        trimmed mean: fraction cut from each tail
krum-byzantine              0          Krum: sites assumed malicious
max-update-norm             0.0        L2 bound on a site's weights delta (0: relative)
max-relative-update         1.0        bound = this x ||global weights|| when 0 above
max-examples                1000000    largest num-examples a site may claim
dp-noise-multiplier         0.0        central DP noise (with dp-clipping-norm > 0)
dp-clipping-norm            0.0        sites clip their delta to this L2 norm; central
                                       DP runs fedavg or fedprox, every site's update
                                       weighted equally
seed                        0          training seed base
registry                    ""         model registry folder ("" = none)
initial-model               ""         start model; "" = registry's latest, else the
                                       shipped default
validation-seeds            "424242"   comma-separated generator seeds (one run each)
validation-classes          60         classes per generated validation run
target-fnr                  0.03       threshold calibration on the validation set
secagg                      false      SecAgg+ (fedavg only, no central DP; see secagg)
secagg-clipping-range       1.0        SecAgg+ fixed-point range of each delta value
==========================  =========  =================================================

Public API (server_app, tests, benchmarks, the deployment's app config; keep it stable)::

    ServerSettings (frozen dataclass); settings_from_run_config(run_config) -> ServerSettings
    RUN_CONFIG_KEYS: tuple[str, ...]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryodiscovery.core.training import LR_SCHEDULES
from cryodiscovery.federation.strategy import StrategyOptions


@dataclass(frozen=True)
class ServerSettings:
    """Everything the server needs, converted once from the run config."""

    strategy: StrategyOptions = field(default_factory=StrategyOptions)
    num_rounds: int = 3
    local_epochs: int = 1
    evaluate_every: int = 1
    learning_rate: float = 1e-3
    lr_decay: str = "none"
    local_lr_schedule: str = "constant"
    seed: int = 0
    registry: Path | None = None
    initial_model: Path | None = None
    validation_seeds: tuple[int, ...] = (424242,)
    validation_classes: int = 60
    target_fnr: float = 0.03
    secagg: bool = False
    secagg_clipping_range: float = 1.0

    def round_learning_rate(self, server_round: int) -> float:
        """The local learning rate sent to sites in ``server_round`` (1-based).

        Within a round the rate follows ``local-lr-schedule`` (constant by default), so
        without a decay across rounds the sites never take small steps.
        ``"cosine"`` anneals the rate over the run (to 5% in the last round), as
        centralised training anneals over its epochs.
        """
        if self.lr_decay == "none" or self.num_rounds == 1:
            return self.learning_rate
        progress = (server_round - 1) / (self.num_rounds - 1)
        floor = 0.05 * self.learning_rate
        return floor + (self.learning_rate - floor) * 0.5 * (
            1 + math.cos(math.pi * progress)
        )


#: Strategies central DP may use (an equally weighted mean of clipped updates).
CENTRAL_DP_STRATEGIES: tuple[str, ...] = ("fedavg", "fedprox")
#: Learning-rate schedules across rounds (run config ``lr-decay``).
LR_DECAYS: tuple[str, ...] = ("none", "cosine")

# run-config key -> (field of StrategyOptions or ServerSettings, type)
_STRATEGY_KEYS: dict[str, tuple[str, type]] = {
    "strategy": ("name", str),
    "min-sites": ("min_sites", int),
    "fraction-train": ("fraction_train", float),
    "round-timeout": ("round_timeout_s", float),
    "wait-for-sites": ("wait_for_sites_s", float),
    "proximal-mu": ("proximal_mu", float),
    "server-lr": ("server_lr", float),
    "tau": ("tau", float),
    "trim-beta": ("trim_beta", float),
    "krum-byzantine": ("krum_byzantine", int),
    "max-update-norm": ("max_update_norm", float),
    "max-relative-update": ("max_relative_update", float),
    "max-examples": ("max_examples", int),
    "dp-noise-multiplier": ("dp_noise_multiplier", float),
    "dp-clipping-norm": ("dp_clipping_norm", float),
}
_SERVER_KEYS: dict[str, tuple[str, type]] = {
    "num-rounds": ("num_rounds", int),
    "local-epochs": ("local_epochs", int),
    "evaluate-every": ("evaluate_every", int),
    "learning-rate": ("learning_rate", float),
    "lr-decay": ("lr_decay", str),
    "local-lr-schedule": ("local_lr_schedule", str),
    "seed": ("seed", int),
    "registry": ("registry", str),
    "initial-model": ("initial_model", str),
    "validation-seeds": ("validation_seeds", str),
    "validation-classes": ("validation_classes", int),
    "target-fnr": ("target_fnr", float),
    "secagg": ("secagg", bool),
    "secagg-clipping-range": ("secagg_clipping_range", float),
}
RUN_CONFIG_KEYS: tuple[str, ...] = tuple(sorted([*_STRATEGY_KEYS, *_SERVER_KEYS]))


def _typed(key: str, value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    if kind is bool and isinstance(value, bool):
        return value
    want = {
        int: "a whole number",
        float: "a number",
        str: "text",
        bool: "true or false",
    }
    raise ValueError(f"run config '{key}' must be {want[kind]}, got {value!r}")


def settings_from_run_config(run_config: Mapping[str, Any]) -> ServerSettings:
    """Validate Flower's run config into :class:`ServerSettings` (``ValueError`` naming
    the key on an unknown key or a bad value)."""
    strat: dict[str, Any] = {}
    server: dict[str, Any] = {}
    for key, value in run_config.items():
        if key in _STRATEGY_KEYS:
            name, kind = _STRATEGY_KEYS[key]
            strat[name] = _typed(key, value, kind)
        elif key in _SERVER_KEYS:
            name, kind = _SERVER_KEYS[key]
            server[name] = _typed(key, value, kind)
        else:
            known = ", ".join(RUN_CONFIG_KEYS)
            raise ValueError(f"unknown run config key '{key}' (known: {known})")
    for key in ("registry", "initial_model"):
        server[key] = Path(server[key]).expanduser() if server.get(key) else None
    if "validation_seeds" in server:
        try:
            seeds = tuple(
                int(s) for s in server["validation_seeds"].split(",") if s.strip()
            )
        except ValueError as err:
            raise ValueError(
                "run config 'validation-seeds' must be integers, e.g. \"1,2\""
            ) from err
        server["validation_seeds"] = seeds
    settings = ServerSettings(strategy=StrategyOptions(**strat), **server)
    checks = {
        "num-rounds": settings.num_rounds >= 1,
        "local-epochs": settings.local_epochs >= 1,
        "evaluate-every": settings.evaluate_every >= 1,
        "learning-rate": settings.learning_rate > 0,
        "lr-decay": settings.lr_decay in LR_DECAYS,
        "local-lr-schedule": settings.local_lr_schedule in LR_SCHEDULES,
        "validation-seeds": len(settings.validation_seeds) >= 1,
        "validation-classes": settings.validation_classes >= 4,
        "target-fnr": 0 <= settings.target_fnr < 1,
        "secagg-clipping-range": settings.secagg_clipping_range > 0,
        "secagg": not settings.secagg
        or (settings.strategy.name == "fedavg" and not settings.strategy.dp),
        "dp-clipping-norm": not settings.strategy.dp
        or settings.strategy.name in CENTRAL_DP_STRATEGIES,
    }
    for key, ok in checks.items():
        if not ok:
            why = {
                "secagg": " (SecAgg+ runs with strategy fedavg and no central DP)",
                "lr-decay": f" (one of {', '.join(LR_DECAYS)})",
                "local-lr-schedule": f" (one of {', '.join(LR_SCHEDULES)})",
                "dp-clipping-norm": " (central DP runs with strategy "
                f"{' or '.join(CENTRAL_DP_STRATEGIES)}: its accounting assumes an "
                "equally weighted mean)",
            }.get(key, "")
            raise ValueError(f"run config '{key}' has a bad value{why}")
    return settings
