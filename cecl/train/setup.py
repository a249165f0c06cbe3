"""One pretraining run resolved from params.yaml: its key, dataset spec, recipe, method options and the
fingerprint of everything that determines its result.

Lives in cecl/train (not cecl/pipeline.py) because the training loop consumes it: the loop then imports
nothing above cecl/train, and cecl/pipeline.py re-exports it for the stages and the sweep's trials.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cecl import runs
from cecl.config import ComputeParams, ModelParams, Params, Recipe
from cecl.datasets import DatasetSpec
from cecl.methods import MethodContext, resolve_options
from cecl.models import Encoder, build_backbone
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
        return build_encoder(self.spec, self.recipe.model, self.compute)

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
                "pretrain": self.recipe.pretrain.model_dump(exclude={"methods", "datasets", "checkpoint"}),
                "device": self.device,
                "compute": self.compute.model_dump(),
                "data": {name: split["sha256"] for name, split in manifest["splits"].items()},
                "code": code_digest("pretrain"),
                **(extra or {}),
            }
        )


def build_encoder(spec: DatasetSpec, model: ModelParams, compute: ComputeParams) -> Encoder:
    """The encoder of ``model`` for ``spec``'s images, its weights drawn from torch's global generator.

    The one construction of an encoder: a method's ``make_encoder`` (pretraining) and the untrained-encoder
    floor (cecl/floors.py) call it, so a floor at seed s holds the weights pretraining starts from.
    """
    encoder = build_backbone(model.backbone, spec.channels, spec.mean, spec.std, model.options())
    return encoder.use_channels_last(compute.channels_last)


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
