"""`cryodiscovery federation run`: exit status 0 only when the run finished completed,
tried against a stand-in ``flwr`` that answers as flwr 1.41's ``--format json`` does."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
from cryodiscovery.federation import cli, submission
from cryodiscovery.federation.deploy import APP_DIR

FAKE_FLWR = """\
import json, sys
from pathlib import Path
state = Path(sys.argv[0]).with_suffix(".json")
script = json.loads(state.read_text())
calls = script.setdefault("calls", [])
calls.append(sys.argv[1:])
cmd = sys.argv[1]
if cmd == "run":
    answer = script["run"]
elif cmd == "ls":
    statuses = script["statuses"]
    status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
    answer = {"success": True, "runs": [
        {"run-id": "42", "status": status, "status-details": script.get("details", "")}
    ]}
else:
    answer = {"success": True}
state.write_text(json.dumps(script))
print(json.dumps(answer))
"""


def _flwr(tmp_path: Path, **script: object) -> Path:
    """A stand-in ``flwr`` executable driven by ``script`` (written beside it)."""
    exe = tmp_path / "flwr"
    exe.write_text(f"#!{sys.executable}\n{FAKE_FLWR}")
    exe.chmod(0o755)
    exe.with_suffix(".json").write_text(json.dumps(script))
    return exe


def _calls(exe: Path) -> list[list[str]]:
    return list(json.loads(exe.with_suffix(".json").read_text())["calls"])


def _main(argv: list[str], exe: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(submission, "_flwr", lambda flwr: str(exe))
    parser = argparse.ArgumentParser(prog="cryodiscovery federation")
    cli.add_args(parser)
    return cli.main(parser.parse_args(argv))


STARTED = {"success": True, "run-id": "42"}


def test_run_exits_0_only_when_the_run_finished_completed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    exe = _flwr(
        tmp_path, run=STARTED, statuses=["pending", "running", "finished:completed"]
    )
    argv = ["run", "cryodiscovery", "-c", "num-rounds=2", "--poll", "0.01"]
    assert _main(argv, exe, monkeypatch) == 0
    assert "run 42 finished:completed" in capsys.readouterr().out
    calls = _calls(exe)
    assert calls[0][:2] == ["run", str(APP_DIR)]
    assert calls[0][2:] == [
        "cryodiscovery",
        "--run-config",
        "num-rounds=2",
        "--format",
        "json",
    ]
    assert calls[1] == ["ls", "cryodiscovery", "--run-id", "42", "--format", "json"]


@pytest.mark.parametrize("status", ["finished:failed", "finished:stopped"])
def test_run_exits_1_when_the_run_failed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    status: str,
) -> None:
    exe = _flwr(tmp_path, run=STARTED, statuses=["running", status], details="boom")
    assert _main(["run", "--poll", "0.01"], exe, monkeypatch) == 1
    assert f"run 42 {status}: boom" in capsys.readouterr().out


def test_run_exits_1_when_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``flwr run --format json`` exits 0 with ``success: false`` when refused."""
    refused = {"success": False, "error-message": "Failed to start run"}
    exe = _flwr(tmp_path, run=refused, statuses=["finished:completed"])
    assert _main(["run"], exe, monkeypatch) == 1
    assert "Failed to start run" in capsys.readouterr().out
    assert [c[0] for c in _calls(exe)] == ["run"]


def test_run_not_finished_in_time_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exe = _flwr(tmp_path, run=STARTED, statuses=["running"])
    argv = ["run", "--timeout", "0.2", "--poll", "0.05"]
    assert _main(argv, exe, monkeypatch) == 1
    assert _calls(exe)[-1] == ["stop", "42", "--format", "json"]
