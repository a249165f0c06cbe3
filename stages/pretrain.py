"""DVC stage pretrain@{dataset}-{method}-{seed}: pretrain one method on one dataset entry with one seed.

Writes models/{dataset}/{method}/seed_{seed}/{encoder.pt, history.csv}, byte-deterministic (timings and
run ids live in MLflow, whose run is tagged with the folder's digest for provenance). Checkpoints every
epoch under checkpoints/ (outside DVC's outputs) and resumes from them when run again after an
interruption.

encoder.pt is ``cecl.train.loop.model_payload``: the encoder payload, and a ``classifier`` head
``{state_dict, epoch}`` under ``pretrain.protocol: joint`` (encoder and jointly trained head of the
pretraining epoch selected on validation) and for ce always (its own head after the last epoch under
linear_probe), which the probe stage scores.

Multi-process: with ``pretrain.processes: N > 1`` the stage relaunches itself under torchrun with N
processes on this host (one per GPU, nccl; gloo on CPU). It also runs when launched by torchrun directly,
e.g. ``torchrun --nproc-per-node 8 -m stages.pretrain --dataset bmnist_rho95 --method cecl --seed 0``.
Rank 0 alone logs to MLflow and writes the outputs.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
from collections.abc import Iterator

import torch

from cecl import distributed
from cecl.cli import run_key_stage
from cecl.config import load_params
from cecl.io import atomic_dir, ensure_writable
from cecl.machine import machine_info
from cecl.pipeline import RunSetup, load_splits, run_setup, run_tags, training_source
from cecl.records import write_rows
from cecl.runs import ENCODER_FILE, HISTORY_FILE, RunKey
from cecl.saved_model import save_model
from cecl.tracking import NoRun, RunLogger, stage_run
from cecl.train.device import resolve_device
from cecl.train.loop import model_payload, run_pretraining


def launch_processes(setup: RunSetup, device_name: str) -> int:
    """Run this stage under torchrun with ``pretrain.processes`` processes; returns the exit status."""
    processes = setup.recipe.pretrain.processes
    device = resolve_device(device_name)
    if device.type == "cuda" and device.index is not None:
        raise ValueError(
            f"device {device_name!r} names one GPU but pretrain.processes is {processes}: "
            "use device cuda (process r trains on GPU r)"
        )
    if device.type == "cuda" and torch.cuda.device_count() < processes:
        raise ValueError(
            f"pretrain.processes is {processes} but this host has {torch.cuda.device_count()} GPU(s)"
        )
    key = setup.key
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
        "-m", "stages.pretrain", "--dataset", key.dataset, "--method", key.method, "--seed", str(key.seed),
    ]  # fmt: skip
    return subprocess.run(command, check=False).returncode


@contextlib.contextmanager
def _tracked(setup: RunSetup, experiment: str, device: torch.device) -> Iterator[RunLogger]:
    """The stage's MLflow run on rank 0; a silent stand-in on the other ranks."""
    if not distributed.is_main_process():
        yield NoRun()
        return
    tags = {**run_tags(setup.key, setup.spec, device), "world_size": distributed.world_size()}
    logged = {
        "device": setup.device,
        "model": setup.recipe.model.model_dump(),
        "augment": setup.recipe.augment.model_dump(),
        "pretrain": setup.recipe.pretrain.model_dump(exclude={"methods", "datasets"}),
        "method_options": setup.options.model_dump(),
    }
    with stage_run(setup.key.stage("pretrain"), experiment, logged, tags) as run:
        yield run


def train(setup: RunSetup, experiment: str, device: torch.device) -> None:
    """Pretrain in this process (one of the torchrun processes, or the only one) on ``device`` (params.yaml's,
    resolved; under torchrun on CUDA, this process's own GPU)."""
    device = distributed.device_for_rank(device)
    val = load_splits(setup.spec, device, ("val",))["val"]
    key = setup.key
    with _tracked(setup, experiment, device) as run:
        method, history = run_pretraining(
            setup,
            training_source(setup, device),
            val,
            device,
            fingerprint=setup.fingerprint(),
            checkpoint_path=key.checkpoint,
            on_epoch=lambda r: run.log_metrics(
                {
                    "train_loss": r.train_loss,
                    "lr": r.lr,
                    "epoch_seconds": r.seconds,
                    "monitor_seconds": r.monitor_seconds,
                    # an epoch the monitor skipped (pretrain.monitor.every) has no value, not a NaN point
                    **(
                        {}
                        if math.isnan(r.monitor_val_accuracy)
                        else {"monitor_val_accuracy": r.monitor_val_accuracy}
                    ),
                },
                step=r.epoch,
            ),
        )
        if not distributed.is_main_process():
            return
        with atomic_dir(key.model_dir) as tmp:
            # the machine that trained it (cecl/machine.py), which the probe copies into metrics.json
            save_model(tmp / ENCODER_FILE, model_payload(method, history), machine_info())
            write_rows(tmp / HISTORY_FILE, [r.history_row() for r in history])
        run.record_outputs(key.model_dir)
        run.log_artifact(key.model_dir / HISTORY_FILE)
        key.checkpoint.unlink(missing_ok=True)


def main(key: RunKey) -> None:
    params = load_params()
    params.check_run(key)
    setup = run_setup(params, key)
    ensure_writable(key.model_dir, key.checkpoint)
    if setup.recipe.pretrain.processes > 1 and "WORLD_SIZE" not in os.environ:
        status = launch_processes(setup, params.device)
        if status != 0:
            sys.exit(status)
        return
    device = resolve_device(params.device)  # once: ``auto``'s CPU fallback warns once, before any work
    if device.type == "cuda":  # the cost plan's memory estimate, before any data is loaded (cecl/plan)
        from cecl.plan.estimate import GIB, check_fits

        check_fits(params, key.dataset, torch.cuda.get_device_properties(device).total_memory / GIB)
    distributed.init_from_env(device)
    try:
        train(setup, params.tracking.experiment, device)
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    run_key_stage("pretrain", __doc__.splitlines()[0], main)
