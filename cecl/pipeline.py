"""Pipeline steps shared by the DVC stages and the sweep's trials: load splits, pretrain, probe.

Stages (stages/*.py) only parse arguments, open the MLflow run and write files; everything that
decides a number lives here or below, so a sweep trial and a pipeline stage compute the same thing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cecl.config import Params
from cecl.data.biased_mnist import load_split, split_path
from cecl.metrics import bias_metrics
from cecl.models import Encoder, build_encoder
from cecl.paths import DATA_DIR
from cecl.train.checkpoint import fingerprint
from cecl.train.probe import TensorSplit, extract_features, fit_linear_probe, predict

N_CLASSES = 10


@dataclass(frozen=True)
class Splits:
    train: TensorSplit
    val: TensorSplit
    test: TensorSplit


def load_tensor_split(rho: float, split: str, device: torch.device, data_dir: Path = DATA_DIR) -> TensorSplit:
    """One prepared split ("train"/"val" of ``rho``, or the shared "test") as tensors on ``device``."""
    manifest = data_dir / "manifest.json"
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest} not found: run the prepare stage first (dvc repro prepare)")
    arrays = load_split(split_path(data_dir, rho, split))
    return TensorSplit(
        images=torch.from_numpy(arrays.images).to(device),
        labels=torch.from_numpy(arrays.labels).long().to(device),
        colours=torch.from_numpy(arrays.colours).long().to(device),
    )


def load_splits(rho: float, device: torch.device, data_dir: Path = DATA_DIR) -> Splits:
    """The prepared train/val splits of one rho and the shared unbiased test split, on ``device``."""
    return Splits(*(load_tensor_split(rho, name, device, data_dir) for name in ("train", "val", "test")))


def check_rho_method(params: Params, rho: float, method: str) -> None:
    if rho not in params.data.rhos:
        raise ValueError(f"rho {rho:g} is not in params.yaml data.rhos {params.data.rhos}")
    if method not in params.pretrain.methods:
        raise ValueError(
            f"method {method!r} is not in params.yaml pretrain.methods {params.pretrain.methods}"
        )


def run_tags(params: Params, rho: float, method: str, device: torch.device) -> dict[str, Any]:
    """MLflow tags of a per-(rho, method) run, besides the git commit and stage name."""
    return {
        "dataset": "biased_mnist",
        "rho": rho,
        "method": method,
        "seed": params.pretrain.seed,
        "device": str(device),
    }


def pretrain_fingerprint(
    params: Params,
    method: str,
    rho: float,
    overrides: dict[str, Any] | None = None,
    data_dir: Path = DATA_DIR,
) -> str:
    """Everything that determines a pretraining result: params that matter, the method, the data."""
    manifest = json.loads((data_dir / "manifest.json").read_text())
    return fingerprint(
        {
            "method": method,
            "options": getattr(params.method_options, method).model_dump(),
            "overrides": overrides or {},
            "rho": rho,
            "model": params.model.model_dump(),
            "augment": params.augment.model_dump(),
            "pretrain": params.pretrain.model_dump(exclude={"methods"}),
            "device": params.device,
            "data": manifest.get("files", manifest),
        }
    )


def encoder_payload(params: Params, encoder: Encoder) -> dict[str, Any]:
    """What encoder.pt holds: enough to rebuild the encoder without params.yaml."""
    return {
        "backbone": params.model.backbone,
        "width": params.model.width,
        "state_dict": encoder.state_dict(),
    }


def load_encoder(path: Path, device: torch.device) -> Encoder:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the matching pretrain stage first")
    payload = torch.load(path, map_location=device, weights_only=True)
    encoder = build_encoder(payload["backbone"], payload["width"])
    encoder.load_state_dict(payload["state_dict"])
    return encoder.to(device)


@dataclass(frozen=True)
class ProbeResult:
    selected_epoch: int
    val_accuracy: float
    test: dict[str, float]
    official_epoch: int
    official_test_accuracy: float
    curve: list[dict[str, float]]  # per probe epoch: val accuracy and test metrics


def linear_probe(encoder: Encoder, splits: Splits, params: Params, seed: int) -> ProbeResult:
    """Final linear evaluation: train on train features, select the epoch on validation, score test.

    Also reports the official protocol number (best test accuracy over epochs), which selects on
    the test set and is therefore optimistic; it is kept only to compare with the released code.
    """
    cfg = params.probe
    val_x = extract_features(encoder, splits.val.images)
    test_x = extract_features(encoder, splits.test.images)
    curve: list[dict[str, float]] = []

    def evaluate(probe: torch.nn.Module, epoch: int) -> None:
        val_acc = float((predict(probe, val_x) == splits.val.labels).float().mean())
        test = bias_metrics(predict(probe, test_x).cpu(), splits.test.labels.cpu(), splits.test.colours.cpu())
        curve.append({"epoch": epoch, "val_accuracy": val_acc, **{f"test_{k}": v for k, v in test.items()}})

    fit_linear_probe(
        extract_features(encoder, splits.train.images),
        splits.train.labels,
        N_CLASSES,
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seed=seed,
        weight_decay=cfg.weight_decay,
        after_epoch=evaluate,
    )
    best = max(curve, key=lambda row: (row["val_accuracy"], -row["epoch"]))  # first epoch among ties
    official = max(curve, key=lambda row: (row["test_accuracy"], -row["epoch"]))
    return ProbeResult(
        selected_epoch=int(best["epoch"]),
        val_accuracy=best["val_accuracy"],
        test={k.removeprefix("test_"): v for k, v in best.items() if k.startswith("test_")},
        official_epoch=int(official["epoch"]),
        official_test_accuracy=official["test_accuracy"],
        curve=curve,
    )
