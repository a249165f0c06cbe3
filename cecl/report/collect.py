"""Read every run's stage outputs (cecl/runs.py layout) into DataFrames, checking them against their keys.

Per RunKey: ``<model_dir>/history.csv`` (pretrain stage; the folder's digest, cecl.io.tree_digest, links
it to its MLflow run) and ``<probe_dir>/metrics.json`` (probe stage); per TransferKey:
``<out_dir>/metrics.json`` (transfer stage); per FloorKey: ``<out_dir>/metrics.json`` (floor stage: the
probe's schema, ``run.kind`` "floor", ``run.method`` the floor kind, ``run.seed`` null for pixels).
A missing file fails here, naming the file and the stage that writes it; a metrics.json whose ``run``
block names another run (a stale or mis-copied file) fails naming the file.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cecl import records
from cecl.io import tree_digest
from cecl.runs import HISTORY_FILE, METRICS_FILE, FloorKey, RunKey, TransferKey

# Evaluators (metrics.json "evaluator") and the test keys each must provide.
GROUP_BIAS = "group_bias"
CLASSIFICATION = "classification"
REQUIRED_TEST_KEYS = {
    GROUP_BIAS: ("accuracy", "unbiased_accuracy", "aligned_accuracy", "conflicting_accuracy"),
    CLASSIFICATION: ("accuracy", "mean_per_class_accuracy"),
}
REQUIRED_KEYS = ("evaluator", "protocol", "selected_on", "test", "official_protocol")
HISTORY_COLUMNS = ("epoch", "train_loss", "monitor_val_accuracy")

# Columns of the result frames (flattened metrics.json; nested keys joined with ".").
TOP1 = "test.accuracy"
UNBIASED = "test.unbiased_accuracy"
CONFLICTING = "test.conflicting_accuracy"
ALIGNED = "test.aligned_accuracy"
MEAN_PER_CLASS = "test.mean_per_class_accuracy"
TOP5 = "test.top5_accuracy"
OFFICIAL = "official.test_accuracy"
OFFICIAL_SELECTED = "official.l2"  # the test-selected L2 strength of the probe's grid
OWN_HEAD = "own_head."  # prefix of cross-entropy's own-head test metrics ("own_head.test.accuracy", ...)
EDGE = "selected_at_edge"  # "weak" / "strong" / "" (metrics.json's top-level key; "" when absent or null)
EDGE_KINDS = ("weak", "strong")


@dataclass(frozen=True)
class Collected:
    """Everything the report reads; frames keep the order of the keys given to collect()."""

    probes: pd.DataFrame  # one row per RunKey: its probe metrics.json, flattened
    transfers: pd.DataFrame  # one row per TransferKey (same columns; ``source`` filled)
    histories: pd.DataFrame  # long: dataset, method, seed, epoch, train_loss, monitor_val_accuracy, lr
    pretrain: pd.DataFrame  # one row per RunKey: stage, dataset, method, seed, outputs_sha256 (model folder)
    floors: pd.DataFrame = field(default_factory=lambda: _frame([]))  # one row per FloorKey (method = kind)


def require(root: Path, relative: Path, stage: str) -> Path:
    """root/relative, or FileNotFoundError 'relative not found: run <stage> first (dvc repro)'."""
    path = Path(root) / relative
    if not path.is_file():
        raise FileNotFoundError(
            f"{relative.as_posix()} not found: run {stage} first (dvc repro); looked under {Path(root)}"
        )
    return path


def _expected_run(key: RunKey | TransferKey | FloorKey) -> dict[str, Any]:
    """The run block a metrics.json written for ``key`` must carry."""
    if isinstance(key, FloorKey):
        return {
            "stage": key.stage(),
            "kind": "floor",
            "dataset": key.dataset,
            "method": key.kind,
            "seed": key.seed,
        }
    if isinstance(key, TransferKey):
        return {
            "stage": key.stage(),
            "kind": "transfer",
            "dataset": key.target,
            "source": key.source,
            "method": key.method,
            "seed": key.seed,
            "pretrain_stage": key.pretrained.stage("pretrain"),
        }
    return {
        "stage": key.stage("probe"),
        "kind": "probe",
        "dataset": key.dataset,
        "source": None,
        "method": key.method,
        "seed": key.seed,
        "pretrain_stage": key.stage("pretrain"),
    }


def _check_accuracy(path: Path, name: str, value: Any) -> float:
    """A fraction in [0, 1]; NaN/null (no bias-conflicting group, say) stays NaN, left out of cells."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{path}: {name} = {value!r} is not a number")
    value = float(value)
    if not math.isnan(value) and not 0.0 <= value <= 1.0:
        raise ValueError(f"{path}: {name} = {value} is not a fraction in [0, 1]")
    return value


def _edge(path: Path, value: Any) -> str:
    """metrics.json's ``selected_at_edge``: "weak", "strong", or "" (null or absent)."""
    if value is None:
        return ""
    if value not in EDGE_KINDS:
        raise ValueError(f"{path}: selected_at_edge = {value!r} is not one of {list(EDGE_KINDS)} or null")
    return str(value)


