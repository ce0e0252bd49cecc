"""The import graph of ``cryodiscovery.*`` has no cycles, and ``core`` imports no adapter.

The graph is read from the source with ``ast`` (function-level imports included, imports
under ``if TYPE_CHECKING:`` left out: they never run), so a cycle hidden inside a function
is found even when no test happens to call that function.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOP = ("core", "relion_external", "cryosparc_job", "federation")
ADAPTERS = tuple(f"cryodiscovery.{t}" for t in TOP[1:])


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module under the four folders."""
    found = {}
    for top in TOP:
        for path in (ROOT / top).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(["cryodiscovery", *parts])] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(nodes: Iterable[ast.AST]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement among ``nodes`` and inside them that can run."""
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _imports(node.orelse)
        else:
            yield from _imports(ast.iter_child_nodes(node))


def _targets(
    name: str, path: Path, node: ast.Import | ast.ImportFrom, known: Iterable[str]
) -> set[str]:
    """The ``cryodiscovery`` modules an import statement loads."""
    known = set(known)
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in known}
    if node.level:  # relative import: resolve against this module's package
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    out = set()
    for alias in node.names:
        if f"{base}.{alias.name}" in known:  # ``from package import module``
            out.add(f"{base}.{alias.name}")
        elif base in known:
            out.add(base)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the ``cryodiscovery`` modules it imports (no self-edges)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges: set[str] = set()
        for node in _imports([tree]):
            edges |= _targets(name, path, node, modules)
        graph[name] = edges - {name}
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: every strongly connected component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    return [c for c in strongly_connected(graph) if len(c) > 1]


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    graph["c"] = set()
    assert cycles(graph) == []


def test_function_level_import_is_an_edge(tmp_path: Path) -> None:
    code = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from cryodiscovery.core import b\n"
        "def f():\n"
        "    from cryodiscovery.core import a\n"
    )
    known = {"cryodiscovery.core", "cryodiscovery.core.a", "cryodiscovery.core.b"}
    path = tmp_path / "m.py"
    found = set()
    for node in _imports([ast.parse(code)]):
        found |= _targets("cryodiscovery.core.m", path, node, known)
    assert found == {"cryodiscovery.core.a"}


def test_core_imports_no_adapter() -> None:
    graph = import_graph()
    bad = {
        name: sorted(t for t in targets if t.startswith(ADAPTERS))
        for name, targets in graph.items()
        if name.startswith("cryodiscovery.core")
    }
    assert {k: v for k, v in bad.items() if v} == {}
