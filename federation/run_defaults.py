"""Each run-config key's default, written in one place: ``[tool.flwr.app.config]`` of
the Flower app (``federation/flwr_app/pyproject.toml``), where ``flwr run`` reads it and
which must declare every key (Flower lets ``--run-config`` override only declared keys).
The settings dataclasses (:mod:`settings`, :class:`~.strategy.StrategyOptions`) take
their defaults from here.

Public API: ``APP_PYPROJECT: Path``, ``RUN_CONFIG_DEFAULTS: dict``, ``default(key)``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

#: The Flower app's pyproject.toml (package data of cryodiscovery.federation).
APP_PYPROJECT = Path(__file__).resolve().parent / "flwr_app" / "pyproject.toml"

#: run-config key -> default, as the app declares it.
RUN_CONFIG_DEFAULTS: dict[str, bool | int | float | str] = tomllib.loads(
    APP_PYPROJECT.read_text()
)["tool"]["flwr"]["app"]["config"]


def default(key: str) -> bool | int | float | str:
    """The default of run-config ``key`` (``KeyError`` if the app does not declare it)."""
    return RUN_CONFIG_DEFAULTS[key]
