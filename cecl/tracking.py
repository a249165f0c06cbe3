"""MLflow tracking: the one place that opens runs, tags them and logs params, metrics and artifacts.

Every DVC stage execution is one MLflow run named after the stage (``pretrain@bmnist_rho95-cecl-0``) in the
experiment from ``params.yaml: tracking.experiment``. The tracking URI defaults to
``sqlite:///<repo>/mlflow.db`` (MLflow 3 refuses ``./mlruns`` file stores by default) and is
overridden by ``MLFLOW_TRACKING_URI``. :func:`check_reachable` runs before any training so an
unreachable server fails the stage in seconds, not after the work.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS_DIR = "mlartifacts"  # next to mlflow.db; stored relative (see _make_artifacts_relative)
OUTPUTS_TAG = "outputs_sha256"  # cecl.io.tree_digest of what the stage wrote (provenance)
# Why a run ended FAILED when no exception closed it: "killed" (its stage died by a signal and a later
# stage run or launch closed it), "interrupted" (a sweep trial cut short). Runs end FINISHED or FAILED only.
END_REASON_TAG = "cecl.end_reason"
# Which number the tables report (docs/tracking.md): a run logging selected_test_* gets this tag and note.
REPORTED_PREFIX, REPORTED_TAG = "selected_test_", "reported_metric"
REPORTED_NOTE = (
    "The tables report selected_test_*: the test score at the L2 strength selected on validation "
    "(metrics.json 'test'). test_* is the probe's curve over the L2 grid; the runs table shows its last step."
)
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
# MLflow's HTTP client retries a dead server for minutes (7 retries, backoff 2, 120 s timeouts). A stage
# should instead fail within about 30 s, keeping its checkpoint, and resume when rerun; users can still
# override each one in the environment.
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "8",
}


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking backend cannot be reached; the message is one line."""


def tracking_uri(root: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI if set, else the sqlite database at the repository root."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(root or Path.cwd()) / 'mlflow.db'}"


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, with one line, when the tracking backend cannot be used."""
    if uri.startswith(("http://", "https://")):
        health = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(health, timeout=timeout_s) as response:
                if response.status != 200:
                    raise TrackingUnavailable(f"MLflow server {uri} answered {response.status} on /health")
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise TrackingUnavailable(f"MLflow tracking server {uri} is unreachable ({reason})") from None
        return
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.parent.is_dir():
            raise TrackingUnavailable(f"MLflow database folder {db.parent} does not exist (from {uri})")
        if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
            raise TrackingUnavailable(f"MLflow database {db} is not writable (from {uri})")
        return
    if uri.startswith(("file:", "./", "/")) or "://" not in uri:
        raise TrackingUnavailable(
            f"MLflow tracking URI {uri!r} is a file store; use sqlite:///path/mlflow.db or an http server"
        )


def git_commit(root: Path) -> str:
    """The checked-out commit (with a '-dirty' suffix when the tree has changes), or 'unknown'."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {'a.b.c': value}, the form MLflow params take."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


class RunLogger:
    """Thin handle on an active MLflow run: metrics with step = epoch, artifacts, tags."""

    def __init__(self, run_id: str, experiment_id: str = "") -> None:
        self.run_id = run_id
        self.experiment_id = experiment_id

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)
        reported = sorted(k for k in metrics if k.startswith(REPORTED_PREFIX))
        if reported:  # the run's description in the UI (mlflow.note.content) and a searchable tag
            mlflow.set_tags({REPORTED_TAG: ", ".join(reported), "mlflow.note.content": REPORTED_NOTE})

    def log_curve(self, rows: Sequence[Mapping[str, float]], step: str = "epoch") -> None:
        """Per-step metrics (one mapping per step, its ``step`` key the step) in one MLflow batch call:
        one database transaction instead of one per step (a 20-epoch probe curve: 20 -> 1)."""
        import time

        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), now, int(row[step]))
            for row in rows
            for key, value in row.items()
            if key != step
        ]
        client = MlflowClient()
        for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        import mlflow

        if Path(path).is_dir():
            mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        else:
            mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        import mlflow

        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def record_outputs(self, path: Path) -> str:
        """Tag the run with the digest of the outputs it wrote (provenance); returns the digest."""
        from cecl.io import tree_digest

        digest = tree_digest(path)
        self.set_tags({OUTPUTS_TAG: digest})
        return digest


def _experiment_id(experiment: str, root: Path, uri: str) -> str:
    import mlflow

    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    # Without this tag MLflow 3's UI opens the experiment on its GenAI overview, not on the runs.
    experiment_id = mlflow.create_experiment(
        experiment, artifact_location=(root / ARTIFACTS_DIR).resolve().as_uri(), tags=EXPERIMENT_TAGS
    )
    if uri.startswith("sqlite:///") and root.resolve() == Path.cwd().resolve():
        _make_artifacts_relative(Path(uri.removeprefix("sqlite:///")), experiment_id)
    return experiment_id


def _make_artifacts_relative(db: Path, experiment_id: str) -> None:
    """Store the experiment's artifact location as ``mlartifacts`` (relative), so a moved repository works.

    MLflow turns every local artifact location into an absolute path when the experiment is created
    (``resolve_uri_if_local``) and has no API to change it, so a repository that moves (or runs in the
    container at /workspace) would log to, and look up, the old folder. A relative location is resolved
    against the working directory, which is the repository root for every stage (DVC runs commands there)
    and for `mlflow ui` started as the README says; runs created afterwards inherit it. Only our own new
    experiment in our own sqlite file is changed, right after creating it, and only when the working
    directory is the root (a caller with another root, e.g. a test, keeps the absolute location).
    """
    with sqlite3.connect(db) as connection:
        connection.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
            (ARTIFACTS_DIR, int(experiment_id)),
        )


