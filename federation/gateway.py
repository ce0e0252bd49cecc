"""The federation server's front door: TLS material (CA, server certificate), SuperNode
keys, and the nginx configuration that exposes only the Fleet API to facilities.

Flower 1.41 serves the Fleet API (SuperNodes), the Control API (``flwr run``, node
registration; no login in the open-source build) and the Runtime API on one HTTPS port.
Whoever reaches the Control API can register a rogue SuperNode key or start a run that
executes code at every facility. So the SuperLink binds to 127.0.0.1 and nginx, which
terminates TLS for the facilities, forwards only the Fleet routes a registered SuperNode
calls (:data:`FLEET_API_PATHS`) and answers everything else with 404. The SuperLink
checks a SuperNode's signature only after it has read the whole request, so nginx also
bounds what an outsider can make it read: request bodies to what a message of the model
needs (:func:`body_limit`), requests per second and connections per client address, and
only normalised paths (a ``..``, ``//`` or percent-encoded path is refused with 400, as
nginx would otherwise forward the raw path it matched in normalised form).

Public API (deploy, tests, operators; the README shows the same openssl commands)::

    FLEET_API_PATHS
    make_ca(out_dir, common_name=..., days=3650) -> (ca_crt, ca_key)
    make_server_certificate(out_dir, ca_crt, ca_key, hosts, days=825) -> (crt, key)
    make_node_key(path) -> public_key_path          # EC P-384, OpenSSH format
    NginxSite(listen, server_cert, server_key, ca_cert, work_dir, superlink, ...,
              registry=None, max_body=None, rate_per_s=20, burst=200)
    nginx_config(site) -> str                         # a complete nginx.conf
    body_limit(nbytes, margin=2.0, overhead=1 MiB) -> int   # bytes
    model_bytes(model=None) -> int    # what a message carries of a model file's weights
"""

from __future__ import annotations

import ipaddress
import math
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryodiscovery.federation.registry import CHECKPOINT_NAME, PUBLIC_INDEX_NAME
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

#: Fleet API routes (``POST /v1/fleet/<route>``) that a SuperNode with a registered key
#: calls in flwr 1.41 (``flwr/supernode/fleet_http_client.py``, served by
#: ``flwr/superlink/routers/fleet/router.py``). ``register-node`` and ``unregister-node``
#: are left out on purpose: only self-registering SuperNodes (auth off) use them.
FLEET_API_PATHS: tuple[str, ...] = (
    "activate-node",
    "deactivate-node",
    "send-node-heartbeat",
    "pull-messages",
    "push-messages",
    "get-run",
    "get-fab",
    "push-object",
    "pull-object",
    "confirm-message-received",
)

_CHECKPOINT_RE = re.escape(CHECKPOINT_NAME)

