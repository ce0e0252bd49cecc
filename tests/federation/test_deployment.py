"""A real deployment on 127.0.0.1: a SuperLink and SuperNodes as subprocesses, with TLS,
SuperNode authentication, the nginx front (when nginx is installed) and the real
ServerApp and ClientApp, each SuperNode with its own generated (non-IID) facility data.

Every process is started in its own session and the module fixtures stop all of them,
also when a test fails. The SuperNodes reach the SuperLink through nginx when it is
installed (the production layout), else directly; the nginx tests skip without it.
"""

from __future__ import annotations

import dataclasses
import http.client
import itertools
import shutil
import signal
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from cryodiscovery.core.model.checkpoint import load_scorer
from cryodiscovery.federation import control, deploy, gateway, task
from cryodiscovery.federation.config import load_facility_config
from cryodiscovery.federation.harvest import harvest
from cryodiscovery.federation.registry import (
    ModelRegistry,
    ModelVersion,
    download_version,
    list_versions,
)
from cryodiscovery.federation.server_app import generated_validation
from support import testbed
from support.sites import NON_IID_SITES, SiteSpec, write_site
from support.testbed import (
    LocalServer,
    free_port,
    nginx_binary,
    write_tiny_model,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("openssl") is None, reason="openssl is not installed"
    ),
]

needs_nginx = pytest.mark.skipif(
    nginx_binary() is None,
    reason="nginx is not installed (apt-get install nginx-light)",
)

#: Three contrasting facilities (molecules, SNR ranges, junk mixes, box sizes).
SITES: dict[str, SiteSpec] = {spec.name: spec for spec in NON_IID_SITES[:3]}
VALIDATION = {"validation-seeds": "4242", "validation-classes": 40}
RUN_TIMEOUT_S = 600.0


@dataclass
class Site:
    name: str
    spec: deploy.SuperNodeSpec
    node_id: int
    daemons: list[deploy.Daemon] = field(default_factory=list)


#: This facility runs the long-running site worker (the others handle each message in
#: the process Flower starts for it).
WORKER_SITE = NON_IID_SITES[0].name


def _facility(
    root: Path, spec: SiteSpec, seed: int, server: LocalServer, worker: bool = False
) -> Path:
    """A facility folder: its RELION project, node key and federation.yaml."""
    key = root / "node_key"
    gateway.make_node_key(key)
    extra: dict[str, object] = {
        "caps": {"local_epochs": 3, "batch_size": 16},
        "validation": {"fraction": 0.25, "seed": 0},
        "cache_dir": str(root / "cache"),
    }
    if worker:
        extra["worker_socket"] = str(root / "run" / "worker.sock")
    return write_site(
        root,
        spec,
        seed,
        ca_certificate=server.ca,
        node_private_key=key,
        superlink=server.fleet,
        extra=extra,
    )


def _dump_logs(daemons: list[deploy.Daemon]) -> None:
    for daemon in daemons:
        print(f"----- {daemon.name} (tail) -----\n{daemon.log_text()[-4000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """SuperLink (+ nginx, serving the model registry) and the operator's connection."""
    root = tmp_path_factory.mktemp("server")
    srv = testbed.start_local_server(root, registry=root / "registry")
    try:
        yield srv
    finally:
        deploy.stop_all(srv.daemons)


@pytest.fixture(scope="module")
def sites(
    server: LocalServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Site]]:
    out: dict[str, Site] = {}
    try:
        for i, (name, spec) in enumerate(SITES.items()):
            root = tmp_path_factory.mktemp(name)
            yaml_path = _facility(
                root, spec, 100 + i, server, worker=name == WORKER_SITE
            )
            spec = deploy.supernode_spec(yaml_path, root / "state", free_port(), 120.0)
            node_id = _register(server, root / "node_key.pub", name)
            out[name] = Site(name, spec, node_id)
            out[name].daemons += deploy.start_supernode(spec)
        control.wait_for_nodes(server.conn, [s.node_id for s in out.values()])
        yield out
    finally:
        deploy.stop_all([d for s in out.values() for d in s.daemons])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt")


def _run(
    server: LocalServer, run_config: dict[str, str | int | float]
) -> control.RunStatus:
    started = time.monotonic()
    run_id = control.start_run(server.conn, run_config)
    status = control.wait_for_run(server.conn, run_id, RUN_TIMEOUT_S)
    print(f"run {run_id}: {status.status} in {time.monotonic() - started:.1f} s")
    return status


def _register(server: LocalServer, public_key: Path, name: str) -> int:
    """``flwr supernode register KEY CONN --name NAME``, as docs/federation.md says; node id."""
    args = ["supernode", "register", str(public_key), server.conn.name, "--name", name]
    return int(control.flwr_json(server.conn, args)["node-id"])


def _versions(registry: Path, run_id: int) -> list[ModelVersion]:
    return [
        v for v in ModelRegistry(registry).versions() if v.run.get("run_id") == run_id
    ]


