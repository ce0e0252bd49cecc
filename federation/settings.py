"""The ServerApp's settings, converted once from Flower's run config
(``[tool.flwr.app.config]`` in the app's pyproject.toml, or ``flwr run --run-config``).

Unknown keys are an error naming the key. Each key's default is written once, in the
app's ``[tool.flwr.app.config]`` (``federation/flwr_app/pyproject.toml``, read by
:mod:`run_defaults`), which declares every key of :data:`RUN_CONFIG_KEYS` (Flower lets
``--run-config`` override only declared keys).

==========================  ==========================================================
key                         meaning
==========================  ==========================================================
num-rounds                  federated rounds
strategy                    fedavg fedprox fedadam fedyogi trimmed-mean
                            median krum
min-sites                   sites needed to start a round and to aggregate
fraction-train              fraction of connected sites asked to train
round-timeout               seconds to wait for replies per phase
wait-for-sites              seconds to wait for min-sites to connect
local-epochs                epochs per round (a site may cap it lower)
evaluate-every              sites evaluate the global model of every Nth round
                            on their validation split, before training on it
                            in the next round (one message per site and round;
                            see :mod:`evaluation`; sites not sampled for
                            training do not report); the last round's model in
                            an evaluate message (where their gate runs)
learning-rate               local learning rate
lr-decay                    "cosine": the rate sent in round r falls from
                            learning-rate to 5% of it over num-rounds
                            (:meth:`ServerSettings.round_learning_rate`)
local-lr-schedule           the rate within a site's round: "constant", or
                            "onecycle" (warm up, then anneal to ~0: every
                            round ends at the site's own optimum)
proximal-mu                 FedProx proximal weight
server-lr, tau              FedAdam/FedYogi server step and adaptivity
trim-beta                   trimmed mean: fraction cut from each tail
krum-byzantine              Krum: sites assumed malicious
max-update-norm             L2 bound on a site's weights delta (0: relative)
max-relative-update         bound = this x ||global weights|| when 0 above
max-examples                largest num-examples a site may claim
dp-noise-multiplier         central DP noise (with dp-clipping-norm > 0)
dp-clipping-norm            sites clip their delta to this L2 norm; central
                            DP runs fedavg or fedprox, every site's update
                            weighted equally
seed                        training seed base
registry                    model registry folder ("" = none)
initial-model               start model; "" = registry's latest, else the
                            shipped default
validation-seeds            comma-separated generator seeds (one run each)
validation-classes          classes per generated validation run
target-fnr                  threshold calibration on the validation set
secagg                      SecAgg+ (fedavg only, no central DP; see secagg)
secagg-clipping-range       SecAgg+ fixed-point range of each delta value
==========================  ==========================================================

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

from cryodiscovery.core.model.training import LR_SCHEDULES
from cryodiscovery.federation.run_defaults import default
from cryodiscovery.federation.strategy import StrategyOptions


def _path(value: Any) -> Path | None:
    """A path setting; ``""`` means none."""
    return Path(value).expanduser() if value else None


def _seeds(value: Any) -> tuple[int, ...]:
    """``"1,2"`` -> ``(1, 2)``."""
    try:
        return tuple(int(s) for s in str(value).split(",") if s.strip())
    except ValueError as err:
        raise ValueError(
            "run config 'validation-seeds' must be integers, e.g. \"1,2\""
        ) from err


@dataclass(frozen=True)
class ServerSettings:
    """Everything the server needs, converted once from the run config."""

    strategy: StrategyOptions = field(default_factory=StrategyOptions)
    num_rounds: int = int(default("num-rounds"))
    local_epochs: int = int(default("local-epochs"))
    evaluate_every: int = int(default("evaluate-every"))
    learning_rate: float = float(default("learning-rate"))
    lr_decay: str = str(default("lr-decay"))
    local_lr_schedule: str = str(default("local-lr-schedule"))
    seed: int = int(default("seed"))
    registry: Path | None = _path(default("registry"))  # noqa: RUF009 (immutable)
    initial_model: Path | None = _path(default("initial-model"))  # noqa: RUF009
    validation_seeds: tuple[int, ...] = _seeds(default("validation-seeds"))
    validation_classes: int = int(default("validation-classes"))
    target_fnr: float = float(default("target-fnr"))
    secagg: bool = bool(default("secagg"))
    secagg_clipping_range: float = float(default("secagg-clipping-range"))

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
        if key in server:
            server[key] = _path(server[key])
    if "validation_seeds" in server:
        server["validation_seeds"] = _seeds(server["validation_seeds"])
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
