"""What the package imports is what pyproject.toml declares, and Flower (with the rest of
the ``federation`` extra) stays inside ``cryodiscovery.federation``: scoring, training and
the RELION and cryoSPARC jobs run without it, and ``cryodiscovery federation`` says which
extra to install.

Imports are read with ``ast`` (function-level ones included), so an import that no test
happens to run is still checked.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryodiscovery.core import cli

ROOT = Path(__file__).resolve().parents[2]
BASE = ("core", "relion_external", "cryosparc_job")
#: Only cryodiscovery.federation may import these (the ``federation`` extra, and itself).
FEDERATION_ONLY = (
    "flwr",
    "dp_accounting",
    "yaml",
    "cryptography",
    "cryodiscovery.federation",
)


def _imports(tree: ast.AST) -> Iterator[tuple[str, bool]]:
    """(module, optional) for every absolute import; optional when it sits in a
    ``try`` whose handlers catch ``ImportError`` (the code runs without it)."""

    def walk(node: ast.AST, optional: bool) -> Iterator[tuple[str, bool]]:
        if isinstance(node, ast.Import):
            yield from ((a.name, optional) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, optional
        elif isinstance(node, ast.Try):
            catches = any(
                h.type is None
                or any(
                    isinstance(n, ast.Name)
                    and n.id in ("ImportError", "ModuleNotFoundError")
                    for n in ast.walk(h.type)
                )
                for h in node.handlers
            )
            for child in node.body:
                yield from walk(child, optional or catches)
            for child in (*node.handlers, *node.orelse, *node.finalbody):
                yield from walk(child, optional)
        else:
            for child in ast.iter_child_nodes(node):
                yield from walk(child, optional)

    yield from walk(tree, False)


def _folder_imports(top: str) -> dict[str, tuple[Path, bool]]:
    """Imported module -> (a file importing it, optional everywhere) under ``top``."""
    found: dict[str, tuple[Path, bool]] = {}
    for path in sorted((ROOT / top).rglob("*.py")):
        for module, optional in _imports(ast.parse(path.read_text(), str(path))):
            old = found.get(module)
            found[module] = (path, optional and (old is None or old[1]))
    return found


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(req: str) -> str:
    return _canonical(re.split(r"[\s<>=!~;\[]", req.strip(), maxsplit=1)[0])


def undeclared(pyproject: str) -> list[str]:
    """``"folder: module (distribution)"`` for each third-party import that the
    ``pyproject`` text does not declare (federation/ may also use its extra)."""
    project = tomllib.loads(pyproject)["project"]
    base = {_requirement_name(r) for r in project["dependencies"]}
    extra = {
        _requirement_name(r)
        for r in project.get("optional-dependencies", {}).get("federation", [])
    }
    dists = importlib.metadata.packages_distributions()
    problems = []
    for top in (*BASE, "federation"):
        declared = base | extra if top == "federation" else base
        for module, (path, optional) in _folder_imports(top).items():
            root = module.split(".")[0]
            if optional or root in sys.stdlib_module_names or root == "cryodiscovery":
                continue
            names = {_canonical(d) for d in dists.get(root, [root])}
            if not names & declared:
                rel = path.relative_to(ROOT)
                problems.append(f"{rel}: {module} ({', '.join(sorted(names))})")
    return sorted(problems)


def test_every_import_is_declared() -> None:
    assert undeclared((ROOT / "pyproject.toml").read_text()) == []


def test_federation_dependencies_are_an_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {_requirement_name(r) for r in project["dependencies"]}
    extra = {
        _requirement_name(r) for r in project["optional-dependencies"]["federation"]
    }
    assert {"flwr", "dp-accounting"} <= extra
    assert not base & extra
    # torch: a tested lower bound, not the CPU wheel's pin (that is the Makefile's).
    (torch,) = [r for r in project["dependencies"] if _requirement_name(r) == "torch"]
    assert ">=" in torch and "==" not in torch


def test_no_module_outside_federation_imports_its_extra() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {module}"
        for top in BASE
        for module, (path, _) in _folder_imports(top).items()
        if any(module == f or module.startswith(f + ".") for f in FEDERATION_ONLY)
    ]
    assert offenders == []


def test_scan_sees_function_level_and_optional_imports() -> None:
    tree = ast.parse(
        "def f():\n    import flwr.app\n"
        "try:\n    import httpx\nexcept ImportError:\n    pass\n"
    )
    assert sorted(_imports(tree)) == [("flwr.app", False), ("httpx", True)]


def test_federation_command_without_flower_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "flwr", None)  # import flwr -> ModuleNotFoundError
    config = tmp_path / "federation.yaml"
    config.write_text("site: a\n")
    assert cli.main(["federation", "check", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "flwr" in err and 'pip install "cryodiscovery[federation]"' in err


def test_a_subcommand_that_cannot_load_breaks_no_other(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Broken:
        name = "federation"

        def load(self) -> object:
            raise ModuleNotFoundError("No module named 'flwr'")

    monkeypatch.setattr(cli, "entry_points", lambda group: [Broken()])
    choices = cli.build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"score", "train", "evaluate", "federation"} <= set(choices)
    assert cli.main(["federation", "check", "--config", "x.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "No module named 'flwr'" in err
    assert 'pip install "cryodiscovery[federation]"' in err


@pytest.mark.slow
def test_scoring_in_a_fresh_venv_without_the_federation_extra(tmp_path: Path) -> None:
    """The base install alone (a new venv, this project with its declared dependencies,
    the federation extra left out) simulates a RELION job and scores it."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    torch = f"torch=={importlib.metadata.version('torch').split('+')[0]}"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    # The pin keeps the tested CPU wheel (as the Makefile does); the rest come from the
    # declared dependencies, resolved by pip as configured on this machine.
    subprocess.run(
        [py, "-m", "pip", "install", "-q", torch, str(ROOT)], check=True, env=env
    )
    probe = "import importlib.util as u; print(u.find_spec('flwr') is None)"
    out = subprocess.run([py, "-c", probe], check=True, text=True, capture_output=True)
    assert out.stdout.strip() == "True", "flwr is installed in the fresh venv"
    exe = venv / "bin" / "cryodiscovery"
    work = tmp_path / "work"
    subprocess.run(
        [exe, "simulate", "relion", "--out", work, "--n-classes", "12", "--seed", "3"],
        check=True,
    )
    (data_star,) = sorted(work.glob("Class2D/job*/run_it*_data.star"))
    scored = subprocess.run(
        [exe, "score", data_star, "--out", tmp_path / "score"],
        text=True,
        capture_output=True,
    )
    assert scored.returncode == 0, scored.stderr
    assert (tmp_path / "score" / "scores.csv").is_file()
    fed = subprocess.run(
        [exe, "federation", "check", "--config", "x.yaml"],
        text=True,
        capture_output=True,
    )
    assert fed.returncode == 2
    assert 'pip install "cryodiscovery[federation]"' in fed.stderr
    assert "Traceback" not in fed.stderr
    shutil.rmtree(venv)
