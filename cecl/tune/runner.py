"""Running sweeps: Ray, ASHA, one Tuner per method (resumable), the outcomes and best.json.

One Tuner per method (grid search, one ``tune.grid_search`` per axis). Why per method: the methods
have different axes (only CECL has w), and ASHA stops a trial by comparing it with the other trials
at the same epoch, so mixing methods in one Tuner would let one method's trials stop another's,
while the sweep's question is "the best configuration *of each method*".

One budget: configurations are compared by their last-epoch value after all ``sweep.epochs`` epochs
(:func:`best_per_method`), never a stopped trial's value at a smaller budget. The CPU default runs the
full grid (``scheduler: none``); with ASHA (asynchronous, one trial at a time: the first configuration
of the grid runs to the end and the rest are judged against it) only its survivors are compared.

Fault tolerance:
- Results and checkpoints live in ``sweep/ray_results/<method>-<fingerprint>`` inside the project.
  The fingerprint (:func:`cecl.tune.trial.experiment_name`) covers everything that determines a
  trial's numbers (params, data, trial code), so a change starts a fresh experiment (replacing the
  method's stale one, :func:`prune_stale`) and an unchanged one is restored with ``Tuner.restore``:
  finished trials are kept, unfinished ones continue from their checkpoint, errored ones are retried.
  Re-running a finished sweep retrains nothing. Under ASHA an unfinished experiment is restarted
  instead (:func:`unresumable`: Ray does not save the scheduler's state), so a killed and resumed
  sweep gives the results of an uninterrupted one either way.
- ``FailureConfig(max_failures=sweep.max_failures)`` retries a crashed trial from its checkpoint;
  a trial that still fails is reported with status ERROR and the sweep finishes. A method none of
  whose trials finished has no best configuration: :meth:`SweepSummary.raise_if_failed` turns that
  into a one-line :class:`SweepFailed` (the stage exits non-zero; running it again retries them).
- Test hook: ``CECL_SWEEP_CRASH`` (read by the driver, see :func:`cecl.tune.grid.parse_crash_specs`)
  makes chosen trials crash, to exercise retries and error reporting.

Device: params.yaml ``device`` is resolved for the trials by :func:`cecl.tune.trial.resolve_sweep_device`
against the GPUs Ray has (``cuda:N`` starts the local Ray with only GPU N visible), recorded in the
MLflow ``device`` tag of the parent and child runs and in best.json.

Ray's output: the driver's ``[sweep] ...`` lines (:class:`cecl.tune.sink.TrialEvents`, one per trial
result, stop, retry and failure, then :meth:`SweepSummary.report_lines`) are the progress report on
stdout. Tune runs with ``verbose=0``; Ray and Tune are kept quiet and uncoloured by their own
settings (:mod:`cecl.tune.console`). Worker output is still forwarded to the driver
(``log_to_driver``), so what a trial prints (a warning, say) reaches the stage's log, prefixed with
``(sweep_trial pid=N)``; a failed trial's traceback is in its ``error.txt`` under ray_results.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from ray import tune

from cecl import runs as run_paths
from cecl.config import Params
from cecl.methods import resolve_options
from cecl.tune.console import apply_defaults, quiet_loggers
from cecl.tune.grid import (
    CRASH_ENV,
    OBJECTIVE,
    grid_size,
    overrides_of,
    parse_crash_specs,
    search_space,
    sweep_methods,
)
from cecl.tune.outcome import TrialOutcome
from cecl.tune.sink import SINKS, TrialEvents, TrialRuns
from cecl.tune.trial import (
    REPO_ROOT,
    SweepDevice,
    TrialSetup,
    experiment_name,
    gpu_pin,
    resolve_sweep_device,
    sweep_trial,
    trial_label,
)

RAY_RESULTS = "ray_results"


class SweepInterrupted(RuntimeError):
    """The sweep stopped before every trial finished (e.g. Ctrl-C); running it again resumes it."""


class SweepFailed(ValueError):
    """Every trial of some method failed, so it has no best configuration; the message is one line.

    A ValueError so that the stage's entry point (``cecl.cli.run_stage``) prints it as one line and
    exits non-zero.
    """


# ---------------------------------------------------------------- Ray


def visible_gpus() -> list[str]:
    """The GPU ids this process sees: CUDA_VISIBLE_DEVICES when set, else 0..count-1."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and not g.strip().startswith("-")]
    return [str(i) for i in range(torch.cuda.device_count())]


