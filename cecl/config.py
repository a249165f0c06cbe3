"""Typed, validated parameters: the one schema behind params.yaml, assembled from the plug-ins' schemas.

Every stage calls :func:`load_params` before doing any work, so a typo or a bad value fails in well
under a second with one line naming the key (``params.yaml: pretrain.batch_size: ...``), instead of
after minutes of training. Dataset entries are validated by their family's own schema
(``cecl.datasets``, torch-free), method and backbone options by theirs (cecl/plugin_options.py, the
torch-free tables the method and backbone registries register from): nothing here lists datasets,
methods or backbones, and reading a params file loads no torch and no plug-in code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from cecl.datasets import DatasetOptions, DatasetSpec, families, spec_for
from cecl.plugin_options import BACKBONE_OPTIONS, METHOD_OPTIONS, OWN_HEADS
from cecl.runs import FloorKey, RunKey, TransferKey
from cecl.schema import Strict

if TYPE_CHECKING:
    from cecl.data.recipe import AugmentParams

NESTED = "@"  # a nested schema's error message starts with "@<dotted key>: " (see _format_error)


def _method_schemas(names: Iterable[str]) -> Mapping[str, type[Strict]]:
    """Every method's options schema by name. The built-in methods' come from cecl/plugin_options.py
    (torch-free); only a name outside that table (a method module added with its own schema,
    docs/extend-method.md, or a typo) makes the config consult the method registry, which loads torch."""
    if all(name in METHOD_OPTIONS for name in names):
        return METHOD_OPTIONS
    from cecl.methods import options_schemas

    return options_schemas()


def _own_heads(method: str) -> bool:
    if method in METHOD_OPTIONS:
        return method in OWN_HEADS
    from cecl.methods import builds_own_heads

    return builds_own_heads(method)


def _backbone_schemas(name: str) -> Mapping[str, type[Strict]]:
    """Every backbone's options schema by name: as :func:`_method_schemas`, the registry only for a name
    outside cecl/plugin_options.py."""
    if name in BACKBONE_OPTIONS:
        return BACKBONE_OPTIONS
    from cecl.models import available_backbones, backbone_options_schema

    return {backbone: backbone_options_schema(backbone) for backbone in available_backbones()}


class ConfigError(ValueError):
    """A bad parameter file; the message is one line that names the offending key."""


def _nested(prefix: str, err: ValidationError) -> ValueError:
    """A sub-schema's first error as a ValueError whose message carries the dotted key under ``prefix``."""
    first = err.errors()[0]
    key = ".".join(str(part) for part in (prefix, *first["loc"]))
    if first["type"] == "extra_forbidden":
        return ValueError(f"{NESTED}{key}: unknown key")
    message = first["msg"].removeprefix("Value error, ")
    if message.startswith(NESTED):
        return ValueError(message)
    got = "" if first["type"] == "value_error" else f" (got {first.get('input')!r})"
    return ValueError(f"{NESTED}{key}: {message}{got}")


class TrackingParams(Strict):
    experiment: str = Field("cecl", min_length=1)


