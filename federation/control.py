"""The server operator's actions on a running SuperLink, through its Control API: register
facility keys, start a run, and check how a run ended.

Everything goes through the public ``flwr`` CLI with ``--format json``, as the README
shows: ``flwr supernode register``, ``flwr run``, ``flwr stop``, and for status ``flwr
supernode list`` and ``flwr ls --run-id N`` (each poll pays about 2 s of CLI start-up).
A run's outcome is its Control API status, never an exit code: ``flwr run`` returns 0
once the run is submitted, and even when the ServerApp then crashes; with ``--format
json`` the CLI also exits 0 on errors (``success: false``).

The Control API must be reachable only from the server host (see :mod:`gateway`).

Public API (tests, benchmarks, operators)::

    CliConnection(flwr_home, address, ca_cert, name="cryodiscovery")
    write_cli_config(conn) -> Path                   # $FLWR_HOME/config.toml
    flwr_json(conn, args, timeout_s=120, check=True) -> dict
    register_node(conn, public_key) -> int           # node id
    node_statuses(conn) -> dict[int, str]; wait_for_nodes(conn, node_ids, timeout_s)
    start_run(conn, run_config, app_dir=APP_DIR) -> int   # run id
    RunStatus(run_id, status, details); run_status(conn, run_id) -> RunStatus
    wait_for_run(conn, run_id, timeout_s) -> RunStatus
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryodiscovery.federation.deploy import APP_DIR, flower_env, flower_script

log = logging.getLogger(__name__)

RunConfigValue = str | int | float | bool
#: What a failed status poll raises (e.g. an HTTP 500 while the SuperLink's database is
#: busy makes ``flwr`` answer ``success: false``); polls are retried until a deadline.
_POLL_ERRORS = (
    RuntimeError,
    OSError,
    KeyError,
    ValueError,
    subprocess.TimeoutExpired,
)


@dataclass(frozen=True)
class CliConnection:
    """A named SuperLink connection of the ``flwr`` CLI.

    ``flwr_home`` holds the CLI's ``config.toml``; ``address`` is the SuperLink's
    ``host:port`` (on the server host: ``127.0.0.1:8000``); ``ca_cert`` verifies it.
    """

    flwr_home: Path
    address: str
    ca_cert: Path
    name: str = "cryodiscovery"


def write_cli_config(conn: CliConnection) -> Path:
    """Write ``$FLWR_HOME/config.toml`` with this connection as the default.

    flwr 1.41 keeps SuperLink connections there, not in the app's pyproject.toml.
    """
    conn.flwr_home.mkdir(parents=True, exist_ok=True)
    path = conn.flwr_home / "config.toml"
    path.write_text(
        f'[superlink]\ndefault = "{conn.name}"\n\n[superlink.{conn.name}]\n'
        f"address = {json.dumps(conn.address)}\n"
        f"root-certificates = {json.dumps(str(conn.ca_cert))}\n"
    )
    return path


def flwr_json(
    conn: CliConnection,
    args: Sequence[str],
    timeout_s: float = 120.0,
    check: bool = True,
) -> dict[str, Any]:
    """Run ``flwr ARGS --format json`` with ``conn``'s Flower home; its JSON answer.

    Raises
    ------
    RuntimeError
        With ``check``, when the answer is not ``success: true`` (the message names
        the command and Flower's error).
    """
    argv = [flower_script("flwr"), *args, "--format", "json"]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=flower_env(conn.flwr_home),
        check=False,
    )
    return flwr_answer_of(done, args, check)


def flwr_answer_of(
    done: subprocess.CompletedProcess[str], args: Sequence[str], check: bool = True
) -> dict[str, Any]:
    """The JSON answer of a finished ``flwr ARGS --format json`` (``{}`` when it printed
    none); with ``check``, ``RuntimeError`` naming the command and Flower's error unless
    the answer says ``success: true``."""
    start = done.stdout.find("{")
    try:
        answer: dict[str, Any] = json.loads(done.stdout[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        answer = {}
    if check and answer.get("success") is not True:
        error = answer.get("error-message") or done.stderr.strip()[-2000:]
        raise RuntimeError(f"flwr {' '.join(args)} failed: {error or done.stdout}")
    return answer


def register_node(conn: CliConnection, public_key: Path) -> int:
    """``flwr supernode register KEY.pub CONN``: admit a facility's key; its node id."""
    answer = flwr_json(conn, ["supernode", "register", str(public_key), conn.name])
    return int(answer["node-id"])


def node_statuses(conn: CliConnection) -> dict[int, str]:
    """``node id -> status`` (``registered``, ``online``, ``offline``, ...), from
    ``flwr supernode list CONN --format json``."""
    answer = flwr_json(conn, ["supernode", "list", conn.name])
    return {int(n["node-id"]): str(n["status"]) for n in answer.get("nodes", [])}


def wait_for_nodes(
    conn: CliConnection, node_ids: Sequence[int], timeout_s: float = 120.0
) -> None:
    """Wait until every node in ``node_ids`` is online; ``TimeoutError`` otherwise."""
    deadline = time.monotonic() + timeout_s
    statuses: dict[int, str] = {}
    while time.monotonic() < deadline:
        try:
            statuses = node_statuses(conn)
        except _POLL_ERRORS as err:  # e.g. the SuperLink is restarting
            log.warning("node list not available (%s); retrying", err)
        if all(statuses.get(n) == "online" for n in node_ids):
            return
        time.sleep(0.5)
    raise TimeoutError(f"nodes not online after {timeout_s:.0f} s: {statuses}")


def start_run(
    conn: CliConnection,
    run_config: Mapping[str, RunConfigValue],
    app_dir: Path = APP_DIR,
) -> int:
    """``flwr run APP CONN --run-config FILE``; the run id.

    ``run_config`` overrides keys of the app's ``[tool.flwr.app.config]``; it is
    written to a TOML file next to the CLI config (values with quotes or spaces are
    safe there, unlike on a command line).
    """
    conn.flwr_home.mkdir(parents=True, exist_ok=True)
    override = conn.flwr_home / f"run-config-{time.time_ns()}.toml"
    override.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in run_config.items()))
    args = ["run", str(app_dir), conn.name, "--run-config", str(override)]
    return int(flwr_json(conn, args)["run-id"])


