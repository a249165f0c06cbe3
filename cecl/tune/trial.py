"""The Ray Tune trainable: one grid point pretrained with the pipeline's own code, and its fingerprints.

Each trial runs ``run_pretraining`` (cecl/train/loop.py) on the sweep's dataset entry
(``sweep.dataset``) with the training seed ``sweep.seed`` and the grid point as method-option
overrides, on the entry's training split optionally subsampled to ``sweep.train_size``. Every epoch it
reports the per-epoch monitor's value (``pretrain.monitor``: kNN, or a probe on bias entries) on the
**validation** split (the dataset evaluator's primary metric; the test split is never loaded) with a Ray
checkpoint, so that a retried or resumed trial continues from its last epoch.

Fingerprints: a trial's checkpoint carries :func:`trial_fingerprint` (the pipeline's run fingerprint
plus the sweep's epochs and subset), and a method's Tune experiment is named after
:func:`experiment_name`, which covers everything that fingerprint depends on plus the grid and the
trial code (:data:`CODE_DEPS`), so a restored experiment never continues a checkpoint of other inputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ray import tune

from cecl.config import Params
from cecl.datasets import DatasetSpec, TensorSplit
from cecl.pipeline import RunSetup, load_splits, run_setup
from cecl.runs import RunKey
from cecl.train.checkpoint import load_checkpoint
from cecl.tune.grid import CRASH_ENV, OBJECTIVE, CrashSpec, overrides_of, trial_label

REPO_ROOT = Path(__file__).resolve().parents[2]

# Source whose changes can change a trial's numbers: the code a trial runs (the sweep stage's code
# deps in dvc.yaml, plus the evaluators that compute the objective).
CODE_DEPS = (
    "cecl/tune",
    "cecl/pipeline.py",
    "cecl/distributed.py",
    "cecl/train",
    "cecl/methods",
    "cecl/models",
    "cecl/losses",
    "cecl/data",
    "cecl/datasets",
    "cecl/eval",
)


@dataclass(frozen=True)
class TrialSetup:
    """Everything a trial needs besides its grid point; shipped once through the object store."""

    params: Params
    data_dir: str  # absolute: trials run in their own working directory
    device: str = "cpu"  # SweepDevice.kind: the torch device every trial trains on
    crash: tuple[CrashSpec, ...] = ()


# ---------------------------------------------------------------- what a trial trains


def sweep_setup(params: Params, method: str, overrides: dict[str, float] | None = None) -> RunSetup:
    """The pipeline's RunSetup of one trial: ``RunKey(sweep.dataset, method, sweep.seed)`` + overrides.

    Its recipe trains for ``sweep.epochs`` (pretrain.epochs does not change a trial's numbers, so it
    is kept out of the fingerprints).
    """
    sweep = params.sweep
    setup = run_setup(params, RunKey(sweep.dataset, method, sweep.seed), overrides)
    pretrain = setup.recipe.pretrain.model_copy(update={"epochs": sweep.epochs})
    return dataclasses.replace(setup, recipe=dataclasses.replace(setup.recipe, pretrain=pretrain))


@dataclass(frozen=True)
class SweepDevice:
    """Where the sweep's trials train: params.yaml ``device`` resolved like a stage's ``resolve_device``.

    A stage resolves ``device`` against its own machine; the sweep's trials run where Ray places them,
    so the sweep resolves it against the GPUs Ray has and reserves ``gpus_per_trial`` of them per
    trial when they train on CUDA. ``name`` is what the MLflow ``device`` tag records.
    """

    requested: str  # params.yaml ``device``
    kind: str  # "cpu" | "cuda": the torch device a trial trains on (the GPU Ray assigned it is "cuda")
    gpus_per_trial: float = 0.0  # Ray's GPU reservation per trial (0 on the CPU)
    pinned: bool = False  # cuda:N on a local Ray started with only GPU N visible
    note: str = ""  # one line for the console when trials do not train where the request says

    @property
    def name(self) -> str:
        """``cpu``, ``cuda`` (a GPU Ray assigns) or ``cuda:N`` (the local Ray holds GPU N only)."""
        return self.requested if self.pinned else self.kind


def gpu_pin(device: str, visible: list[str]) -> str | None:
    """The GPU id a local Ray is started with (its CUDA_VISIBLE_DEVICES) for ``cuda:N``, else None.

    ``visible`` lists the GPU ids this process sees (CUDA_VISIBLE_DEVICES, or 0..count-1), so N counts
    the visible GPUs as torch's ``cuda:N`` does in a stage. One line when there is no GPU N.
    """
    if not device.startswith("cuda:"):
        return None
    index = torch.device(device).index
    if not visible:
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    if index >= len(visible):
        raise ValueError(f"device {device!r} requested but this machine has {len(visible)} GPU(s)")
    return visible[index]


def resolve_sweep_device(
    device: str, gpus_per_trial: float, ray_gpus: float, pinned: bool = False
) -> SweepDevice:
    """Resolve params.yaml ``device`` for the trials, given the GPUs Ray has (``ray_gpus``).

    ``cpu``: the CPU, no GPU reserved. ``auto``: CUDA when Ray has GPUs and ``gpus_per_trial`` reserves
    some, else the CPU (with a note when GPUs go unused). ``cuda`` / ``cuda:N``: CUDA, and a one-line
    error when Ray has no GPU or ``gpus_per_trial`` is 0 or more than Ray has; ``cuda:N`` means GPU N
    when the sweep started a local Ray (``pinned``), else the GPU Ray assigns. A one-line ValueError
    for every request that cannot be honoured, before any trial starts.
    """
    if device == "cpu":
        return SweepDevice(device, "cpu")
    if device == "auto" and gpus_per_trial == 0:
        note = (
            f"device auto: sweep.gpus_per_trial is 0, so trials train on the CPU although Ray has "
            f"{ray_gpus:g} GPU(s); set sweep.gpus_per_trial (e.g. 1, or 0.5 for two trials per GPU)"
            if ray_gpus > 0
            else ""
        )
        return SweepDevice(device, "cpu", note=note)
    if device == "auto" and ray_gpus == 0:
        note = "device auto: Ray has no GPU, so trials train on the CPU (as a stage would)"
        return SweepDevice(device, "cpu", note=note)
    if gpus_per_trial == 0:
        raise ValueError(
            f"device is {device} but sweep.gpus_per_trial is 0, so every trial would train on the "
            "CPU; set sweep.gpus_per_trial (e.g. 1, or 0.5 for two trials per GPU) or device: auto"
        )
    if ray_gpus == 0:
        raise ValueError(f"device {device!r} requested but the Ray cluster has no GPU")
    if gpus_per_trial > ray_gpus:
        raise ValueError(
            f"sweep.gpus_per_trial is {gpus_per_trial:g} but Ray has {ray_gpus:g} GPU(s): no trial can start"
        )
    note = ""
    if device.startswith("cuda:") and not pinned:
        note = (
            f"device {device}: Ray was not started by this sweep, so each trial uses the GPU Ray assigns it"
        )
    return SweepDevice(device, "cuda", gpus_per_trial, pinned, note)


def load_train_val(
    spec: DatasetSpec, device: torch.device, data_dir: Path
) -> tuple[TensorSplit, TensorSplit]:
    """The training and validation splits of the entry. The test split is deliberately not loaded."""
    splits = load_splits(spec, device, ("train", "val"), data_dir)
    return splits["train"], splits["val"]


def subsample(split: TensorSplit, size: int | None, seed: int) -> TensorSplit:
    """A seeded random subset of ``size`` examples (in their original order); all when None or larger."""
    if size is None or size >= len(split):
        return split
    generator = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(split), generator=generator)[:size].sort().values
    return split.subset(keep.to(split.targets.device))


# ---------------------------------------------------------------- fingerprints


def trial_fingerprint(setup: RunSetup, params: Params, data_dir: Path) -> str:
    """The pretraining fingerprint of one trial: the pipeline's, plus the sweep's epochs and subset."""
    extra = {"sweep_epochs": params.sweep.epochs, "train_size": params.sweep.train_size}
    return setup.fingerprint(data_dir, extra=extra)


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

    That is the method's grid and options, the dataset entry, the training seed, the sweep and
    pretraining settings, the data (manifest digests) and the trial code; an unchanged sweep is
    therefore restored (finished trials are not rerun) and a changed one starts afresh. Resources,
    concurrency and max_failures are left out: they do not change results, and a restored experiment
    keeps the values it started with.
    """
    sweep = params.sweep
    extra = {
        "sweep": sweep.model_dump(include={"dataset", "seed", "epochs", "scheduler", "asha", "train_size"}),
        "grid": sweep.grids[method],
        "code": code_digest(),
    }
    return f"{method}-{sweep_setup(params, method).fingerprint(data_dir, extra=extra)[:12]}"