class ComputeParams(Strict):
    """How the arithmetic is laid out and run, not what is computed: results differ by round-off only
    (float32's, or under ``autocast: bf16`` bfloat16's in the forward).

    Every field enters the checkpoint fingerprint (``RunSetup.fingerprint`` dumps them all), so a run never
    resumes across settings. The defaults (all off) are float32 eager training, as before these options.

    ``channels_last``: encoders keep conv weights and activations NHWC, the layout oneDNN's CPU convs
    and GPU tensor cores prefer (its effect: benchmarks/throughput.py, README "Benchmarks").
    ``autocast``: ``bf16`` runs the training forward under ``torch.autocast`` in bfloat16; the losses
    switch autocast off and compute their logits and log-sum-exps in float32 (``cecl.losses``). No fp16:
    it would need loss scaling (a GradScaler), bf16 has float32's exponent range and does not.
    ``compile``: ``torch.compile`` of the training module (method forward + loss; graph breaks where the
    losses validate their inputs).
    ``fused_optimizer``: Adam / SGD with ``fused=True`` (one kernel for the whole update) where torch has
    a fused kernel for the device; elsewhere a one-line warning and the default implementation.
    ``threads``: ``torch.set_num_threads`` while a run trains, so CPU results do not depend on the
    machine's core count (intra-op reductions split by thread count); null keeps torch's default.
    ``deterministic``: ``torch.use_deterministic_algorithms(True)`` and cuBLAS's fixed workspace
    (``CUBLAS_WORKSPACE_CONFIG=:4096:8``), ``cudnn.benchmark`` off: the same GPU model, driver and
    torch give the same bytes, at a speed cost (cecl/train/device.py). Off, a GPU run agrees with a
    rerun within round-off only (cuDNN picks kernels by timing; atomics-based reductions).
    """

    channels_last: bool = True
    autocast: str | None = None  # null (float32) | bf16
    compile: bool = False
    fused_optimizer: bool = False
    threads: int | None = None  # null: torch's default (the machine's cores)
    deterministic: bool = False  # GPU: deterministic algorithms (bit-identical reruns, slower)

    @field_validator("autocast", mode="before")
    @classmethod
    def _known_autocast(cls, value: Any) -> Any:
        if value is None or value == "bf16":
            return value
        raise ValueError(f"autocast must be null (float32) or bf16, got {value!r}")

    @field_validator("threads", mode="before")
    @classmethod
    def _positive_threads(cls, value: Any) -> Any:
        # bool is an int in Python: `threads: true` is a typo, not 1 thread.
        if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError(f"threads must be null (torch's default) or an integer >= 1, got {value!r}")


class ModelParams(Strict):
    backbone: str = "small_cnn"
    backbone_options: dict[str, Any] = Field(default_factory=dict)  # validated by the backbone's schema
    proj_dim: int = Field(128, ge=1)
    proj_hidden: int | None = Field(None, ge=1)  # None: the encoder's feature dimension

    @model_validator(mode="after")
    def _known_backbone(self) -> ModelParams:
        schemas = _backbone_schemas(self.backbone)
        if self.backbone not in schemas:
            known = ", ".join(schemas)
            raise ValueError(f"{NESTED}model.backbone: unknown backbone {self.backbone!r}; known: {known}")
        try:
            schemas[self.backbone].model_validate(self.backbone_options)
        except ValidationError as err:
            raise _nested("model.backbone_options", err) from None
        return self

    def options(self) -> Strict:
        return _backbone_schemas(self.backbone)[self.backbone].model_validate(self.backbone_options)


class OptimizerParams(Strict):
    name: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    cosine: bool = True  # cosine decay to lr * 1e-3, stepped per epoch (SupContrast recipe)
    milestones: list[int] = Field(default_factory=list)  # step decay instead: lr * gamma^k after epoch m_k
    gamma: float = Field(0.1, gt=0.0, le=1.0)  # (BiasCon's BiasedMNIST recipe: x0.1 at epochs 26 and 53)
    warmup_epochs: int = Field(0, ge=0)
    warmup_from: float = Field(0.01, gt=0.0)

    @model_validator(mode="after")
    def _one_schedule(self) -> OptimizerParams:
        if self.milestones and self.cosine:
            raise ValueError("milestones (step decay) and cosine exclude each other: set cosine: false")
        if self.milestones != sorted(set(self.milestones)) or any(m < 1 for m in self.milestones):
            raise ValueError(f"milestones must be increasing epochs >= 1, got {self.milestones}")
        return self


class MonitorParams(Strict):
    """The per-epoch monitor (cecl/eval/monitor.py): the convergence curve, the sweep's objective."""

    # auto: knn, except probe under a group-bias evaluator (BiasedMNIST, UTKFace, CelebA), whose kNN
    # neighbourhoods follow the bias attribute (benchmarks/monitor.py: kNN 0.125 vs probe 0.645 unbiased
    # validation accuracy on the CPU default's BiasedMNIST cecl encoder)
    kind: Literal["auto", "knn", "probe"] = "auto"
    every: int = Field(1, ge=1)  # epochs between evaluations; the last epoch is always evaluated
    train_size: int | None = Field(None, ge=10)  # the fixed seeded training subset (None: all of it)
    k: int = Field(200, ge=1)  # knn: neighbours that vote
    temperature: float = Field(0.1, gt=0.0)  # knn: vote weight exp(similarity / temperature)


