"""Training throughput on a named device, from the one checked-in table (throughput.yaml) or measured.

A row gives trained images per second on one device for (backbone, options, input size, precision). A
combination without its own row is scaled from the device's row of the same precision with the most
MACs per image by the ratio of MACs: throughput ~ 1 / MACs holds roughly for convolutional networks of
similar shape on one device, and the plan marks such figures "scaled". ``calibrate`` measures this
machine's CPU instead (a few forward-backward steps of the real encoder at the entry's batch).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import yaml

TABLE = Path(__file__).with_name("throughput.yaml")


class UnknownDevice(ValueError):
    """A device the throughput table does not list."""


@dataclass(frozen=True)
class Throughput:
    images_per_s: float  # trained images (forward + backward) per second on one device
    source: str
    scaled: bool  # True: derived from another row by MACs


@lru_cache(maxsize=1)
def table() -> dict[str, Any]:
    return yaml.safe_load(TABLE.read_text())


def devices() -> dict[str, dict[str, Any]]:
    return table()["devices"]


def device_memory_gib(device: str) -> float | None:
    """The device's usable memory in GiB (None: a CPU, whose RAM the plan does not check)."""
    return _device(device)["memory_gib"]


def min_step_seconds(device: str) -> float:
    """The assumed floor on one training step's seconds on ``device`` (throughput.yaml says why)."""
    return float(_device(device).get("min_step_s") or 0.0)


def stage_overhead_seconds(device: str) -> float:
    """Seconds each stage costs besides its compute (throughput.yaml says where the figure comes from)."""
    return float(_device(device).get("stage_overhead_s") or 0.0)


def _device(device: str) -> dict[str, Any]:
    if device not in devices():
        raise UnknownDevice(f"unknown plan device {device!r}; known: {', '.join(devices())}")
    return devices()[device]


@dataclass(frozen=True)
class Workload:
    """What a throughput figure is for."""

    backbone: str
    options: tuple[tuple[str, Any], ...]  # sorted backbone options
    size: int  # input height (= width)
    precision: str  # fp32 | bf16
    macs: int  # forward MACs per image (for scaling)


def lookup(device: str, work: Workload, measured: dict[Workload, Throughput] | None = None) -> Throughput:
    """The figure for ``work`` on ``device``: measured, a row of the table, or a row scaled by MACs."""
    _device(device)
    if measured and work in measured:
        return measured[work]
    rows = [r for r in table()["rows"] if r["device"] == device and r["precision"] == work.precision]
    for row in rows:
        if (
            row["backbone"] == work.backbone
            and tuple(sorted((row.get("options") or {}).items())) == work.options
            and row["size"] == work.size
        ):
            return Throughput(float(row["images_per_s"]), row["source"], scaled=False)
    if not rows:
        how = "run `python -m cecl.plan --device cpu --calibrate`" if device == "cpu" else "add a row"
        raise UnknownDevice(f"no {work.precision} throughput figure for {device} in {TABLE.name} ({how})")
    reference = max(rows, key=lambda r: _row_macs(r))
    ratio = _row_macs(reference) / work.macs
    return Throughput(
        float(reference["images_per_s"]) * ratio,
        f"scaled by MACs ({ratio:.2f}x) from: {reference['source']}",
        scaled=True,
    )


def _row_macs(row: dict[str, Any]) -> int:
    from cecl.plan.footprint import macs

    return macs(row["backbone"], row.get("options") or {}, (3, row["size"], row["size"]))


def calibrate(
    params: Any, entry: str, method: str, units_per_image: float, steps: int = 10, windows: int = 5
) -> Throughput:
    """This CPU's throughput for ``entry``'s workload, timed on the loop's own ``train_step`` (augmentation,
    forward, loss, backward, optimiser) of ``method`` on random images of the entry's shape, after two
    warm-up steps: ``units_per_image`` encoder-forward units per source image (``method_passes``) / 3.

    The median of ``windows`` windows of ``steps`` steps: one window of 20 steps read 3 200 to 5 500 images/s
    in back-to-back runs on a 2-core machine, and the plan's total moved with it."""
    from cecl.datasets import TensorSplit
    from cecl.pipeline import run_setup
    from cecl.runs import RunKey
    from cecl.train import loop

    setup = run_setup(params, RunKey(entry, method, params.seeds[0]))
    batch = setup.recipe.pretrain.batch_size
    n = batch * (steps * windows + 2)
    generator = torch.Generator().manual_seed(0)
    split = TensorSplit(
        torch.randint(0, 256, (n, *setup.spec.shape()), generator=generator, dtype=torch.uint8),
        torch.randint(0, setup.spec.n_classes, (n,), generator=generator),
        torch.zeros(n, dtype=torch.long) if setup.spec.bias_attribute() is not None else None,
    )
    device = torch.device("cpu")
    with loop.compute_threads(setup.compute):
        training = loop.build_training(setup, device)
        epoch = loop.start_epoch(training, split, 0, 1)
        for step in range(2):
            loop.train_step(training, epoch, step)
        per_step = []
        for window in range(windows):
            started = time.perf_counter()
            for step in range(2 + window * steps, 2 + (window + 1) * steps):
                loop.train_step(training, epoch, step)
            per_step.append((time.perf_counter() - started) / steps)
        seconds = statistics.median(per_step)
    return Throughput(
        batch * units_per_image / (3 * seconds),
        f"measured here: train_step of {method}, batch {batch}, median of {windows} x {steps} steps "
        f"({torch.backends.cpu.get_cpu_capability()})",
        scaled=False,
    )