# ---------------------------------------------------------------- the trainable


def _restored_epochs(local_ckpt: Path, expected: str) -> int:
    """Epochs in the checkpoint Ray restored, or 0 when it belongs to other inputs or fails its checks
    (then set aside, :func:`cecl.train.checkpoint.load_checkpoint`)."""
    state = load_checkpoint(local_ckpt, expected)
    return 0 if state is None else len(state["history"])


def sweep_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """The Ray Tune trainable: pretrain one grid point, report the validation objective every epoch."""
    from cecl.train.loop import EpochRecord, run_pretraining

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # no line per checkpoint
    params = setup.params
    sweep = params.sweep
    torch.set_num_threads(max(1, int(sweep.cpus_per_trial)))
    data_dir = Path(setup.data_dir)
    run = sweep_setup(params, config["method"], overrides_of(config))
    device = torch.device(setup.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"{trial_label(config)}: sweep.gpus_per_trial is {sweep.gpus_per_trial:g} but this trial sees "
            "no GPU (CUDA_VISIBLE_DEVICES is empty or CUDA is unavailable on this node)"
        )
    train, val = load_train_val(run.spec, device, data_dir)
    train = subsample(train, sweep.train_size, sweep.seed)
    expected = trial_fingerprint(run, params, data_dir)
    crash = next((spec for spec in setup.crash if spec.matches(config)), None)

    with tempfile.TemporaryDirectory(prefix="cecl-trial-") as work:
        local_ckpt = Path(work) / "last.pt"
        resumed_from = 0
        restored = tune.get_checkpoint()
        if restored is not None:
            with restored.as_directory() as folder:
                shutil.copy2(Path(folder) / "last.pt", local_ckpt)
            resumed_from = _restored_epochs(local_ckpt, expected)

        def report(record: EpochRecord) -> None:
            if record.epoch <= resumed_from:  # replayed from the checkpoint: Ray already has it
                return
            if crash is not None and crash.always:
                raise RuntimeError(f"{CRASH_ENV} test hook: {trial_label(config)} crashes on every attempt")
            metrics = {
                OBJECTIVE: record.monitor_val_accuracy,
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
            run,
            train,
            val,
            device,
            fingerprint=expected,
            checkpoint_path=local_ckpt,
            on_epoch=report,
            epochs=sweep.epochs,
            progress=False,
        )