class CheckpointParams(Strict):
    """When pretraining saves its resumable checkpoint (cecl/train/checkpoint.py ``checkpoint_due``): after
    every ``every_epochs``-th epoch, or once ``every_minutes`` have passed since the last save, and always
    after the last epoch. The default (every epoch) is the behaviour before the option; it never changes
    results (a resume is exact from any saved epoch), so it is left out of the run's fingerprint."""

    every_epochs: int = Field(1, ge=1)
    every_minutes: float | None = Field(None, gt=0)  # null: by epochs only


class ProbeParams(Strict):
    """The final linear probe (cecl/eval/linear_probe.py): the L2 grid and L-BFGS's stopping rule."""

    l2_min: float = Field(1e-7, gt=0)  # weakest L2 strength of the log-spaced grid
    l2_max: float = Field(0.1, gt=0)  # strongest
    l2_per_decade: int = Field(2, ge=1)  # grid points per factor of 10 (2: 1e-7, 3.2e-7, 1e-6, ...)
    # stop walking to weaker strengths after this many without a better validation value (the weak end is
    # the slow end: 60-80% of the fit time); null: the whole grid
    patience: int | None = Field(2, ge=1)
    max_iter: int = Field(1000, ge=1)  # L-BFGS iterations per strength
    tolerance: float = Field(1e-5, gt=0)  # stop when max |gradient| is below this

    @model_validator(mode="after")
    def _ordered(self) -> ProbeParams:
        if self.l2_min > self.l2_max:
            raise ValueError(f"l2_min {self.l2_min} is above l2_max {self.l2_max}")
        return self

    def grid(self) -> list[float]:
        """The L2 strengths, strongest first (the order they are fitted in)."""
        decades = np.log10(self.l2_max) - np.log10(self.l2_min)
        count = round(decades * self.l2_per_decade) + 1
        return [float(v) for v in np.logspace(np.log10(self.l2_max), np.log10(self.l2_min), count)]


class AshaParams(Strict):
    grace_period: int = Field(1, ge=1)  # epochs every trial runs before it can be stopped
    reduction_factor: float = Field(2.0, gt=1.0)


class PretrainParams(Strict):
    datasets: list[str] = Field(min_length=1)  # entries of ``datasets`` to pretrain on
    methods: list[str] = Field(min_length=1)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(256, ge=2)
    views: int = Field(2, ge=2)  # contrastive methods; ce trains on one view
    processes: int = Field(1, ge=1)  # torchrun processes (one per GPU); batch_size is the global batch
    # Gradient caching (cecl/train/grad_cache.py): each process sends its shard's views through the
    # encoder in chunks of ``micro_batch`` source images (x views), the loss sees every embedding of the
    # global batch, then each chunk is re-run with a graph. Bounds activation memory; BatchNorm then
    # normalises per chunk (as the released code's DataParallel did per GPU). null: the whole shard.
    micro_batch: int | None = Field(None, ge=2)
    optimizer: OptimizerParams = OptimizerParams()
    monitor: MonitorParams = MonitorParams()
    checkpoint: CheckpointParams = CheckpointParams()
    # linear_probe: frozen encoder, linear classifier fitted afterwards (stages/probe.py); joint: BiasCon's
    # end-to-end training, CE on a linear head + joint_weight x the method's loss, that head is scored at
    # the pretraining epoch selected on validation (cecl/methods/joint.py).
    protocol: Literal["linear_probe", "joint"] = "linear_probe"
    joint_weight: float = Field(1.0, ge=0.0)  # joint: the weight on the method's loss (CE has weight 1)

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: list[str]) -> list[str]:
        known = tuple(_method_schemas(methods))
        unknown = [m for m in methods if m not in known]
        if unknown:
            raise ValueError(f"unknown method {unknown[0]!r}; known: {', '.join(known)}")
        _distinct(methods, "methods")
        return methods

    @field_validator("datasets")
    @classmethod
    def _distinct_datasets(cls, names: list[str]) -> list[str]:
        return _distinct(names, "datasets")

    @model_validator(mode="after")
    def _shards_hold_two_images(self) -> PretrainParams:
        # Each process trains on its shard of the global batch; BatchNorm needs two images per shard.
        if self.batch_size < 2 * self.processes:
            raise ValueError(
                f"batch_size {self.batch_size} is too small for {self.processes} processes "
                "(each process needs at least 2 images of the global batch)"
            )
        shard = self.batch_size // self.processes
        if self.micro_batch is not None and self.micro_batch > shard:
            raise ValueError(
                f"micro_batch {self.micro_batch} is larger than each process's shard of the batch "
                f"({self.batch_size} / {self.processes} processes = {shard} images): lower it, or null"
            )
        return self