def init_ray(params: Params) -> bool:
    """Connect to RAY_ADDRESS's cluster, or start a local Ray; returns True when this call started it.

    Workers get the repository root on PYTHONPATH so they can import ``cecl`` (on a cluster, every
    node needs the checkout, the data and ``sweep/ray_results`` at the same path, e.g. a shared disk).
    ``device: cuda:N`` starts the local Ray with only GPU N visible (as a stage would train on GPU N).
    See :mod:`cecl.tune.console` for how Ray's own output is kept out of the way.
    """
    import ray

    if ray.is_initialized():
        return False
    quiet_loggers()
    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    runtime_env = {"env_vars": {"PYTHONPATH": pythonpath}}
    quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=runtime_env, **quiet)
        return True
    sweep = params.sweep
    cpus = os.cpu_count() or 1
    if sweep.cpus_per_trial > cpus:
        raise ValueError(f"sweep.cpus_per_trial {sweep.cpus_per_trial:g} exceeds this machine's {cpus} CPUs")
    pin = gpu_pin(params.device, visible_gpus())
    # Ray finds its GPUs in CUDA_VISIBLE_DEVICES when it starts; the driver's own value is restored after.
    with mock.patch.dict(os.environ, {} if pin is None else {"CUDA_VISIBLE_DEVICES": pin}):
        # "local": our own Ray even when another cluster runs on this host (RAY_ADDRESS joins one on purpose).
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, runtime_env=runtime_env, **quiet)
    return True


def sweep_device(params: Params, started_ray: bool) -> SweepDevice:
    """params.yaml ``device`` resolved against the GPUs of the running Ray (see resolve_sweep_device)."""
    import ray

    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    # init_ray pinned the local Ray it started to GPU N (a cluster, or a Ray started elsewhere, it cannot).
    pinned = started_ray and not os.environ.get("RAY_ADDRESS") and params.device.startswith("cuda:")
    return resolve_sweep_device(params.device, params.sweep.gpus_per_trial, gpus, pinned)


def trial_resources(params: Params, device: SweepDevice) -> dict[str, float]:
    """Ray resources of one trial: GPUs only when its trials train on CUDA."""
    return {"cpu": params.sweep.cpus_per_trial, "gpu": device.gpus_per_trial}


def check_device(params: Params) -> None:
    """One line, before Ray starts, when params.yaml asks for CUDA but the trials would get no GPU."""
    if params.device.startswith("cuda") and params.sweep.gpus_per_trial == 0:
        resolve_sweep_device(params.device, 0.0, 0.0)  # raises the one-line error


def scheduler(params: Params) -> tune.schedulers.TrialScheduler | None:
    """ASHA on the epoch counter (max_t = sweep.epochs), or None for the full grid."""
    sweep = params.sweep
    if sweep.scheduler == "none":
        return None
    return tune.schedulers.ASHAScheduler(
        time_attr="epoch",
        max_t=sweep.epochs,
        grace_period=min(sweep.asha.grace_period, sweep.epochs),
        reduction_factor=sweep.asha.reduction_factor,
    )


def unresumable(params: Params, method: str, path: Path) -> str | None:
    """Why an interrupted experiment at ``path`` must start afresh rather than be restored, or None.

    ``Tuner.restore`` rebuilds the scheduler from the copy pickled when the experiment started, so
    ASHA's rung records (which trials reached which epoch with which score) are lost and a resumed
    sweep stops other trials than an uninterrupted one would (ray-project/ray#30838). Under
    ``scheduler: none`` every trial is independent and resumes bit-exactly from its checkpoint, so only
    an ASHA experiment with an unfinished trial is restarted; a finished one is restored (nothing reruns).
    """
    if params.sweep.scheduler == "none" or not tune.Tuner.can_restore(path):
        return None
    try:
        trials = tune.ExperimentAnalysis(str(path)).trials
    except Exception:  # an unreadable experiment state cannot be resumed either
        trials = []
    done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)  # finished, as run_method_sweep counts
    if len(trials) == done == grid_size(params, method):
        return None
    return (
        f"{method}: restarting the interrupted experiment {path.name} from scratch ({done} of "
        f"{grid_size(params, method)} trials had finished): ASHA's early-stopping state is not saved by "
        "Ray Tune, and a resumed sweep would stop other trials than an uninterrupted one"
    )


