"""Deployment pieces that need no running server: TLS material, SuperNode keys, the nginx
configuration, the Flower App folder, the commands' security flags and process cleanup."""

from __future__ import annotations

import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
from cryodiscovery.federation import settings
from cryodiscovery.federation.deploy import (
    APP_DIR,
    NODE_CONFIG_KEY,
    SuperLinkSpec,
    start_daemon,
    superlink_commands,
    supernode_commands,
    supernode_spec,
)
from cryodiscovery.federation.gateway import (
    FLEET_API_PATHS,
    NginxSite,
    body_limit,
    make_ca,
    make_node_key,
    make_server_certificate,
    model_bytes,
    nginx_config,
)
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

needs_openssl = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="openssl is not installed"
)
NGINX = shutil.which("nginx") or (
    "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    out = tmp_path_factory.mktemp("pki")
    ca, ca_key = make_ca(out)
    crt, key = make_server_certificate(out, ca, ca_key, ["fed.example.org", "10.1.2.3"])
    return {"ca": ca, "ca_key": ca_key, "crt": crt, "key": key}


def test_server_certificate_verifies_strictly_and_names_every_host(
    pki: dict[str, Path],
) -> None:
    subprocess.run(
        ["openssl", "verify", "-x509_strict", "-CAfile", pki["ca"], pki["crt"]],
        check=True,
        capture_output=True,
    )
    cert = x509.load_pem_x509_certificate(pki["crt"].read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {
        "fed.example.org",
        "localhost",
    }
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert ips == {"10.1.2.3", "127.0.0.1"}
    assert (
        cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    )
    for path in (pki["ca_key"], pki["key"]):
        assert path.stat().st_mode & 0o077 == 0, f"{path.name} readable by others"
    # Python's TLS stack (what Flower's httpx client uses) accepts the chain.
    ssl.create_default_context(cafile=str(pki["ca"])).load_cert_chain(
        pki["crt"], pki["key"]
    )


def test_node_key_is_an_openssh_ec_key_that_flower_registers(tmp_path: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key

    pub = make_node_key(tmp_path / "keys" / "node_key")
    private = load_ssh_private_key((tmp_path / "keys" / "node_key").read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.curve.name == "secp384r1"
    assert pub.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert (tmp_path / "keys" / "node_key").stat().st_mode & 0o077 == 0
    assert b"BEGIN PUBLIC KEY" in try_load_public_key(pub)


def test_nginx_config_forwards_only_the_fleet_api(
    pki: dict[str, Path], tmp_path: Path
) -> None:
    site = NginxSite(
        "127.0.0.1:9092",
        pki["crt"],
        pki["key"],
        pki["ca"],
        tmp_path,
        registry=tmp_path / "registry",
    )
    text = nginx_config(site)
    routes = re.search(r"location ~ \^/v1/fleet/\(([^)]*)\)\$", text)
    assert routes is not None
    assert tuple(routes.group(1).split("|")) == FLEET_API_PATHS
    assert "register-node" not in FLEET_API_PATHS and "control" not in routes.group(1)
    assert "location / { return 404; }" in text
    assert f"alias {tmp_path / 'registry'}/public-index.json;" in text
    assert "limit_except GET" in text and "version.json" not in text
    assert "/registry/" not in nginx_config(replace(site, registry=None))
    assert "proxy_ssl_verify on;" in text and "proxy_pass https://superlink;" in text
    # Every Fleet route a registered SuperNode of the pinned flwr calls is forwarded.
    from flwr.supernode import fleet_http_client

    called = set(
        re.findall(
            r'path="/v1/fleet/([a-z-]+)"', Path(fleet_http_client.__file__).read_text()
        )
    )
    assert called - set(FLEET_API_PATHS) == {"register-node", "unregister-node"}
    if NGINX is None:
        pytest.skip("nginx is not installed: syntax check skipped")
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    done = subprocess.run(
        [
            NGINX,
            "-t",
            "-c",
            str(conf),
            "-p",
            str(tmp_path),
            "-e",
            str(tmp_path / "e.log"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_flower_app_folder_is_valid_and_declares_every_server_setting() -> None:
    from flwr.cli.config_utils import load_and_validate

    assert not (APP_DIR / "__init__.py").exists()
    config, _ = load_and_validate(APP_DIR / "pyproject.toml")  # imports nothing
    app = config["tool"]["flwr"]["app"]
    assert app["components"] == {
        "serverapp": "cryodiscovery.federation.server_app:app",
        "clientapp": "cryodiscovery.federation.site_app:app",
    }
    assert (
        "federations" not in config["tool"]["flwr"]
    )  # flwr 1.41 would rewrite the file
    assert sorted(app["config"]) == sorted(settings.RUN_CONFIG_KEYS)
    settings.settings_from_run_config(app["config"])
    raw = tomllib.loads((APP_DIR / "pyproject.toml").read_text())
    assert "flwr==1.41.0" in raw["project"]["dependencies"]


def test_commands_carry_the_security_flags(tmp_path: Path) -> None:
    from cryodiscovery.federation import client_app

    spec = SuperLinkSpec(tmp_path / "ca", tmp_path / "crt", tmp_path / "key", tmp_path)
    (_, link), (_, link_exec) = superlink_commands(spec)
    for flag in (
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--superexec-auth-secret-file",
    ):
        assert flag in link
    assert link[link.index("--host") + 1] == "127.0.0.1"
    assert link[link.index("--isolation") + 1] == "process"
    assert link[link.index("--database") + 1] == str(tmp_path / "superlink.db")
    secret = tmp_path / "superexec.secret"
    assert link_exec[link_exec.index("--superexec-auth-secret-file") + 1] == str(secret)
    assert len(secret.read_bytes()) == 32 and secret.stat().st_mode & 0o077 == 0
    assert "--insecure" not in link + link_exec

    assert NODE_CONFIG_KEY == client_app.NODE_CONFIG_KEY
    site = tmp_path / "site"
    site.mkdir()
    (site / "ca.crt").write_text("x")
    (site / "node_key").write_text("x")
    (site / "federation.yaml").write_text(
        "enabled: true\nsuperlink: fed.example.org:9092\n"
        "ca_certificate: ca.crt\nnode_private_key: node_key\n"
    )
    node_spec = supernode_spec(site / "federation.yaml", tmp_path / "state")
    (_, node), (_, node_exec) = supernode_commands(node_spec)
    assert node[node.index("--superlink") + 1] == "fed.example.org:9092"
    assert node[node.index("--root-certificates") + 1] == str(site / "ca.crt")
    assert node[node.index("--auth-supernode-private-key") + 1] == str(
        site / "node_key"
    )
    config_arg = node[node.index("--node-config") + 1]
    assert config_arg == f'facility-config="{site / "federation.yaml"}"'
    assert "--insecure" not in node  # only the loopback Runtime API hop is plain HTTP
    assert node_exec[node_exec.index("--runtime-api-address") + 1] == "127.0.0.1:9094"

    (site / "federation.yaml").write_text("enabled: false\n")
    with pytest.raises(ValueError, match="not enabled"):
        supernode_spec(site / "federation.yaml", tmp_path / "state")


def _group(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, read from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_stopping_a_daemon_ends_every_process_it_started(tmp_path: Path) -> None:
    child = "import time; time.sleep(300)"
    script = (
        "import subprocess, sys, time; "
        f"subprocess.Popen([sys.executable, '-c', {child!r}]); "
        "print('ready', flush=True); time.sleep(300)"
    )
    daemon = start_daemon("tree", [sys.executable, "-c", script], tmp_path / "tree.log")
    deadline = time.monotonic() + 30
    while "ready" not in daemon.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_group(daemon.proc.pid)) == 2
    assert daemon.stop(timeout_s=5) == -signal.SIGTERM
    assert _group(daemon.proc.pid) == []


def test_nginx_bounds_bodies_to_the_model_and_refuses_raw_paths_and_floods(
    pki: dict[str, Path], tmp_path: Path
) -> None:
    """The body limit follows the model (not 512 MB), raw paths must be normalised,
    requests are rate-limited per client address."""
    default = model_bytes()
    assert 1_000_000 < default < 5_000_000  # the shipped model's weights
    assert body_limit(default) == 2 * default + (1 << 20)
    with pytest.raises(ValueError):
        body_limit(0)
    site = NginxSite("127.0.0.1:9092", pki["crt"], pki["key"], pki["ca"], tmp_path)
    text = nginx_config(site)
    assert f"client_max_body_size {body_limit(default)};" in text
    assert "if ($request_uri != $uri) { return 400; }" in text
    assert "limit_req zone=perclient burst=200 nodelay;" in text
    assert "rate=20r/s" in text and "limit_conn perclientconn" in text
    assert "client_max_body_size 1000;" in nginx_config(replace(site, max_body=1000))
