"""The site worker: the deployment's ClientApp (site_app) hands each message to a
long-running worker over a private Unix socket; results are those of the in-process
ClientApp, SecAgg+ state survives the round trip, and a missing worker is not fatal."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.model.checkpoint import load_scorer
from cryodiscovery.federation import site_app, task, worker
from cryodiscovery.federation.config import load_facility_config
from cryodiscovery.federation.registry import ModelRegistry
from fed_fixtures import make_sites, run_apps, run_config, save_initial
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from support.loopback import server_identity, stamped


@pytest.fixture(scope="module")
def sockets() -> Iterator[Path]:
    """A short private folder for the sockets (Unix socket paths are limited)."""
    with tempfile.TemporaryDirectory(prefix="cdw-", dir="/tmp") as tmp:
        yield Path(tmp)


@pytest.fixture(scope="module")
def fed(
    tmp_path_factory: pytest.TempPathFactory, sockets: Path
) -> Iterator[SimpleNamespace]:
    """Three generated sites, each with a running worker (threads of this process)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("workers")
    save_initial(root / "initial.pt")
    extra = {
        n: {"worker_socket": str(sockets / "s" / f"{n}.sock"), "model_path": None}
        for n in (1, 2, 3)
    }
    sites = make_sites(root / "sites", 3, n_classes=24, extra=extra)
    stop = threading.Event()
    threads = []
    for path in sites.values():
        ready = threading.Event()
        t = threading.Thread(target=worker.serve, args=(path, ready, stop), daemon=True)
        t.start()
        assert ready.wait(120), "worker did not start"
        threads.append(t)
    yield SimpleNamespace(root=root, sites=sites, sockets=sockets)
    stop.set()
    for t in threads:
        t.join(10)


def _config(root: Path, registry: str, **more: object) -> dict[str, object]:
    settings = {"validation-seeds": "7", "validation-classes": 30, "local-epochs": 2}
    return run_config(root, registry, **{**settings, **more})


def _final_arrays(registry: Path) -> list[np.ndarray]:
    final = load_scorer(ModelRegistry(registry).versions()[-1].checkpoint)
    return task.scorer_to_arrays(final).to_numpy_ndarrays()


@pytest.mark.parametrize(("schedule", "atol"), [("onecycle", 1e-6), ("constant", 1e-3)])
def test_rounds_through_workers_equal_rounds_in_process(
    fed: SimpleNamespace, schedule: str, atol: float
) -> None:
    """Same weights either way. With the one-cycle local schedule to 1e-6; with a
    constant rate the two paths differ at about 1e-4 after 2 rounds (a few weights in
    thousands; float rounding differences that a full rate at the end of each round
    carries on; the source is not pinned down)."""
    via_name, direct_name = f"via-workers-{schedule}", f"in-process-{schedule}"
    more = {"local-lr-schedule": schedule}
    run_apps(fed.sites, _config(fed.root, via_name, **more), handler=site_app.app)
    run_apps(fed.sites, _config(fed.root, direct_name, **more))
    via, direct = (
        _final_arrays(fed.root / via_name),
        _final_arrays(fed.root / direct_name),
    )
    assert len(via) == len(direct)
    for a, b in zip(via, direct, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=atol)
    versions = ModelRegistry(fed.root / via_name).versions()
    assert [v.server_round for v in versions] == [1, 2]
    assert all(c.accepted for v in versions for c in v.contributions)


def test_secure_aggregation_state_survives_the_worker_round_trip(
    fed: SimpleNamespace,
) -> None:
    grid = run_apps(
        fed.sites,
        _config(fed.root, "secagg", secagg=True, **{"num-rounds": 1}),
        handler=site_app.app,
    )
    (version,) = ModelRegistry(fed.root / "secagg").versions()
    assert sum(c.accepted for c in version.contributions) == 3
    up = [t for t in grid.traffic if t.direction == "up"]
    assert up and not any(t.message.has_error() for t in up)


def _evaluate_message(site: Path) -> tuple[Message, Context]:
    scorer = load_scorer(site.parent.parent.parent / "initial.pt")
    content = RecordDict(
        {
            "arrays": task.scorer_to_arrays(scorer),
            "config": ConfigRecord(
                {"model-spec": task.model_spec(scorer), "server-round": 1}
            ),
        }
    )
    with server_identity(1):
        msg = Message(content, dst_node_id=1, message_type=MessageType.EVALUATE)
    msg = stamped(msg, message_id="m1")
    ctx = Context(1, 1, {site_app.NODE_CONFIG_KEY: str(site)}, RecordDict(), {})
    return msg, ctx


def test_a_missing_worker_means_in_process_handling(
    fed: SimpleNamespace, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = yaml.safe_load(fed.sites[1].read_text())
    data["worker_socket"] = str(fed.sockets / "nobody-listens.sock")
    site = fed.sites[1].with_name("no-worker.yaml")
    site.write_text(yaml.safe_dump(data))
    msg, ctx = _evaluate_message(site)
    with caplog.at_level(logging.WARNING):
        reply = site_app.app(msg, ctx)
    assert "not reachable" in caplog.text
    assert not reply.has_error()
    assert set(reply.content.metric_records["metrics"].keys()) >= {"auc", "loss"}


def test_a_worker_refuses_messages_for_another_facility(fed: SimpleNamespace) -> None:
    other = fed.sites[2]
    msg, ctx = _evaluate_message(other)
    socket_of_site_1 = load_facility_config(fed.sites[1]).worker_socket
    assert socket_of_site_1 is not None
    with pytest.raises(site_app.WorkerError, match="another facility"):
        site_app.forward(socket_of_site_1, msg, ctx)


def test_socket_is_private_and_never_shared(
    fed: SimpleNamespace, tmp_path: Path
) -> None:
    path = load_facility_config(fed.sites[1]).worker_socket
    assert path is not None
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    assert path.parent.stat().st_mode & 0o077 == 0
    with pytest.raises(InputError, match="already listening"):
        worker.prepare_socket(path)
    (tmp_path / "file.sock").write_text("not a socket")
    with pytest.raises(InputError, match="not a socket"):
        worker.prepare_socket(tmp_path / "file.sock")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(InputError, match="not writable by others"):
        worker.prepare_socket(shared / "w.sock")


def test_malformed_requests_get_an_error_not_a_crash(fed: SimpleNamespace) -> None:
    path = load_facility_config(fed.sites[3]).worker_socket
    assert path is not None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        site_app.send_frames(sock, [b"not a context", b"{}", b""])
        (status,) = site_app.read_frames(sock, 1)
    assert b'"ok": false' in status
    msg, ctx = _evaluate_message(fed.sites[3])  # still serving
    reply = site_app.forward(path, msg, ctx)
    assert not reply.has_error()


def test_the_deployment_clientapp_imports_no_torch() -> None:
    code = (
        "import sys, cryodiscovery.federation.site_app; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, env=dict(os.environ)
    )
    assert done.returncode == 0


def test_worker_needs_an_enabled_config_with_a_socket(tmp_path: Path) -> None:
    (tmp_path / "federation.yaml").write_text("enabled: false\n")
    with pytest.raises(InputError, match="no worker_socket"):
        worker.serve(tmp_path / "federation.yaml")
    (tmp_path / "federation.yaml").write_text(
        f"enabled: false\nworker_socket: {tmp_path}/w.sock\n"
    )
    with pytest.raises(InputError, match="not enabled"):
        worker.serve(tmp_path / "federation.yaml")
