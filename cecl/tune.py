"""Ray Tune sweeps over the loss temperature (and CECL's weight w), objective = validation accuracy.

One Tuner per method (grid search, one ``tune.grid_search`` per axis). Why per method: the methods
have different axes (only CECL has w), and ASHA stops a trial by comparing it with the other trials
at the same epoch, so mixing methods in one Tuner would let one method's trials stop another's,
while the sweep's question is "the best configuration *of each method*".

Each trial runs the pipeline's own code (``run_pretraining`` with the grid point as method option
overrides) on the sweep's training rho, optionally subsampled to ``sweep.train_size``, and reports
the online linear probe's **validation** accuracy every epoch (the test split is never loaded), with
a Ray checkpoint, so that a retried or resumed trial continues from its last epoch.

Fault tolerance:
- Results and checkpoints live in ``sweep/ray_results/<method>-<fingerprint>`` inside the project.
  The fingerprint covers everything that determines a trial's numbers (params, data, training
  code), so a change starts a fresh experiment (replacing the method's stale one) and an unchanged
  one is restored with ``Tuner.restore``: finished trials are kept, unfinished ones continue from
  their checkpoint, errored ones are retried. Re-running a finished sweep retrains nothing.
- ``FailureConfig(max_failures=sweep.max_failures)`` retries a crashed trial from its checkpoint;
  a trial that still fails is reported with status ERROR and the sweep finishes.
- Test hook: ``CECL_SWEEP_CRASH`` (read by the driver, see :func:`parse_crash_specs`) makes chosen
  trials crash, to exercise retries and error reporting.

MLflow: only the driver writes (trial processes never open the sqlite database). A small
``tune.Callback`` creates one child run per trial, nested under the sweep's parent run by the
``mlflow.parentRunId`` tag, and logs per-epoch metrics live; after ``fit`` every trial's child run
is completed from the stored results. Ray's ``MLflowLoggerCallback`` can nest through the same tag,
but it names runs after Ray's trial ids, logs every Ray bookkeeping key, and its state (parent id,
run map) is pickled into the experiment, so a restored sweep would nest new runs under the old,
interrupted parent and leave trials finished before the interruption without a child in the new one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from ray import tune

from cecl.config import Params
from cecl.paths import DATA_DIR, SWEEP_DIR
from cecl.train.checkpoint import fingerprint
from cecl.train.probe import TensorSplit

REPO_ROOT = Path(__file__).resolve().parent.parent
CRASH_ENV = "CECL_SWEEP_CRASH"
OBJECTIVE = "val_accuracy"
AXES = ("temperature", "weight")


class SweepInterrupted(RuntimeError):
    """The sweep stopped before every trial finished (e.g. Ctrl-C); running it again resumes it."""


# ---------------------------------------------------------------- the grid


METHOD_ORDER = ("cecl", "supcon", "simclr")


def sweep_methods(params: Params) -> list[str]:
    """The methods with a grid in params.sweep.grids: CECL first, then the baselines."""
    return sorted(params.sweep.grids, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 99)


def search_space(params: Params, method: str) -> dict[str, Any]:
    """One grid_search per swept axis of ``method``; unswept axes are absent (the method's default)."""
    axes = params.sweep.grids[method]
    space: dict[str, Any] = {"method": method}
    for axis in AXES:
        if axis in axes:
            space[axis] = tune.grid_search(sorted(set(axes[axis])))
    return space


def overrides_of(config: dict[str, Any]) -> dict[str, float]:
    """The method-option overrides of a trial config (what ``run_pretraining`` re-validates)."""
    return {axis: float(config[axis]) for axis in AXES if axis in config}


def trial_label(config: dict[str, Any]) -> str:
    """``cecl tau=0.1 w=0.5`` / ``supcon tau=0.1``: the trial's name in MLflow and logs."""
    label = f"{config['method']} tau={float(config['temperature']):g}"
    if "weight" in config:
        label += f" w={float(config['weight']):g}"
    return label


# Source whose changes can change a trial's numbers (the sweep stage's code deps in dvc.yaml).
CODE_DEPS = (
    "cecl/tune.py",
    "cecl/pipeline.py",
    "cecl/train",
    "cecl/methods",
    "cecl/models",
    "cecl/losses",
    "cecl/data/augment.py",
    "cecl/data/biased_mnist.py",
)


def code_digest(root: Path = REPO_ROOT) -> str:
    """SHA-256 over the CODE_DEPS Python files (paths and contents)."""
    digest = hashlib.sha256()
    for dep in CODE_DEPS:
        path = root / dep
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(str(file.relative_to(root)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def experiment_name(params: Params, method: str, data_dir: Path) -> str:
    """``cecl-<12 hex>``: changes whenever anything that decides a trial's numbers changes.

    That is the method's grid and options, the sweep and pretraining settings, the data (manifest
    digests) and the training code; an unchanged sweep is therefore restored (finished trials are
    not rerun) and a changed one starts afresh. Resources, concurrency and max_failures are left
    out: they do not change results, and a restored experiment keeps the values it started with.
    """
    manifest = json.loads((data_dir / "manifest.json").read_text())
    sweep = params.sweep.model_dump(include={"rho", "epochs", "scheduler", "asha", "train_size"})
    key = {
        "sweep": sweep,
        "grid": params.sweep.grids[method],
        "options": getattr(params.method_options, method).model_dump(),
        "model": params.model.model_dump(),
        "augment": params.augment.model_dump(),
        "pretrain": params.pretrain.model_dump(exclude={"methods", "epochs"}),
        "device": params.device,
        "data": manifest.get("files", manifest),
        "code": code_digest(),
    }
    return f"{method}-{fingerprint(key)[:12]}"


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


# ---------------------------------------------------------------- the test hook


@dataclass(frozen=True)
class CrashSpec:
    """Test hook: crash trials of ``method`` at ``temperature`` (and ``weight``, when given).

    ``always=False``: crash once, right after reporting the first epoch of a fresh start, so Ray's
    retry resumes from that epoch's checkpoint and succeeds. ``always=True``: crash on every attempt
    before reporting anything, so the trial ends with status ERROR.
    """

    method: str
    temperature: float
    weight: float | None = None
    always: bool = False

    def matches(self, config: dict[str, Any]) -> bool:
        if config["method"] != self.method or not math.isclose(
            float(config["temperature"]), self.temperature
        ):
            return False
        return self.weight is None or math.isclose(float(config.get("weight", -1.0)), self.weight)


def parse_crash_specs(text: str | None) -> tuple[CrashSpec, ...]:
    """``"cecl:0.1:0.5,simclr:0.5:always"`` -> specs (``method:tau[:w][:always]``, comma-separated)."""
    specs = []
    for item in (text or "").split(","):
        parts = [p.strip() for p in item.strip().split(":") if p.strip()]
        if not parts:
            continue
        always = parts[-1] == "always"
        if always:
            parts.pop()
        if len(parts) not in (2, 3):
            raise ValueError(f"{CRASH_ENV}: expected method:tau[:w][:always], got {item!r}")
        weight = float(parts[2]) if len(parts) == 3 else None
        specs.append(CrashSpec(parts[0], float(parts[1]), weight, always))
    return tuple(specs)


# ---------------------------------------------------------------- the trial


@dataclass(frozen=True)
class TrialSetup:
    """Everything a trial needs besides its grid point; shipped once through the object store."""

    params: Params
    data_dir: str  # absolute: trials run in their own working directory
    crash: tuple[CrashSpec, ...] = ()


def load_train_val(rho: float, device: torch.device, data_dir: Path) -> tuple[TensorSplit, TensorSplit]:
    """The training and validation splits of ``rho``. The test split is deliberately not loaded."""
    from cecl.pipeline import load_tensor_split

    return load_tensor_split(rho, "train", device, data_dir), load_tensor_split(rho, "val", device, data_dir)


def subsample(split: TensorSplit, size: int | None, seed: int) -> TensorSplit:
    """A seeded random subset of ``size`` examples (in their original order); all when None or larger."""
    if size is None or size >= len(split):
        return split
    generator = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(split), generator=generator)[:size].sort().values.to(split.labels.device)
    return TensorSplit(split.images[keep], split.labels[keep], split.colours[keep])


def trial_device(params: Params) -> torch.device:
    """GPU only when the trial was given one (Ray sets CUDA_VISIBLE_DEVICES), else CPU."""
    if params.sweep.gpus_per_trial > 0 and params.device != "cpu":
        return torch.device("cuda")
    return torch.device("cpu")


def trial_fingerprint(params: Params, method: str, overrides: dict[str, float], data_dir: Path) -> str:
    """The pretraining fingerprint of one trial: the pipeline's, plus the sweep's epochs and subset."""
    from cecl.pipeline import pretrain_fingerprint

    base = pretrain_fingerprint(params, method, params.sweep.rho, overrides, data_dir)
    return fingerprint(
        {"pretrain": base, "epochs": params.sweep.epochs, "train_size": params.sweep.train_size}
    )


def sweep_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """The Ray Tune trainable: pretrain one grid point, report validation accuracy every epoch."""
    from cecl.train.loop import EpochRecord, run_pretraining

    params = setup.params
    sweep = params.sweep
    torch.set_num_threads(max(1, int(sweep.cpus_per_trial)))
    data_dir = Path(setup.data_dir)
    method = config["method"]
    overrides = overrides_of(config)
    device = trial_device(params)
    train, val = load_train_val(sweep.rho, device, data_dir)
    train = subsample(train, sweep.train_size, params.pretrain.seed)
    crash = next((spec for spec in setup.crash if spec.matches(config)), None)

    with tempfile.TemporaryDirectory(prefix="cecl-trial-") as work:
        local_ckpt = Path(work) / "last.pt"
        resumed_from = 0
        restored = tune.get_checkpoint()
        if restored is not None:
            with restored.as_directory() as folder:
                shutil.copy2(Path(folder) / "last.pt", local_ckpt)
            resumed_from = len(torch.load(local_ckpt, map_location="cpu", weights_only=True)["history"])

        def report(record: EpochRecord) -> None:
            if record.epoch <= resumed_from:  # replayed from the checkpoint: Ray already has it
                return
            if crash is not None and crash.always:
                raise RuntimeError(f"{CRASH_ENV} test hook: {trial_label(config)} crashes on every attempt")
            metrics = {
                OBJECTIVE: record.online_probe_val_accuracy,
                "epoch": record.epoch,
                "train_loss": record.train_loss,
                "epoch_seconds": record.seconds,
                "resumed_from_epoch": resumed_from,
            }
            with tempfile.TemporaryDirectory(prefix="cecl-report-") as staging:
                shutil.copy2(local_ckpt, Path(staging) / "last.pt")
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(staging))
            if crash is not None and resumed_from == 0 and record.epoch == 1:
                raise RuntimeError(f"{CRASH_ENV} test hook: {trial_label(config)} crashes after epoch 1")

        run_pretraining(
            params,
            method,
            train,
            val,
            device,
            fingerprint=trial_fingerprint(params, method, overrides, data_dir),
            checkpoint_path=local_ckpt,
            on_epoch=report,
            overrides=overrides,
            epochs=sweep.epochs,
            progress=False,
        )


# ---------------------------------------------------------------- Ray


def init_ray(params: Params) -> bool:
    """Connect to RAY_ADDRESS's cluster, or start a local Ray; returns True when this call started it.

    Workers get the repository root on PYTHONPATH so they can import ``cecl`` (on a cluster, every
    node needs the checkout, the data and ``sweep/ray_results`` at the same path, e.g. a shared disk).
    """
    import ray

    if ray.is_initialized():
        return False
    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    runtime_env = {"env_vars": {"PYTHONPATH": pythonpath}}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=runtime_env)
        return True
    sweep = params.sweep
    cpus = os.cpu_count() or 1
    if sweep.cpus_per_trial > cpus:
        raise ValueError(f"sweep.cpus_per_trial {sweep.cpus_per_trial:g} exceeds this machine's {cpus} CPUs")
    if sweep.gpus_per_trial > 0 and not torch.cuda.is_available():
        raise ValueError(f"sweep.gpus_per_trial is {sweep.gpus_per_trial:g} but this machine has no GPU")
    ray.init(num_cpus=cpus, include_dashboard=False, runtime_env=runtime_env, log_to_driver=True)
    return True