def prune_stale(storage: Path, method: str, keep: str) -> None:
    """Delete ``method``'s experiments of other fingerprints (older params, data or code)."""
    if not storage.is_dir():
        return
    for stale in storage.iterdir():
        if (
            stale.is_dir()
            and stale.name != keep
            and re.fullmatch(rf"{re.escape(method)}-[0-9a-f]{{12}}", stale.name)
        ):
            print(f"[sweep] removing stale experiment {stale} (params, data or code changed)", flush=True)
            shutil.rmtree(stale)


# ---------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class SweepSummary:
    outcomes: list[TrialOutcome]
    best: dict[str, Any]  # best.json
    seconds: float
    experiments: dict[str, Path] = field(default_factory=dict)  # method -> its Tune experiment folder

    def report_lines(self) -> list[str]:
        """The console's final summary: per method its best configuration and how its trials ended."""
        lines = []
        for method in dict.fromkeys(o.method for o in self.outcomes):
            trials = [o for o in self.outcomes if o.method == method]
            failed = sum(o.status != "TERMINATED" for o in trials)
            stopped = sum(o.stopped_early for o in trials)
            counts = f"{len(trials)} trials: {failed} failed, {stopped} stopped early"
            best = self.best["methods"].get(method)
            if best is None:
                lines.append(f"[sweep] {method}: no best configuration ({counts})")
                continue
            point = {k: best[k] for k in ("temperature", "weight") if k in best}
            label = trial_label({"method": method, **point})
            ties = f", {best['ties']} configurations tie" if best.get("ties", 1) > 1 else ""
            lines.append(
                f"[sweep] best {label}: val {best['final_val_accuracy']:.4f} after epoch {best['epochs_run']}"
                f"{ties} ({counts})"
            )
        return lines

    @property
    def trial_epochs(self) -> int:
        return sum(o.epochs_run for o in self.outcomes)

    def failed_methods(self) -> list[str]:
        """Swept methods without a best configuration: none of their trials finished."""
        return [m for m in dict.fromkeys(o.method for o in self.outcomes) if m not in self.best["methods"]]

    def raise_if_failed(self) -> None:
        """SweepFailed (one line, naming the methods) when some method has no finished trial."""
        failed = self.failed_methods()
        if not failed:
            return
        parts = []
        for method in failed:
            trials = [o for o in self.outcomes if o.method == method]
            where = self.experiments.get(method)
            parts.append(
                f"every trial of {method} failed ({len(trials)} of {len(trials)}"
                + (f", errors in {where}/*/error.txt" if where else "")
                + ")"
            )
        raise SweepFailed("; ".join(parts) + ": it has no best configuration; run the sweep again to retry")


def _history(frame: Any) -> list[dict[str, Any]]:
    """A trial's per-epoch rows from its stored results (all sessions), one per epoch (the last)."""
    if frame is None or frame.empty or "epoch" not in frame:
        return []
    frame = frame.dropna(subset=["epoch"]).drop_duplicates(subset="epoch", keep="last").sort_values("epoch")
    columns = [c for c in ("epoch", OBJECTIVE, "train_loss", "epoch_seconds") if c in frame]
    return frame[columns].to_dict("records")


def _outcome(params: Params, trial: Any, history: list[dict]) -> TrialOutcome:
    best = max(history, key=lambda r: (r[OBJECTIVE], -r["epoch"])) if history else None
    epochs_run = int(max((r["epoch"] for r in history), default=0))
    last = history[-1] if history else None  # _history sorts by epoch
    failures = int(trial.num_failures)
    retries = failures if trial.status == "TERMINATED" else max(0, failures - 1)
    method = trial.config["method"]
    # The values the trial trained with: the grid point, else the method's option from params.yaml.
    options = resolve_options(method, params.method_options.get(method), overrides_of(trial.config))
    temperature = getattr(options, "temperature", None)
    weight = getattr(options, "weight", None)  # only CECL has a weight
    return TrialOutcome(
        method=method,
        temperature=None if temperature is None else float(temperature),
        weight=None if weight is None else float(weight),
        best_val_accuracy=None if best is None else float(best[OBJECTIVE]),
        best_epoch=None if best is None else int(best["epoch"]),
        epochs_run=epochs_run,
        stopped_early=trial.status == "TERMINATED" and epochs_run < params.sweep.epochs,
        status=trial.status,
        retries=retries,
        trial_id=trial.trial_id,
        final_val_accuracy=None if last is None else float(last[OBJECTIVE]),
    )


