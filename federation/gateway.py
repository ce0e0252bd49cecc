"""The federation server's front door: TLS material (CA, server certificate), SuperNode
keys, and the nginx configuration that exposes only the Fleet API to facilities.

Flower 1.41 serves the Fleet API (SuperNodes), the Control API (``flwr run``, node
registration; no login in the open-source build) and the Runtime API on one HTTPS port.
Whoever reaches the Control API can register a rogue SuperNode key or start a run that
executes code at every facility. So the SuperLink binds to 127.0.0.1 and nginx, which
terminates TLS for the facilities, forwards only the Fleet routes a registered SuperNode
calls (:data:`FLEET_API_PATHS`) and answers everything else with 404.

Public API (deploy, tests, operators; the README shows the same openssl commands)::

    FLEET_API_PATHS
    make_ca(out_dir, common_name=..., days=3650) -> (ca_crt, ca_key)
    make_server_certificate(out_dir, ca_crt, ca_key, hosts, days=825) -> (crt, key)
    make_node_key(path) -> public_key_path          # EC P-384, OpenSSH format
    NginxSite(listen, server_cert, server_key, ca_cert, work_dir, superlink, ...,
              registry=None)
    nginx_config(site) -> str                         # a complete nginx.conf
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
    max_body:
        Largest request body (one pushed model object).
    user:
        Worker user when nginx starts as root (None: nginx's default, ``nobody``).
    registry:
        The model registry folder to publish read-only at ``/registry/`` (for
        ``cryodiscovery federation pull --from https://HOST:PORT/registry/``); None:
        not served.
    """

    listen: str
    server_cert: Path
    server_key: Path
    ca_cert: Path
    work_dir: Path
    superlink: str = "127.0.0.1:8000"
    max_body: str = "512m"
    user: str | None = None
    registry: Path | None = None


def nginx_config(site: NginxSite) -> str:
    """A complete nginx.conf for ``nginx -c FILE`` (foreground, ``daemon off``).

    TLS is terminated with the server certificate; the Fleet routes are re-encrypted
    to the SuperLink, whose certificate is verified against the CA (as ``localhost``);
    every other path (Control API, Runtime API, ``/docs``, ``/health``) gets 404, and
    only POST reaches the Fleet routes. With ``site.registry``, its files are served
    read-only (GET/HEAD, no listing) under ``/registry/``.
    """
    w = site.work_dir
    user = f"user {site.user};\n" if site.user else ""
    registry = (
        f"""        location /registry/ {{
            limit_except GET {{ deny all; }}
            alias {site.registry}/;
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
    upstream superlink {{ server {site.superlink}; keepalive 16; }}
    server {{
        listen {site.listen} ssl;
        ssl_certificate {site.server_cert};
        ssl_certificate_key {site.server_key};
        ssl_protocols TLSv1.2 TLSv1.3;
        client_max_body_size {site.max_body};
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
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
        }}
{registry}        location / {{ return 404; }}
    }}
}}
"""
