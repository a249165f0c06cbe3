"""Benchmark: pretraining throughput (source images per second) of the loop against its bounds.

Why: the "fast on a GPU host" issue asks whether the one training loop (``cecl.train.loop``) keeps the
device busy: does batch assembly on the device (index a uint8 ``TensorSplit``, ``make_views`` with the
dataset's ``BatchAugment`` recipe) reach 85% of what the model alone can do, and is it at least 2x a
SupContrast-style per-sample PIL ``DataLoader``? This script measures all three side by side in one run,
on one device, with the same model, optimiser and step.

A *source image* is one dataset image, however many views are made of it; images/s = batch size x steps
/ wall seconds. Every row runs ``--warmup`` untimed steps, then ``--windows`` timed windows of
``--steps-per-window`` steps (0: as many steps as fill ``--window-seconds``, calibrated on one step after
warm-up); the figure is the median over windows (CUDA: synchronised before reading the clock).

Rows, for each workload and method (RunSetup from params.yaml via ``load_params`` + ``run_setup``):

Every row trains objects made by the loop's own ``build_training`` (method, training module, optimiser,
with the ``compute:`` options applied) and steps them with the loop's own functions:

1. ``bound``: model only. Views are made once with ``make_views`` (on the device) and reused; each step
   is the loop's ``model_step``: forward, ``zero_grad``, ``backward``, ``optimizer.step``, ``after_step``.
2. ``pipeline``: ``cecl.train.loop.train_step``, the very function ``run_pretraining`` calls for each
   step (learning rate, indexing the device-resident uint8 split, ``make_views`` with the recipe's
   ``BatchAugment``, ``split_batch``, ``model_step`` with the non-finite-loss guard, the loss sum), with
   the loop's ``start_epoch`` / ``finish_epoch`` at epoch boundaries. ``pipeline_nchw`` is the same with
   ``compute.channels_last`` flipped.
3. ``loader``: SupContrast's data path: a torchvision ``VisionDataset`` over the same uint8 images as
   PIL images, ``TwoCropTransform`` of RandomResizedCrop(size, scale=(0.2, 1.)), RandomHorizontalFlip,
   RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), RandomGrayscale(p=0.2), ToTensor, Normalize,
   in a ``DataLoader`` with ``os.cpu_count()`` persistent workers (pinned memory on CUDA), feeding the
   same model and ``model_step`` as row 2, with the same non-finite-loss guard. The encoder normalises
   again (values differ, cost is what is measured).
   When the dataset's own recipe is lighter (BiasedMNIST: crops only), ``loader_recipe`` is the same
   loader with that recipe as PIL transforms (RandomResizedCrop with its scale and ratio, flip if any,
   ToTensor, Normalize), so the 2/3 ratio can be read both ways.

Also measured: the per-epoch monitor, excluded from every images/s figure, timed separately for each
policy (kNN and the converged probe, cecl/eval/monitor.py) on the pipeline-trained method (median of
``--probe-repeats``); and a
cross-check that row 2, which calls ``train_step`` outside ``run_pretraining``, is not optimistic:
``run_pretraining`` itself for one epoch on a prefix of the training split (steps = warm-up + timed steps of
row 2), the monitor's own seconds (``EpochRecord.monitor_seconds``) subtracted from the epoch's (cold start
included: no warm-up).

Peak memory per row: CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` at the
start of the row (absolute: resident data, weights, optimiser state and activations). CPU: growth of the
process's peak resident set during the row, VmHWM minus VmRSS at the row's start, after resetting the
peak with ``/proc/self/clear_refs`` (falls back to ``ru_maxrss`` growth, a lower bound after an earlier
larger row). Memory the allocator kept from an earlier row can be reused, so CPU growth is a lower bound
for later rows; loader workers are separate processes and are reported as the sum of their PSS
(proportional set size, shared pages split) at the end of the row.

Workloads: (a) params.yaml's first pretrain dataset (BiasedMNIST 28x28 RGB, small_cnn width 16, batch 64,
2 views; methods cecl and simclr), on the prepared data/ store if there is one, else synthetic uint8
images of the entry's shape; (b) CIFAR-shaped synthetic data (32x32 RGB, 50 000 images, cifar10 entry
with SupContrast's recipe), ResNet-18 with the CIFAR stem (and ResNet-50 with ``--large``), SGD as the
paper profile's ResNet recipe, batch 256 (and 1024 on CUDA, where memory allows), 2 views, CECL.

Speed options: the ``compute:`` section of ``--params`` (``ComputeParams``), so the benchmark runs what
the pipeline would; each flag overrides one key for every row and the cross-check: ``--autocast
none|bf16`` (``compute.autocast``: ``torch.autocast`` around the forward), ``--compile`` /
``--no-compile`` (``compute.compile``: ``nn.Module.compile`` of the training module), ``--fused`` /
``--no-fused`` (``compute.fused_optimizer``), ``--threads N`` (``compute.threads``: torch's CPU threads
for the whole benchmark). The loop applies them (``build_training``, ``model_step``, ``compute_threads``).

    python benchmarks/throughput.py [--device auto] [--windows 5] [--steps-per-window 0] [--warmup 3]
        [--large] [--cifar-batches 256 1024] [--autocast bf16] [--compile] [--fused] [--threads N]
        [--json out.json]
    python benchmarks/throughput.py --quick      # tiny sizes, seconds (the smoke test runs this)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import platform
import re
import resource
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cecl.config import ComputeParams, Params, parse_params
from cecl.data.augment import AugmentParams, BatchAugment, make_views
from cecl.datasets import TensorSplit
from cecl.eval.monitor import Monitor
from cecl.pipeline import RunSetup, load_splits, run_setup
from cecl.runs import RunKey
from cecl.train import loop
from cecl.train.device import resolve_device

CIFAR_ENTRY = "cifar32"
CIFAR_TRAIN = 50_000  # CIFAR-10's training images
TEN_THOUSAND = 10_000
Step = Callable[[], None]


# --------------------------------------------------------------------------- settings and workloads


@dataclasses.dataclass(frozen=True)
class Settings:
    """How every row is timed (the speed options live in each RunSetup's ``compute``)."""

    device: torch.device
    windows: int = 5
    steps_per_window: int = 0  # 0: calibrated to fill window_seconds
    window_seconds: float = 2.0
    warmup: int = 3
    probe_repeats: int = 3
    workers: int = 0  # loader workers; 0 -> os.cpu_count()
    seed: int = 0


@dataclasses.dataclass
class Workload:
    """One data set and model shape: uint8 splits on the CPU and one RunSetup per method."""

    name: str
    description: str
    data: str  # where the images come from
    setups: dict[str, RunSetup]
    train: TensorSplit  # CPU, uint8 [N, C, H, W]
    val: TensorSplit
    # The dataset's recipe, for a second loader row with it as PIL transforms (None: SupContrast's own).
    loader_recipe: AugmentParams | None


def with_recipe(
    setup: RunSetup,
    *,
    batch_size: int | None = None,
    channels_last: bool | None = None,
) -> RunSetup:
    """``setup`` with the batch size or the layout (``compute.channels_last``) replaced, the rest kept."""
    pretrain = setup.recipe.pretrain
    update: dict[str, Any] = {} if batch_size is None else {"batch_size": batch_size}
    recipe = dataclasses.replace(setup.recipe, pretrain=pretrain.model_copy(update=update))
    compute = (
        setup.compute
        if channels_last is None
        else setup.compute.model_copy(update={"channels_last": channels_last})
    )
    return dataclasses.replace(setup, recipe=recipe, compute=compute)


def synthetic_split(n: int, shape: tuple[int, ...], n_classes: int, seed: int, bias: bool) -> TensorSplit:
    """Random uint8 images of ``shape`` with random targets (and a random bias attribute if asked)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    targets = torch.randint(0, n_classes, (n,), generator=g)
    return TensorSplit(images, targets, torch.randint(0, n_classes, (n,), generator=g) if bias else None)


def batch_of(setups: dict[str, RunSetup]) -> int:
    """The (common) batch size of a workload's setups."""
    return next(iter(setups.values())).recipe.pretrain.batch_size


def params_workload(
    params: Params, methods: list[str], batch: int | None, synthetic_sizes: tuple[int, int] | None, seed: int
) -> Workload:
    """Workload (a): params.yaml's first pretrain dataset, on data/ if prepared, else synthetic images.

    ``synthetic_sizes`` (train, val) forces synthetic data of those sizes (``--quick``).
    """
    entry = params.pretrain.datasets[0]
    setups = {m: run_setup(params, RunKey(entry, m, seed)) for m in methods}
    first = next(iter(setups.values()))
    if batch is not None:
        setups = {m: with_recipe(s, batch_size=batch) for m, s in setups.items()}
    spec = first.spec
    data = f"{first.data_dir} (prepared store)"
    if synthetic_sizes is None:
        try:
            splits = load_splits(spec, torch.device("cpu"), ("train", "val"))
            train, val = splits["train"], splits["val"]
        except (FileNotFoundError, ValueError, OSError) as err:
            print(f"note: {entry}: no usable prepared store ({str(err).splitlines()[0]}); synthetic data")
            synthetic_sizes = (getattr(spec.options, "train_size", None) or 8000, spec.options.val_size)
    if synthetic_sizes is not None:
        train = synthetic_split(synthetic_sizes[0], spec.shape(), spec.n_classes, seed, bias=True)
        val = synthetic_split(synthetic_sizes[1], spec.shape(), spec.n_classes, seed + 1, bias=True)
        data = f"synthetic uint8 {list(spec.shape())}"
    recipe = first.recipe
    model = recipe.model
    options = ", ".join(f"{k} {v}" for k, v in model.backbone_options.items())
    description = (
        f"{spec.describe()}; {model.backbone} ({options}), batch {batch_of(setups)}, "
        f"{recipe.pretrain.views} views, {recipe.pretrain.optimizer.name} lr {recipe.pretrain.optimizer.lr:g}"
    )
    aug = recipe.augment
    supcon_like = aug.color_jitter >= 1.0 and aug.grayscale_p > 0 and aug.hflip_p > 0
    return Workload(entry, description, data, setups, train, val, None if supcon_like else aug)


def cifar_workload(
    raw: dict[str, Any], arch: str, batch: int, train_size: int, probe_images: int, seed: int
) -> Workload:
    """Workload (b): a cifar10 entry (SupContrast's recipe) on synthetic 32x32 RGB uint8 images.

    Model and optimiser as the paper profile's ResNet recipe (CIFAR stem, SGD lr 0.5, momentum 0.9,
    weight decay 1e-4, cosine); ``probe_images`` is both the monitor's training subset and the
    synthetic validation split's size.
    """
    raw = json.loads(json.dumps(raw))  # a deep copy
    raw["datasets"][CIFAR_ENTRY] = {
        "family": "cifar10",
        "download": False,
        "train_size": min(train_size, CIFAR_TRAIN - 1000),
        "val_size": 1000,
        "overrides": {
            "pretrain": {
                "batch_size": batch,
                "optimizer": {
                    "name": "sgd",
                    "lr": 0.5,
                    "momentum": 0.9,
                    "weight_decay": 1e-4,
                    "cosine": True,
                },
                "monitor": {"train_size": max(10, probe_images)},
            },
        },
    }
    # The model section as a whole (an entry override would merge small_cnn's options into the ResNet's).
    raw["model"] = {**raw.get("model", {}), "backbone": arch, "backbone_options": {"cifar_stem": True}}
    params = parse_params(raw, "params.yaml + benchmark cifar32 entry")
    setup = run_setup(params, RunKey(CIFAR_ENTRY, "cecl", seed))
    spec = setup.spec
    train = synthetic_split(train_size, spec.shape(), spec.n_classes, seed, bias=False)
    val = synthetic_split(max(10, probe_images), spec.shape(), spec.n_classes, seed + 1, bias=False)
    name = f"{CIFAR_ENTRY}-{arch}-b{batch}"
    description = (
        f"CIFAR-shaped {list(spec.shape())} ({train_size} training images); {arch} cifar_stem, "
        f"batch {batch}, {setup.recipe.pretrain.views} views, sgd lr 0.5"
    )
    return Workload(
        name, description, f"synthetic uint8 {list(spec.shape())}", {"cecl": setup}, train, val, None
    )


# --------------------------------------------------------------------------- timing and memory


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclasses.dataclass
class Prepared:
    """A row ready to time: its step, images per step, steps per window, owner and build-phase fields."""

    kind: str
    step: Step
    images_per_step: int
    steps_per_window: int
    owner: Any
    fields: dict[str, Any]
    rates: list[float] = dataclasses.field(default_factory=list)


def time_window(prepared: Prepared, device: torch.device) -> float:
    """images/s of one window of ``prepared.steps_per_window`` steps (CUDA: synchronised at both ends)."""
    sync(device)
    start = time.perf_counter()
    for _ in range(prepared.steps_per_window):
        prepared.step()
    sync(device)
    rate = prepared.steps_per_window * prepared.images_per_step / (time.perf_counter() - start)
    prepared.rates.append(rate)
    return rate


def syncs_per_step(step: Step, device: torch.device, steps: int = 4) -> float | None:
    """Host-device synchronisations per steady-state step, counted by torch's own detector on CUDA
    (``torch.cuda.set_sync_debug_mode("warn")`` warns at every synchronising call) over ``steps`` steps
    after the timed windows, outside them; None off CUDA (nothing to count: tests/test_no_sync.py)."""
    if device.type != "cuda":
        return None
    sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sync(device)
    return sum("synchronizing" in str(w.message) for w in caught) / steps


def calibrate(step: Step, settings: Settings) -> int:
    """Steps per window: ``--steps-per-window``, or as many as fill ``--window-seconds`` (one timed step)."""
    if settings.steps_per_window > 0:
        return settings.steps_per_window
    sync(settings.device)
    start = time.perf_counter()
    step()
    sync(settings.device)
    return max(1, math.ceil(settings.window_seconds / max(time.perf_counter() - start, 1e-6)))


def timing_fields(prepared: Prepared) -> dict[str, Any]:
    """The measured figure of a row: the median over its windows, and the windows themselves."""
    return {
        "images_per_s": statistics.median(prepared.rates),
        "window_images_per_s": list(prepared.rates),
        "steps_per_window": prepared.steps_per_window,
        "images_per_step": prepared.images_per_step,
    }


def _status_kib(key: str, pid: str = "self") -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.MULTILINE)
    if match is None:
        raise OSError(f"{key} missing from /proc/{pid}/status")
    return int(match.group(1))


