"""The systemd units shipped in ``federation/systemd/`` start what docs/federation.md starts: the
same programs and flags as :mod:`deploy`, by absolute path, with the virtual
environment's ``bin/`` first on ``PATH`` (a SuperExec starts ``flwr-serverapp`` and
``flwr-clientapp`` by name; systemd's default ``PATH`` lacks them)."""

from __future__ import annotations

import shlex
import tomllib
from importlib import resources
from pathlib import Path

import pytest
from cryodiscovery.federation.deploy import (
    SuperLinkSpec,
    SuperNodeSpec,
    superlink_commands,
    supernode_commands,
)

UNITS = resources.files("cryodiscovery.federation") / "systemd"
NAMES = (
    "cryodiscovery-superlink.service",
    "cryodiscovery-superlink-exec.service",
    "cryodiscovery-supernode.service",
    "cryodiscovery-supernode-exec.service",
    "cryodiscovery-worker.service",
)
ROOT = Path(__file__).resolve().parents[2]


def _service(name: str) -> tuple[list[str], dict[str, str]]:
    """(ExecStart argv, Environment) of a unit's [Service] section."""
    text = (UNITS / name).read_text().replace("\\\n", " ")
    argv: list[str] = []
    env: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "ExecStart":
            argv = shlex.split(value)
        elif key == "Environment":
            k, _, v = value.partition("=")
            env[k] = v
    return argv, env


def _options(argv: list[str]) -> set[str]:
    return {a for a in argv if a.startswith("--")}


@pytest.mark.parametrize("name", NAMES)
def test_unit_starts_by_absolute_path_with_the_venv_first_on_path(name: str) -> None:
    argv, env = _service(name)
    program = Path(argv[0])
    assert program.is_absolute(), argv[0]
    assert env["PATH"].split(":")[0] == str(program.parent)
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
    assert "Restart=always" in (UNITS / name).read_text()


def test_units_pass_the_flags_deploy_passes(tmp_path: Path) -> None:
    link = SuperLinkSpec(tmp_path / "ca", tmp_path / "crt", tmp_path / "key", tmp_path)
    node = SuperNodeSpec(
        "site", "h:9092", tmp_path / "ca", tmp_path / "k", tmp_path / "f", tmp_path
    )
    for unit, (_, expected) in zip(
        NAMES[:4], [*superlink_commands(link), *supernode_commands(node)], strict=True
    ):
        argv, _ = _service(unit)
        assert Path(argv[0]).name == Path(expected[0]).name, unit
        assert _options(argv) == _options(expected), unit


def test_the_venv_holds_the_apps_a_superexec_starts_by_name() -> None:
    """Where ``flower-superexec`` is installed, so are ``flwr-serverapp`` and
    ``flwr-clientapp``: the units' PATH (that folder first) finds them."""
    from cryodiscovery.federation.deploy import flower_script

    folder = Path(flower_script("flower-superexec")).parent
    assert (folder / "flwr-serverapp").exists() and (folder / "flwr-clientapp").exists()


def test_units_are_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    tool = config["tool"]["setuptools"]
    assert "cryodiscovery.federation.systemd" in tool["packages"]
    assert "*.service" in tool["package-data"]["cryodiscovery.federation.systemd"]
