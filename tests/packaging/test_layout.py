"""The folder-to-namespace mapping: every package folder is in the wheel list, and no bare
top-level folder name is importable as a module of its own."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import cryodiscovery.core

ROOT = Path(__file__).resolve().parents[2]
TOP = ("core", "relion_external", "cryosparc_job", "federation")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_listed():
    tool = _pyproject()["tool"]["setuptools"]
    listed = set(tool["packages"])
    on_disk = {
        "cryodiscovery." + str(init.parent.relative_to(ROOT)).replace("/", ".")
        for top in TOP
        for init in (ROOT / top).rglob("__init__.py")
    }
    # data folders are listed too (so setuptools ships them): folders without Python
    data = {p for p in listed if not any((ROOT / tool["package-dir"][p]).glob("*.py"))}
    assert on_disk == listed - data
    for pkg in listed - data:
        assert (ROOT / tool["package-dir"][pkg] / "__init__.py").is_file()
    for pkg in data:
        assert tool["package-data"][pkg], f"{pkg} lists no files"


def test_every_module_imports_without_bare_names():
    code = (
        "import importlib, pkgutil, sys\n"
        "import cryodiscovery.core, cryodiscovery.relion_external\n"
        "import cryodiscovery.cryosparc_job, cryodiscovery.federation\n"
        "for pkg in ('core', 'relion_external', 'cryosparc_job', 'federation'):\n"
        "    m = importlib.import_module('cryodiscovery.' + pkg)\n"
        "    for info in pkgutil.walk_packages(m.__path__, m.__name__ + '.'):\n"
        "        importlib.import_module(info.name)\n"
        f"bad = [n for n in {TOP!r} if n in sys.modules]\n"
        "assert not bad, bad\n"
    )
    # A fresh interpreter outside the repo root, so the checkout is not on sys.path.
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT.parent)


def test_core_imports_no_adapter_code():
    for info in pkgutil.walk_packages(
        cryodiscovery.core.__path__, "cryodiscovery.core."
    ):
        importlib.import_module(info.name)
    adapters = ("cryodiscovery.relion_external", "cryodiscovery.cryosparc_job", "flwr")
    code = (
        "import importlib, pkgutil, sys, cryodiscovery.core as c\n"
        "for i in pkgutil.walk_packages(c.__path__, 'cryodiscovery.core.'):\n"
        "    importlib.import_module(i.name)\n"
        f"print([m for m in sys.modules if m.startswith({adapters!r})])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        cwd=ROOT.parent,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert out == "[]"


def test_core_facade_is_light_and_complete():
    code = (
        "import sys, cryodiscovery.core as c\n"
        "heavy = [m for m in ('matplotlib', 'torch') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "names = {n for ns in c._EXPORTS.values() for n in ns}\n"
        "assert set(c.__all__) == names | {'__version__'}, set(c.__all__) ^ names\n"
        "missing = [n for n in c.__all__ if getattr(c, n, None) is None]\n"
        "assert not missing, missing\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT.parent)
