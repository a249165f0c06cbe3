"""Benchmark: host milliseconds per ImageNet batch to crop and resize every view, the per-view loop
(before) against one batched crop for all views (now), side by side in one run.

Why: on a GPU the device-decode path's crops are queued by the host; what the host pays per batch is
the dispatch of every operation, not its arithmetic (the device does that). This CPU-only machine
measures that part by running both paths on the CPU with the arithmetic made negligible: every distinct
image shape of the batch is mapped to its own tiny shape (about 10 x 10 pixels, 8 px out), so the
same number of views, shapes and operations is dispatched, each on a few hundred bytes: ``host ms`` is
the median wall time per batch. ``launches`` counts the operations dispatched at the real sizes (on
torch's ``meta`` device, no data) that would run a kernel (views, which launch none, left out). Rows:

* ``per-view loop``: ``cecl.data.streaming.per_view_crops`` (one torchvision ``resized_crop`` per view,
  what ``device_views`` did until issue 33);
* ``batched``: ``cecl.data.resized_crops.batched_resized_crops`` (what ``device_views`` does now).

``--cpu-pixels`` adds the same two rows on real pixels at 224 px on this CPU (arithmetic included), for
scale: the batched path does dense matrix products sized for a GPU, so on a CPU it is the slower one.

Data: ``--batch`` images (2 views each, 224 px out) whose shapes follow ImageNet's mix: 70% one of its
six most common shapes (500 x 375, 375 x 500, 500 x 333 ...), 30% random sides in [150, 500]; boxes from
the SupContrast recipe's draws (``cecl.data.streaming.crop_boxes``).

    python benchmarks/crop.py [--batch 128] [--repeats 5] [--cpu-pixels]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cecl.data.augment import SUPCON_RECIPE, BatchAugment, Uniforms
from cecl.data.resized_crops import batched_resized_crops
from cecl.data.streaming import crop_boxes, per_view_crops

COMMON = [(375, 500), (500, 375), (333, 500), (500, 333), (334, 500), (500, 334)]
VIEWS, SIZE = 2, 224


class Launches(TorchDispatchMode):
    """Counts dispatched operations that are not views (each would launch at least one kernel)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if not func.is_view:
            self.count += 1
        return func(*args, **(kwargs or {}))


def shapes(n: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [
        rng.choice(COMMON) if rng.random() < 0.7 else (rng.randint(150, 500), rng.randint(150, 500))
        for _ in range(n)
    ]


def tiny(sizes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Each distinct shape mapped to its own small one (8..15 x 8..22), the batch's grouping kept."""
    distinct = sorted(set(sizes))
    small = {shape: (8 + i % 8, 8 + i // 8) for i, shape in enumerate(distinct)}
    return [small[shape] for shape in sizes]


def images(sizes: list[tuple[int, int]], device: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if device == "meta":
        return [torch.empty(3, h, w, dtype=torch.uint8, device="meta") for h, w in sizes]
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in sizes]


def timed(run: Callable[[], torch.Tensor], repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--batch", type=int, default=128, help="images per batch (2 views each)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cpu-pixels", action="store_true", help="also time real pixels on this CPU")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        parser.error("--batch and --repeats must be >= 1")
    torch.set_num_threads(1)  # the host's dispatch is one thread; spinning workers on tiny ops only add noise
    sizes = shapes(args.batch)
    uniforms = torch.rand(args.batch, VIEWS, Uniforms.COLUMNS, generator=torch.Generator().manual_seed(1))
    recipe = BatchAugment(SUPCON_RECIPE)
    cases = {"host ms": (images(tiny(sizes), "cpu"), 8)}
    if args.cpu_pixels:
        cases["CPU ms, 224 px"] = (images(sizes, "cpu"), SIZE)
    rows: dict[str, dict[str, float]] = {}
    for name, crop in (("per-view loop", per_view_crops), ("batched", batched_resized_crops)):
        row: dict[str, float] = {}
        for column, (batch, size) in cases.items():
            boxes, _ = crop_boxes(batch, uniforms, recipe)
            row[column] = timed(lambda b=batch, x=boxes, s=size, c=crop: c(b, x, s), args.repeats)  # type: ignore[misc]
        meta = images(sizes, "meta")
        with Launches() as launches:
            crop(meta, crop_boxes(meta, uniforms, recipe)[0], SIZE)
        row["launches"] = float(launches.count)
        rows[name] = row
    print(
        f"{args.batch} images x {VIEWS} views, {len(set(sizes))} distinct shapes, median of {args.repeats}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
    )
    columns = [*cases, "launches"]
    print(f"{'row':<15}" + "".join(f"{c:>16}" for c in columns))
    for name, row in rows.items():
        print(f"{name:<15}" + "".join(f"{row[c]:>16.1f}" for c in columns))
    before, after = rows["per-view loop"], rows["batched"]
    print(
        f"host time {before['host ms'] / after['host ms']:.1f}x less, "
        f"launches {before['launches'] / after['launches']:.1f}x fewer"
    )
    return rows


if __name__ == "__main__":
    main()
