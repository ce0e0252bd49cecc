"""Connecting with cryosparc-tools: credentials, saved login tokens, unreachable servers,
servers without the v5 API and version mismatches, each as a one-line message."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta

import cryosparc.auth
import pytest
from cryodiscovery.core.errors import InputError
from cryodiscovery.cryosparc_job import session
from cryodiscovery.cryosparc_job.session import (
    ServerConfig,
    ServerError,
    api_detail,
    check_versions,
    connect,
)
from cryosparc_testdata import EMAIL
from fake_cryosparc import FakeCryosparc
from fake_cryosparc_http import serve


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text, text
    return text


def test_email_and_password_log_in(fake, config):
    cs = connect(config)
    assert fake.summaries()[:3] == ["login", "users.me", "config.get_version"]
    assert cs.find_job("P1", fake.uids["class2d"]).type == "class_2D_new"


def test_wrong_password_is_an_input_error(fake, server):
    bad = ServerConfig(url=server, email=EMAIL, password="wrong", timeout=10)
    with pytest.raises(InputError, match="rejected the credentials") as info:
        connect(bad)
    assert "HTTP 401" in _one_line(info.value)


def test_half_the_credentials_is_an_input_error(server):
    with pytest.raises(InputError, match="both the cryoSPARC email and password"):
        connect(ServerConfig(url=server, email=EMAIL))


@pytest.fixture
def auth_file(tmp_path, monkeypatch):
    """Point cryosparc-tools' saved-login file at ``tmp_path``."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    cryosparc.auth.get_default_auth_config_path.cache_clear()
    yield tmp_path / "cryosparc-tools" / "auth.json"
    cryosparc.auth.get_default_auth_config_path.cache_clear()


def _save_token(path, url, token):
    expires = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {
        "token": {"access_token": token, "token_type": "bearer"},
        "expires": expires,
    }
    path.write_text(json.dumps({url: {EMAIL: entry}}))


def test_saved_login_token_is_used(fake, server, auth_file):
    fake.add_token("saved-token", EMAIL)
    _save_token(auth_file, server, "saved-token")
    connect(ServerConfig(url=server, timeout=10))
    assert "login" not in fake.summaries()
    assert "users.me" in fake.summaries()


def test_expired_or_revoked_token_is_an_input_error(fake, server, auth_file):
    _save_token(auth_file, server, "revoked-token")
    with pytest.raises(InputError, match="rejected the credentials"):
        connect(ServerConfig(url=server, timeout=10))


def test_no_credentials_at_all(server, auth_file):
    with pytest.raises(InputError, match="no cryoSPARC credentials") as info:
        connect(ServerConfig(url=server, timeout=10))
    assert "cryosparc.tools login" in _one_line(info.value)


def test_unreachable_server_is_a_server_error():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = ServerConfig(
        url=f"http://127.0.0.1:{port}", email=EMAIL, password="x", timeout=5
    )
    with pytest.raises(ServerError, match="cannot reach cryoSPARC") as info:
        connect(config)
    _one_line(info.value)


@pytest.mark.parametrize("mode", ["absent", "html"])
def test_a_server_without_the_v5_api(mode):
    """A cryoSPARC v4 web app (or anything else) at the URL: say which tools to use."""
    with serve(FakeCryosparc(mode=mode)) as url:
        with pytest.raises(
            ServerError, match="does not serve the cryoSPARC v5 API"
        ) as info:
            connect(ServerConfig(url=url, email=EMAIL, password="x", timeout=5))
    assert "cryosparc-tools~=4.7.0" in _one_line(info.value)


def test_major_version_mismatch_fails_and_minor_warns(fake, config, caplog):
    fake.version = "v6.0.0"
    with pytest.raises(
        ServerError, match=r"cryoSPARC v6.0.0 needs cryosparc-tools 6.0"
    ):
        connect(config)
    fake.version = "v5.1.2"
    connect(config)
    assert "differ in minor version" in caplog.text
    assert "cryosparc-tools~=5.1.0" in caplog.text


def test_check_versions_ignores_unknown_versions():
    check_versions("develop")
    check_versions("")
    check_versions(f"v{session.TOOLS_VERSION}")


def test_v4_tools_need_license_and_host(monkeypatch):
    """With cryosparc-tools 4.x installed, the v4 settings are checked before connecting."""
    monkeypatch.setattr(session, "tools_major", lambda: 4)
    with pytest.raises(InputError, match="needs --host and --base-port"):
        session._client_kwargs(
            ServerConfig(url="http://x:39000", email="a", password="b")
        )
    with pytest.raises(InputError, match="needs the license"):
        session._client_kwargs(ServerConfig(host="x", email="a", password="b"))
    kwargs = session._client_kwargs(
        ServerConfig(host="x", base_port=61000, email="a", password="b", license="L")
    )
    assert kwargs == {
        "license": "L",
        "host": "x",
        "base_port": 61000,
        "email": "a",
        "password": "b",
        "timeout": 300,
    }


def test_api_detail_formats_fastapi_errors():
    class Err(Exception):
        def __init__(self, code, data):
            super().__init__("*** [API] error\nResponse data: ...")
            self.code, self.data = code, data

    validation = {"detail": [{"loc": ["query", "type"], "msg": "Field required"}]}
    assert api_detail(Err(422, validation)) == "HTTP 422: query.type: Field required"
    assert (
        api_detail(Err(404, {"detail": "Job J9 not found"}))
        == "HTTP 404: Job J9 not found"
    )
    assert api_detail(Err(500, None)) == "HTTP 500: *** [API] error"


def test_secrets_stay_out_of_repr():
    text = repr(ServerConfig(url="u", email="e", password="hunter2", license="L-123"))
    assert "hunter2" not in text and "L-123" not in text