@dataclass(frozen=True)
class TrackedRun:
    """One finished MLflow run of a stage, as the provenance report lists it."""

    run_id: str
    experiment_id: str
    outputs_sha256: str  # the tag a stage sets after writing its outputs ("" when it wrote none)
    start_time: int  # ms since the epoch


def finished_stage_runs(experiment: str, root: Path | None = None) -> dict[str, list[TrackedRun]]:
    """Every FINISHED run of ``experiment`` in the tracking store, by ``dvc_stage`` tag, newest first.

    Empty when the experiment does not exist (a workspace whose outputs were pulled, not run).
    """
    uri = tracking_uri(root)
    check_reachable(uri)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return {}
    by_stage: dict[str, list[TrackedRun]] = {}
    token = None
    while True:  # paged: the paper profile has over a thousand stage runs
        page = client.search_runs(
            [found.experiment_id],
            filter_string="attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1000,
            page_token=token,
        )
        for run in page:
            stage = run.data.tags.get("dvc_stage")
            if stage:
                by_stage.setdefault(stage, []).append(
                    TrackedRun(
                        run.info.run_id,
                        run.info.experiment_id,
                        run.data.tags.get(OUTPUTS_TAG, ""),
                        int(run.info.start_time or 0),
                    )
                )
        token = page.token
        if not token:
            return by_stage


def close_as_killed(client: Any, run_id: str, closed_by: str) -> None:
    """End a run its killed stage left RUNNING as FAILED, tagged ``cecl.end_reason=killed`` and who closed it.

    FAILED, not MLflow's KILLED: the stage's work did not finish, and FINISHED/FAILED are the two ends a
    reader (and ``finished_stage_runs``) has to consider; the tag keeps a kill apart from an error.
    """
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(END_REASON_TAG, "killed"), RunTag("closed_by", closed_by)])
    client.set_terminated(run_id, status="FAILED")


def close_abandoned_runs(experiment_id: str, stage: str) -> list[str]:
    """Close (FAILED, ``cecl.end_reason=killed``) the runs of ``stage`` still RUNNING: a stage killed
    with SIGKILL never closed its run.

    Called when the stage starts again, so the UI never shows a run that is "running" forever. Stages
    never run twice at once (DVC's per-output locks), so a RUNNING run of this stage is abandoned.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.dvc_stage = '{stage}' and attributes.status = 'RUNNING'"
    )
    for run in found:
        close_as_killed(client, run.info.run_id, "a later run of the same stage (it was killed)")
    return [run.info.run_id for run in found]


def close_abandoned_local_runs(root: Path) -> int:
    """Close (FAILED, ``cecl.end_reason=killed``) every run still RUNNING in ``root``'s own mlflow.db;
    how many were closed.

    Called by ``python -m cecl.repro`` and ``python -m cecl.launch`` after their stages, under the
    workspace's launch lock: no stage of this workspace runs then, so a RUNNING run is one whose stage
    was killed. :func:`close_abandoned_runs` closes such a run when its stage starts again, but a stage
    that DVC restores from its run-cache never starts again, and its run would stay RUNNING for good.
    Only the workspace's own database (no MLFLOW_TRACKING_URI): a shared server may hold live runs of
    other workspaces. A read-only query first, so a run without abandoned runs never imports MLflow.
    """
    db = root / "mlflow.db"
    if os.environ.get("MLFLOW_TRACKING_URI") or not db.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            found = [row[0] for row in conn.execute("SELECT run_uuid FROM runs WHERE status = 'RUNNING'")]
    except sqlite3.Error:
        return 0
    if not found:
        return 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db.resolve()}")
    for run_id in found:
        close_as_killed(client, run_id, "the launch that found it abandoned (its stage was killed)")
    return len(found)


def closed_note(count: int) -> str:
    """The launch's line about the runs :func:`close_abandoned_local_runs` closed."""
    return f"closed {count} MLflow run(s) left RUNNING by killed stages: FAILED, {END_REASON_TAG}=killed"


@contextmanager
def stage_run(
    stage: str,
    experiment: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    root: Path | None = None,
    parent_run_id: str | None = None,
) -> Iterator[RunLogger]:
    """Open one MLflow run for one stage execution; marks it FAILED if the body raises.

    Tags always include the git commit and the DVC stage name; callers add dataset, method, seed,
    device. ``parent_run_id`` makes this a nested child run (used by the sweep's trials).
    """
    root = root or Path.cwd()
    uri = tracking_uri(root)
    check_reachable(uri)
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)
    import mlflow

    mlflow.set_tracking_uri(uri)
    experiment_id = _experiment_id(experiment, root, uri)
    close_abandoned_runs(experiment_id, stage)
    from cecl.machine import machine_info  # here: torch is imported only by stages that run

    machine = {f"machine.{k}": v for k, v in machine_info().items()}  # cecl/machine.py says why
    all_tags = {"git_commit": git_commit(root), "dvc_stage": stage, **machine, **(tags or {})}
    with mlflow.start_run(
        run_name=stage,
        experiment_id=experiment_id,
        tags={k: str(v) for k, v in all_tags.items()},
        parent_run_id=parent_run_id,
    ) as run:
        if params:
            flat = {k: str(v)[:6000] for k, v in flatten(params).items()}
            items = list(flat.items())
            for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                mlflow.log_params(dict(items[start : start + 100]))
        yield RunLogger(run.info.run_id, experiment_id)


class NoRun(RunLogger):
    """A silent stand-in for the MLflow run on torchrun ranks other than 0."""

    def __init__(self) -> None:
        super().__init__("", "")

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_curve(self, rows: Sequence[Mapping[str, float]], step: str = "epoch") -> None: ...

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
