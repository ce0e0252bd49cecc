"""Session-wide test settings."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_cache_home() -> Iterator[None]:
    """Caches (the facility harvest cache) and state (the privacy ledger) go to
    throw-away folders, never to the user's ``~/.cache`` or ``~/.local/state``;
    subprocesses started by tests inherit them."""
    names = ("XDG_CACHE_HOME", "XDG_STATE_HOME")
    saved = {name: os.environ.get(name) for name in names}
    with tempfile.TemporaryDirectory(prefix="cryodiscovery-test-home-") as tmp:
        for name in names:
            os.environ[name] = os.path.join(tmp, name.lower())
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` are skipped where torch sees no CUDA device."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA (torch sees no GPU)")
        for item in gpu:
            item.add_marker(skip)
