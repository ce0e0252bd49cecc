"""Start a federation run and wait for how it ends, with the public ``flwr`` CLI: ``flwr
run APP [SUPERLINK] --format json`` submits it, ``flwr ls [SUPERLINK] --run-id N --format
json`` is polled until it has finished. ``flwr run`` alone exits 0 once a run is
submitted (and with ``--format json`` even when it is refused); :func:`run_to_completion`
succeeds only when the run finished ``completed``.

The ``flwr`` CLI reads the SuperLink connection from ``$FLWR_HOME/config.toml`` as usual.

Public API (cli ``federation run``, tests)::

    RunStatus (federation.control): run_id, status, details, .succeeded
    flwr_answer(args, flwr=None, timeout_s=120) -> dict   # flwr ARGS --format json
    submit_run(app, superlink, run_config, flwr=None) -> int      # the run id
    run_status(superlink, run_id, flwr=None) -> RunStatus
    run_to_completion(app, superlink, run_config, timeout_s, poll_s=5, flwr=None)
        -> RunStatus
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryodiscovery.federation.control import RunStatus, flwr_answer_of

log = logging.getLogger(__name__)


def _flwr(flwr: str | None) -> str:
    if flwr is not None:
        return flwr
    from cryodiscovery.federation.deploy import flower_script

    return flower_script("flwr")


def flwr_answer(
    args: Sequence[str], flwr: str | None = None, timeout_s: float = 120.0
) -> dict[str, Any]:
    """``flwr ARGS --format json``: its JSON answer.

    Raises
    ------
    RuntimeError
        The answer is not ``success: true`` (names the command and Flower's error).
    """
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    done = subprocess.run(
        [_flwr(flwr), *args, "--format", "json"],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
        check=False,
    )
    return flwr_answer_of(done, args)


def _superlink(superlink: str | None) -> list[str]:
    return [superlink] if superlink else []


def submit_run(
    app: Path, superlink: str | None, run_config: Sequence[str], flwr: str | None = None
) -> int:
    """``flwr run APP [SUPERLINK] --run-config ...``; the run id (``RuntimeError`` when
    the SuperLink refuses the run)."""
    args = ["run", str(app), *_superlink(superlink)]
    for item in run_config:
        args += ["--run-config", item]
    answer = flwr_answer(args, flwr)
    if not answer.get("run-id"):
        raise RuntimeError(f"flwr run started no run: {answer}")
    return int(answer["run-id"])


def run_status(
    superlink: str | None, run_id: int, flwr: str | None = None
) -> RunStatus:
    """What ``flwr ls [SUPERLINK] --run-id N`` reports of the run."""
    args = ["ls", *_superlink(superlink), "--run-id", str(run_id)]
    runs = flwr_answer(args, flwr).get("runs", [])
    for run in runs:
        if str(run.get("run-id")) == str(run_id):
            return RunStatus(
                run_id, str(run.get("status", "")), str(run.get("status-details", ""))
            )
    raise RuntimeError(f"flwr ls does not list run {run_id}")


def run_to_completion(
    app: Path,
    superlink: str | None,
    run_config: Sequence[str],
    timeout_s: float,
    poll_s: float = 5.0,
    flwr: str | None = None,
) -> RunStatus:
    """Submit a run and poll its status until it has finished; after ``timeout_s`` the
    run is stopped (``flwr stop``) and its last status returned. A failed poll (e.g.
    the SuperLink restarting) is logged and retried until the deadline.

    Raises
    ------
    RuntimeError
        The run was refused (nothing was started).
    """
    run_id = submit_run(app, superlink, run_config, flwr)
    log.info("run %d submitted", run_id)
    deadline = time.monotonic() + timeout_s
    outcome = RunStatus(run_id, "pending")
    while True:
        try:
            outcome = run_status(superlink, run_id, flwr)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
            log.warning("run %d: status not available (%s); retrying", run_id, err)
        if outcome.finished:
            return outcome
        if time.monotonic() >= deadline:
            break
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
    log.error("run %d not finished after %.0f s: stopping it", run_id, timeout_s)
    try:
        flwr_answer(["stop", str(run_id), *_superlink(superlink)], flwr)
    except RuntimeError as err:
        log.error("run %d: %s", run_id, err)
    return RunStatus(
        run_id, outcome.status, f"not finished after {timeout_s:.0f} s; stopped"
    )