def read_metrics(root: Path, key: RunKey | TransferKey | FloorKey) -> dict[str, Any]:
    """One flattened row from a probe/transfer/floor metrics.json, after checking it belongs to ``key``."""
    if isinstance(key, TransferKey | FloorKey):
        relative, stage = key.out_dir / METRICS_FILE, key.stage()
    else:
        relative, stage = key.probe_dir / METRICS_FILE, key.stage("probe")
    path = require(root, relative, stage)
    data = records.read_metrics(path)
    run = data.get("run")
    if not isinstance(run, dict):
        raise ValueError(f"{path}: no 'run' block")
    expected = _expected_run(key)
    wrong = {
        field: run.get(field)
        for field, value in expected.items()
        if (run.get(field) != value) and not (field == "seed" and str(run.get(field)) == str(value))
    }
    if wrong:
        raise ValueError(
            f"{path}: its run block does not match {stage}: "
            + ", ".join(f"{field}={found!r} (expected {expected[field]!r})" for field, found in wrong.items())
        )
    missing = [name for name in REQUIRED_KEYS if name not in data]
    if missing:
        raise ValueError(f"{path}: missing keys {missing}")
    evaluator = data["evaluator"]
    if evaluator not in REQUIRED_TEST_KEYS:
        raise ValueError(f"{path}: unknown evaluator {evaluator!r} (known: {sorted(REQUIRED_TEST_KEYS)})")
    test = data["test"]
    missing = [name for name in REQUIRED_TEST_KEYS[evaluator] if name not in test]
    if missing:
        raise ValueError(f"{path}: evaluator {evaluator} needs test keys {missing}")
    official = data["official_protocol"] or {}
    row: dict[str, Any] = {
        "stage": stage,
        "kind": expected["kind"],
        "dataset": expected["dataset"],
        "source": key.source if isinstance(key, TransferKey) else "",
        "family": str(run.get("family") or ""),
        "method": key.kind if isinstance(key, FloorKey) else key.method,
        "seed": None if key.seed is None else int(key.seed),
        "evaluator": evaluator,
        "protocol": str(data["protocol"]),
        "selected_on": str(data["selected_on"]),
        "val_description": str(data.get("val_description") or ""),
        "selected": json.dumps(data.get("selected"), sort_keys=True),  # {"l2", ...} or joint's {"epoch"}
        "val_accuracy": data.get("val_accuracy"),
        "outputs_sha256": tree_digest(path.parent),
        "pretrain_stage": run.get("pretrain_stage"),
        EDGE: _edge(path, data.get(EDGE)),
        "pretrain_outputs_sha256": run.get("pretrain_outputs_sha256"),
        OFFICIAL: (
            _check_accuracy(path, "official_protocol.test_accuracy", official["test_accuracy"])
            if official.get("test_accuracy") is not None
            else math.nan
        ),
        OFFICIAL_SELECTED: official.get("l2"),
        "path": relative.as_posix(),
    }
    for name, value in test.items():
        if name.endswith("accuracy"):
            row[f"test.{name}"] = _check_accuracy(path, f"test.{name}", value)
        else:
            row[f"test.{name}"] = value
    own_head = data.get("own_head") or {}
    for name, value in (own_head.get("test") or {}).items():
        if name.endswith("accuracy"):
            row[f"{OWN_HEAD}test.{name}"] = _check_accuracy(path, f"own_head.test.{name}", value)
    config = data.get("config") or {}
    row["config"] = json.dumps(config, sort_keys=True)  # exactly as written (no NaN-widened ints)
    for name, value in config.items():
        row[f"config.{name}"] = value
    return row


def read_history(root: Path, key: RunKey) -> pd.DataFrame:
    """history.csv of one pretraining run with dataset/method/seed columns, sorted by epoch."""
    relative = key.model_dir / HISTORY_FILE
    path = require(root, relative, key.stage("pretrain"))
    history = records.read_rows(path)
    missing = [column for column in HISTORY_COLUMNS if column not in history.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    if history.empty:
        raise ValueError(f"{path}: no epochs")
    columns = [*HISTORY_COLUMNS, *(["lr"] if "lr" in history.columns else [])]
    history = history.loc[:, columns].sort_values("epoch", kind="stable").reset_index(drop=True)
    history.insert(0, "seed", int(key.seed))
    history.insert(0, "method", key.method)
    history.insert(0, "dataset", key.dataset)
    return history


def read_pretrain(root: Path, key: RunKey) -> dict[str, Any]:
    """One pretraining run's stage name and the digest of its model folder (what its MLflow run is tagged)."""
    relative = key.model_dir / HISTORY_FILE
    require(root, relative, key.stage("pretrain"))
    return {
        "stage": key.stage("pretrain"),
        "dataset": key.dataset,
        "method": key.method,
        "seed": int(key.seed),
        "outputs_sha256": tree_digest(Path(root) / key.model_dir),
        "path": key.model_dir.as_posix(),
    }


def _frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(list(rows)) if rows else pd.DataFrame(columns=["dataset", "method", "seed"])


def collect(
    runs: Sequence[RunKey],
    transfers: Sequence[TransferKey],
    root: Path,
    floors: Sequence[FloorKey] = (),
) -> Collected:
    """Read and check every file the report needs (see the module docstring); duplicates are an error."""
    for name, keys in (("runs", runs), ("transfers", transfers), ("floors", floors)):
        duplicated = sorted(key for key, count in Counter(keys).items() if count > 1)
        if duplicated:
            raise ValueError(f"{name} lists {duplicated} more than once")
    root = Path(root)
    probes = _frame([read_metrics(root, key) for key in runs])
    transfer_rows = _frame([read_metrics(root, key) for key in transfers])
    pretrain = _frame([read_pretrain(root, key) for key in runs])
    histories = (
        pd.concat([read_history(root, key) for key in runs], ignore_index=True)
        if runs
        else pd.DataFrame(columns=["dataset", "method", "seed", *HISTORY_COLUMNS])
    )
    floor_rows = _frame([read_metrics(root, key) for key in floors])
    return Collected(
        probes=probes, transfers=transfer_rows, histories=histories, pretrain=pretrain, floors=floor_rows
    )


def ordered(values: Sequence[Any] | pd.Series) -> list[Any]:
    """Distinct values in first-appearance order (the order the stage listed its runs in)."""
    return list(dict.fromkeys(values))
