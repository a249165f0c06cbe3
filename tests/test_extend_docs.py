"""The worked examples of docs/extend-dataset.md and docs/extend-method.md run as written.

Each page's Python block is written, verbatim, as a new module into a copy of the package (the plug-in
promise: one module plus params entries), and the real stage commands dvc.yaml runs
(``python -m cecl.stage prepare|pretrain|probe``) train the toy method on the toy dataset for one epoch
and probe it, next to cross-entropy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGES = {
    "extend-dataset.md": "cecl/datasets/toy_stripes.py",
    "extend-method.md": "cecl/methods/align_uniform.py",
}
METHODS = ("ce", "align_uniform")
TINY = {
    "device": "cpu",
    "tracking": {"experiment": "cecl-extend"},
    "seeds": [0],
    "datasets": {"stripes": {"family": "toy_stripes", "n_per_class": 24}},
    "model": {"backbone": "small_cnn", "backbone_options": {"width": 4}, "proj_dim": 16, "proj_hidden": None},
    "method_options": {"ce": {}, "align_uniform": {"t": 2.0, "weight": 1.0}},
    "pretrain": {
        "datasets": ["stripes"],
        "methods": list(METHODS),
        "epochs": 1,
        "batch_size": 32,
        "views": 2,
        "optimizer": {"name": "adam", "lr": 0.001},
        "monitor": {"kind": "knn", "every": 1, "train_size": None},
    },
    "probe": {"l2_min": 1e-4, "l2_max": 0.1, "l2_per_decade": 1, "max_iter": 200},
    "transfer": {"sources": [], "targets": []},
    "sweep": {
        "dataset": "stripes",
        "epochs": 1,
        "train_size": None,
        "grids": {"align_uniform": {"weight": [1.0]}},
        "max_concurrent": 1,
    },
}

pytestmark = pytest.mark.slow


def python_block(page: str) -> str:
    """The first ```python block of docs/<page>."""
    found = re.search(r"```python\n(.*?)```", (ROOT / "docs" / page).read_text(encoding="utf-8"), re.DOTALL)
    assert found, f"docs/{page} has no python block"
    return found.group(1)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the package with both pages' modules added, a one-epoch params.yaml, and the stages run."""
    work = tmp_path_factory.mktemp("extend")
    for package in ("cecl", "stages"):
        shutil.copytree(ROOT / package, work / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "dvc.yaml", work / "dvc.yaml")  # checkpoint fingerprints digest the stage code deps
    for page, module in PAGES.items():
        assert not (work / module).exists(), f"{module} already exists: the example must be a new module"
        (work / module).write_text(python_block(page), encoding="utf-8")
    (work / "params.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONPATH=str(work), OMP_NUM_THREADS="1", CECL_WARM="0")
    commands = [["prepare", "--dataset", "stripes"]]
    for method in METHODS:
        commands += [
            [stage, "--dataset", "stripes", "--method", method, "--seed", "0"]
            for stage in ("pretrain", "probe")
        ]
    for argv in commands:
        done = subprocess.run(
            [sys.executable, "-m", "cecl.stage", *argv],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"{argv}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
    return work


def test_the_dataset_page_module_is_prepared_and_evaluated_as_classification(workspace: Path) -> None:
    manifest = json.loads((workspace / "data" / "stripes" / "manifest.json").read_text())
    assert "toy_stripes" in json.dumps(manifest)
    metrics = json.loads((workspace / "probe" / "stripes" / "ce" / "seed_0" / "metrics.json").read_text())
    assert metrics["run"]["family"] == "toy_stripes" and metrics["evaluator"] == "classification"


def test_the_method_page_module_trains_one_epoch_and_is_probed(workspace: Path) -> None:
    metrics = json.loads(
        (workspace / "probe" / "stripes" / "align_uniform" / "seed_0" / "metrics.json").read_text()
    )
    assert metrics["run"]["method"] == "align_uniform"
    accuracy = metrics["test"]["accuracy"]
    assert 0.0 <= accuracy <= 1.0 and accuracy > 0.5, metrics["test"]  # 4 classes: chance is 0.25
    assert list((workspace / "models" / "stripes" / "align_uniform" / "seed_0").iterdir())
