"""Fixtures for the cryoSPARC adapter: a tiny 2D classification and the API test double
(``fake_cryosparc.FakeCryosparc``) served on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryodiscovery.cryosparc_job.session import ServerConfig
from cryosparc_testdata import EMAIL, PASSWORD, Class2DData, make_class2d, seed_project
from fake_cryosparc import FakeCryosparc
from fake_cryosparc_http import serve


@pytest.fixture
def class2d() -> Class2DData:
    return make_class2d()


@pytest.fixture
def fake(class2d: Class2DData) -> FakeCryosparc:
    fake = FakeCryosparc()
    fake.uids = seed_project(fake, class2d)  # type: ignore[attr-defined]
    return fake


@pytest.fixture
def server(fake: FakeCryosparc) -> Iterator[str]:
    with serve(fake) as url:
        yield url


@pytest.fixture
def config(server: str) -> ServerConfig:
    return ServerConfig(url=server, email=EMAIL, password=PASSWORD, timeout=10)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, server: str) -> str:
    """The test double's address and a login in the environment, as a user sets them."""
    monkeypatch.setenv("CRYOSPARC_BASE_URL", server)
    monkeypatch.setenv("CRYOSPARC_EMAIL", EMAIL)
    monkeypatch.setenv("CRYOSPARC_PASSWORD", PASSWORD)
    return server
