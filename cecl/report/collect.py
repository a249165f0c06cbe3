"""Read the probe and pretraining outputs of every (rho, method) into DataFrames for the report.

The file layout is the contract with the probe and pretrain stages (see cecl/paths.py); a missing
file fails here, early and by name, rather than as a half-empty table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from cecl.paths import rho_name

# Columns of collect_probe_metrics' frame (nested metrics.json keys joined with ".").
UNBIASED = "test.unbiased_accuracy"
CONFLICTING = "test.conflicting_accuracy"
ALIGNED = "test.aligned_accuracy"
TEST_ACCURACY = "test.accuracy"
OFFICIAL = "official_protocol.test_accuracy"
REQUIRED_PROBE_KEYS = (
    "method",
    "rho",
    "seed",
    "selected_epoch",
    UNBIASED,
    CONFLICTING,
    TEST_ACCURACY,
    OFFICIAL,
)
HISTORY_COLUMNS = ("epoch", "train_loss", "online_probe_val_accuracy")


def _require(path: Path, producer: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the {producer} stage first (dvc repro)")
    return path


def collect_probe_metrics(probe_root: Path, rhos: Iterable[float], methods: Iterable[str]) -> pd.DataFrame:
    """One row per (method, rho), methods-major in the given order, from probe/rho_*/*/metrics.json.

    Nested keys are flattened with ``.`` (``test.unbiased_accuracy``, ``official_protocol.test_accuracy``,
    ``config.temperature``, ...); values stay fractions in [0, 1].
    """
    rhos, methods = list(rhos), list(methods)  # iterated more than once
    rows = []
    for method in methods:
        for rho in rhos:
            path = _require(
                Path(probe_root) / rho_name(rho) / method / "metrics.json", f"probe@{rho:g}-{method}"
            )
            flat = pd.json_normalize(json.loads(path.read_text()), sep=".").iloc[0].to_dict()
            missing = [key for key in REQUIRED_PROBE_KEYS if key not in flat]
            if missing:
                raise ValueError(f"{path}: missing keys {missing}")
            if flat["method"] != method or abs(float(flat["rho"]) - rho) > 1e-12:
                raise ValueError(
                    f"{path} holds method={flat['method']!r} rho={flat['rho']}, expected {method} {rho:g}"
                )
            rows.append(flat)
    if not rows:
        raise ValueError("no (rho, method) pairs to collect")
    return pd.DataFrame(rows)


def collect_histories(models_root: Path, rhos: Iterable[float], methods: Iterable[str]) -> pd.DataFrame:
    """Long frame: rho, method, epoch, train_loss, online_probe_val_accuracy (models/rho_*/*/history.csv)."""
    rhos, methods = list(rhos), list(methods)  # iterated more than once
    frames = []
    for method in methods:
        for rho in rhos:
            path = _require(
                Path(models_root) / rho_name(rho) / method / "history.csv", f"pretrain@{rho:g}-{method}"
            )
            history = pd.read_csv(path)
            missing = [col for col in HISTORY_COLUMNS if col not in history.columns]
            if missing:
                raise ValueError(f"{path}: missing columns {missing}")
            frames.append(history.loc[:, list(HISTORY_COLUMNS)].assign(rho=float(rho), method=method))
    if not frames:
        raise ValueError("no (rho, method) pairs to collect")
    return pd.concat(frames, ignore_index=True).loc[:, ["rho", "method", *HISTORY_COLUMNS]]
