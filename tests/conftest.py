"""Session-wide test settings."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_cache_home() -> Iterator[None]:
    """Caches (the facility harvest cache) go to a throw-away folder, never to the
    user's ``~/.cache``; subprocesses started by tests inherit it."""
    saved = os.environ.get("XDG_CACHE_HOME")
    with tempfile.TemporaryDirectory(prefix="cryodiscovery-test-cache-") as tmp:
        os.environ["XDG_CACHE_HOME"] = tmp
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop("XDG_CACHE_HOME", None)
            else:
                os.environ["XDG_CACHE_HOME"] = saved