def _toml(value: RunConfigValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)  # a JSON string or number is also valid TOML


@dataclass(frozen=True)
class RunStatus:
    """A run as the Control API reports it.

    ``status`` is ``pending``, ``starting``, ``running`` or ``finished:<sub>`` with
    ``<sub>`` one of ``completed``, ``failed``, ``stopped``; ``details`` says why a run
    failed (e.g. the ServerApp's exception).
    """

    run_id: int
    status: str
    details: str = ""

    @property
    def finished(self) -> bool:
        return self.status.startswith("finished")

    @property
    def succeeded(self) -> bool:
        return self.status == "finished:completed"


def run_status(conn: CliConnection, run_id: int) -> RunStatus:
    """The run's status, from ``flwr ls CONN --run-id N --format json``."""
    answer = flwr_json(conn, ["ls", conn.name, "--run-id", str(run_id)])
    (run,) = [r for r in answer.get("runs", []) if int(r["run-id"]) == run_id]
    details = str(run.get("status-details", ""))
    return RunStatus(run_id, str(run["status"]), "" if details == "N/A" else details)


def wait_for_run(
    conn: CliConnection, run_id: int, timeout_s: float, poll_s: float = 2.0
) -> RunStatus:
    """Poll :func:`run_status` until the run has finished.

    A failed poll (e.g. an HTTP 500 while the SuperLink's database is busy) is logged
    and retried until the deadline.

    Raises
    ------
    TimeoutError
        After ``timeout_s``; the run is first stopped (``flwr stop``), so no
        facility keeps working for it. The run is also stopped when waiting is
        interrupted by any other exception.
    """
    deadline = time.monotonic() + timeout_s
    finished = False
    try:
        while time.monotonic() < deadline:
            try:
                status = run_status(conn, run_id)
            except _POLL_ERRORS as err:
                log.warning("run %d: status not available (%s); retrying", run_id, err)
            else:
                if status.finished:
                    finished = True
                    return status
            time.sleep(poll_s)
        raise TimeoutError(f"run {run_id} not finished after {timeout_s:.0f} s")
    finally:
        if not finished:
            flwr_json(conn, ["stop", str(run_id), conn.name], check=False)
