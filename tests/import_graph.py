"""The project's import graph, read statically from the source (``ast``): nothing is imported or run.

Used by tests/test_stage_deps.py (each DVC stage's import closure must be covered by its deps) and
tests/test_import_graph.py (no cycle in the package, upward imports between layers counted).

Hand-written rather than ``modulefinder`` or grimp: modulefinder keeps no public edge list and follows
every third-party import; grimp is not in the project's environment. The rules are Python's own:

- ``import a.b.c`` and ``from a.b import c`` run ``a/__init__.py``, ``a/b/__init__.py`` and, when
  ``c`` is a module, ``a/b/c.py`` (an edge to each, parents marked implicit);
- an import inside a function body runs when that function does: it is an edge, marked lazy;
- an import under ``if TYPE_CHECKING:`` never runs and is no edge;
- a package whose ``__init__.py`` walks ``pkgutil.iter_modules(__path__)`` (the plug-in registries of
  cecl/datasets and cecl/methods) imports each of its direct submodules whose name does not start with
  ``_``: an edge to every one, the registry's own skip list ignored (over-approximates, never misses).
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


def _imports(tree: ast.AST, lazy: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement with whether it is lazy, skipping ``if TYPE_CHECKING:`` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, lazy
        elif isinstance(node, ast.If) and _type_checking(node.test):
            yield from (item for child in node.orelse for item in _imports_of(child, lazy))
        else:
            inner = lazy or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            yield from _imports(node, inner)


def _imports_of(node: ast.AST, lazy: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node, lazy
    else:
        yield from _imports(node, lazy)


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

    def add(target: str, lazy: bool, implicit: bool) -> None:
        if target == name:
            return
        old = found.get(target)
        if old is None or (old.lazy and not lazy) or (old.implicit and not implicit and old.lazy == lazy):
            found[target] = Edge(name, target, lazy, implicit)

    for node, lazy in _imports(tree):
        for target in _targets(node, name):
            for parent in _parents(target):
                if parent not in _parents(name):  # its own parents are already running
                    add(parent, lazy, implicit=True)
            add(target, lazy, implicit=False)
    if is_package(name) and _walks_its_path(tree):
        for sub in modules():
            if sub.rpartition(".")[0] == name and not sub.rpartition(".")[2].startswith("_"):
                add(sub, lazy=False, implicit=False)
    return tuple(sorted(found.values(), key=lambda e: e.target))


def closure(start: str) -> set[str]:
    """Every project module that running module ``start`` can import, transitively (lazy ones too)."""
    seen = {start, *_parents(start)}
    todo = list(seen)
    while todo:
        for edge in edges_of(todo.pop()):
            if edge.target not in seen:
                seen.add(edge.target)
                todo.append(edge.target)
    return seen


def files(names: Iterable[str]) -> set[str]:
    """The repository-relative paths (posix) of project modules."""
    return {modules()[n].relative_to(ROOT).as_posix() for n in names}
