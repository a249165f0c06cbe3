"""Each DVC stage's deps cover every project file its entry script imports, so no code change can leave
the cache serving stale results (issue 34: cecl/config.py, with the probe's L2 grid and every default,
was no stage's dependency).

A stage's command ``python -m cecl.stage X`` runs stages/X.py; its import closure is read statically
(tests/import_graph.py) and every file in it must sit under one of the stage's ``deps`` paths, unless
:data:`OUTPUT_NEUTRAL` names it. How to add a dependency: docs/pipeline.md.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests import import_graph

DVC_YAML = import_graph.ROOT / "dvc.yaml"
COMMAND = re.compile(r"python -m cecl\.stage (\w+)")

# Project files a stage may import without depending on them: each decides no number, name or byte of
# what the stage computes (a path ending in '/' covers its folder). Keep this list short.
OUTPUT_NEUTRAL = {
    "cecl/__init__.py": "the package's docstring, nothing else",
    "stages/__init__.py": "an empty package marker",
    "cecl/cli.py": "argument parsing and the one-line error on failure",
    "cecl/tracking.py": "MLflow logging: writes no DVC output (the MLflow store is no dependency either)",
    "cecl/machine.py": "describes the host into metrics.json / encoder.pt; the host is no dependency either",
    "cecl/plan/": "pretrain's GPU memory check (cuda only): refuses a run, decides nothing in it",
}


def _stages() -> dict[str, dict]:
    """Every stage of dvc.yaml by name, with the ``do`` body of a ``foreach`` stage unwrapped."""
    stages = yaml.safe_load(DVC_YAML.read_text())["stages"]
    return {name: body.get("do", body) for name, body in stages.items()}


def _entry(name: str, stage: dict) -> str:
    """The entry module (``stages.X``) a stage's command runs."""
    command = " ".join(stage["cmd"]) if isinstance(stage["cmd"], list) else stage["cmd"]
    match = COMMAND.search(command)
    assert match, f"dvc.yaml stage {name}: command {command!r} is not `python -m cecl.stage <stage>`"
    module = f"stages.{match.group(1)}"
    assert module in import_graph.modules(), f"dvc.yaml stage {name}: runs {module}, which has no file"
    return module


def _code_deps(stage: dict) -> list[str]:
    """The stage's deps inside the project's code packages (its data and model deps are not code)."""
    return [
        dep.rstrip("/")
        for dep in stage.get("deps", [])
        if "${" not in dep and dep.split("/")[0] in import_graph.PACKAGES
    ]


def _covered(path: str, prefixes: list[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


def missing_deps(stage: dict, entry: str) -> list[str]:
    """The files of the entry's import closure that neither the stage's deps nor OUTPUT_NEUTRAL cover."""
    closure = import_graph.files(import_graph.closure(entry))
    covers = [*_code_deps(stage), *OUTPUT_NEUTRAL]
    return sorted(path for path in closure if not _covered(path, covers))


STAGES = _stages()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_deps_cover_the_import_closure(name: str) -> None:
    stage = STAGES[name]
    missing = missing_deps(stage, _entry(name, stage))
    assert not missing, f"dvc.yaml stage {name}: deps miss {', '.join(missing)} (imported by its script)"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_code_deps_are_imported(name: str) -> None:
    """A code dep that the stage never imports only re-runs it for nothing (or names a moved file)."""
    stage = STAGES[name]
    closure = import_graph.files(import_graph.closure(_entry(name, stage)))
    unused = [dep for dep in _code_deps(stage) if not any(_covered(path, [dep]) for path in closure)]
    assert not unused, f"dvc.yaml stage {name}: deps {', '.join(unused)} are not imported by its script"


def test_output_neutral_entries_exist() -> None:
    absent = [path for path in OUTPUT_NEUTRAL if not (import_graph.ROOT / path).exists()]
    assert not absent, f"OUTPUT_NEUTRAL names missing paths: {absent}"


def test_a_missing_dependency_is_named(tmp_path: Path) -> None:
    """The check itself: drop cecl/config.py's folder from a stage's deps and it is reported by name."""
    stage = {"cmd": "python -m cecl.stage probe", "deps": ["stages/probe.py", "cecl/eval"]}
    missing = missing_deps(stage, _entry("probe", stage))
    assert "cecl/config.py" in missing and "cecl/runs.py" in missing
    assert not any(path.startswith(("cecl/eval/", "stages/probe.py")) for path in missing)