_SERVER_EXT = """\
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName={san}
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
"""


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def make_ca(
    out_dir: Path, common_name: str = "cryodiscovery federation CA", days: int = 3650
) -> tuple[Path, Path]:
    """A self-signed CA (EC P-256) made with openssl.

    Returns
    -------
    (ca.crt, ca.key) in ``out_dir``; the key is mode 0600. Keep the key offline: it
    signs server certificates only.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    crt, key = out_dir / "ca.crt", out_dir / "ca.key"
    # fmt: off
    _openssl("req", "-x509", "-new", "-newkey", "ec",
             "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", crt, "-days", str(days),
             "-subj", f"/CN={common_name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    # fmt: on
    key.chmod(0o600)
    return crt, key


def make_server_certificate(
    out_dir: Path, ca_crt: Path, ca_key: Path, hosts: Sequence[str], days: int = 825
) -> tuple[Path, Path]:
    """A server certificate (EC P-256) signed by the CA, made with openssl.

    Parameters
    ----------
    hosts:
        DNS names or IP addresses facilities use to reach the server (the first is the
        subject CN). ``localhost`` and ``127.0.0.1`` are always added: nginx and the
        SuperExec reach the SuperLink there with the same certificate.

    Returns
    -------
    (server.crt, server.key) in ``out_dir`` (plus server.csr, server.ext, ca.srl).
    """
    names = list(dict.fromkeys([*hosts, "localhost", "127.0.0.1"]))
    san = ",".join(("IP:" if _is_ip(h) else "DNS:") + h for h in names)
    crt, key = out_dir / "server.crt", out_dir / "server.key"
    csr, ext = out_dir / "server.csr", out_dir / "server.ext"
    ext.write_text(_SERVER_EXT.format(san=san))
    # fmt: off
    _openssl("req", "-new", "-newkey", "ec",
             "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", csr, "-subj", f"/CN={names[0]}")
    _openssl("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
             "-CAcreateserial", "-out", crt, "-days", str(days), "-extfile", ext)
    # fmt: on
    key.chmod(0o600)
    return crt, key


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def make_node_key(path: Path) -> Path:
    """A SuperNode key pair, as ``ssh-keygen -t ecdsa -b 384 -N "" -f PATH`` makes it.

    The private key (EC P-384, OpenSSH format, mode 0600) goes to ``path`` and stays at
    the facility; the public key goes to ``path.pub`` and is what the server operator
    registers with ``flwr supernode register``. Returns the public key's path.
    """
    key = ec.generate_private_key(ec.SECP384R1())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    pub = path.with_name(path.name + ".pub")
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    return pub


@dataclass(frozen=True)
class NginxSite:
    """The facility-facing TLS front.

    Parameters
    ----------
    listen:
        ``host:port`` nginx listens on for facilities (e.g. ``0.0.0.0:9092``).
    server_cert, server_key:
        The server certificate facilities verify (against ``ca_cert``).
    ca_cert:
        The CA; nginx verifies the SuperLink's certificate (same CA) with it.
    work_dir:
        nginx's pid file, logs and temporary files.
    superlink:
        The SuperLink's loopback ``host:port``.
    user:
        Worker user when nginx starts as root (None: nginx's default, ``nobody``).
    registry:
        The model registry folder whose public part (``public-index.json`` as
        ``/registry/index.json``, and ``vNNNN/model.pt``) is served read-only at
        ``/registry/`` (for ``cryodiscovery federation pull --from
        https://HOST:PORT/registry/``); nothing that names a facility is served. None:
        not served.
    max_body:
        Largest request body in bytes; None: :func:`body_limit` of the shipped default
        model (give ``body_limit(model_bytes(PATH))`` for a larger initial model).
    rate_per_s, burst:
        Requests per second per client address, and the burst above it that is still
        served at once (a round is a few requests per SuperNode; heartbeats and polls
        are one every few seconds); the excess gets 429.
    """

    listen: str
    server_cert: Path
    server_key: Path
    ca_cert: Path
    work_dir: Path
    superlink: str = "127.0.0.1:8000"
    user: str | None = None
    registry: Path | None = None
    max_body: int | None = None
    rate_per_s: int = 20
    burst: int = 200


def model_bytes(model: Path | None = None) -> int:
    """Bytes of the weights a message carries for the model file ``model`` (None: the
    shipped default model)."""
    from cryodiscovery.core.model.checkpoint import load_scorer
    from cryodiscovery.federation import task  # torch: only when a size is asked for

    return int(task.scorer_to_arrays(load_scorer(model)).count_bytes())


def body_limit(nbytes: int, margin: float = 2.0, overhead: int = 1 << 20) -> int:
    """The largest request body nginx forwards: ``margin`` times a message that carries
    the whole model (``nbytes`` of weights), plus ``overhead`` bytes for the
    message metadata, config and metric records (a SuperNode pushes the weights as
    objects of at most 5 MiB, so this bound is never below what it sends).

    Raises
    ------
    ValueError
        ``nbytes`` is not positive or ``margin`` is below 1.
    """
    if nbytes <= 0 or margin < 1:
        raise ValueError(f"nbytes {nbytes} and margin {margin} must be > 0, >= 1")
    return math.ceil(nbytes * margin) + int(overhead)


def nginx_config(site: NginxSite) -> str:
    """A complete nginx.conf for ``nginx -c FILE`` (foreground, ``daemon off``).

    TLS is terminated with the server certificate; the Fleet routes are re-encrypted
    to the SuperLink, whose certificate is verified against the CA (as ``localhost``);
    every other path (Control API, Runtime API, ``/docs``, ``/health``) gets 404, and
    only POST reaches the Fleet routes. A request whose raw path is not its normalised
    path gets 400; a body over ``site.max_body`` gets 413 before anything is forwarded,
    and requests past the rate limit 429. With ``site.registry``, its public index and
    model files are served read-only (GET/HEAD) under ``/registry/``; any other path
    there (``version.json``, listings) gets 404.
    """
    w = site.work_dir
    user = f"user {site.user};\n" if site.user else ""
    max_body = site.max_body if site.max_body is not None else body_limit(model_bytes())
    registry = (
        f"""        location = /registry/index.json {{
            limit_except GET {{ deny all; }}
            alias {site.registry}/{PUBLIC_INDEX_NAME};
        }}
        location ~ ^/registry/(v[0-9]+)/{_CHECKPOINT_RE}$ {{
            limit_except GET {{ deny all; }}
            alias {site.registry}/$1/{CHECKPOINT_NAME};
        }}
"""
        if site.registry
        else ""
    )
    return f"""{user}worker_processes 1;
daemon off;
pid {w}/nginx.pid;
error_log {w}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log {w}/access.log;
    client_body_temp_path {w}/client_body;
    proxy_temp_path {w}/proxy;
    fastcgi_temp_path {w}/fastcgi;
    uwsgi_temp_path {w}/uwsgi;
    scgi_temp_path {w}/scgi;
    server_tokens off;
    limit_req_zone $binary_remote_addr zone=perclient:10m rate={site.rate_per_s}r/s;
    limit_conn_zone $binary_remote_addr zone=perclientconn:10m;
    limit_req_status 429;
    limit_conn_status 429;
    upstream superlink {{ server {site.superlink}; keepalive 16; }}
    server {{
        listen {site.listen} ssl;
        ssl_certificate {site.server_cert};
        ssl_certificate_key {site.server_key};
        ssl_protocols TLSv1.2 TLSv1.3;
        client_max_body_size {max_body};
        client_body_timeout 60s;
        limit_req zone=perclient burst={site.burst} nodelay;
        limit_conn perclientconn 32;
        # The raw path must be the normalised one nginx matched (no "..", "//", "%XX",
        # query): nginx would otherwise forward the raw path to the SuperLink.
        if ($request_uri != $uri) {{ return 400; }}
        # Only the Fleet API of registered SuperNodes; never /v1/control or /v1/runtime.
        location ~ ^/v1/fleet/({"|".join(FLEET_API_PATHS)})$ {{
            limit_except POST {{ deny all; }}
            proxy_pass https://superlink;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {site.ca_cert};
            proxy_ssl_name localhost;
            proxy_ssl_session_reuse on;
            proxy_request_buffering on;
            proxy_buffering off;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
        }}
{registry}        location / {{ return 404; }}
    }}
}}
"""
