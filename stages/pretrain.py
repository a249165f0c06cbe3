"""DVC stage pretrain@{rho}-{method}: pretrain one method on one BiasedMNIST training rho.

Writes models/rho_{rho}/{method}/{encoder.pt, history.csv}. Checkpoints every epoch under
checkpoints/ (outside DVC's outputs) and resumes from them when run again after an interruption.

Multi-process: with ``pretrain.processes: N > 1`` the stage relaunches itself under torchrun with N
processes on this host (one per GPU, nccl; gloo on CPU). It also runs when launched by torchrun directly,
e.g. ``torchrun --nproc-per-node 8 -m stages.pretrain --rho 0.99 --method cecl``. Rank 0 alone logs to
MLflow and writes the outputs.
"""

from __future__ import annotations

import contextlib
import csv
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, fields

import torch

from cecl import paths
from cecl.cli import rho_method_stage
from cecl.config import Params, load_params
from cecl.io import atomic_dir
from cecl.pipeline import check_rho_method, encoder_payload, load_splits, pretrain_fingerprint, run_tags
from cecl.tracking import RunLogger, stage_run
from cecl.train import distributed
from cecl.train.device import resolve_device
from cecl.train.loop import EpochRecord, run_pretraining


class _NoRun:
    """Stands in for the MLflow run on ranks other than 0, which log nothing."""

    def log_metrics(self, *_args: object, **_kwargs: object) -> None: ...

    def log_artifact(self, *_args: object, **_kwargs: object) -> None: ...


def launch_processes(params: Params, rho: float, method: str) -> int:
    """Run this stage under torchrun with ``pretrain.processes`` processes; returns the exit status."""
    processes = params.pretrain.processes
    device = resolve_device(params.device)
    if device.type == "cuda" and torch.cuda.device_count() < processes:
        raise ValueError(
            f"pretrain.processes is {processes} but this host has {torch.cuda.device_count()} GPU(s)"
        )
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
        "-m", "stages.pretrain", "--rho", str(rho), "--method", method,
    ]  # fmt: skip
    return subprocess.run(command, check=False).returncode


@contextlib.contextmanager
def _tracked(params: Params, rho: float, method: str, device: torch.device) -> Iterator[RunLogger | _NoRun]:
    """The stage's MLflow run on rank 0; a silent stand-in on the other ranks."""
    if not distributed.is_main_process():
        yield _NoRun()
        return
    tags = {**run_tags(params, rho, method, device), "world_size": distributed.world_size()}
    logged = params.model_dump(include={"device", "model", "augment", "pretrain"})
    logged["method_options"] = getattr(params.method_options, method).model_dump()
    name = paths.stage_name("pretrain", rho, method)
    with stage_run(name, params.tracking.experiment, logged, tags) as run:
        yield run


def train(params: Params, rho: float, method: str) -> None:
    """Pretrain in this process (one of the torchrun processes, or the only one)."""
    device = distributed.device_for_rank(resolve_device(params.device))
    splits = load_splits(rho, device)
    with _tracked(params, rho, method, device) as run:
        ckpt = paths.checkpoint_path(rho, method)
        method_obj, history = run_pretraining(
            params,
            method,
            splits.train,
            splits.val,
            device,
            fingerprint=pretrain_fingerprint(params, method, rho),
            checkpoint_path=ckpt,
            on_epoch=lambda r: run.log_metrics(
                {
                    "train_loss": r.train_loss,
                    "online_probe_val_accuracy": r.online_probe_val_accuracy,
                    "lr": r.lr,
                    "epoch_seconds": r.seconds,
                },
                step=r.epoch,
            ),
        )
        if not distributed.is_main_process():
            return
        out = paths.model_dir(rho, method)
        with atomic_dir(out) as tmp:
            torch.save(encoder_payload(params, method_obj.encoder), tmp / "encoder.pt")
            with (tmp / "history.csv").open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(EpochRecord)])
                writer.writeheader()
                writer.writerows(asdict(r) for r in history)
        run.log_artifact(out / "history.csv")
        ckpt.unlink(missing_ok=True)


def main(rho: float, method: str) -> None:
    params = load_params()
    check_rho_method(params, rho, method)
    if params.pretrain.processes > 1 and "WORLD_SIZE" not in os.environ:
        status = launch_processes(params, rho, method)
        if status != 0:
            sys.exit(status)
        return
    distributed.init_from_env()
    try:
        train(params, rho, method)
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    rho_method_stage("pretrain", __doc__.splitlines()[0], main)
