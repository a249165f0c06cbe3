"""provenance.md: every run's DVC stage, the md5 of that stage's outputs in dvc.lock, its MLflow run.

dvc.lock (YAML) is read as ``stages: {<stage name>: {outs: [{path, md5, ...}, ...]}}``; matrix stages
appear under their expanded names (``pretrain@bmnist_rho95-cecl-0``). A stage missing from the lock
(or no lock at all) prints "not in dvc.lock". MLflow runs link to
``{mlflow_ui}/#/experiments/{experiment_id}/runs/{run_id}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from cecl.report.collect import Collected

LOCK_FILE = "dvc.lock"
NOT_IN_LOCK = "not in dvc.lock"
NOT_LOGGED = "not logged"


def load_lock(root: Path) -> dict[str, Any] | None:
    """The ``stages`` mapping of root/dvc.lock, or None when there is no lock file."""
    path = Path(root) / LOCK_FILE
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text()) or {}
    stages = data.get("stages") if isinstance(data, dict) else None
    if not isinstance(stages, dict):
        raise ValueError(f"{path}: no 'stages' mapping")
    return stages


def outputs_md5(lock: Mapping[str, Any] | None, stage: str) -> str:
    """'`path`: `md5`' for each output of ``stage`` in dvc.lock (joined by '<br>'), or NOT_IN_LOCK."""
    entry = (lock or {}).get(stage)
    if not isinstance(entry, dict):
        return NOT_IN_LOCK
    outs = entry.get("outs") or []
    parts = [f"`{out.get('path')}`: `{out.get('md5', 'no md5')}`" for out in outs if isinstance(out, dict)]
    return "<br>".join(parts) if parts else "no outputs in dvc.lock"


def mlflow_url(mlflow_ui: str, experiment_id: Any, run_id: Any) -> str:
    return f"{mlflow_ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def mlflow_link(mlflow_ui: str, experiment_id: Any, run_id: Any) -> str:
    """Markdown link to the MLflow run page, or NOT_LOGGED when the run or experiment id is missing."""
    if not run_id or not experiment_id or pd.isna(run_id) or pd.isna(experiment_id):
        return NOT_LOGGED
    return f"[{run_id}]({mlflow_url(mlflow_ui, experiment_id, run_id)})"


def _cell(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else value


def provenance_markdown(collected: Collected, root: Path, mlflow_ui: str) -> str:
    """The provenance section: one table row per pretrain, probe and transfer run (see module doc)."""
    lock = load_lock(root)
    lines = ["# Provenance", ""]
    lines.append(
        f"Output hashes from `{LOCK_FILE}` at the time the report was built."
        if lock is not None
        else f"No `{LOCK_FILE}` was found: every output hash reads '{NOT_IN_LOCK}'."
    )
    lines += ["", "| kind | run | stage | outputs (md5) | MLflow run |", "|---|---|---|---|---|"]
    runs: list[tuple[str, str, str, Any, Any]] = []
    for row in collected.pretrain.to_dict("records"):
        label = f"{row['dataset']} {row['method']} seed {row['seed']}"
        runs.append(("pretrain", label, row["stage"], row["mlflow_experiment_id"], row["mlflow_run_id"]))
    for kind, frame in (("probe", collected.probes), ("transfer", collected.transfers)):
        for row in frame.to_dict("records"):
            where = f"{row['source']}→{row['dataset']}" if row["source"] else row["dataset"]
            label = f"{where} {row['method']} seed {row['seed']}"
            runs.append((kind, label, row["stage"], row["mlflow_experiment_id"], row["mlflow_run_id"]))
    for kind, label, stage, experiment_id, run_id in runs:
        link = mlflow_link(mlflow_ui, _cell(experiment_id), _cell(run_id))
        lines.append(f"| {kind} | {label} | `{stage}` | {outputs_md5(lock, stage)} | {link} |")
    lines += _consistency(collected)
    return "\n".join(lines) + "\n"


def _consistency(collected: Collected) -> list[str]:
    """Probe/transfer results whose recorded pretrain MLflow run is not the one in the model's run.json."""
    if collected.pretrain.empty:
        return []
    current = dict(zip(collected.pretrain["stage"], collected.pretrain["mlflow_run_id"], strict=True))
    stale = []
    for frame in (collected.probes, collected.transfers):
        for row in frame.to_dict("records"):
            used, now = _cell(row.get("pretrain_mlflow_run_id")), _cell(current.get(row["pretrain_stage"]))
            if used and now and used != now:
                stale.append(
                    f"- `{row['stage']}` used pretrain MLflow run {used}, but {row['pretrain_stage']}'s "
                    f"run.json now names {now}: the probe may be stale (rerun `dvc repro`)."
                )
    return ["", "Inconsistent pretrain references:", "", *stale] if stale else []
