"""The project's import graph, read statically from the source (``ast``): nothing is imported or run.

Used by tests/test_stage_deps.py (each DVC stage's import closure must be covered by its deps) and
tests/test_import_graph.py (no cycle in the package, upward imports between layers counted).

Hand-written rather than ``modulefinder`` or grimp: modulefinder keeps no public edge list and follows
every third-party import; grimp is not in the project's environment. The rules are Python's own:

- ``import a.b.c`` and ``from a.b import c`` run ``a/__init__.py``, ``a/b/__init__.py`` and, when
  ``c`` is a module, ``a/b/c.py`` (an edge to each, parents marked implicit);
- an import inside a function body runs when that function does: it is an edge, marked lazy;
- an import under ``if TYPE_CHECKING:`` never runs: an edge marked typing-only, which a closure skips
  but a cycle check counts (the two modules still know each other);
- a package whose ``__init__.py`` walks ``pkgutil.iter_modules(__path__)`` (the plug-in registries of
  cecl/datasets and cecl/methods) imports each of its direct submodules whose name does not start with
  ``_``: an edge to every one, marked plug-in, the registry's own skip list ignored (over-approximates,
  never misses).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cecl", "stages")  # the project's own top-level packages


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` (dotted module names, both project modules)."""

    source: str
    target: str
    lazy: bool  # inside a function body: runs when that function runs
    implicit: bool  # a parent package run because one of its submodules is imported
    typing_only: bool = False  # under ``if TYPE_CHECKING:``: never runs
    plugin: bool = False  # a registry package's pkgutil walk over its own plug-in modules


@cache
def modules() -> dict[str, Path]:
    """Every project module by dotted name (a package by its own name, for its ``__init__.py``)."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


Found = Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool]]


def _imports(tree: ast.AST, lazy: bool = False, typing_only: bool = False) -> Found:
    """Every import statement with whether it is lazy and whether it sits under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, lazy, typing_only
        elif isinstance(node, ast.If) and _type_checking(node.test):
            for child in node.body:
                yield from _imports_of(child, lazy, True)
            for child in node.orelse:
                yield from _imports_of(child, lazy, typing_only)
        else:
            inner = lazy or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            yield from _imports(node, inner, typing_only)


def _imports_of(node: ast.AST, lazy: bool, typing_only: bool) -> Found:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node, lazy, typing_only
    else:
        yield from _imports(node, lazy, typing_only)


def _walks_its_path(tree: ast.AST) -> bool:
    """Whether the module calls ``pkgutil.iter_modules(__path__)`` (a plug-in registry's self-import)."""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "iter_modules"
            and any(isinstance(arg, ast.Name) and arg.id == "__path__" for arg in node.args)
        ):
            return True
    return False


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _absolute(node: ast.ImportFrom, importer: str) -> str:
    if not node.level:
        return node.module or ""
    package = importer if is_package(importer) else importer.rpartition(".")[0]
    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _targets(node: ast.Import | ast.ImportFrom, importer: str) -> Iterator[str]:
    """The project modules one import statement names (before their parent packages are added)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            name = alias.name
            while name and name not in modules():  # `import cecl.x.y` where y is not a module
                name = name.rpartition(".")[0]
            if name:
                yield name
        return
    base = _absolute(node, importer)
    if base in modules():
        yield base
    for alias in node.names:
        if f"{base}.{alias.name}" in modules():
            yield f"{base}.{alias.name}"


@cache
def edges_of(name: str) -> tuple[Edge, ...]:
    """The project modules that module ``name`` imports (each once, the eager edge preferred)."""
    tree = ast.parse(modules()[name].read_text(), filename=str(modules()[name]))
    found: dict[str, Edge] = {}

    def rank(edge: Edge) -> tuple[bool, bool, bool]:  # the edge that runs soonest wins
        return (edge.typing_only, edge.lazy, edge.implicit)

    def add(edge: Edge) -> None:
        if edge.target != name and (edge.target not in found or rank(edge) < rank(found[edge.target])):
            found[edge.target] = edge

    for node, lazy, typing_only in _imports(tree):
        for target in _targets(node, name):
            for parent in _parents(target):
                if parent not in _parents(name):  # its own parents are already running
                    add(Edge(name, parent, lazy, True, typing_only))
            add(Edge(name, target, lazy, False, typing_only))
    if is_package(name) and _walks_its_path(tree):
        for sub in modules():
            if sub.rpartition(".")[0] == name and not sub.rpartition(".")[2].startswith("_"):
                add(Edge(name, sub, lazy=False, implicit=False, plugin=True))
    return tuple(sorted(found.values(), key=lambda e: e.target))


def closure(start: str) -> set[str]:
    """Every project module that running module ``start`` can import, transitively (lazy ones too)."""
    seen = {start, *_parents(start)}
    todo = list(seen)
    while todo:
        for edge in edges_of(todo.pop()):
            if not edge.typing_only and edge.target not in seen:
                seen.add(edge.target)
                todo.append(edge.target)
    return seen


def files(names: Iterable[str]) -> set[str]:
    """The repository-relative paths (posix) of project modules."""
    return {modules()[n].relative_to(ROOT).as_posix() for n in names}
