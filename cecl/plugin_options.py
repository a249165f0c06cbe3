"""The option schemas of the built-in methods and backbones, torch-free.

Why here and not beside each plug-in's code: the params schema (cecl/config.py) validates every
``method_options`` section and the backbone's options whenever a params file is read, by every stage,
and the plug-ins' modules import torch (the methods every loss). Declared here, the schemas are read
without them, so a light stage (aggregate) loads no torch and prepare no method. The registries
(cecl/methods/registry.py, cecl/models/backbones.py) take a built-in plug-in's schema from these tables
when it registers, so a schema is written once. A plug-in added later (docs/extend-method.md) passes its
own schema to its registry, and the config consults the registry for a name that is not here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter

from cecl.schema import Strict

# A temperature tau (and any other strictly positive scale): > 0 and finite. Its one definition: the schemas
# below type every temperature with it, and the losses' and methods' constructors check theirs with
# ``cecl.losses._common.check_positive``, which validates against the same type (POSITIVE_FINITE).
PositiveFinite = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
POSITIVE_FINITE: TypeAdapter[float] = TypeAdapter(PositiveFinite)


def default_of(schema: type[Strict], field: str) -> Any:
    """``schema``'s default for ``field``: a loss or method constructor called without that argument uses
    it, so each default (the temperatures') is written once, in the schema."""
    return schema.model_fields[field].get_default(call_default_factory=True)


# ---------------------------------------------------------------------------------------------- methods


class TemperatureOptions(Strict):
    temperature: PositiveFinite = 0.1
    base_temperature: PositiveFinite = 0.07


class CECLOptions(TemperatureOptions):
    weight: float = Field(0.5, ge=0.0, le=1.0)  # w: the label part L_a's share
    variant: Literal["official", "hinge"] = "official"


class EpsSupInfoNCEOptions(Strict):
    temperature: PositiveFinite = 0.1
    base_temperature: PositiveFinite = 0.1
    epsilon: float = Field(0.1, ge=0.0)


class DCLOptions(Strict):
    temperature: PositiveFinite = 0.1


class DCLWOptions(DCLOptions):
    sigma: float = Field(0.5, gt=0.0)


class HCLOptions(Strict):
    temperature: PositiveFinite = 0.5
    beta: float = Field(1.0, ge=0.0)
    tau_plus: float = Field(0.1, ge=0.0, lt=1.0)


class TripletOptions(Strict):
    margin: float = Field(0.2, ge=0.0)
    reduction: Literal["mean", "mean_nonzero"] = "mean"


class NPairOptions(Strict):
    temperature: PositiveFinite = 1.0
    symmetric: bool = True


class BarlowTwinsOptions(Strict):
    lambda_param: float = Field(5e-3, ge=0.0)


class VICRegOptions(Strict):
    lambda_param: float = Field(25.0, ge=0.0)
    mu_param: float = Field(25.0, ge=0.0)
    nu_param: float = Field(1.0, ge=0.0)


class CEOptions(Strict):
    # The references' vanilla model (ReBias, BiasCon) trains on the images as they are; True gives it the
    # dataset's augmentation recipe (one view).
    augment: bool = False


class MoCoOptions(Strict):
    temperature: PositiveFinite = 0.2  # MoCo v2
    queue_size: int = Field(4096, ge=1)  # keep it below the training-set size
    momentum: float = Field(0.99, ge=0.0, le=1.0)  # 0.999 is MoCo's ImageNet value


class SupMoCoOptions(MoCoOptions):
    temperature: PositiveFinite = 0.1


class SimSiamOptions(Strict):
    pred_hidden: int = Field(32, ge=1)  # the paper's bottleneck: proj_dim / 4
    batch_norm: bool = True  # BN in projector/predictor (the paper's heads; off = exact across processes)


class BYOLOptions(Strict):
    momentum: float = Field(0.99, ge=0.0, le=1.0)  # constant (the paper ramps 0.996 -> 1)
    proj_hidden: int = Field(512, ge=1)
    pred_hidden: int = Field(512, ge=1)
    batch_norm: bool = True


class NNCLROptions(Strict):
    temperature: PositiveFinite = 0.1
    queue_size: int = Field(4096, ge=1)  # support set; keep it below the training-set size
    proj_hidden: int = Field(512, ge=1)
    pred_hidden: int = Field(512, ge=1)
    batch_norm: bool = True


class SwAVOptions(Strict):
    n_prototypes: int = Field(30, ge=1)  # a few per class for 10-class digits (the paper: 3000 on ImageNet)
    temperature: PositiveFinite = 0.1
    sinkhorn_iterations: int = Field(3, ge=1)
    sinkhorn_epsilon: float = Field(0.05, gt=0.0)


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

# Every method's schema, in table order (the order registration follows: cecl/methods/__init__.py).
METHOD_OPTIONS: dict[str, type[Strict]] = {
    "ce": CEOptions,
    **LOSS_METHODS,
    "moco_v2": MoCoOptions,
    "supmoco": SupMoCoOptions,
    "simsiam": SimSiamOptions,
    "byol": BYOLOptions,
    "nnclr": NNCLROptions,
    "swav": SwAVOptions,
}
# Methods whose projector widths are their own options, not model.proj_hidden (the config refuses a
# model.proj_hidden that would not reach them).
OWN_HEADS = frozenset({"simsiam", "byol", "nnclr"})


# -------------------------------------------------------------------------------------------- backbones


class SmallCNNOptions(Strict):
    width: int = Field(16, ge=1, strict=True)  # channels of the first conv (doubles per stage); no bools


class NoOptions(Strict):
    pass


class ResNetOptions(Strict):
    # 3x3 stride-1 conv1 and no max-pool (SupContrast / CECL on 32x32 inputs)
    cifar_stem: bool = Field(False, strict=True)


BACKBONE_OPTIONS: dict[str, type[Strict]] = {
    "small_cnn": SmallCNNOptions,
    "simple_conv_net": NoOptions,
    "resnet18": ResNetOptions,
    "resnet50": ResNetOptions,
}
