"""The package's import graph (read statically, tests/import_graph.py): no cycle between modules, no stage
importing another stage, and the imports that run from a lower layer up to a higher one named one by one.

Layers, lowest first: a module may import its own layer and those below it. An import upward must be in
:data:`KNOWN_UPWARD` with its reason, so a new one fails here; removing one fails too, until it is
struck off the list (the list only shrinks).

Why cecl.config sits above the plug-ins (it sat at the bottom, with five arrows up): it is the schema
assembled from theirs, while no plug-in reads the params file. The arrows that tied the bottom together
were cut, not hidden: the data types and helpers the loaders and evaluation read (TensorSplit, the
seeded generator, image decoding, data errors, the augmentation recipe) moved down into cecl/data, and the
method and backbone option schemas into cecl/plugin_options.py (torch-free), so the config imports no
method or model code. One arrow remains open (eval reads the probe's settings from the config).
"""

from __future__ import annotations

import graphlib

import pytest

from tests import import_graph

LAYERS: list[set[str]] = [
    {
        "cecl",
        "cecl.schema",
        "cecl.io",
        "cecl.runs",
        "cecl.records",
        "cecl.machine",
        "cecl.distributed",
        "cecl.tracking",
        "cecl.plugin_options",  # the method and backbone option schemas, torch-free
    },
    {"cecl.data"},  # the recipe, the in-memory split, decoding, data errors, the loaders
    {"cecl.eval"},
    {"cecl.datasets"},  # a dataset owns its evaluator (cecl.eval) and its augmentation recipe (cecl.data)
    {"cecl.models"},
    {"cecl.losses"},
    {"cecl.methods"},
    # The params schema sits above the plug-ins: it assembles their schemas (the dataset families' Options,
    # cecl/plugin_options.py) and no plug-in reads the params file (a method gets a MethodContext, a
    # dataset its own options). Everything that runs a stage (train and up) reads it.
    {"cecl.config"},
    {"cecl.train", "cecl.saved_model"},
    {"cecl.pipeline", "cecl.evaluate", "cecl.floors"},
    {"cecl.tune", "cecl.plan", "cecl.report"},
    {
        "cecl.cli",
        "cecl.stage",
        "cecl.warm",
        "cecl.repro",
        "cecl.launch",
        "cecl.compare",
        "cecl.docs_blocks",
        "cecl.docs_catalog",
        "cecl.verify",
    },
]

# (importing package, imported package): why it runs upward. Open ones name what would remove them.
KNOWN_UPWARD = {
    ("cecl.eval", "cecl.config"): (
        "open: the probe and the monitor read ProbeParams / MonitorParams (eval/monitor.py builds its own "
        "MONITOR_PROBE); a probe-settings schema owned by cecl/eval would remove it"
    ),
}


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _project_edges(prefix: str) -> list[import_graph.Edge]:
    return [
        edge
        for module in import_graph.modules()
        if module.startswith(prefix)
        for edge in import_graph.edges_of(module)
        if edge.target.startswith(prefix)
    ]


def test_no_cycle_between_modules() -> None:
    """Eager, lazy and TYPE_CHECKING imports all count. Not counted: a submodule's implicit import of its
    own parent package, and a registry package's pkgutil walk over its plug-ins (cecl/datasets,
    cecl/methods: the package is fully defined before the walk runs, and the plug-ins import it back)."""
    graph: dict[str, set[str]] = {module: set() for module in import_graph.modules()}
    for edge in _project_edges("cecl"):
        if not edge.implicit and not edge.plugin:
            graph[edge.source].add(edge.target)
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        pytest.fail(f"import cycle: {' -> '.join(err.args[1])}")


def test_no_stage_imports_another_stage() -> None:
    crossing = [
        f"{e.source} -> {e.target}"
        for e in _project_edges("stages.")
        if e.target.startswith("stages.") and e.target != e.source
    ]
    assert not crossing, f"a stage imports another stage: {crossing}"


def test_every_package_has_a_layer() -> None:
    placed = set().union(*LAYERS)
    packages = {_package(m) for m in import_graph.modules() if m.startswith("cecl")}
    assert packages <= placed, f"packages with no layer in LAYERS: {sorted(packages - placed)}"


def test_upward_imports_are_the_known_ones() -> None:
    level = {package: i for i, layer in enumerate(LAYERS) for package in layer}
    upward: dict[tuple[str, str], list[str]] = {}
    for edge in _project_edges("cecl"):
        pair = (_package(edge.source), _package(edge.target))
        if not edge.implicit and not edge.typing_only and level[pair[0]] < level[pair[1]]:
            upward.setdefault(pair, []).append(f"{edge.source} -> {edge.target}")
    new = {pair: where for pair, where in upward.items() if pair not in KNOWN_UPWARD}
    assert not new, f"imports from a lower layer up to a higher one: {new}"
    gone = sorted(set(KNOWN_UPWARD) - set(upward))
    assert not gone, f"KNOWN_UPWARD lists imports that no longer exist (strike them off): {gone}"


def test_the_graph_reads_lazy_typing_and_plugin_imports() -> None:
    """The reader itself, on known imports of the code: a lazy one, a TYPE_CHECKING one, a plug-in walk."""
    base = {e.target: e for e in import_graph.edges_of("cecl.datasets.base")}
    assert base["cecl.eval"].lazy and not base["cecl.io"].lazy  # the evaluators: built when asked for
    sink = {e.target: e for e in import_graph.edges_of("cecl.tune.sink")}
    assert sink["cecl.tune.outcome"].typing_only
    methods = {e.target: e for e in import_graph.edges_of("cecl.methods")}
    assert methods["cecl.methods.contrastive"].plugin
    assert "cecl.config" not in import_graph.closure("cecl.train.device")  # its one import: TYPE_CHECKING
