"""Pipeline steps shared by the DVC stages and the sweep's trials: resolve a run, load data and models.

Stages (stages/*.py) only parse arguments, open the MLflow run and write files; everything that
decides a number lives here or below, so a sweep trial and a pipeline stage compute the same thing.
Nothing here knows a dataset family: n_classes, shapes, normalisation, augmentation and the evaluator
come from the entry's spec (and are checked against its manifest when the data is loaded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cecl import runs
from cecl.data.augment import AugmentParams
from cecl.data.streaming import BatchSource, batch_source
from cecl.datasets import DatasetSpec, TensorSplit
from cecl.saved_model import SavedModel, load_saved_model
from cecl.train.setup import RunSetup, build_encoder, run_setup

__all__ = [
    "RunSetup",
    "SavedModel",
    "build_encoder",
    "load_saved_model",
    "load_splits",
    "run_setup",
    "run_tags",
    "training_source",
]


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
