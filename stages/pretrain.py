"""DVC stage pretrain@{rho}-{method}: pretrain one method on one BiasedMNIST training rho.

Writes models/rho_{rho}/{method}/{encoder.pt, history.csv}. Checkpoints every epoch under
checkpoints/ (outside DVC's outputs) and resumes from them when run again after an interruption.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, fields

from cecl import paths
from cecl.cli import rho_method_stage
from cecl.config import load_params
from cecl.io import atomic_dir
from cecl.pipeline import check_rho_method, encoder_payload, load_splits, pretrain_fingerprint, run_tags
from cecl.tracking import stage_run
from cecl.train.device import resolve_device
from cecl.train.loop import EpochRecord, run_pretraining


def main(rho: float, method: str) -> None:
    params = load_params()
    check_rho_method(params, rho, method)
    device = resolve_device(params.device)
    splits = load_splits(rho, device)
    name = paths.stage_name("pretrain", rho, method)
    tags = run_tags(params, rho, method, device)
    logged = params.model_dump(include={"device", "model", "augment", "pretrain"})
    logged["method_options"] = getattr(params.method_options, method).model_dump()
    with stage_run(name, params.tracking.experiment, logged, tags) as run:
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
        out = paths.model_dir(rho, method)
        with atomic_dir(out) as tmp:
            import torch

            torch.save(encoder_payload(params, method_obj.encoder), tmp / "encoder.pt")
            with (tmp / "history.csv").open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(EpochRecord)])
                writer.writeheader()
                writer.writerows(asdict(r) for r in history)
        run.log_artifact(out / "history.csv")
        ckpt.unlink(missing_ok=True)


if __name__ == "__main__":
    rho_method_stage("pretrain", __doc__.splitlines()[0], main)
