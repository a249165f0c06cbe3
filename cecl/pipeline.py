"""Pipeline steps shared by the DVC stages and the sweep's trials: resolve a run, load data, probe.

Stages (stages/*.py) only parse arguments, open the MLflow run and write files; everything that
decides a number lives here or below, so a sweep trial and a pipeline stage compute the same thing.
Nothing here knows a dataset family: n_classes, shapes, normalisation, augmentation and the evaluator
come from the entry's spec (and are checked against its manifest when the data is loaded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cecl import runs
from cecl.config import Params, Recipe
from cecl.datasets import DatasetSpec, TensorSplit
from cecl.eval import Evaluator
from cecl.methods import MethodContext, resolve_options
from cecl.models import Encoder, build_backbone, encoder_from_payload
from cecl.schema import Strict
from cecl.train.checkpoint import fingerprint
from cecl.train.probe import extract_features, fit_linear_probe, logits_of


@dataclass(frozen=True)
class RunSetup:
    """Everything one pretraining run needs, resolved from params.yaml for one RunKey."""

    key: runs.RunKey
    spec: DatasetSpec
    recipe: Recipe
    options: Strict  # the method's options (with sweep overrides applied)
    device: str  # params.yaml ``device`` (enters the fingerprint)
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return runs.data_dir(self.key.dataset)

    def make_encoder(self) -> Encoder:
        model = self.recipe.model
        return build_backbone(
            model.backbone, self.spec.channels, self.spec.mean, self.spec.std, model.options()
        )

    def method_context(self) -> MethodContext:
        model = self.recipe.model
        return MethodContext(
            make_encoder=self.make_encoder,
            proj_dim=model.proj_dim,
            proj_hidden=model.proj_hidden,
            n_classes=self.spec.n_classes,
            views=self.recipe.pretrain.views,
        )

    def fingerprint(self, data_dir: Path | None = None, extra: dict[str, Any] | None = None) -> str:
        """Everything that determines the result: the run, its settings, the options and the data."""
        manifest = self.spec.read_manifest(data_dir or self.data_dir)
        return fingerprint(
            {
                "run": [self.key.dataset, self.key.method, self.key.seed],
                "options": self.options.model_dump(),
                "model": self.recipe.model.model_dump(),
                "augment": self.recipe.augment.model_dump(),
                "pretrain": self.recipe.pretrain.model_dump(exclude={"methods", "datasets"}),
                "device": self.device,
                "data": {name: split["sha256"] for name, split in manifest["splits"].items()},
                **(extra or {}),
            }
        )


def run_setup(params: Params, key: runs.RunKey, overrides: dict[str, Any] | None = None) -> RunSetup:
    options = resolve_options(key.method, params.method_options.get(key.method), overrides)
    return RunSetup(
        key,
        params.spec(key.dataset),
        params.recipe(key.dataset),
        options,
        params.device,
        dict(overrides or {}),
    )


def load_splits(
    spec: DatasetSpec,
    device: torch.device,
    names: tuple[str, ...] = ("train", "val", "test"),
    data_dir: Path | None = None,
) -> dict[str, TensorSplit]:
    """Prepared splits of one dataset entry on ``device`` (checked against its manifest)."""
    folder = data_dir or runs.data_dir(spec.name)
    return {name: spec.tensors(folder, name, device) for name in names}


def run_tags(key: runs.RunKey | runs.TransferKey, spec: DatasetSpec, device: torch.device) -> dict[str, Any]:
    """MLflow tags of a per-run stage, besides the git commit and stage name."""
    return {**key.tags(), "family": spec.family, "device": str(device), "data_verified": spec.options.verify}


def load_encoder(path: Path, device: torch.device) -> Encoder:
    """The encoder a pretrain stage saved; a missing, corrupt or foreign file is a one-line error."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the matching pretrain stage first")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises many types for a truncated or foreign file
        raise ValueError(f"{path}: not a readable encoder file ({type(err).__name__})") from None
    return encoder_from_payload(payload).to(device)


@dataclass(frozen=True)
class ProbeResult:
    selected_epoch: int
    val: dict[str, float]
    test: dict[str, float]
    official_epoch: int
    official_test_accuracy: float
    curve: list[dict[str, float]]  # per probe epoch: val and test metrics


def linear_probe(
    encoder: Encoder,
    splits: dict[str, TensorSplit],
    evaluator: Evaluator,
    params_probe: Any,
    seed: int,
) -> ProbeResult:
    """Final linear evaluation: train on train features, select the epoch on validation, score test.

    The epoch is the one with the best validation value of the evaluator's primary metric (the first
    among ties). Also reports the official protocol number (best test accuracy over epochs), which
    selects on the test set and is therefore optimistic; it is kept only to compare with the
    released code.
    """
    cfg = params_probe
    features = {name: extract_features(encoder, split.images) for name, split in splits.items()}
    curve: list[dict[str, float]] = []

    def evaluate(probe: torch.nn.Module, epoch: int) -> None:
        row: dict[str, float] = {"epoch": epoch}
        for name in ("val", "test"):
            split = splits[name]
            metrics = evaluator(logits_of(probe, features[name]), split.targets, split.bias)
            row.update({f"{name}_{k}": v for k, v in metrics.items()})
        curve.append(row)

    fit_linear_probe(
        features["train"],
        splits["train"].targets,
        evaluator.n_classes,
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seed=seed,
        weight_decay=cfg.weight_decay,
        after_epoch=evaluate,
    )
    primary = f"val_{evaluator.primary}"
    best = max(curve, key=lambda row: (row[primary], -row["epoch"]))
    official = max(curve, key=lambda row: (row["test_accuracy"], -row["epoch"]))
    return ProbeResult(
        selected_epoch=int(best["epoch"]),
        val={k.removeprefix("val_"): v for k, v in best.items() if k.startswith("val_")},
        test={k.removeprefix("test_"): v for k, v in best.items() if k.startswith("test_")},
        official_epoch=int(official["epoch"]),
        official_test_accuracy=official["test_accuracy"],
        curve=curve,
    )


def read_run_file(folder: Path) -> dict[str, Any]:
    """The run.json a stage wrote next to its outputs (its MLflow run), or {} when absent."""
    path = folder / runs.RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