def _distinct(values: list, what: str) -> list:
    if len(set(values)) != len(values):
        duplicate = next(v for v in values if values.count(v) > 1)
        raise ValueError(f"{what} must be distinct, {duplicate!r} appears twice")
    return values


class TransferParams(Strict):
    """Frozen encoders pretrained on each source, linear probe on each target (every pair)."""

    sources: list[str] = Field(default_factory=list)
    targets: list[str] = Field(default_factory=list)


SWEEP_AXES = ("temperature", "weight")  # the loss temperature tau and CECL's weight w (cecl/tune/grid.py)


class SweepParams(Strict):
    """Ray Tune grid over the loss's temperature (and CECL's weight w); objective = val accuracy."""

    dataset: str  # the dataset entry the sweep trains on
    seed: int = 0
    epochs: int = Field(4, ge=1)
    grids: dict[str, dict[str, list[float]]] = Field(
        default_factory=lambda: {"cecl": {"temperature": [0.1, 0.5], "weight": [0.0, 0.5, 1.0]}}
    )
    scheduler: Literal["asha", "none"] = "asha"
    asha: AshaParams = AshaParams()
    cpus_per_trial: float = Field(1.0, gt=0.0)
    gpus_per_trial: float = Field(0.0, ge=0.0)
    max_concurrent: int = Field(2, ge=1)
    max_failures: int = Field(1, ge=0)  # retries of a crashed trial before it is reported failed
    train_size: int | None = Field(None, ge=10)  # None: the entry's training split as prepared

    @field_validator("grids")
    @classmethod
    def _known_grids(cls, grids: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, list[float]]]:
        """A method can be swept over the SWEEP_AXES its own options schema has; values are checked by it."""
        schemas = _method_schemas(grids)
        for method, axes in grids.items():
            if method not in schemas:
                raise ValueError(f"cannot sweep unknown method {method!r}; known: {', '.join(schemas)}")
            schema = schemas[method]
            for axis, values in axes.items():
                if axis not in SWEEP_AXES or axis not in schema.model_fields:
                    sweepable = [a for a in SWEEP_AXES if a in schema.model_fields]
                    raise ValueError(
                        f"{method} has no sweepable option {axis!r} (sweepable: {sweepable or 'none'})"
                    )
                if not values:
                    raise ValueError(f"{method}.{axis} grid is empty")
                for value in values:
                    try:
                        schema.model_validate({axis: value})
                    except ValidationError as err:
                        message = err.errors()[0]["msg"]
                        raise ValueError(f"{method}.{axis} value {value!r}: {message}") from None
        return grids


@dataclass(frozen=True)
class Recipe:
    """The model, pretraining and probe settings of one dataset entry (global ones + its overrides)."""

    model: ModelParams
    pretrain: PretrainParams
    probe: ProbeParams
    augment: AugmentParams


OVERRIDABLE = {"model": ModelParams, "pretrain": PretrainParams, "probe": ProbeParams}


def _merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = (
            _merge(merged[key], value)
            if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping)
            else value
        )
    return merged


