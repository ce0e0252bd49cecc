"""A federation server on 127.0.0.1 laid out as docs/federation.md tells an operator: a TLS CA and
server certificate, ``flower-superlink`` bound to 127.0.0.1 (SuperNode authentication,
``--database``, no run-time dependency installation) and, when nginx is installed, the
nginx front that forwards only the Fleet API. Used by the real-process deployment tests
and ``benchmarks/bench_deployment.py``; also a way to try a federation on one machine.

Public API (tests, benchmarks; keep it stable)::

    free_port() -> int
    nginx_binary() -> str | None
    LocalServer(root, ca, crt, key, conn, address, nginx, registry, daemons)
        .fleet  # the address SuperNodes use: nginx's when it runs, else the SuperLink's
    start_local_server(root, registry=None) -> LocalServer    # stop with deploy.stop_all
    write_tiny_model(path, seed=0) -> Path   # a ~20k-parameter untrained model file
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

import torch
from cryodiscovery.core.model.checkpoint import save_scorer
from cryodiscovery.core.model.nets import ClassNet, NetConfig
from cryodiscovery.core.model.preprocess import PreprocessConfig
from cryodiscovery.core.model.scorer import ClassScorer
from cryodiscovery.federation import control, deploy, gateway


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nginx_binary() -> str | None:
    """The nginx executable (PATH, else Debian's /usr/sbin/nginx), or None."""
    found = shutil.which("nginx")
    if found is None and Path("/usr/sbin/nginx").exists():
        return "/usr/sbin/nginx"
    return found


@dataclass
class LocalServer:
    """What :func:`start_local_server` started, and how to reach it."""

    root: Path
    ca: Path
    crt: Path
    key: Path
    conn: control.CliConnection  # the operator's flwr CLI connection (Control API)
    address: str  # the SuperLink, 127.0.0.1 only
    nginx: str | None  # the nginx front, when nginx is installed
    registry: Path | None  # served by nginx under /registry/ when given
    daemons: list[deploy.Daemon] = field(default_factory=list)

    @property
    def fleet(self) -> str:
        """Where SuperNodes connect: the nginx front when it runs, else the SuperLink."""
        return self.nginx or self.address


def start_local_server(root: Path, registry: Path | None = None) -> LocalServer:
    """Make the TLS material under ``root/tls``, start the SuperLink and, when nginx is
    installed, the nginx front (serving ``registry`` too). On an error every process
    started so far is stopped; otherwise the caller stops ``.daemons``."""
    ca, ca_key = gateway.make_ca(root / "tls")
    crt, key = gateway.make_server_certificate(root / "tls", ca, ca_key, ["127.0.0.1"])
    link = deploy.SuperLinkSpec(ca, crt, key, root / "superlink", port=free_port())
    address = f"127.0.0.1:{link.port}"
    conn = control.CliConnection(root / "operator", address, ca)
    control.write_cli_config(conn)
    server = LocalServer(root, ca, crt, key, conn, address, None, registry)
    try:
        server.daemons += deploy.start_superlink(link)
        if nginx_binary() is not None:
            front = f"127.0.0.1:{free_port()}"
            user = pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() == 0 else None
            site = gateway.NginxSite(
                front,
                crt,
                key,
                ca,
                root / "nginx",
                address,
                user=user,
                registry=registry,
            )
            (root / "nginx").mkdir()
            (root / "nginx" / "nginx.conf").write_text(gateway.nginx_config(site))
            server.daemons.append(
                deploy.start_nginx(root / "nginx" / "nginx.conf", root / "nginx")
            )
            server.nginx = front
    except BaseException:
        deploy.stop_all(server.daemons)
        raise
    return server


def write_tiny_model(path: Path, seed: int = 0) -> Path:
    """An untrained small CNN saved as a model file (32 px input, ~20k parameters): the
    size the stock-Flower round-time figure was taken with."""
    torch.manual_seed(seed)
    net = NetConfig(in_size=32, stem=8, widths=(16, 32))
    scorer = ClassScorer([ClassNet(net)], net, PreprocessConfig(size=32), "single", 0.5)
    scorer.name = "tiny"
    save_scorer(scorer, path)
    return path