def child_pids() -> list[int]:
    """This process's children (the DataLoader's workers), from /proc/self/task/*/children."""
    pids: list[int] = []
    for children in Path("/proc/self/task").glob("*/children"):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in children.read_text().split()]
    return pids


def pss_mib(pid: int) -> float:
    """Proportional set size of ``pid`` (shared pages divided among their users), MiB; NaN if unreadable."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return float("nan")
    match = re.search(r"^Pss:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else float("nan")


def malloc_trim() -> bool:
    """Return the C heap's free memory to the OS (glibc ``malloc_trim(0)``); False where unavailable.

    torch's CPU allocator calls malloc / free directly, so after this the resident set holds what is
    live, and the pages a new row touches (even in reused heap blocks) count towards its peak RSS.
    """
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0) >= 0)
    except (OSError, AttributeError):
        return False


class PeakMemory:
    """Peak extra memory of one row's build, warm-up and first steps (see the module docstring).

    CUDA: ``torch.cuda.max_memory_allocated`` (after ``reset_peak_memory_stats``) minus
    ``memory_allocated`` at the start. CPU: VmHWM minus VmRSS at the start, after ``malloc_trim`` and a
    peak reset through /proc/self/clear_refs; where either is unavailable, ``ru_maxrss`` growth.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = ""
        self._base = 0
        self._exact = False

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "CUDA: max_memory_allocated - memory_allocated at row start"
            return
        trimmed = malloc_trim()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._exact = trimmed and _status_kib("VmHWM") <= _status_kib("VmRSS") + 64
        except OSError:
            self._exact = False
        if self._exact:
            self._base = _status_kib("VmRSS")
            self.method = "CPU: peak RSS growth (VmHWM - VmRSS at row start, after malloc_trim + clear_refs)"
        else:
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.method = "CPU: ru_maxrss growth (a lower bound)"

    def stop(self) -> float:
        """Peak extra MiB since :meth:`start`."""
        if self.device.type == "cuda":
            sync(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
        peak = _status_kib("VmHWM") if self._exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return max(0, peak - self._base) / 1024


# --------------------------------------------------------------------------- the trained objects and steps


def bound_step(setup: RunSetup, train: TensorSplit, settings: Settings) -> tuple[Step, int, loop.Training]:
    """Row 1: views made once on the device (the first batch, the recipe's augment), reused every step."""
    device = settings.device
    training = loop.build_training(setup, device)
    batch = min(setup.recipe.pretrain.batch_size, len(train))
    generator = torch.Generator(device=device).manual_seed(setup.key.seed)
    augment = BatchAugment(setup.recipe.augment) if training.method.augments else None
    views = make_views(
        train.images[:batch].to(device), training.method.n_views, augment, generator
    ).contiguous()
    labels = train.targets[:batch].to(device)

    def step() -> None:
        loop.model_step(training, views, labels)

    return step, batch, training


class LoopReplica:
    """Row 2: ``run_pretraining``'s steps, one ``loop.train_step`` per call, epochs rolling over.

    Epoch boundaries as in the loop: ``loop.finish_epoch`` (the epoch's last non-finite-loss read and the
    mean loss) and ``loop.start_epoch`` (the (seed, epoch) generator and the device ``randperm``). The
    epoch index cycles through the recipe's epochs, so the learning-rate schedule stays in range. The
    monitor is left out.
    """

    def __init__(self, setup: RunSetup, train: TensorSplit, settings: Settings) -> None:
        self.device = settings.device
        self.training = loop.build_training(setup, self.device)
        self.train = TensorSplit(train.images.to(self.device), train.targets.to(self.device))
        self.total = setup.recipe.pretrain.epochs
        self.epochs = 0
        self.epoch = loop.start_epoch(self.training, self.train, 0, self.total)
        self.batch_size = self.epoch.batch_size
        self.step_index = 0

    def __call__(self) -> None:
        if self.step_index == self.epoch.steps:
            loop.finish_epoch(self.epoch)
            self.epochs += 1
            self.epoch = loop.start_epoch(self.training, self.train, self.epochs % self.total, self.total)
            self.step_index = 0
        loop.train_step(self.training, self.epoch, self.step_index)
        self.step_index += 1


class TwoCropTransform:
    """SupContrast's ``TwoCropTransform``: two independent draws of ``transform`` of one image."""

    def __init__(self, transform: Callable[[Any], torch.Tensor]) -> None:
        self.transform = transform

    def __call__(self, image: Any) -> list[torch.Tensor]:
        return [self.transform(image), self.transform(image)]


def pil_transform(
    size: int, mean: tuple[float, ...], std: tuple[float, ...], recipe: AugmentParams | None
) -> Callable[[Any], torch.Tensor]:
    """SupContrast's CIFAR train transform (``recipe`` None), or ``recipe`` as the nearest PIL transforms."""
    from torchvision import transforms as T

    if recipe is None:
        ops = [
            T.RandomResizedCrop(size=size, scale=(0.2, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
        ]
    else:
        s = recipe.color_jitter
        ops = [T.RandomResizedCrop(size=size, scale=recipe.crop_scale, ratio=recipe.crop_ratio)]
        if recipe.hflip_p > 0:
            ops.append(T.RandomHorizontalFlip(recipe.hflip_p))
        if s > 0 and recipe.color_jitter_p > 0:
            jitter = T.ColorJitter(0.4 * s, 0.4 * s, 0.4 * s, 0.1 * s)
            ops.append(T.RandomApply([jitter], p=recipe.color_jitter_p))
        if recipe.grayscale_p > 0:
            ops.append(T.RandomGrayscale(p=recipe.grayscale_p))
    return T.Compose([*ops, T.ToTensor(), T.Normalize(mean, std)])


def image_dataset(images_hwc: np.ndarray, targets: np.ndarray, transform: Callable[[Any], Any]) -> Any:
    """A torchvision ``VisionDataset`` of uint8 HWC images served as PIL images (as torchvision's CIFAR10)."""
    from PIL import Image
    from torchvision.datasets import VisionDataset

    class UInt8Images(VisionDataset):
        def __len__(self) -> int:
            return len(targets)

        def __getitem__(self, index: int) -> tuple[Any, int]:
            image = images_hwc[index]
            pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
            return self.transform(pil), int(targets[index])

    return UInt8Images(root=None, transform=transform)


class LoaderFeed:
    """Row 3: a persistent-worker DataLoader (SupContrast's data path) feeding the loop's ``model_step``.

    With the loop's non-finite-loss guard (read every ``loop.finite_check_steps`` steps, as in row 2).
    """

    def __init__(
        self,
        setup: RunSetup,
        train: TensorSplit,
        settings: Settings,
        images_hwc: np.ndarray,
        recipe: AugmentParams | None,
    ) -> None:
        from torch.utils.data import DataLoader

        self.device = settings.device
        self.training = loop.build_training(setup, self.device)
        self.steps = 0
        self.guard = loop.FiniteLossGuard(setup.key.method, 0, self.device, self.training.finite_check_steps)
        spec = setup.spec
        transform = TwoCropTransform(pil_transform(spec.image_size[0], spec.mean, spec.std, recipe))
        dataset = image_dataset(images_hwc, train.targets.numpy(), transform)
        self.workers = settings.workers or os.cpu_count() or 1
        self.batch_size = min(setup.recipe.pretrain.batch_size, len(train))
        self.loader = DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.workers,
            persistent_workers=True,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            generator=torch.Generator().manual_seed(setup.key.seed),
        )
        self.batches: Iterator[Any] = iter(self.loader)

    def __call__(self) -> None:
        try:
            views, labels = next(self.batches)
        except StopIteration:  # next epoch (the persistent workers stay up)
            self.batches = iter(self.loader)
            views, labels = next(self.batches)
        views = torch.stack(views, dim=1).to(self.device, non_blocking=True)  # [B, V, C, H, W]
        step = self.steps
        loop.model_step(
            self.training,
            views,
            labels.to(self.device, non_blocking=True),
            lambda loss: self.guard.record(loss, step),
        )
        self.steps += 1

    def close(self) -> float:
        """Shut the workers down; returns their summed PSS (MiB) just before."""
        workers = getattr(self.batches, "_workers", None)  # the iterator's processes (torch internals)
        pids = [w.pid for w in workers] if workers else child_pids()
        total = sum(pss_mib(pid) for pid in pids)
        del self.batches
        del self.loader
        gc.collect()
        return total


# --------------------------------------------------------------------------- rows


def _row(workload: Workload, method: str, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"workload": workload.name, "method": method, "row": kind, **fields}


Build = Callable[[], tuple[Step, int, Any]]


def prepare_row(kind: str, build: Build, settings: Settings) -> Prepared | dict[str, Any]:
    """Build a row, warm it up and run one more step inside a peak-memory window, then calibrate it.

    Returns the prepared row, or the fields of a failed row (a CUDA out-of-memory error, e.g. batch 1024
    where memory does not allow).
    """
    meter = PeakMemory(settings.device)
    started = time.perf_counter()
    meter.start()
    try:
        step, images_per_step, owner = build()
        for _ in range(settings.warmup + 1):
            step()
        peak = meter.stop()
        steps = calibrate(step, settings)
    except torch.cuda.OutOfMemoryError as err:
        gc.collect()
        torch.cuda.empty_cache()
        return {"error": f"out of memory: {str(err).splitlines()[0]}"}
    fields = {"peak_mib": peak, "memory": meter.method, "prepare_seconds": time.perf_counter() - started}
    return Prepared(kind, step, images_per_step, steps, owner, fields)


def on_device(split: TensorSplit, device: torch.device) -> TensorSplit:
    """``split`` with every tensor on ``device`` (no copy where it already is)."""
    bias = None if split.bias is None else split.bias.to(device)
    return TensorSplit(split.images.to(device), split.targets.to(device), bias)


def time_probe(
    training: loop.Training, workload: Workload, repeats: int, device: torch.device, kind: str = "knn"
) -> list[float]:
    """Seconds of the loop's per-epoch monitor of ``kind`` (knn | probe) on the trained method, ``repeats``
    times (cecl/eval/monitor.py; features of its subset and of validation included)."""
    train, val = on_device(workload.train, device), on_device(workload.val, device)
    setup = training.setup
    params = setup.recipe.pretrain.monitor.model_copy(update={"kind": kind})
    monitor = Monitor(params, train, val, setup.spec.evaluator(), setup.key.seed)
    seconds = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        monitor(training.method.encoder)
        sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def loop_check(setup: RunSetup, workload: Workload, steps: int, device: torch.device) -> dict[str, Any]:
    """``run_pretraining`` itself for one epoch of ``steps`` steps, its monitor's seconds subtracted."""
    batch = min(setup.recipe.pretrain.batch_size, len(workload.train))
    n = min(len(workload.train), steps * batch)
    train = on_device(workload.train.subset(torch.arange(n)), device)
    val = on_device(workload.val, device)
    _, history = loop.run_pretraining(setup, train, val, device, "benchmark", epochs=1, progress=False)
    epoch_seconds = history[0].seconds
    probe_seconds = [history[0].monitor_seconds]
    train_seconds = epoch_seconds - sum(probe_seconds)
    images = (n // batch) * batch
    return {
        "images_per_s": images / train_seconds,
        "steps": n // batch,
        "epoch_seconds": epoch_seconds,
        "probe_seconds": sum(probe_seconds),
    }


def measure_method(
    workload: Workload, method: str, setup: RunSetup, first: bool, settings: Settings, images_hwc: np.ndarray
) -> list[dict[str, Any]]:
    """The rows of one method on one workload.

    Model rows (bound, pipeline, and for the first method the other layout) are built one after the
    other, then timed in interleaved rounds (one window of each per round), so that a change in the
    machine's background load hits them alike. Loader rows come after, one at a time, so their worker
    processes never compete with another row. Then the per-epoch monitor (each policy) on the pipeline's
    trained method, and (first method) the ``run_pretraining`` cross-check.
    """
    device = settings.device
    rows: list[dict[str, Any]] = []

    def add(kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        row = {"workload": workload.name, "method": method, "row": kind, **fields}
        rows.append(row)
        _progress(row)
        return row

    def pipeline(s: RunSetup) -> tuple[Step, int, LoopReplica]:
        replica = LoopReplica(s, workload.train, settings)
        return replica, replica.batch_size, replica

    builds: list[tuple[str, Build]] = [
        ("bound", lambda: bound_step(setup, workload.train, settings)),
        ("pipeline", lambda: pipeline(setup)),
    ]
    if first:
        flipped = with_recipe(setup, channels_last=not setup.compute.channels_last)
        layout = "pipeline_nchw" if setup.compute.channels_last else "pipeline_nhwc"
        builds.append((layout, lambda: pipeline(flipped)))
    prepared: list[Prepared] = []
    failed: dict[str, dict[str, Any]] = {}
    for kind, build in builds:
        out = prepare_row(kind, build, settings)
        if isinstance(out, Prepared):
            prepared.append(out)
        else:
            failed[kind] = out
    for _ in range(settings.windows):
        for row in prepared:
            time_window(row, device)
    for row in prepared:  # after the timed windows: the detector's warnings cost host time
        row.fields["syncs_per_step"] = syncs_per_step(row.step, device)
    by_kind: dict[str, dict[str, Any]] = {}
    for kind, _ in builds:
        match = next((p for p in prepared if p.kind == kind), None)
        by_kind[kind] = add(kind, failed[kind] if match is None else {**timing_fields(match), **match.fields})
    pipe = next((p for p in prepared if p.kind == "pipeline"), None)
    if pipe is not None and settings.probe_repeats > 0:
        seconds = time_probe(pipe.owner.training, workload, settings.probe_repeats, device)
        fitted = time_probe(pipe.owner.training, workload, settings.probe_repeats, device, "probe")
        by_kind["pipeline"].update(
            probe_seconds=seconds,
            probe_s_per_epoch=statistics.median(seconds),
            probe_fit_s_per_epoch=statistics.median(fitted),
            train_images=len(workload.train),
        )
    del prepared, pipe
    release(device)

    kinds: list[tuple[str, AugmentParams | None]] = [("loader", None)]
    if first and workload.loader_recipe is not None:
        kinds.append(("loader_recipe", workload.loader_recipe))
    for kind, recipe in kinds:

        def feed(r: AugmentParams | None = recipe) -> tuple[Step, int, LoaderFeed]:
            loader = LoaderFeed(setup, workload.train, settings, images_hwc, r)
            return loader, loader.batch_size, loader

        out = prepare_row(kind, feed, settings)
        if not isinstance(out, Prepared):
            add(kind, out)
            continue
        for _ in range(settings.windows):  # back to back: each window starts in the steady state
            time_window(out, device)
        fields = {**timing_fields(out), **out.fields, "workers": out.owner.workers}
        fields["workers_pss_mib"] = out.owner.close()
        add(kind, fields)
        del out
        release(device)

    if first and "error" not in by_kind["pipeline"]:
        steps = settings.warmup + 1 + settings.windows * by_kind["pipeline"]["steps_per_window"]
        add("loop", loop_check(setup, workload, steps, device))
        release(device)
    return rows


def release(device: torch.device) -> None:
    """Free what the last rows left (Python garbage, CUDA cache) before the next row is measured."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_workload(workload: Workload, settings: Settings) -> list[dict[str, Any]]:
    """Every row of one workload, for each of its methods (layout variants for the first method only)."""
    images_hwc = np.ascontiguousarray(workload.train.images.permute(0, 2, 3, 1).numpy())
    rows: list[dict[str, Any]] = []
    for index, (method, setup) in enumerate(workload.setups.items()):
        rows += measure_method(workload, method, setup, index == 0, settings, images_hwc)
    return rows


# --------------------------------------------------------------------------- summary and printing


def _progress(row: dict[str, Any]) -> None:
    """One line per finished row while the benchmark runs (the tables come at the end)."""
    print(f"  {row['workload']} {row['method']} {row['row']}: {_fmt_rate(row)} images/s", flush=True)


def _fmt_rate(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    if "error" in row:
        return "OOM" if row["error"].startswith("out of memory") else "error"
    return f"{row['images_per_s']:.1f}"


def _rate(row: dict[str, Any] | None) -> float | None:
    """A row's measured images/s; None when the row is absent or failed."""
    return None if row is None or "error" in row else row["images_per_s"]


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
    """``a``'s images/s over ``b``'s, from the two rows' measured figures (None if either is missing)."""
    rate_a, rate_b = _rate(a), _rate(b)
    return None if rate_a is None or rate_b is None else rate_a / rate_b


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (workload, method): the three figures, the ratios 2/1 and 2/3 computed from them, and more."""
    keys = list(dict.fromkeys((r["workload"], r["method"]) for r in rows))
    out = []
    for workload, method in keys:
        by = {r["row"]: r for r in rows if (r["workload"], r["method"]) == (workload, method)}
        bound, pipe, loader = by.get("bound"), by.get("pipeline"), by.get("loader")
        layout = by.get("pipeline_nchw") or by.get("pipeline_nhwc")
        nchw_on = "pipeline_nchw" in by
        entry: dict[str, Any] = {
            "workload": workload,
            "method": method,
            "bound": _rate(bound),
            "pipeline": _rate(pipe),
            "loader": _rate(loader),
            "pipeline_over_bound": _ratio(pipe, bound),
            "pipeline_over_loader": _ratio(pipe, loader),
            "pipeline_over_loader_recipe": _ratio(pipe, by.get("loader_recipe")),
            "channels_last_on_over_off": (_ratio(pipe, layout) if nchw_on else _ratio(layout, pipe))
            if layout is not None
            else None,
            "loop_over_pipeline": _ratio(by.get("loop"), pipe),
        }
        if pipe is not None and "probe_s_per_epoch" in pipe:
            probe = pipe["probe_s_per_epoch"]
            entry["probe_s_per_epoch"] = probe
            entry["probe_fit_s_per_epoch"] = pipe["probe_fit_s_per_epoch"]
            entry["probe_s_per_10k_train_images"] = probe * TEN_THOUSAND / pipe["train_images"]
            entry["train_s_per_10k_images"] = TEN_THOUSAND / pipe["images_per_s"]
        ratio21, ratio23 = entry["pipeline_over_bound"], entry["pipeline_over_loader"]
        entry["reaches_85pct_of_bound"] = None if ratio21 is None else ratio21 >= 0.85
        entry["reaches_2x_loader"] = None if ratio23 is None else ratio23 >= 2.0
        out.append(entry)
    return out


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU model, cores, memory, torch / torchvision versions, threads and (CUDA) the GPU."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        cpu = match.group(1).strip() if match else platform.processor() or "unknown"
    mem_gib = float("nan")
    with contextlib.suppress(OSError, AttributeError):
        mem_gib = _status_kib_meminfo("MemTotal") / 2**20
    import torchvision

    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_isa": torch.backends.cpu.get_cpu_capability(),  # what torch's kernels use (ATEN_CPU_CAPABILITY)
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "device": str(device),
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = f"{props.name} ({props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor})"
    return info


def _status_kib_meminfo(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+)\s+kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    if match is None:
        raise OSError(f"{key} missing from /proc/meminfo")
    return int(match.group(1))


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _first(values: list[float] | None) -> float | None:
    return values[0] if values else None


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    lines = [
        " ".join(
            h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    ]
    lines += [
        " ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in body
    ]
    return lines


def format_report(results: dict[str, Any]) -> str:
    """The printed tables, from the results dict alone (so the printout and --json always agree)."""
    m, s = results["machine"], results["settings"]
    rows, summary = results["rows"], results["summary"]
    by = {(r["workload"], r["method"], r["row"]): r for r in rows}
    lines = [
        f"machine: {m['cpu']} ({m.get('cpu_isa', '?')}), {m['cores']} cores ({m['cores_usable']} usable), "
        f"{_fmt(m['memory_gib'], '.0f')} GiB; "
        f"python {m['python']}, torch {m['torch']}, torchvision {m['torchvision']}, "
        f"torch threads {m['torch_threads']} (interop {m['torch_interop_threads']})"
        + (f"; GPU {m['gpu']}" if "gpu" in m else "")
        + f"; load average (1 min) {_fmt(_first(m.get('load_average_at_start')), '.2f')} at start, "
        f"{_fmt(_first(m.get('load_average_1_5_15')), '.2f')} at end",
        f"device {s['device']}; median of {s['windows']} windows "
        f"({'auto' if s['steps_per_window'] <= 0 else s['steps_per_window']} steps each"
        + (f", ~{s['window_seconds']:g} s" if s["steps_per_window"] <= 0 else "")
        + f") after {s['warmup']} warm-up steps; loader workers {s['workers']}; compute: "
        + ", ".join(f"{k} {v}" for k, v in s["compute"].items()),
        "",
    ]
    for w in results["workloads"]:
        lines.append(
            f"{w['name']}: {w['description']}; data: {w['data']}; channels_last {w['channels_last']}"
        )
    lines += [
        "",
        "source images/s (1 = model-only bound, 2 = pipeline, 3 = SupContrast loader); peak MiB per row",
    ]
    header = [
        "workload",
        "method",
        "1 bound",
        "2 pipeline",
        "3 loader",
        "2/1",
        "2/3",
        "MiB 1",
        "MiB 2",
        "MiB 3",
    ]
    body = []
    for e in summary:
        key = (e["workload"], e["method"])
        body.append(
            [
                e["workload"],
                e["method"],
                _fmt_rate(by.get((*key, "bound"))),
                _fmt_rate(by.get((*key, "pipeline"))),
                _fmt_rate(by.get((*key, "loader"))),
                _fmt(e["pipeline_over_bound"], ".2f"),
                _fmt(e["pipeline_over_loader"], ".2f"),
                *(
                    _fmt(by.get((*key, k), {}).get("peak_mib"), ".0f")
                    for k in ("bound", "pipeline", "loader")
                ),
            ]
        )
    lines += _table(header, body)
    memory = next((r["memory"] for r in rows if "memory" in r), "")
    pss = [
        f"{r['workload']} {r['method']} {r['row']} {r['workers_pss_mib']:.0f}"
        for r in rows
        if "workers_pss_mib" in r
    ]
    lines.append(f"(memory: {memory}; loader workers' summed PSS MiB at row end: {', '.join(pss) or '-'})")

    extra = []
    for e in summary:
        key = (e["workload"], e["method"])
        layout = by.get((*key, "pipeline_nchw")) or by.get((*key, "pipeline_nhwc"))
        if layout is not None:
            on, off = (
                (by[(*key, "pipeline")], layout)
                if (*key, "pipeline_nchw") in by
                else (layout, by[(*key, "pipeline")])
            )
            extra.append(
                [
                    e["workload"],
                    e["method"],
                    _fmt_rate(on),
                    _fmt_rate(off),
                    _fmt(e["channels_last_on_over_off"], ".2f"),
                    _fmt(off.get("peak_mib"), ".0f"),
                ]
            )
    if extra:
        lines += ["", "pipeline, compute.channels_last on vs off"]
        lines += _table(["workload", "method", "on img/s", "off img/s", "on/off", "MiB off"], extra)

    other = []
    for e in summary:
        key = (e["workload"], e["method"])
        r = by.get((*key, "loader_recipe"))
        if r is not None:
            other.append(
                [
                    e["workload"],
                    e["method"],
                    "3' loader, dataset's recipe",
                    _fmt_rate(r),
                    f"2/3' {_fmt(e['pipeline_over_loader_recipe'], '.2f')}",
                    _fmt(r.get("peak_mib"), ".0f"),
                ]
            )
    if other:
        lines += ["", "other rows"]
        lines += _table(["workload", "method", "row", "img/s", "ratio", "MiB"], other)

    probes = []
    for e in summary:
        if "probe_s_per_epoch" in e:
            pipe = by[(e["workload"], e["method"], "pipeline")]
            probes.append(
                [
                    e["workload"],
                    e["method"],
                    _fmt(e["probe_s_per_epoch"], ".2f"),
                    _fmt(e["probe_fit_s_per_epoch"], ".2f"),
                    _fmt(e["probe_s_per_10k_train_images"], ".2f"),
                    _fmt(e["train_s_per_10k_images"], ".2f"),
                    str(pipe["train_images"]),
                ]
            )
    if probes:
        lines += [
            "",
            f"per-epoch monitor (excluded above; cecl/eval/monitor.py, median of {s['probe_repeats']})",
        ]
        lines += _table(
            [
                "workload",
                "method",
                "s/epoch kNN",
                "s/epoch probe",
                "s per 10k train imgs",
                "training s per 10k imgs",
                "train imgs",
            ],
            probes,
        )

    checks = []
    for e in summary:
        r = by.get((e["workload"], e["method"], "loop"))
        if r is not None:
            checks.append(
                [
                    e["workload"],
                    e["method"],
                    str(r["steps"]),
                    _fmt_rate(r),
                    _fmt_rate(by.get((e["workload"], e["method"], "pipeline"))),
                    _fmt(e["loop_over_pipeline"], ".2f"),
                    _fmt(r["probe_seconds"], ".2f"),
                ]
            )
    if checks:
        lines += ["", "cross-check: run_pretraining, 1 epoch, probe subtracted (cold start, no warm-up)"]
        lines += _table(["workload", "method", "steps", "loop img/s", "2 img/s", "loop/2", "probe s"], checks)

    verdicts = []
    for e in summary:
        r21, r23 = e["pipeline_over_bound"], e["pipeline_over_loader"]
        if r21 is not None and r23 is not None:
            verdicts.append(
                f"{e['workload']} {e['method']}: pipeline at {100 * r21:.0f}% of the bound "
                f"({'meets' if r21 >= 0.85 else 'misses'} 85%), {r23:.2f}x the loader "
                f"({'meets' if r23 >= 2 else 'misses'} 2x)"
            )
    if verdicts:
        lines += ["", *verdicts]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def with_compute_flags(raw: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The params mapping with its ``compute:`` keys overridden by the flags that were given."""
    compute = dict(raw.get("compute") or {})
    if args.autocast is not None:
        compute["autocast"] = None if args.autocast == "none" else args.autocast
    if args.compile is not None:
        compute["compile"] = args.compile
    if args.fused is not None:
        compute["fused_optimizer"] = args.fused
    if args.threads > 0:
        compute["threads"] = args.threads
    return {**raw, "compute": compute}


def build_workloads(args: argparse.Namespace, device: torch.device) -> tuple[ComputeParams, list[Workload]]:
    """The effective ``compute:`` options (``--params``' section, flags applied) and the workloads."""
    source = f"{args.params} (+ benchmark flags)"
    try:
        raw = with_compute_flags(yaml.safe_load(Path(args.params).read_text()) or {}, args)
    except (OSError, yaml.YAMLError) as err:
        raise SystemExit(f"{args.params}: {str(err).splitlines()[0]}") from None
    params = parse_params(raw, source)
    workloads: list[Workload] = []
    if "params" in args.workloads:
        sizes = (96, 32) if args.quick else None
        workloads.append(params_workload(params, args.methods, 8 if args.quick else None, sizes, args.seed))
    if "cifar" in args.workloads:
        archs = args.archs or (["resnet18", "resnet50"] if args.large else ["resnet18"])
        batches = args.cifar_batches or (
            [4] if args.quick else [256, 1024] if device.type == "cuda" else [256]
        )
        train_size = 16 if args.quick else args.cifar_train_size
        probe_images = 16 if args.quick else args.cifar_probe_images
        for arch in archs:
            for batch in batches:
                workloads.append(
                    cifar_workload(raw, arch, batch, max(train_size, batch), probe_images, args.seed)
                )
    return params.compute, workloads


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    parser.add_argument("--windows", type=int, default=5, help="timed windows per row (median reported)")
    parser.add_argument("--steps-per-window", type=int, default=0, help="0: calibrate to --window-seconds")
    parser.add_argument("--window-seconds", type=float, default=2.0)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before the windows")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and synthetic data (smoke test)")
    parser.add_argument("--json", type=Path, help="write machine, settings, rows and summary here")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--workloads", nargs="+", choices=["params", "cifar"], default=["params", "cifar"])
    parser.add_argument("--methods", nargs="+", default=["cecl", "simclr"], help="methods of workload (a)")
    parser.add_argument("--large", action="store_true", help="also ResNet-50 on the CIFAR-shaped workload")
    parser.add_argument(
        "--archs", nargs="+", choices=["resnet18", "resnet50"], help="CIFAR-shaped encoders (over --large)"
    )
    parser.add_argument("--cifar-batches", type=int, nargs="+", help="default: 256 1024 on CUDA, 256 on CPU")
    parser.add_argument("--cifar-train-size", type=int, default=CIFAR_TRAIN)
    parser.add_argument(
        "--cifar-probe-images",
        type=int,
        default=2000,
        help="monitor training subset and validation size",
    )
    parser.add_argument(
        "--probe-repeats", type=int, default=3, help="timed monitor calls per policy (0: skip)"
    )
    parser.add_argument("--workers", type=int, default=0, help="loader workers (0: os.cpu_count())")
    # Speed options: each overrides one key of --params' compute section (absent: that file's value).
    parser.add_argument("--autocast", choices=["none", "bf16"], help="compute.autocast (none = null)")
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, help="compute.compile (torch.compile)"
    )
    parser.add_argument(
        "--fused", action=argparse.BooleanOptionalAction, help="compute.fused_optimizer (fused=True)"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="compute.threads: torch CPU threads (0: --params' value)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.windows = min(args.windows, 2)
        args.steps_per_window = args.steps_per_window or 1
        args.warmup = min(args.warmup, 1)
        args.probe_repeats = min(args.probe_repeats, 1)
        args.workers = args.workers or min(2, os.cpu_count() or 1)
    if args.windows < 1 or args.warmup < 0 or args.steps_per_window < 0:
        parser.error("--windows must be >= 1, --warmup and --steps-per-window >= 0")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every workload; returns the results dict that --json writes and format_report prints."""
    device = resolve_device(args.device)
    load_before = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    settings = Settings(
        device=device,
        windows=args.windows,
        steps_per_window=args.steps_per_window,
        window_seconds=args.window_seconds,
        warmup=args.warmup,
        probe_repeats=args.probe_repeats,
        workers=args.workers,
        seed=args.seed,
    )
    compute, workloads = build_workloads(args, device)
    rows: list[dict[str, Any]] = []
    # compute.threads for every row, as run_pretraining holds it for a whole run (rows 1-3 call the
    # loop's step functions directly; the cross-check's run_pretraining sets the same count again).
    with loop.compute_threads(compute):
        for workload in workloads:
            rows += measure_workload(workload, settings)
        machine = {**machine_info(device), "load_average_at_start": load_before}
    settings_out = {
        **{k: v for k, v in dataclasses.asdict(settings).items() if k != "device"},
        "device": str(device),
        "workers": settings.workers or os.cpu_count(),
        "quick": args.quick,
        "compute": compute.model_dump(),
    }
    return {
        "machine": machine,
        "settings": settings_out,
        "workloads": [
            {
                "name": w.name,
                "description": w.description,
                "data": w.data,
                "methods": list(w.setups),
                "channels_last": next(iter(w.setups.values())).compute.channels_last,
                "train_images": len(w.train),
            }
            for w in workloads
        ],
        "rows": rows,
        "summary": summarise(rows),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    results = run(args)
    print()
    print(format_report(results), flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


if __name__ == "__main__":
    main()