def _scheduler(params: Params) -> tune.schedulers.TrialScheduler | None:
    sweep = params.sweep
    if sweep.scheduler == "none":
        return None
    return tune.schedulers.ASHAScheduler(
        time_attr="epoch",
        max_t=sweep.epochs,
        grace_period=min(sweep.asha.grace_period, sweep.epochs),
        reduction_factor=sweep.asha.reduction_factor,
    )


# ---------------------------------------------------------------- MLflow (driver only)


def _config_key(config: dict[str, Any]) -> tuple[str, float, float | None]:
    weight = config.get("weight")
    return config["method"], float(config["temperature"]), None if weight is None else float(weight)


class TrialRuns:
    """One MLflow child run per trial, nested under the sweep's parent run; written by the driver only."""

    def __init__(self, parent_run_id: str, tracking_uri: str, static_params: dict[str, Any]) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        parent = self.client.get_run(parent_run_id)
        self.parent_run_id = parent_run_id
        self.experiment_id = parent.info.experiment_id
        self.inherited = {k: v for k, v in parent.data.tags.items() if k in ("git_commit", "dataset")}
        self.static_params = static_params
        self.runs: dict[tuple, str] = {}
        self.logged_steps: dict[tuple, set[int]] = {}
        self.finished: set[tuple] = set()

    def run_id(self, config: dict[str, Any]) -> str:
        key = _config_key(config)
        if key not in self.runs:
            tags = {
                **self.inherited,
                "mlflow.parentRunId": self.parent_run_id,
                "dvc_stage": "sweep",
                "method": config["method"],
            }
            run = self.client.create_run(
                self.experiment_id, run_name=f"sweep/{trial_label(config)}", tags=tags
            )
            from mlflow.entities import Param

            params = {**self.static_params, "method": config["method"], **overrides_of(config)}
            self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
            self.runs[key] = run.info.run_id
            self.logged_steps[key] = set()
        return self.runs[key]

    def log_epochs(self, config: dict[str, Any], rows: Sequence[dict[str, Any]]) -> None:
        """Per-epoch metrics with step = epoch; epochs already logged to this run are skipped."""
        from mlflow.entities import Metric

        run_id = self.run_id(config)
        done = self.logged_steps[_config_key(config)]
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

    def finish(self, outcome: TrialOutcome, history: Sequence[dict[str, Any]]) -> str:
        config = outcome.config()
        self.log_epochs(config, history)
        run_id = self.run_id(config)
        from mlflow.entities import Metric, RunTag

        stamp = int(time.time() * 1000)
        metrics = [Metric("epochs_run", outcome.epochs_run, stamp, 0)]
        if outcome.best_val_accuracy is not None:
            metrics.append(Metric("best_val_accuracy", outcome.best_val_accuracy, stamp, 0))
        tags = {
            "status": outcome.status,
            "retries": outcome.retries,
            "stopped_early": outcome.stopped_early,
            "ray_trial_id": outcome.trial_id,
        }
        self.client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        self.client.set_terminated(run_id, "FINISHED" if outcome.status == "TERMINATED" else "FAILED")
        self.finished.add(_config_key(config))
        return run_id

    def abandon(self) -> None:
        """Mark child runs left open by an interrupted sweep as KILLED."""
        for key, run_id in self.runs.items():
            if key not in self.finished:
                self.client.set_terminated(run_id, "KILLED")


