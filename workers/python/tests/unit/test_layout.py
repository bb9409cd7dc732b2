"""The package's modules import one another without circles (the runner and the context
share `transport`, the worker and the AMQP side share `settings`), counting imports inside
functions too: a lazy import hides a circle from Python but not from a reader."""

from __future__ import annotations

import ast
from pathlib import Path

import taskgate_worker

PACKAGE = Path(taskgate_worker.__file__).parent


def _imports() -> dict[str, set[str]]:
    """Module → the package's modules it imports (relative imports only, as the package uses)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        module = path.stem
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    targets.add(node.module.split(".")[0])
                else:  # from . import protocol
                    targets.update(alias.name for alias in node.names)
        graph[module] = targets - {module}
    return graph


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, if there is any (the package's `__init__` is left out: it only re-exports)."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done or module == "__init__":
            return None
        for target in sorted(graph.get(module, ())):
            found = visit(target, path + [module])
            if found:
                return found
        done.add(module)
        return None

    for module in sorted(graph):
        found = visit(module, [])
        if found:
            return found
    return None


def test_the_package_has_no_import_circle() -> None:
    graph = _imports()
    assert "amqp" in graph and "worker" in graph  # the scan found the package
    assert _circle(graph) is None, " → ".join(_circle(graph) or [])


def test_the_circle_finder_finds_one() -> None:
    assert _circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _circle({"a": {"b"}, "b": set()}) is None
