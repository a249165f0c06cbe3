"""Methods by name. Each builder receives its own validated options section from params.yaml."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from pydantic import BaseModel, ValidationError

from cecl import losses
from cecl.config import Params
from cecl.methods.base import Method
from cecl.methods.contrastive import ContrastiveMethod
from cecl.methods.cross_entropy import CrossEntropyMethod
from cecl.methods.nnclr import NNCLR
from cecl.methods.queue import MoCoV2, SupMoCo
from cecl.methods.siamese import BYOL, SimSiam
from cecl.methods.swav import SwAV
from cecl.models import ProjectionHead, build_encoder

Builder = Callable[[Params, BaseModel, int], Method]
_BUILDERS: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    def wrap(builder: Builder) -> Builder:
        _BUILDERS[name] = builder
        return builder

    return wrap


def method_options(params: Params, name: str, overrides: dict[str, Any] | None = None) -> BaseModel:
    """The method's options section, with sweep overrides applied and re-validated."""
    options: BaseModel = getattr(params.method_options, name)
    if not overrides:
        return options
    try:
        return type(options).model_validate({**options.model_dump(), **overrides})
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"method_options.{name}.{key}: {first['msg']}") from None


def build_method(
    params: Params, name: str, n_classes: int, overrides: dict[str, Any] | None = None
) -> Method:
    if name not in _BUILDERS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[name](params, method_options(params, name, overrides), n_classes)


def available() -> tuple[str, ...]:
    return tuple(_BUILDERS)


def _contrastive(loss_name: str, params: Params, options: BaseModel, _n_classes: int) -> Method:
    """Encoder + projection head + the loss of the same name, built from the method's options."""
    encoder = build_encoder(params.model.backbone, params.model.width)
    head = ProjectionHead(encoder.feature_dim, params.model.proj_dim, params.model.proj_hidden)
    loss = losses.build(loss_name, **options.model_dump())
    return ContrastiveMethod(encoder, head, loss, n_views=params.pretrain.views)


@register("ce")
def _ce(params: Params, _options: BaseModel, n_classes: int) -> Method:
    return CrossEntropyMethod(build_encoder(params.model.backbone, params.model.width), n_classes)


# Methods that are "encoder + projection head + a [B, V, D] loss" differ only in the loss.
_LOSS_METHODS = (
    "simclr", "supcon", "cecl", "supcon_in", "eps_supinfonce", "dcl", "dclw", "hcl", "triplet", "npair",
    "barlow_twins", "vicreg",
)  # fmt: skip
for _loss_name in _LOSS_METHODS:
    register(_loss_name)(partial(_contrastive, _loss_name))


def _queue(cls: type[Method], params: Params, options: BaseModel, _n_classes: int) -> Method:
    """Momentum key encoder + queue methods (MoCo v2, supervised MoCo); two views."""
    if params.pretrain.views != 2:
        raise ValueError("pretrain.views must be 2 for moco_v2 and supmoco")
    encoder = build_encoder(params.model.backbone, params.model.width)
    head = ProjectionHead(encoder.feature_dim, params.model.proj_dim, params.model.proj_hidden)
    return cls(encoder, head, **options.model_dump())


register("moco_v2")(partial(_queue, MoCoV2))
register("supmoco")(partial(_queue, SupMoCo))


def _predictor_method(cls: type[Method], params: Params, options: BaseModel, _n_classes: int) -> Method:
    """Encoder + projector + predictor (SimSiam, BYOL, NNCLR); the method builds its heads. Two views."""
    if params.pretrain.views != 2:
        raise ValueError(f"pretrain.views must be 2 for {cls.__name__}")
    encoder = build_encoder(params.model.backbone, params.model.width)
    return cls(encoder, proj_dim=params.model.proj_dim, **options.model_dump())


register("simsiam")(partial(_predictor_method, SimSiam))
register("byol")(partial(_predictor_method, BYOL))
register("nnclr")(partial(_predictor_method, NNCLR))


@register("swav")
def _swav(params: Params, options: BaseModel, _n_classes: int) -> Method:
    """Encoder + projection head + prototypes; Sinkhorn codes, swapped prediction over all views."""
    encoder = build_encoder(params.model.backbone, params.model.width)
    head = ProjectionHead(encoder.feature_dim, params.model.proj_dim, params.model.proj_hidden)
    return SwAV(
        encoder, head, **options.model_dump(), n_views=params.pretrain.views, proj_dim=params.model.proj_dim
    )