class Params(Strict):
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compute: ComputeParams = ComputeParams()
    tracking: TrackingParams = TrackingParams()
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)  # training seeds
    datasets: dict[str, DatasetOptions] = Field(min_length=1)  # named entries, each validated by its family
    model: ModelParams = ModelParams()
    method_options: dict[str, Strict] = Field(default_factory=dict)  # every method, validated by its schema
    pretrain: PretrainParams
    probe: ProbeParams = ProbeParams()
    transfer: TransferParams = TransferParams()
    sweep: SweepParams

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit()):
            return device
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        return _distinct(seeds, "seeds")

    @field_validator("datasets", mode="before")
    @classmethod
    def _entries(cls, raw: Any) -> Any:
        if not isinstance(raw, Mapping):
            return raw
        known = families()
        entries = {}
        for name, entry in raw.items():
            # DVC reads params keys as dotted paths (datasets.<entry>) and joins matrix values with '-'
            # into stage names, so an entry name holds neither '.' nor '-'.
            if not isinstance(name, str) or not name.replace("_", "").isalnum() or not name.isascii():
                raise ValueError(
                    f"{NESTED}datasets: entry names are letters, digits and '_' only, got {name!r} "
                    "(DVC reads '.' as a key separator and '-' separates stage-name parts)"
                )
            family = entry.get("family") if isinstance(entry, Mapping) else None
            if family not in known:
                raise ValueError(
                    f"{NESTED}datasets.{name}.family: unknown dataset family {family!r}; "
                    f"known: {', '.join(known)}"
                )
            try:
                entries[name] = known[family].Options.model_validate(entry)
            except ValidationError as err:
                raise _nested(f"datasets.{name}", err) from None
        return entries

    @field_validator("method_options", mode="before")
    @classmethod
    def _method_options(cls, raw: Any) -> Any:
        raw = {} if raw is None else raw
        if not isinstance(raw, Mapping):
            return raw
        schemas = _method_schemas(raw)
        unknown = [name for name in raw if name not in schemas]
        if unknown:
            raise ValueError(
                f"{NESTED}method_options.{unknown[0]}: unknown method; known: {', '.join(schemas)}"
            )
        out = {}
        for name, schema in schemas.items():
            try:
                out[name] = schema.model_validate(raw.get(name) or {})
            except ValidationError as err:
                raise _nested(f"method_options.{name}", err) from None
        return out

    @model_validator(mode="before")
    @classmethod
    def _sections_dvc_tracks(cls, raw: Any) -> Any:
        # dvc.yaml tracks method_options.<method> of every pretrained method: DVC refuses a missing key.
        if isinstance(raw, Mapping) and isinstance(raw.get("pretrain"), Mapping):
            given = raw.get("method_options") or {}
            for method in raw["pretrain"].get("methods") or []:
                if isinstance(given, Mapping) and method not in given and method in _method_schemas([method]):
                    raise ValueError(
                        f"{NESTED}method_options.{method}: missing; every method in pretrain.methods needs "
                        "a section (`{}` keeps its defaults)"
                    )
        return raw

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        for name in self.pretrain.datasets:
            self._entry(name, "pretrain.datasets")
        for name in self.transfer.sources:
            if name not in self.pretrain.datasets:
                raise ValueError(
                    f"{NESTED}transfer.sources: {name!r} is not pretrained (not in pretrain.datasets)"
                )
        for name in self.transfer.targets:
            self._entry(name, "transfer.targets")
        for source, target in self.transfer_pairs():
            if self.spec(source).channels != self.spec(target).channels:
                raise ValueError(
                    f"{NESTED}transfer.targets: {target!r} has {self.spec(target).channels} channel(s) "
                    "but encoders "
                    f"pretrained on {source!r} take {self.spec(source).channels}"
                )
            source_size, target_size = self.spec(source).image_size, self.spec(target).image_size
            if tuple(source_size) != tuple(target_size):
                # The encoders pool globally, so another size would run, but not by the transfer protocol
                # (targets are resized to the source's input size when prepared).
                raise ValueError(
                    f"{NESTED}transfer.targets: {target!r} stores {list(target_size)} px images but "
                    f"encoders pretrained on {source!r} take {list(source_size)} (resize the target entry)"
                )
        self._entry(self.sweep.dataset, "sweep.dataset")
        asha = self.sweep.scheduler == "asha"
        if asha and self.sweep.grids and self.recipe(self.sweep.dataset).pretrain.monitor.every != 1:
            # ASHA compares trials at rungs of epochs: every epoch must carry the objective.
            raise ValueError(
                f"{NESTED}pretrain.monitor.every: the sweep on {self.sweep.dataset!r} needs the monitor "
                "every epoch (every: 1; ASHA stops trials on per-epoch values)"
            )
        for name, entry in self.datasets.items():
            spec = self.spec(name)
            if spec.augment.needs_colour() and spec.channels != 3:
                raise ValueError(
                    f"{NESTED}datasets.{name}.augment: colour jitter / grayscale need 3-channel images; "
                    f"{spec.family} has {spec.channels}"
                )
            for section in entry.overrides:
                if section not in OVERRIDABLE:
                    raise ValueError(
                        f"{NESTED}datasets.{name}.overrides.{section}: unknown key; "
                        f"known: {', '.join(OVERRIDABLE)}"
                    )
            self.recipe(name)  # validates the merged sections
        self._proj_hidden_reaches_every_method()
        return self

    def _proj_hidden_reaches_every_method(self) -> None:
        """A set ``model.proj_hidden`` must not be silently ignored: simsiam, byol and nnclr size their
        projectors from their own ``method_options`` (``builds_own_heads``)."""
        own = [m for m in self.pretrain.methods if _own_heads(m)]
        if not own:
            return
        for name in self.pretrain.datasets:
            hidden = self.recipe(name).model.proj_hidden
            if hidden is None:
                continue
            where = (
                f"datasets.{name}.overrides.model.proj_hidden"
                if "proj_hidden" in self.datasets[name].overrides.get("model", {})
                else "model.proj_hidden"
            )
            raise ValueError(
                f"{NESTED}{where}: {hidden} would not reach {', '.join(own)}, which size their projectors "
                "from method_options (proj_hidden, pred_hidden); set it there, or leave it null"
            )

    def _entry(self, name: str, where: str) -> None:
        if name not in self.datasets:
            raise ValueError(
                f"{NESTED}{where}: unknown dataset entry {name!r}; entries: {', '.join(self.datasets)}"
            )

    # ------------------------------------------------------------------ derived views

    def spec(self, name: str) -> DatasetSpec:
        if name not in self.datasets:
            raise ValueError(f"unknown dataset entry {name!r}; entries: {', '.join(self.datasets)}")
        return spec_for(name, self.datasets[name])

    def recipe(self, name: str) -> Recipe:
        """The settings one dataset entry trains with: global sections with the entry's overrides."""
        overrides = self.datasets[name].overrides
        sections = {}
        for section, schema in OVERRIDABLE.items():
            base = getattr(self, section)
            if section not in overrides:
                sections[section] = base
                continue
            try:
                sections[section] = schema.model_validate(_merge(base.model_dump(), overrides[section]))
            except ValidationError as err:
                raise _nested(f"datasets.{name}.overrides.{section}", err) from None
        return Recipe(**sections, augment=self.spec(name).augment)

    def runs(self) -> list[RunKey]:
        """Every pretraining run: dataset entry x method x seed, in params order."""
        p = self.pretrain
        return [RunKey(d, m, s) for d in p.datasets for m in p.methods for s in self.seeds]

    def floors(self) -> list[FloorKey]:
        """Every floor: raw pixels per pretraining entry, then the untrained encoder per entry x seed."""
        keys = [FloorKey(d, "pixels") for d in self.pretrain.datasets]
        return keys + [FloorKey(d, "init", s) for d in self.pretrain.datasets for s in self.seeds]

    def transfer_pairs(self) -> list[tuple[str, str]]:
        return [(s, t) for s in self.transfer.sources for t in self.transfer.targets if s != t]

    def transfers(self) -> list[TransferKey]:
        return [
            TransferKey(s, t, m, seed)
            for s, t in self.transfer_pairs()
            for m in self.pretrain.methods
            for seed in self.seeds
        ]

    def check_run(self, key: RunKey) -> None:
        """A one-line error when a stage is asked for a run params.yaml does not define."""
        if key.dataset not in self.pretrain.datasets:
            raise ValueError(
                f"dataset {key.dataset!r} is not in params.yaml pretrain.datasets {self.pretrain.datasets}"
            )
        if key.method not in self.pretrain.methods:
            raise ValueError(
                f"method {key.method!r} is not in params.yaml pretrain.methods {self.pretrain.methods}"
            )
        if key.seed not in self.seeds:
            raise ValueError(f"seed {key.seed} is not in params.yaml seeds {self.seeds}")


def _format_error(err: ValidationError, source: str) -> str:
    """One line: the first problem, with its dotted key path."""
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"{source}: {key}: unknown key"
    message = first["msg"].removeprefix("Value error, ")
    if message.startswith(NESTED):
        return f"{source}: {message.removeprefix(NESTED)}"
    if first["type"] == "missing":
        return f"{source}: {key}: required key missing"
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
