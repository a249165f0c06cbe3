"""Benchmark: host milliseconds to receive one batch of JPEG bytes from a DataLoader worker, per-file
tensors (the collate before) against one buffer with offsets (``cecl.data.streaming._collate_bytes``).

Why: on a GPU the ImageNet folder's device-decode path (``decode="device"``) leaves the CPU little to do
but receive each batch's bytes and queue the decode; issue 33 measured 49 ms per batch of 128 files
received as 128 tensors, each its own shared-memory segment and file descriptor (kept open while the
tensor lives), about 1k images/s per GPU from that alone. This measures only the receive: the worker
runs ahead (``prefetch_factor`` batches), the consumer waits ``--step-ms`` between batches as a training
step would, and each ``next()`` on the loader is timed (unpickling, receiving the descriptors, mapping
the memory; the batch is ready). Open file descriptors are counted while 4 batches are held.

Data: ``--batch`` random byte strings of ``--kib`` KiB each (ImageNet's mean JPEG is about 110 KiB);
the bytes' content does not matter to the transfer.

    python benchmarks/batch_transfer.py [--batch 128] [--batches 12] [--kib 110] [--step-ms 400]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cecl.data.streaming import _collate_bytes, split_buffer


class RandomBytes(Dataset):
    """Item i: (bytes as uint8 [n], target, uniforms [2, 8], i), the shape of ``_FolderBytes`` items."""

    def __init__(self, n: int, kib: int) -> None:
        # A pool of byte strings made once: the worker then only copies bytes, as _FolderBytes after a read.
        g = torch.Generator().manual_seed(0)
        size = kib * 1024
        lengths = torch.randint(size - size // 4, size + size // 4, (16,), generator=g).tolist()
        self.n = n
        self.pool = [
            torch.randint(0, 256, (m,), dtype=torch.uint8, generator=g).numpy().tobytes() for m in lengths
        ]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor, int]:
        data = torch.frombuffer(bytearray(self.pool[i % len(self.pool)]), dtype=torch.uint8)
        return data, i % 1000, torch.rand(2, 8, generator=torch.Generator().manual_seed(i)), i


def per_file_collate(items: list[tuple[torch.Tensor, int, torch.Tensor, int]]) -> tuple[Any, ...]:
    """The collate before: one tensor per file (what ``_collate_bytes`` returned until issue 33)."""
    data, targets, uniforms, indices = zip(*items, strict=True)
    return list(data), torch.tensor(targets), torch.stack(uniforms), torch.tensor(indices)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def measure(collate: Any, args: argparse.Namespace) -> dict[str, float]:
    """Median ms per ``next()`` over the timed batches, and descriptors opened while 4 batches are held."""
    loader = DataLoader(
        RandomBytes(args.batch * (args.batches + 6), args.kib),
        batch_size=args.batch,
        num_workers=1,
        prefetch_factor=2,
        collate_fn=collate,
        persistent_workers=False,
    )
    it = iter(loader)
    held: list[Any] = []
    before = open_fds()
    times = []
    for index in range(args.batches + 2):
        time.sleep(args.step_ms / 1000)  # the step the batch would wait for
        started = time.perf_counter()
        batch = next(it)
        # what device_batches does with the buffer: views of it, one per file
        files = split_buffer(batch[0], batch[1]) if collate is _collate_bytes else batch[0]
        assert len(files) == args.batch
        elapsed = time.perf_counter() - started
        if index >= 2:  # the first batches wait for the worker's start
            times.append(elapsed)
        if len(held) < 4:
            held.append(batch)
        if len(held) == 4 and "fds" not in locals():
            fds = open_fds() - before
    del it, held
    return {"ms_per_batch": 1000 * statistics.median(times), "fds_for_4_batches": float(fds)}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=12, help="timed batches per row")
    parser.add_argument("--kib", type=int, default=110, help="mean bytes per file, KiB")
    parser.add_argument("--step-ms", type=float, default=400.0, help="wait between batches (the step)")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.batches < 1 or args.kib < 1:
        parser.error("--batch, --batches and --kib must be >= 1")
    rows = {"per-file tensors": measure(per_file_collate, args), "one buffer": measure(_collate_bytes, args)}
    print(f"{args.batch} files of ~{args.kib} KiB per batch, 1 worker, median of {args.batches} batches")
    print(f"{'row':<18}{'host ms/batch':>14}{'fds (4 batches)':>17}")
    for name, row in rows.items():
        print(f"{name:<18}{row['ms_per_batch']:>14.2f}{row['fds_for_4_batches']:>17.0f}")
    ratio = rows["per-file tensors"]["ms_per_batch"] / rows["one buffer"]["ms_per_batch"]
    print(f"per-file / one buffer: {ratio:.1f}x")
    return rows


if __name__ == "__main__":
    main()