def _is_nan(value: Any) -> bool:
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return True


# Live MLflow sinks by experiment name. The Tune callback below is pickled into the experiment by Ray
# and unpickled on Tuner.restore, so it holds only the name and looks up this session's sink here.
_SINKS: dict[str, TrialRuns] = {}


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
            f"val acc {result[OBJECTIVE]:.4f} loss {result['train_loss']:.4f} "
            f"({result['epoch_seconds']:.1f}s)",
            flush=True,
        )
        runs = _SINKS.get(self.experiment)
        if runs is not None:
            runs.log_epochs(trial.config, [result])

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        epoch = int((trial.last_result or {}).get("epoch", 0))
        early = " (stopped early by ASHA)" if epoch < self.epochs else ""
        print(f"[sweep] {trial_label(trial.config)}: finished after {epoch} epochs{early}", flush=True)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"[sweep] {trial_label(trial.config)}: crashed, retrying from its last checkpoint", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"[sweep] {trial_label(trial.config)}: FAILED after {trial.num_failures} attempts", flush=True)


# ---------------------------------------------------------------- running a sweep


@dataclass(frozen=True)
class TrialOutcome:
    """One row of sweep/results.csv."""

    method: str
    temperature: float
    weight: float | None
    best_val_accuracy: float | None
    best_epoch: int | None
    epochs_run: int
    stopped_early: bool
    status: str  # TERMINATED | ERROR
    retries: int
    trial_id: str
    mlflow_run_id: str = ""

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"method": self.method, "temperature": self.temperature}
        if self.weight is not None:
            config["weight"] = self.weight
        return config

    def row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SweepSummary:
    outcomes: list[TrialOutcome]
    best: dict[str, Any]  # best.json
    seconds: float

    @property
    def trial_epochs(self) -> int:
        return sum(o.epochs_run for o in self.outcomes)


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
    failures = int(trial.num_failures)
    retries = failures if trial.status == "TERMINATED" else max(0, failures - 1)
    weight = trial.config.get("weight")
    return TrialOutcome(
        method=trial.config["method"],
        temperature=float(trial.config["temperature"]),
        weight=None if weight is None else float(weight),
        best_val_accuracy=None if best is None else float(best[OBJECTIVE]),
        best_epoch=None if best is None else int(best["epoch"]),
        epochs_run=epochs_run,
        stopped_early=trial.status == "TERMINATED" and epochs_run < params.sweep.epochs,
        status=trial.status,
        retries=retries,
        trial_id=trial.trial_id,
    )