def _order(outcome: TrialOutcome) -> tuple[float, float]:
    return (
        -1.0 if outcome.temperature is None else outcome.temperature,
        -1.0 if outcome.weight is None else outcome.weight,
    )


# ---------------------------------------------------------------- running


def run_method_sweep(
    params: Params,
    method: str,
    storage: Path,
    data_dir: Path,
    runs: TrialRuns | None,
    callbacks: Sequence[tune.Callback] = (),
    verbose: int = 0,
    device: SweepDevice | None = None,
) -> list[TrialOutcome]:
    """Run (or resume) the Tuner of one method; raises SweepInterrupted if it stopped early.

    ``device`` is where the trials train (default: the CPU).
    """
    sweep = params.sweep
    device = device or SweepDevice(params.device, "cpu")
    name = experiment_name(params, method, data_dir)
    path = storage / name
    setup = TrialSetup(
        params, str(data_dir.resolve()), device.kind, parse_crash_specs(os.environ.get(CRASH_ENV))
    )
    resources = trial_resources(params, device)
    trainable = tune.with_resources(tune.with_parameters(sweep_trial, setup=setup), resources)
    if runs is not None:
        SINKS[name] = runs
    try:
        restart = unresumable(params, method, path)
        if restart is not None:
            print(f"[sweep] {restart}", flush=True)
            shutil.rmtree(path)
        if tune.Tuner.can_restore(path):
            print(f"[sweep] resuming {method} from {path}", flush=True)
            tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
        else:
            prune_stale(storage, method, keep=name)
            print(
                f"[sweep] {method}: {grid_size(params, method)} configurations on {sweep.dataset}, "
                f"up to {sweep.epochs} epoch(s) each, on {device.name}",
                flush=True,
            )
            tuner = tune.Tuner(
                trainable,
                param_space=search_space(params, method),
                tune_config=tune.TuneConfig(
                    metric=OBJECTIVE,
                    mode="max",
                    scheduler=scheduler(params),
                    max_concurrent_trials=sweep.max_concurrent,
                    reuse_actors=True,  # a finished trial's process runs the next one (no re-import)
                ),
                run_config=tune.RunConfig(
                    name=name,
                    storage_path=str(storage),
                    failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                    callbacks=[TrialEvents(name, sweep.epochs), *callbacks],
                    verbose=verbose,
                ),
            )
        tuner.fit()
    finally:
        SINKS.pop(name, None)
    # The experiment state Tune saved on disk, not fit()'s in-memory trials: after a Ctrl-C, Tune's
    # cleanup marks the stopped trials TERMINATED in memory, while the saved state keeps them unfinished.
    analysis = tune.ExperimentAnalysis(str(path))
    finished = [t for t in analysis.trials if t.status in ("TERMINATED", "ERROR")]
    if len(finished) < grid_size(params, method):
        raise SweepInterrupted(
            f"sweep of {method} stopped with {len(finished)} of {grid_size(params, method)} trials finished; "
            f"run it again to resume from {path}"
        )
    frames = analysis.trial_dataframes
    outcomes = []
    for trial in finished:
        history = _history(frames.get(trial.trial_id))
        outcome = _outcome(params, trial, history)
        if runs is not None:
            outcome = replace(outcome, mlflow_run_id=runs.finish(trial.config, outcome, history))
        outcomes.append(outcome)
    return sorted(outcomes, key=_order)


