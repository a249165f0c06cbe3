"""provenance.md: every run's DVC stage, the md5 of that stage's outputs in dvc.lock, its MLflow run.

No run id is stored in a DVC-tracked file (equal runs must give byte-identical outputs and dvc.lock), so
the link is by content: each stage tags its MLflow run with ``outputs_sha256``, the digest of what it
wrote (cecl.io.tree_digest), and this report recomputes the digest of the workspace's files and lists the
newest FINISHED run of that stage carrying it. A workspace whose outputs were pulled from a DVC remote
has no such run in its own MLflow store, and the report says so. provenance.md therefore describes this
workspace's MLflow store: it is written by the aggregate stage but is not a DVC output.

dvc.lock (YAML) is read as ``stages: {<stage name>: {outs: [{path, md5, ...}, ...]}}``; matrix stages
appear under their expanded names (``pretrain@bmnist_rho95-cecl-0``). A stage missing from the lock
(or no lock at all) prints "not in dvc.lock". MLflow runs link to
``{mlflow_ui}/#/experiments/{experiment_id}/runs/{run_id}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from cecl.report.collect import Collected
from cecl.tracking import TrackedRun

LOCK_FILE = "dvc.lock"
NOT_IN_LOCK = "not in dvc.lock"
NOT_LOGGED = "not logged"
NO_RUNS = "no run of this stage in this MLflow store (outputs pulled or restored?)"


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
    if not run_id or not experiment_id:
        return NOT_LOGGED
    return f"[{run_id}]({mlflow_url(mlflow_ui, experiment_id, run_id)})"


def match_run(runs: Sequence[TrackedRun] | None, digest: str) -> TrackedRun | str:
    """The newest of a stage's ``runs`` that wrote outputs with ``digest``, or why there is none."""
    if runs is None:
        return NOT_LOGGED
    if not runs:
        return NO_RUNS
    matching = [run for run in runs if run.outputs_sha256 == digest]
    return matching[0] if matching else f"none of this stage's {len(runs)} run(s) wrote these bytes"


def run_cell(mlflow_ui: str, runs: Sequence[TrackedRun] | None, digest: str) -> str:
    """The MLflow run that wrote outputs with ``digest`` (the newest of them), or why there is none."""
    newest = match_run(runs, digest)
    if isinstance(newest, str):
        return newest
    matching = [run for run in runs or () if run.outputs_sha256 == digest]
    more = f" (+{len(matching) - 1} earlier with equal outputs)" if len(matching) > 1 else ""
    return mlflow_link(mlflow_ui, newest.experiment_id, newest.run_id) + more


def provenance_markdown(
    collected: Collected,
    root: Path,
    mlflow_ui: str,
    tracked: Mapping[str, Sequence[TrackedRun]] | None = None,
) -> str:
    """The provenance section: one table row per pretrain, probe and transfer run (see module doc).

    ``tracked`` is :func:`cecl.tracking.finished_stage_runs` of the experiment (None: MLflow not read).
    """
    lock = load_lock(root)
    lines = ["# Provenance", ""]
    lines.append(
        f"Output hashes from `{LOCK_FILE}` at the time the report was built; MLflow runs matched by the "
        "digest of the outputs they wrote (tag `outputs_sha256`)."
        if lock is not None
        else f"No `{LOCK_FILE}` was found: every output hash reads '{NOT_IN_LOCK}'."
    )
    lines += ["", "| kind | run | stage | outputs (md5) | MLflow run |", "|---|---|---|---|---|"]
    rows: list[tuple[str, str, str, str]] = []
    for row in collected.pretrain.to_dict("records"):
        label = f"{row['dataset']} {row['method']} seed {row['seed']}"
        rows.append(("pretrain", label, row["stage"], row["outputs_sha256"]))
    for kind, frame in (("probe", collected.probes), ("transfer", collected.transfers)):
        for row in frame.to_dict("records"):
            where = f"{row['source']}→{row['dataset']}" if row["source"] else row["dataset"]
            label = f"{where} {row['method']} seed {row['seed']}"
            rows.append((kind, label, row["stage"], row["outputs_sha256"]))
    for kind, label, stage, digest in rows:
        runs = None if tracked is None else tracked.get(stage, [])
        cell = run_cell(mlflow_ui, runs, digest)
        lines.append(f"| {kind} | {label} | `{stage}` | {outputs_md5(lock, stage)} | {cell} |")
    lines += _consistency(collected)
    return "\n".join(lines) + "\n"


def _consistency(collected: Collected) -> list[str]:
    """Probe/transfer results whose recorded encoder digest is not the digest of the model folder now."""
    if collected.pretrain.empty:
        return []
    current = dict(zip(collected.pretrain["stage"], collected.pretrain["outputs_sha256"], strict=True))
    stale = []
    for frame in (collected.probes, collected.transfers):
        for row in frame.to_dict("records"):
            used, now = row.get("pretrain_outputs_sha256"), current.get(row["pretrain_stage"])
            if isinstance(used, str) and now and used != now:
                stale.append(
                    f"- `{row['stage']}` probed an encoder folder with digest {used[:12]}, but "
                    f"{row['pretrain_stage']}'s folder now has {now[:12]}: the result may be stale "
                    "(rerun `dvc repro`)."
                )
    return ["", "Inconsistent pretrain references:", "", *stale] if stale else []
