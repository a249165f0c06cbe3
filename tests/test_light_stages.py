"""Light stages stay light (issue 34): the aggregate stage loads no torch, prepare no loss or method code.

Each check runs in a fresh interpreter, imports the stage script as ``python -m cecl.stage`` would, reads
the repository's params.yaml through the full validation (every dataset entry, method and backbone
schema) and, for aggregate, the entry scales it computes from the dataset specs; then lists what is in
``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.import_graph import ROOT

PROBE = """
import json, sys
import stages.{stage} as stage
from cecl.config import load_params
params = load_params("params.yaml")
{extra}
print(json.dumps(sorted(sys.modules)))
"""


def _modules_after(stage: str, extra: str = "") -> set[str]:
    code = PROBE.format(stage=stage, extra=extra)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(done.stdout.splitlines()[-1]))


def _heavy(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in prefixes or m.startswith(prefixes))


def test_aggregate_imports_no_torch() -> None:
    modules = _modules_after("aggregate", "stage.entry_scales(params)")
    assert "cecl.report" in modules and "cecl.config" in modules  # the probe saw the stage's imports
    heavy = _heavy(modules, ("torch", "torchvision", "cecl.losses", "cecl.methods", "cecl.models"))
    assert not heavy, f"the aggregate stage imports {heavy[:8]}"


@pytest.mark.parametrize("stage", ["prepare"])
def test_prepare_loads_no_loss_or_method(stage: str) -> None:
    modules = _modules_after(stage, "params.spec(next(iter(params.datasets)))")
    assert "cecl.datasets.biased_mnist" in modules
    heavy = _heavy(modules, ("cecl.losses", "cecl.methods", "cecl.models"))
    assert not heavy, f"the {stage} stage imports {heavy[:8]}"


def test_the_torch_free_option_tables_name_exactly_the_registered_built_ins() -> None:
    """cecl/plugin_options.py declares the built-ins' schemas so that reading params loads no torch; the
    registries hold the builders. A name in one and not the other would let the config accept a method or
    backbone that no builder trains (or refuse one that exists): the two must list the same names."""
    from cecl.methods.registry import available
    from cecl.models.backbones import available_backbones
    from cecl.plugin_options import BACKBONE_OPTIONS, METHOD_OPTIONS

    assert set(available()) == set(METHOD_OPTIONS)
    assert set(available_backbones()) == set(BACKBONE_OPTIONS)