def best_per_method(
    params: Params, outcomes: Sequence[TrialOutcome], device: SweepDevice | None = None
) -> dict[str, Any]:
    """best.json: per method the configuration with the highest validation objective at the one budget.

    Compared: the last-epoch value (``final_val_accuracy``) of the trials that ran all ``sweep.epochs``
    epochs, every one of them at the same budget (under ASHA the ones it stopped are not compared: a
    stopped trial's value is at a smaller budget). Ties go to the first configuration in (temperature,
    weight) order, and ``ties`` says how many configurations share the value, so a flat objective is
    visible instead of a spurious winner.
    """
    methods: dict[str, Any] = {}
    for method in sweep_methods(params):
        done = [o for o in outcomes if o.method == method and o.at_budget(params.sweep.epochs)]
        if not done:
            continue
        top = max(done, key=lambda o: o.final_val_accuracy or 0.0)  # max keeps the first among ties
        methods[method] = {
            k: v
            for k, v in top.row().items()
            if k not in ("method", "status") and not (k == "weight" and v is None)
        }
        # How many configurations reach the same value: > 1 means the selection among them is arbitrary.
        methods[method]["ties"] = sum(
            math.isclose(o.final_val_accuracy or 0.0, top.final_val_accuracy or 0.0, abs_tol=1e-12)
            for o in done
        )
    sweep = params.sweep
    spec = params.spec(sweep.dataset)
    metric = spec.evaluator().primary
    return {
        "objective": f"monitor {metric} on the validation split after epoch {sweep.epochs} (the last)",
        "metric": metric,
        "dataset": sweep.dataset,
        "description": spec.describe(),
        "seed": sweep.seed,
        "epochs": sweep.epochs,
        "train_size": sweep.train_size,
        "scheduler": sweep.scheduler,
        **({} if device is None else {"device": device.name}),
        "methods": methods,
    }


def child_tags(
    params: Params, device: SweepDevice | None = None, data_dir: Path | None = None
) -> dict[str, Any]:
    """Tags of the sweep's runs, like a stage run's (``cecl.pipeline.run_tags``), the method aside.

    ``device`` (where the trials train) is known once Ray runs; without it the tag is left out.
    """
    sweep = params.sweep
    spec = params.spec(sweep.dataset)
    tags: dict[str, Any] = {
        "dataset": sweep.dataset,
        "family": spec.family,
        "seed": sweep.seed,
        "data_verified": spec.data_verified(data_dir or run_paths.data_dir(sweep.dataset)),
    }
    return tags if device is None else {**tags, "device": device.name}


def run_sweep(
    params: Params,
    root: Path | None = None,
    parent_run_id: str | None = None,
    data_dir: Path | None = None,
    storage: Path | None = None,
    callbacks: Sequence[tune.Callback] = (),
    verbose: int = 0,
) -> SweepSummary:
    """Run every method's grid; trial results and checkpoints go to ``storage`` (resumable).

    ``root`` is the project root (default: the current directory); ``data_dir`` defaults to
    ``<root>/data/<sweep.dataset>`` and ``storage`` to ``<root>/sweep/ray_results``. With
    ``parent_run_id``, each trial gets a nested MLflow run.
    """
    import ray

    from cecl.tracking import tracking_uri

    sweep = params.sweep
    root = (root or Path.cwd()).resolve()
    data_dir = (data_dir or root / run_paths.data_dir(sweep.dataset)).resolve()
    storage = (storage or root / run_paths.SWEEP_DIR / RAY_RESULTS).resolve()
    params.spec(sweep.dataset).read_manifest(data_dir)  # one line if missing or not this entry's data
    check_device(params)
    apply_defaults()  # in case the environment changed since cecl.tune was imported
    started_ray = init_ray(params)
    started = time.perf_counter()
    outcomes: list[TrialOutcome] = []
    experiments: dict[str, Path] = {}
    runs = None
    try:
        device = sweep_device(params, started_ray)
        if device.note:
            print(f"[sweep] {device.note}", flush=True)
        if parent_run_id is not None:
            static = {
                "dataset": sweep.dataset,
                "seed": sweep.seed,
                "epochs": sweep.epochs,
                "train_size": sweep.train_size,
                "scheduler": sweep.scheduler,
                "device": params.device,
            }
            runs = TrialRuns(
                parent_run_id, tracking_uri(root), static, child_tags(params, device, data_dir), root
            )
            runs.tag_parent({"device": device.name})
        for method in sweep_methods(params):
            experiments[method] = storage / experiment_name(params, method, data_dir)
            outcomes += run_method_sweep(params, method, storage, data_dir, runs, callbacks, verbose, device)
    except BaseException:
        if runs is not None:
            runs.abandon()
        raise
    finally:
        if started_ray:
            ray.shutdown()
    return SweepSummary(
        outcomes, best_per_method(params, outcomes, device), time.perf_counter() - started, experiments
    )
