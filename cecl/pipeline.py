"""Pipeline steps shared by the DVC stages and the sweep's trials: resolve a run, load data and models.

Stages (stages/*.py) only parse arguments, open the MLflow run and write files; everything that
decides a number lives here or below, so a sweep trial and a pipeline stage compute the same thing.
Nothing here knows a dataset family: n_classes, shapes, normalisation, augmentation and the evaluator
come from the entry's spec (and are checked against its manifest when the data is loaded).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cecl import runs
from cecl.config import ComputeParams, Params, Recipe
from cecl.data.augment import AugmentParams
from cecl.data.streaming import BatchSource, batch_source
from cecl.datasets import DatasetSpec, TensorSplit
from cecl.methods import MethodContext, resolve_options
from cecl.models import Encoder, build_backbone, encoder_from_payload
from cecl.schema import Strict
from cecl.train.checkpoint import code_digest, fingerprint


@dataclass(frozen=True)
class RunSetup:
    """Everything one pretraining run needs, resolved from params.yaml for one RunKey."""

    key: runs.RunKey
    spec: DatasetSpec
    recipe: Recipe
    options: Strict  # the method's options (with sweep overrides applied)
    device: str  # params.yaml ``device`` (enters the fingerprint)
    overrides: dict[str, Any] = field(default_factory=dict)
    compute: ComputeParams = field(default_factory=ComputeParams)

    @property
    def data_dir(self) -> Path:
        return runs.data_dir(self.key.dataset)

    def make_encoder(self) -> Encoder:
        model = self.recipe.model
        encoder = build_backbone(
            model.backbone, self.spec.channels, self.spec.mean, self.spec.std, model.options()
        )
        return encoder.use_channels_last(self.compute.channels_last)

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
        """Everything that determines the result: the run, its settings, the options, the data and the code
        (the pretrain stage's code deps in dvc.yaml, :func:`cecl.train.checkpoint.code_digest`)."""
        manifest = self.spec.read_manifest(data_dir or self.data_dir)
        return fingerprint(
            {
                "run": [self.key.dataset, self.key.method, self.key.seed],
                "options": self.options.model_dump(),
                "model": self.recipe.model.model_dump(),
                "augment": self.recipe.augment.model_dump(),
                "pretrain": self.recipe.pretrain.model_dump(exclude={"methods", "datasets"}),
                "device": self.device,
                "compute": self.compute.model_dump(),
                "data": {name: split["sha256"] for name, split in manifest["splits"].items()},
                "code": code_digest("pretrain"),
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
        params.compute,
    )


def load_splits(
    spec: DatasetSpec,
    device: torch.device,
    names: tuple[str, ...] = ("train", "val", "test"),
    data_dir: Path | None = None,
) -> dict[str, TensorSplit | BatchSource]:
    """Prepared splits of one dataset entry on ``device`` (checked against its manifest).

    In memory (TensorSplit) for every family that fits; a family that streams (the ImageFolder form of
    ImageNet) gives its own batch sources, read in batches by the probes (cecl.data.streaming).
    """
    folder = data_dir or runs.data_dir(spec.name)
    if getattr(spec, "batch_source", None) is not None:
        return {
            name: batch_source(spec, folder, name, device, seed=0, augment=AugmentParams()) for name in names
        }
    return {name: spec.tensors(folder, name, device) for name in names}


def training_source(setup: RunSetup, device: torch.device) -> BatchSource:
    """The pretraining split as the loop consumes it: seeded batches with the recipe's augmentation."""
    return batch_source(
        setup.spec, setup.data_dir, "train", device, seed=setup.key.seed, augment=setup.recipe.augment
    )


def run_tags(
    key: runs.RunKey | runs.TransferKey, spec: DatasetSpec, device: torch.device, data_dir: Path | None = None
) -> dict[str, Any]:
    """MLflow tags of a per-run stage, besides the git commit and stage name.

    ``data_verified`` is the manifest's (false under ``verify: false`` and when the family could not verify).
    """
    verified = spec.data_verified(data_dir or runs.data_dir(spec.name))
    return {**key.tags(), "family": spec.family, "device": str(device), "data_verified": verified}


@dataclass(frozen=True)
class SavedModel:
    """What a pretrain stage's encoder.pt holds: the encoder and, when one was saved, its classifier head.

    encoder.pt holds a head under protocol ``joint`` (the jointly trained head of the validation-selected
    epoch) and for cross-entropy always (its own head); ``classifier_epoch`` is the pretraining epoch.
    """

    path: Path
    encoder: Encoder
    classifier: torch.nn.Linear | None
    classifier_epoch: int | None
    machine: dict[str, str] | None = None  # where it was trained (cecl/machine.py); None in older files

    def head(self) -> tuple[torch.nn.Linear, int]:
        if self.classifier is None or self.classifier_epoch is None:
            raise ValueError(
                f"{self.path} holds no classifier head (saved under pretrain.protocol joint and for ce "
                "only): re-run the matching pretrain stage"
            )
        return self.classifier, self.classifier_epoch


def load_saved_model(path: Path, device: torch.device, compute: ComputeParams | None = None) -> SavedModel:
    """Read encoder.pt once; a missing, corrupt, truncated or foreign file is a one-line error.

    ``weights_only=True`` always: a file that needs more is foreign, and no message suggests otherwise.
    """
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the matching pretrain stage first")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises many types for a truncated or foreign file
        raise ValueError(f"{path}: not a readable encoder file ({type(err).__name__})") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: not an encoder file (holds a {type(payload).__name__})")
    try:
        encoder = encoder_from_payload(payload).to(device)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    encoder.use_channels_last((compute or ComputeParams()).channels_last)
    machine = payload.get("machine") if isinstance(payload.get("machine"), dict) else None
    saved = payload.get("classifier")
    if saved is None:
        return SavedModel(path, encoder, None, None, machine)
    classifier, epoch = _classifier_of(path, saved)
    return SavedModel(path, encoder, classifier.to(device).eval(), epoch, machine)


def _classifier_of(path: Path, saved: Any) -> tuple[torch.nn.Linear, int]:
    state = saved.get("state_dict") if isinstance(saved, dict) else None
    weight = state.get("weight") if isinstance(state, dict) else None
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or set(state) != {"weight", "bias"}:
        raise ValueError(f"{path}: its classifier is not a linear layer's state_dict (weight, bias)")
    classifier = torch.nn.Linear(weight.shape[1], weight.shape[0])
    try:
        classifier.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path}: bad classifier state_dict ({str(err).splitlines()[0]})") from None
    return classifier, int(saved["epoch"])
