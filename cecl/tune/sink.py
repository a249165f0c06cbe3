"""MLflow for the sweep: one child run per trial, nested under the stage's run; the driver alone writes.

Trial processes never open the sqlite database. A small ``tune.Callback`` (:class:`TrialEvents`)
prints one progress line per trial event and logs each epoch's metrics live into the trial's child
run, which :class:`TrialRuns` creates on first use, nested under the sweep's parent run by the
``mlflow.parentRunId`` tag and tagged like a stage run (git_commit, dvc_stage ``sweep``, dataset,
family, method, seed, device, data_verified). After ``fit`` every trial's child run is completed from
the stored results.

Why not Ray's ``MLflowLoggerCallback``: it can nest through the same tag, but it names runs after
Ray's trial ids, logs every Ray bookkeeping key, and its state (parent id, run map) is pickled into
the experiment, so a restored sweep would nest new runs under the old, interrupted parent and leave
trials finished before the interruption without a child in the new one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray import tune

from cecl.tune.grid import OBJECTIVE, config_key, overrides_of, trial_label

if TYPE_CHECKING:
    from cecl.tune.outcome import TrialOutcome

STAGE = "sweep"  # the dvc_stage tag of the parent run and of every child run


class TrialRuns:
    """One MLflow child run per trial, nested under the sweep's parent run; written by the driver only.

    ``static_params`` are logged to every child run besides its grid point; ``static_tags`` (dataset,
    family, seed, device, ...) are set on every child besides its method. The git commit is the
    parent's (the stage run records it), or this checkout's when the parent has none.
    """

    def __init__(
        self,
        parent_run_id: str,
        tracking_uri: str,
        static_params: Mapping[str, Any],
        static_tags: Mapping[str, Any] | None = None,
        root: Path | None = None,
    ) -> None:
        from mlflow.tracking import MlflowClient

        from cecl.tracking import git_commit

        self.client = MlflowClient(tracking_uri)
        parent = self.client.get_run(parent_run_id)
        self.parent_run_id = parent_run_id
        self.experiment_id = parent.info.experiment_id
        commit = parent.data.tags.get("git_commit") or git_commit(root or Path.cwd())
        self.tags = {
            "git_commit": commit,
            "dvc_stage": STAGE,
            **{k: str(v) for k, v in (static_tags or {}).items()},
        }
        self.static_params = dict(static_params)
        self.runs: dict[tuple, str] = {}
        self.logged_steps: dict[tuple, set[int]] = {}
        self.finished: set[tuple] = set()

    def tag_parent(self, tags: Mapping[str, Any]) -> None:
        """Tags of the sweep's parent run known only once Ray runs (the trials' device)."""
        from mlflow.entities import RunTag

        self.client.log_batch(self.parent_run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def run_id(self, config: dict[str, Any]) -> str:
        """The child run of ``config``'s grid point, created (tagged, params logged) on first use."""
        from mlflow.entities import Param

        key = config_key(config)
        if key not in self.runs:
            tags = {**self.tags, "mlflow.parentRunId": self.parent_run_id, "method": config["method"]}
            run = self.client.create_run(
                self.experiment_id, run_name=f"{STAGE}/{trial_label(config)}", tags=tags
            )
            params = {**self.static_params, "method": config["method"], **overrides_of(config)}
            self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
            self.runs[key] = run.info.run_id
            self.logged_steps[key] = set()
        return self.runs[key]

    def log_epochs(self, config: dict[str, Any], rows: Sequence[dict[str, Any]]) -> None:
        """Per-epoch metrics with step = epoch; epochs already logged to this run are skipped."""
        from mlflow.entities import Metric

        run_id = self.run_id(config)
        done = self.logged_steps[config_key(config)]
        stamp = int(time.time() * 1000)
        metrics = []
        for row in rows:
            epoch = int(row["epoch"])
            if epoch in done:
                continue
            done.add(epoch)
            for name in (OBJECTIVE, "train_loss", "epoch_seconds"):
                if row.get(name) is not None and not _is_nan(row[name]):
                    metrics.append(Metric(name, float(row[name]), stamp, epoch))
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)

    def finish(self, config: dict[str, Any], outcome: TrialOutcome, history: Sequence[dict[str, Any]]) -> str:
        """Complete ``config``'s child run from its stored results; FINISHED or FAILED like the trial."""
        from mlflow.entities import Metric, RunTag

        self.log_epochs(config, history)
        run_id = self.run_id(config)
        stamp = int(time.time() * 1000)
        metrics = [Metric("epochs_run", outcome.epochs_run, stamp, 0)]
        if outcome.best_val_accuracy is not None:
            metrics.append(Metric("best_val_accuracy", outcome.best_val_accuracy, stamp, 0))
        if outcome.final_val_accuracy is not None:
            metrics.append(Metric("final_val_accuracy", outcome.final_val_accuracy, stamp, 0))
        tags = {
            "status": outcome.status,
            "retries": outcome.retries,
            "stopped_early": outcome.stopped_early,
            "ray_trial_id": outcome.trial_id,
        }
        self.client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        self.client.set_terminated(run_id, "FINISHED" if outcome.status == "TERMINATED" else "FAILED")
        self.finished.add(config_key(config))
        return run_id

    def abandon(self) -> None:
        """End child runs left open by an interrupted sweep FAILED, tagged ``cecl.end_reason=interrupted``
        (runs end FINISHED or FAILED only, cecl/tracking.py)."""
        from mlflow.entities import RunTag

        from cecl.tracking import END_REASON_TAG

        for key, run_id in self.runs.items():
            if key not in self.finished:
                self.client.log_batch(run_id, tags=[RunTag(END_REASON_TAG, "interrupted")])
                self.client.set_terminated(run_id, "FAILED")


def _is_nan(value: Any) -> bool:
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return True


# Live MLflow sinks by experiment name. The Tune callback below is pickled into the experiment by Ray
# and unpickled on Tuner.restore, so it holds only the name and looks up this session's sink here.
SINKS: dict[str, TrialRuns] = {}


def _error_line(trial: Any) -> str:
    """The last line of the trial's error file (the exception), or '' when there is none."""
    try:
        path = trial.error_file
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()] if path else []
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


class TrialEvents(tune.Callback):
    """Driver-side Tune callback: one progress line per event, and live MLflow logging of each epoch."""

    def __init__(self, experiment: str, epochs: int) -> None:
        self.experiment = experiment
        self.epochs = epochs

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if "epoch" not in result:
            return
        print(
            f"[sweep] {trial_label(trial.config)}: epoch {result['epoch']}/{self.epochs} "
            f"val {result[OBJECTIVE]:.4f} loss {result['train_loss']:.4f} "
            f"({result['epoch_seconds']:.1f}s)",
            flush=True,
        )
        runs = SINKS.get(self.experiment)
        if runs is not None:
            runs.log_epochs(trial.config, [result])

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        epoch = int((trial.last_result or {}).get("epoch", 0))
        early = " (stopped early by ASHA)" if epoch < self.epochs else ""
        print(f"[sweep] {trial_label(trial.config)}: finished after {epoch} epochs{early}", flush=True)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = _error_line(trial)
        crashed = f"crashed ({error})" if error else "crashed"
        print(
            f"[sweep] {trial_label(trial.config)}: {crashed}, retrying from its last checkpoint", flush=True
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # The traceback: Tune's error log on stderr, and error.txt in the trial's folder under ray_results.
        error = _error_line(trial)
        print(
            f"[sweep] {trial_label(trial.config)}: FAILED after {trial.num_failures} attempt(s)"
            + (f": {error}" if error else ""),
            flush=True,
        )
