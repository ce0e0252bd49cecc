"""The nginx front in front of a stand-in SuperLink (an HTTPS server that records what
reaches it): oversized bodies, non-normalised paths and floods are stopped at nginx, and
the registry serves only its public index and model files."""

from __future__ import annotations

import http.client
import http.server
import math
import os
import pwd
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from cryodiscovery.core.model.checkpoint import save_scorer
from cryodiscovery.federation import deploy
from cryodiscovery.federation.gateway import (
    NginxSite,
    make_ca,
    make_server_certificate,
    nginx_config,
)
from cryodiscovery.federation.registry import Contribution, ModelRegistry
from fed_fixtures import tiny_scorer

NGINX = shutil.which("nginx") or (
    "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl"),
]


class _Upstream(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, int]]] = []

    def do_POST(self) -> None:
        size = int(self.headers.get("content-length", 0))
        self.rfile.read(size)
        self.seen.append((self.path, size))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def front(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """(nginx address, CA, registry) with a stand-in SuperLink behind nginx."""
    ca, ca_key = make_ca(tmp_path / "tls")
    crt, key = make_server_certificate(tmp_path / "tls", ca, ca_key, ["127.0.0.1"])
    _Upstream.seen = []
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    upstream.socket = ctx.wrap_socket(upstream.socket, server_side=True)
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    registry = tmp_path / "registry"
    ModelRegistry(registry).publish(
        lambda p: save_scorer(tiny_scorer(), p),
        server_round=1,
        metrics={"auc": 0.9},
        contributions=(Contribution("facility-a", 77, True),),
    )
    listen = f"127.0.0.1:{_free_port()}"
    site = NginxSite(
        listen,
        crt,
        key,
        ca,
        tmp_path / "nginx",
        superlink=f"127.0.0.1:{upstream.server_address[1]}",
        user=pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() == 0 else None,
        registry=registry,
        max_body=100_000,
        rate_per_s=5,
        burst=20,
    )
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_config(site))
    daemon = deploy.start_nginx(conf, tmp_path / "nginx")
    try:
        yield listen, ca, registry
    finally:
        daemon.stop()
        upstream.shutdown()
        upstream.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(
    address: str, ca: Path, method: str, path: str, body: bytes = b"\x00"
) -> tuple[int, bytes]:
    host, port = address.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        conn.putheader("content-type", "application/protobuf")
        conn.putheader("content-length", str(len(body)))
        conn.endheaders()
        try:
            conn.send(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # nginx answered (413) and closed before the whole body was sent
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_nginx_stops_big_bodies_raw_paths_and_floods_before_the_superlink(
    front: tuple[str, Path, Path],
) -> None:
    address, ca, _ = front
    assert _request(address, ca, "POST", "/v1/fleet/pull-messages")[0] == 200
    assert _Upstream.seen == [("/v1/fleet/pull-messages", 1)]
    big = _request(address, ca, "POST", "/v1/fleet/push-object", b"x" * 300_000)
    assert big[0] == 413
    for raw in (
        "/v1/control/../fleet/pull-messages",
        "/v1/fleet/x/../pull-messages",
        "//v1/fleet/pull-messages",
        "/v1/fleet/pull%2Dmessages",
        "/v1/fleet/pull-messages?x=1",
    ):
        assert _request(address, ca, "POST", raw)[0] == 400, raw
    assert len(_Upstream.seen) == 1  # none of them reached the stand-in SuperLink
    start = time.monotonic()
    codes = [
        _request(address, ca, "POST", "/v1/fleet/pull-messages")[0] for _ in range(60)
    ]
    elapsed = time.monotonic() - start
    # 5 requests/s with a burst of 20: at most the burst, the one before it and what
    # the rate refills while the 60 requests take their time (TLS handshakes each).
    assert 429 in codes
    assert codes.count(200) <= 21 + math.ceil(5 * elapsed) + 1, (codes, elapsed)


def test_registry_serves_the_public_index_and_models_only(
    front: tuple[str, Path, Path],
) -> None:
    address, ca, registry = front
    status, body = _request(address, ca, "GET", "/registry/index.json", b"")
    assert status == 200 and b"facility-a" not in body and b"77" not in body
    assert b"v0001/model.pt" in body
    model = _request(address, ca, "GET", "/registry/v0001/model.pt", b"")
    assert model == (200, (registry / "v0001" / "model.pt").read_bytes())
    for path in ("/registry/", "/registry/v0001/version.json", "/registry/.lock"):
        assert _request(address, ca, "GET", path, b"")[0] == 404, path
    assert _request(address, ca, "POST", "/registry/index.json")[0] == 403