def grid_size(params: Params, method: str) -> int:
    return math.prod(len(set(values)) for values in params.sweep.grids[method].values())


def run_method_sweep(
    params: Params,
    method: str,
    storage: Path,
    data_dir: Path,
    runs: TrialRuns | None,
    callbacks: Sequence[tune.Callback] = (),
    verbose: int = 0,
) -> list[TrialOutcome]:
    """Run (or resume) the Tuner of one method; raises SweepInterrupted if it stopped early."""
    sweep = params.sweep
    name = experiment_name(params, method, data_dir)
    path = storage / name
    setup = TrialSetup(params, str(data_dir.resolve()), parse_crash_specs(os.environ.get(CRASH_ENV)))
    trainable = tune.with_resources(
        tune.with_parameters(sweep_trial, setup=setup),
        {"cpu": sweep.cpus_per_trial, "gpu": sweep.gpus_per_trial},
    )
    if runs is not None:
        _SINKS[name] = runs
    try:
        if tune.Tuner.can_restore(path):
            print(f"[sweep] resuming {method} from {path}", flush=True)
            tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
        else:
            prune_stale(storage, method, keep=name)
            tuner = tune.Tuner(
                trainable,
                param_space=search_space(params, method),
                tune_config=tune.TuneConfig(
                    metric=OBJECTIVE,
                    mode="max",
                    scheduler=_scheduler(params),
                    max_concurrent_trials=sweep.max_concurrent,
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
        _SINKS.pop(name, None)
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
            outcome = TrialOutcome(**{**outcome.row(), "mlflow_run_id": runs.finish(outcome, history)})
        outcomes.append(outcome)
    return sorted(outcomes, key=lambda o: (o.temperature, -1.0 if o.weight is None else o.weight))


def best_per_method(params: Params, outcomes: Sequence[TrialOutcome]) -> dict[str, Any]:
    """best.json: per method the configuration with the highest validation accuracy.

    Ties go to the first configuration in (temperature, weight) order, and ``ties`` says how many
    configurations share the value, so a flat objective is visible instead of a spurious winner.
    """
    methods: dict[str, Any] = {}
    for method in sweep_methods(params):
        done = [
            o
            for o in outcomes
            if o.method == method and o.status == "TERMINATED" and o.best_val_accuracy is not None
        ]
        if not done:
            continue
        top = max(done, key=lambda o: o.best_val_accuracy or 0.0)  # max keeps the first among ties
        methods[method] = {
            k: v
            for k, v in top.row().items()
            if k not in ("method", "status") and not (k == "weight" and v is None)
        }
        # How many configurations reach the same value: > 1 means the selection among them is arbitrary.
        methods[method]["ties"] = sum(
            math.isclose(o.best_val_accuracy or 0.0, top.best_val_accuracy or 0.0, abs_tol=1e-12)
            for o in done
        )
    sweep = params.sweep
    return {
        "objective": "online linear-probe accuracy on the validation split (best over epochs)",
        "rho": sweep.rho,
        "epochs": sweep.epochs,
        "train_size": sweep.train_size,
        "scheduler": sweep.scheduler,
        "methods": methods,
    }


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

    ``root`` is the project root (default: the current directory); ``storage`` defaults to
    ``<root>/sweep/ray_results``. With ``parent_run_id``, each trial gets a nested MLflow run.
    """
    import ray

    from cecl.tracking import tracking_uri

    root = (root or Path.cwd()).resolve()
    data_dir = (data_dir or root / DATA_DIR).resolve()
    storage = (storage or root / SWEEP_DIR / "ray_results").resolve()
    if not (data_dir / "manifest.json").exists():
        raise FileNotFoundError(f"{data_dir / 'manifest.json'} not found: run the prepare stage first")
    runs = None
    if parent_run_id is not None:
        static = {
            "rho": params.sweep.rho,
            "epochs": params.sweep.epochs,
            "train_size": params.sweep.train_size,
            "scheduler": params.sweep.scheduler,
        }
        runs = TrialRuns(parent_run_id, tracking_uri(root), static)
    # Keeping 2 checkpoints per trial makes Tune snapshot the experiment state on every other
    # report; on local storage a snapshot takes milliseconds, so its "bottleneck" warning is noise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    started_ray = init_ray(params)
    started = time.perf_counter()
    outcomes: list[TrialOutcome] = []
    try:
        for method in sweep_methods(params):
            outcomes += run_method_sweep(params, method, storage, data_dir, runs, callbacks, verbose)
    except BaseException:
        if runs is not None:
            runs.abandon()
        raise
    finally:
        if started_ray:
            ray.shutdown()
    return SweepSummary(outcomes, best_per_method(params, outcomes), time.perf_counter() - started)


# ---------------------------------------------------------------- outputs

OUTPUT_FILES = ("results.csv", "best.json", "heatmap.csv", "heatmap.png", "sensitivity.md")


def write_outputs(params: Params, summary: SweepSummary, out_dir: Path) -> list[Path]:
    """Write the sweep's outputs into ``out_dir``: all files are rendered into a staging folder
    first and moved into place only when every one succeeded (``ray_results`` next to them stays)."""
    from cecl.report import sweep as report

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [o.row() for o in summary.outcomes]
    with tempfile.TemporaryDirectory(prefix=".staging-", dir=out_dir) as staging:
        tmp = Path(staging)
        frame = report.results_frame(rows)
        frame.to_csv(tmp / "results.csv", index=False)
        (tmp / "best.json").write_text(json.dumps(summary.best, indent=2, sort_keys=True) + "\n")
        report.heatmap_frame(frame).to_csv(tmp / "heatmap.csv", index=False)
        report.plot_heatmap(frame, tmp / "heatmap.png", title=report.heatmap_title(summary.best))
        (tmp / "sensitivity.md").write_text(report.sensitivity_markdown(frame, summary.best))
        for name in OUTPUT_FILES:
            os.replace(tmp / name, out_dir / name)
    return [out_dir / name for name in OUTPUT_FILES]