def test_two_rounds_over_tls_with_node_auth_improve_the_global_model(
    server: LocalServer, sites: dict[str, Site], tiny_model: Path, tmp_path: Path
) -> None:
    registry = server.registry
    assert registry is not None
    config = {
        "num-rounds": 2,
        "min-sites": 3,
        "round-timeout": 300.0,
        "wait-for-sites": 60.0,
        "local-epochs": 3,
        "learning-rate": 0.003,
        "initial-model": str(tiny_model),
        "registry": str(registry),
        **VALIDATION,
    }
    status = _run(server, config)
    if not status.succeeded:
        _dump_logs(server.daemons + [d for s in sites.values() for d in s.daemons])
    assert status.succeeded, status.details

    versions = _versions(registry, status.run_id)
    assert [v.server_round for v in versions] == [1, 2]
    expected = {  # what each site's own harvest yields for training, by its name
        s.name: harvest(load_facility_config(s.spec.facility_config)).n_train
        for s in sites.values()
    }
    for v in versions:
        assert all(c.accepted for c in v.contributions)
        got = {c.site: c.num_examples for c in v.contributions}
        assert got == expected

    worker_log = next(
        d.log_text() for d in sites[WORKER_SITE].daemons if d.name.endswith("-worker")
    )
    assert worker_log.count("train message served") == 2, worker_log[-3000:]
    assert worker_log.count("evaluate message served") == 1  # after the last round

    initial = load_scorer(tiny_model)
    final = load_scorer(versions[-1].checkpoint)
    before = task.scorer_to_arrays(initial).to_numpy_ndarrays()
    after = task.scorer_to_arrays(final).to_numpy_ndarrays()
    assert (
        max(float(np.abs(a - b).max()) for a, b in zip(before, after, strict=True)) > 0
    )
    validation = generated_validation((4242,), 40)
    first = task.evaluate_scorer(initial, validation)
    last = task.evaluate_scorer(final, validation)
    assert last.auc == pytest.approx(versions[-1].metrics["auc"], abs=1e-6)
    print(f"central AUC {first.auc:.3f} -> {[v.metrics['auc'] for v in versions]}")
    assert last.auc > first.auc + 0.03

    if server.nginx is not None:  # facilities pull through the TLS front
        url = f"https://{server.nginx}/registry/"
        remote = list_versions(url, ca_file=server.ca)
        assert [v.sha256 for v in remote][-2:] == [v.sha256 for v in versions]
        download_version(url, remote[-1], tmp_path / "pulled.pt", ca_file=server.ca)
        assert load_scorer(tmp_path / "pulled.pt").sha256 == versions[-1].sha256

    per_round = [
        time.mktime(time.strptime(b.created_utc, "%Y-%m-%dT%H:%M:%SZ"))
        - time.mktime(time.strptime(a.created_utc, "%Y-%m-%dT%H:%M:%SZ"))
        for a, b in itertools.pairwise(versions)
    ]
    print(f"seconds between published versions: {per_round}")


def _https(address: str, ca: Path, method: str, path: str) -> int:
    host, port = address.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=30)
    try:
        conn.request(
            method, path, body=b"\x00", headers={"content-type": "application/protobuf"}
        )
        return conn.getresponse().status
    finally:
        conn.close()


