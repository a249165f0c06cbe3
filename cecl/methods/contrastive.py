"""Contrastive methods: encoder -> projection head (L2-normalised) -> a [B, V, D] loss from cecl.losses.

cecl, supcon, simclr and the other [B, V, D] losses differ only in the loss; simclr's ignores the labels.
Under torchrun the projected features and labels of every process are gathered (with gradient) before the
loss, so each process computes the loss of the global batch (see ``cecl.distributed``); in a single
process the gather is the identity.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from cecl import losses
from cecl.distributed import GatherLoss
from cecl.methods.base import Method
from cecl.methods.registry import MethodContext, register_method
from cecl.models import Encoder, ProjectionHead
from cecl.schema import Strict


class ContrastiveMethod(Method):
    def __init__(self, encoder: Encoder, head: ProjectionHead, loss: nn.Module, n_views: int = 2) -> None:
        super().__init__(encoder)
        self.head = head
        self.loss = GatherLoss(loss)
        self.n_views = n_views

    def embed(self, views: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The projected views [b, V, D]: all views of the chunk through the networks in one call."""
        batch, n_views = views.shape[:2]
        projected = self.head(self.encoder(views.flatten(0, 1)))
        return (projected.view(batch, n_views, -1),)

    def loss_from(self, embeddings: tuple[torch.Tensor, ...], labels: torch.Tensor) -> torch.Tensor:
        """The [B, V, D] loss on the global batch (gathered under torchrun)."""
        (projected,) = embeddings
        return self.loss(projected, labels)


# ------------------------------------------------------------------ options (validated in params.yaml)


class TemperatureOptions(Strict):
    temperature: float = Field(0.1, gt=0.0)
    base_temperature: float = Field(0.07, gt=0.0)


class CECLOptions(TemperatureOptions):
    weight: float = Field(0.5, ge=0.0, le=1.0)  # w: the label part L_a's share
    variant: Literal["official", "hinge"] = "official"


class EpsSupInfoNCEOptions(Strict):
    temperature: float = Field(0.1, gt=0.0)
    base_temperature: float = Field(0.1, gt=0.0)
    epsilon: float = Field(0.1, ge=0.0)


class DCLOptions(Strict):
    temperature: float = Field(0.1, gt=0.0)


class DCLWOptions(DCLOptions):
    sigma: float = Field(0.5, gt=0.0)


class HCLOptions(Strict):
    temperature: float = Field(0.5, gt=0.0)
    beta: float = Field(1.0, ge=0.0)
    tau_plus: float = Field(0.1, ge=0.0, lt=1.0)


class TripletOptions(Strict):
    margin: float = Field(0.2, ge=0.0)
    reduction: Literal["mean", "mean_nonzero"] = "mean"


class NPairOptions(Strict):
    temperature: float = Field(1.0, gt=0.0)
    symmetric: bool = True


class BarlowTwinsOptions(Strict):
    lambda_param: float = Field(5e-3, ge=0.0)


class VICRegOptions(Strict):
    lambda_param: float = Field(25.0, ge=0.0)
    mu_param: float = Field(25.0, ge=0.0)
    nu_param: float = Field(1.0, ge=0.0)


# Methods that are "encoder + projection head + a [B, V, D] loss" differ only in the loss (same name).
LOSS_METHODS: dict[str, type[Strict]] = {
    "simclr": TemperatureOptions,
    "supcon": TemperatureOptions,
    "cecl": CECLOptions,
    "supcon_in": TemperatureOptions,
    "eps_supinfonce": EpsSupInfoNCEOptions,
    "dcl": DCLOptions,
    "dclw": DCLWOptions,
    "hcl": HCLOptions,
    "triplet": TripletOptions,
    "npair": NPairOptions,
    "barlow_twins": BarlowTwinsOptions,
    "vicreg": VICRegOptions,
}


def _loss_method(loss_name: str) -> Callable[[MethodContext, Strict], Method]:
    def build(ctx: MethodContext, options: Strict) -> Method:
        encoder = ctx.make_encoder()
        loss = losses.build(loss_name, **options.model_dump())
        return ContrastiveMethod(encoder, ctx.projection_head(encoder), loss, n_views=ctx.views)

    return build


for _name, _options in LOSS_METHODS.items():
    register_method(_name, _options)(_loss_method(_name))