@needs_nginx
def test_outside_clients_reach_only_the_fleet_api_through_nginx(
    server: LocalServer, tmp_path: Path
) -> None:
    assert server.nginx is not None
    direct = server.conn.address
    closed = [
        ("POST", "/v1/control/register-node"),
        ("POST", "/v1/control/start-run"),
        ("POST", "/v1/control/list-runs"),
        ("POST", "/v1/runtime/acquire-task"),
        ("POST", "/v1/fleet/register-node"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
    ]
    for method, path in closed:
        # The SuperLink itself serves the path (it answers, not 404)...
        assert _https(direct, server.ca, method, path) != 404, path
        # ...but nginx does not forward it.
        assert _https(server.nginx, server.ca, method, path) == 404, path
    assert _https(server.nginx, server.ca, "GET", "/v1/fleet/pull-messages") == 403
    assert _https(server.nginx, server.ca, "GET", "/registry/") == 404  # no listing
    assert _https(server.nginx, server.ca, "POST", "/registry/index.json") == 403

    # The flwr CLI pointed at the facility-facing address can do nothing.
    outside = control.CliConnection(tmp_path / "outsider", server.nginx, server.ca)
    control.write_cli_config(outside)
    nodes_before = control.node_statuses(server.conn)
    pub = gateway.make_node_key(tmp_path / "rogue_key")
    with pytest.raises(RuntimeError, match="supernode register"):
        control.register_node(outside, pub)
    with pytest.raises(RuntimeError, match="run"):
        control.start_run(outside, {"num-rounds": 1})
    assert control.node_statuses(server.conn) == nodes_before


def _start_refused_supernode(spec: deploy.SuperNodeSpec) -> deploy.Daemon:
    """The SuperNode process alone: a node the SuperLink refuses exits within a
    second, often before its health endpoint could be polled, so the tests below
    wait for its exit instead of going through :func:`deploy.start_supernode`."""
    name, argv = deploy.supernode_commands(spec)[0]
    env = deploy.flower_env(spec.state_dir / "flwr-home", spec.task_poll_s)
    return deploy.start_daemon(name, argv, spec.state_dir / f"{name}.log", env)


def test_supernode_without_a_registered_key_is_refused(
    server: LocalServer, tmp_path: Path
) -> None:
    yaml_path = _facility(tmp_path, SITES["filaments"], 7, server)
    spec = deploy.supernode_spec(yaml_path, tmp_path / "state", free_port(), 20.0)
    before = control.node_statuses(server.conn)
    daemon = _start_refused_supernode(spec)
    try:
        daemon.proc.wait(timeout=120)
        text = daemon.log_text()
        assert daemon.proc.returncode != 0
        assert "Failed to activate SuperNode" in text, text[-3000:]
    finally:
        deploy.stop_all([daemon])
    assert control.node_statuses(server.conn) == before


def test_supernode_trusting_another_ca_cannot_connect(
    server: LocalServer, tmp_path: Path
) -> None:
    other_ca, _ = gateway.make_ca(tmp_path / "other-ca", common_name="someone else")
    yaml_path = _facility(tmp_path, SITES["filaments"], 8, server)
    pub = tmp_path / "node_key.pub"
    node_id = control.register_node(server.conn, pub)  # only TLS can stop it
    spec = deploy.supernode_spec(yaml_path, tmp_path / "state", free_port(), 10.0)
    spec = dataclasses.replace(spec, ca_cert=other_ca)
    daemon = _start_refused_supernode(spec)
    try:
        daemon.proc.wait(timeout=120)
        text = daemon.log_text()
        assert daemon.proc.returncode != 0
        assert (
            "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text
        ), text[-3000:]
    finally:
        deploy.stop_all([daemon])
    assert control.node_statuses(server.conn)[node_id] == "registered"


def test_supernodes_come_back_after_a_superlink_restart(
    server: LocalServer, sites: dict[str, Site]
) -> None:
    """The SuperLink keeps registered keys in its --database: after a restart the
    running SuperNodes reconnect by themselves, nothing is registered again."""
    ids = [s.node_id for s in sites.values()]
    link_daemons = [d for d in server.daemons if d.name.startswith("superlink")]
    deploy.stop_all(link_daemons)
    server.daemons = [d for d in server.daemons if d not in link_daemons]
    spec = deploy.SuperLinkSpec(
        server.ca,
        server.crt,
        server.key,
        server.root / "superlink",
        port=int(server.conn.address.rsplit(":", 1)[1]),
    )
    server.daemons[:0] = deploy.start_superlink(spec)
    control.wait_for_nodes(server.conn, ids, timeout_s=180)
    assert all(s.daemons[0].alive() for s in sites.values())


def _kill_when_training(victim: Site, timeout_s: float = 300.0) -> None:
    """SIGKILL the victim's SuperNode and SuperExec (and its ClientApp) once it has
    received a train message: a site that crashes mid-round."""
    node = victim.daemons[0]
    start = len(node.log_text())
    deadline = time.monotonic() + timeout_s
    while "Receiving: train message" not in node.log_text()[start:]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{victim.name} received no train message")
        time.sleep(0.1)
    for daemon in victim.daemons:
        daemon.signal(signal.SIGKILL)


@pytest.fixture
def victim(
    server: LocalServer,
    sites: dict[str, Site],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Site]:
    """A fourth SuperNode that a test kills."""
    root = tmp_path_factory.mktemp("victim")
    yaml_path = _facility(root, SITES["globular-clean"], 11, server)
    spec = deploy.supernode_spec(yaml_path, root / "state", free_port(), 60.0)
    site = Site("victim", spec, _register(server, root / "node_key.pub", "victim"))
    try:
        site.daemons += deploy.start_supernode(spec)
        control.wait_for_nodes(server.conn, [site.node_id])
        yield site
    finally:
        deploy.stop_all(site.daemons)


@pytest.mark.parametrize("min_sites", [3, 4])
def test_supernode_killed_mid_round(
    server: LocalServer,
    sites: dict[str, Site],
    victim: Site,
    tiny_model: Path,
    tmp_path: Path,
    min_sites: int,
) -> None:
    """4 sites; one crashes while training. With min-sites 3 the round completes with
    the other three; with min-sites 4 the run ends with a clear error."""
    registry = tmp_path / "registry"
    config = {
        "num-rounds": 1,
        "min-sites": min_sites,
        "round-timeout": 300.0,  # the crashed site is declared offline within 60 s
        "wait-for-sites": 60.0,
        "initial-model": str(tiny_model),
        "registry": str(registry),
        **VALIDATION,
    }
    run_id = control.start_run(server.conn, config)
    _kill_when_training(victim)
    status = control.wait_for_run(server.conn, run_id, RUN_TIMEOUT_S)
    print(f"run {run_id} with min-sites {min_sites}: {status}")
    if min_sites == 3:
        assert status.succeeded, status.details
        (version,) = _versions(registry, run_id)
        accepted = [c for c in version.contributions if c.accepted]
        assert len(accepted) == 3
        assert victim.name not in {c.site for c in accepted}
    else:
        assert status.status == "finished:failed"
        assert "victim:" in status.details, status.details  # its registered name
        assert _versions(registry, run_id) == []
