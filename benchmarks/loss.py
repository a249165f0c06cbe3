"""Benchmark: our CECLLoss against a dense-mask CECL written the way the official code computes it.

The dense reference (``dense_cecl`` below, written for this benchmark) follows the structure of the
SupContrast-derived official implementation: float label masks from ``torch.eq(...).float()`` repeated
with ``.repeat(V, V)``, a float ``logits_mask`` built with ``scatter``, masks multiplied into float
matrices, positive means as ``(mask * log_prob).sum(1) / mask.sum(1)`` and the negatives' denominator as
``log((exp(logits) * neg_mask).sum(1))``. Ours (``cecl.losses.CECLLoss``) uses boolean masks and a
row-blocked custom autograd function that never holds the N x N similarity matrix.

What is measured, per implementation and anchor count N = V * B (V = 2 views, D = --dim), on the same
seeded random features [B, V, D] (requires_grad) and labels drawn from --classes classes:

- time: median wall-clock milliseconds of ``loss = fn(x, y); loss.backward()`` over --repeats runs,
  after one untimed run (CUDA: synchronised before reading the clock).
- peak extra memory: the peak of memory in use during one forward+backward, minus what was in use just
  before it (inputs already allocated). On CUDA: ``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats``, minus ``memory_allocated`` before. On CPU, torch's allocator has no
  statistics and ``tracemalloc`` does not see tensor storage, so each (implementation, N) runs in its
  own fresh subprocess: after a small warm-up (library initialisation), the kernel's peak-RSS counter
  is reset by writing "5" to /proc/self/clear_refs, and the result is VmHWM (peak resident set) minus
  VmRSS just before the run, read from /proc/self/status. This counts every byte the process touched,
  allocator overhead included, at page granularity. Where clear_refs is unavailable it falls back to
  ``ru_maxrss`` minus the RSS before the run in the fresh process (an upper bound: warm-up peaks count).

Before timing, both implementations' loss values are compared (relative and absolute tolerance 1e-5);
a mismatch aborts the run. Target (issue): at N = 4096 on CPU, ours <= 0.35x dense time and peak memory.

    python benchmarks/loss.py [--sizes 512 2048 4096 8192] [--dim 128] [--device auto] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cecl.losses import CECLLoss

TEMPERATURE = 0.1
BASE_TEMPERATURE = 0.07
WEIGHT = 0.5
N_VIEWS = 2

LossFn = Callable[[Tensor, Tensor], Tensor]


def dense_cecl(
    features: Tensor, labels: Tensor, temperature: float, base_temperature: float, weight: float
) -> Tensor:
    """CECL with dense float masks, structured like the official (SupContrast-derived) code."""
    batch, n_views = features.shape[0], features.shape[1]
    n = batch * n_views
    device = features.device
    features = F.normalize(features, dim=2)
    contrast = torch.cat(torch.unbind(features, dim=1), dim=0)
    logits = torch.matmul(contrast, contrast.T) / temperature
    row_max, _ = torch.max(logits, dim=1, keepdim=True)
    logits = logits - row_max.detach()

    column = labels.contiguous().view(-1, 1)
    label_mask = torch.eq(column, column.T).float().to(device).repeat(n_views, n_views)
    source_mask = torch.eye(batch, device=device).repeat(n_views, n_views)
    logits_mask = torch.scatter(torch.ones_like(label_mask), 1, torch.arange(n, device=device).view(-1, 1), 0)
    context_pos = label_mask * logits_mask
    context_neg = 1.0 - label_mask
    self_pos = source_mask * logits_mask

    exp_logits = torch.exp(logits)
    log_prob_context = logits - torch.log((exp_logits * context_neg).sum(1, keepdim=True))
    log_prob_self = logits - torch.log((exp_logits * logits_mask).sum(1, keepdim=True))
    mean_context = (context_pos * log_prob_context).sum(1) / context_pos.sum(1)
    mean_self = (self_pos * log_prob_self).sum(1) / self_pos.sum(1)

    loss = -(temperature / base_temperature) * (weight * mean_context + (1.0 - weight) * mean_self)
    return loss.view(n_views, batch).mean()


def _ours() -> CECLLoss:
    return CECLLoss(TEMPERATURE, BASE_TEMPERATURE, WEIGHT)


def _loss_fn(impl: str) -> LossFn:
    if impl == "ours":
        return _ours()
    return lambda x, y: dense_cecl(x, y, TEMPERATURE, BASE_TEMPERATURE, WEIGHT)


def _inputs(n: int, dim: int, classes: int, device: torch.device, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = n // N_VIEWS
    features = torch.randn(batch, N_VIEWS, dim, generator=g).to(device).requires_grad_(True)
    labels = torch.randint(0, classes, (batch,), generator=g).to(device)
    return features, labels


def _status_kib(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{key} missing from /proc/self/status")
    return int(match.group(1))


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") <= _status_kib("VmRSS") + 4


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(fn: LossFn, x: Tensor, y: Tensor) -> float:
    loss = fn(x, y)
    loss.backward()
    x.grad = None
    return float(loss.detach())


def worker(impl: str, n: int, dim: int, classes: int, device: torch.device, repeats: int, seed: int) -> dict:
    """Measure one implementation at one size in this (fresh) process."""
    fn = _loss_fn(impl)
    warm_x, warm_y = _inputs(256, dim, classes, device, seed + 1)
    _step(fn, warm_x, warm_y)
    x, y = _inputs(n, dim, classes, device, seed)
    _sync(device)
    method: str
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        value = _step(fn, x, y)
        _sync(device)
        peak_bytes = torch.cuda.max_memory_allocated(device) - before
        method = "cuda.max_memory_allocated"
    else:
        exact = _reset_peak_rss()
        before_kib = _status_kib("VmRSS")
        value = _step(fn, x, y)
        if exact:
            peak_kib = _status_kib("VmHWM")
            method = "VmHWM after clear_refs"
        else:
            peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            method = "ru_maxrss (upper bound)"
        peak_bytes = (peak_kib - before_kib) * 1024
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        _step(fn, x, y)
        _sync(device)
        times.append(time.perf_counter() - start)
    return {"ms": 1e3 * statistics.median(times), "mib": peak_bytes / 2**20, "loss": value, "memory": method}


def _run_worker(impl: str, n: int, args: argparse.Namespace, device: torch.device) -> dict:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--_worker",
        impl,
        "--sizes",
        str(n),
        "--dim",
        str(args.dim),
        "--classes",
        str(args.classes),
        "--device",
        str(device),
        "--repeats",
        str(args.repeats),
        "--seed",
        str(args.seed),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=os.environ.copy())
    if done.returncode != 0:
        raise RuntimeError(f"{impl} at N={n} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_agreement(n: int, args: argparse.Namespace, device: torch.device) -> tuple[float, float]:
    x, y = _inputs(n, args.dim, args.classes, device, args.seed)
    with torch.no_grad():
        ours = float(_ours()(x, y))
        dense = float(dense_cecl(x, y, TEMPERATURE, BASE_TEMPERATURE, WEIGHT))
    if not math.isclose(ours, dense, rel_tol=1e-5, abs_tol=1e-5):
        raise SystemExit(f"loss mismatch at N={n}: ours {ours!r} vs dense {dense!r}")
    return ours, dense


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[512, 2048, 4096, 8192], help="anchor counts N"
    )
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, ...")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--_worker", choices=["ours", "dense"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if any(n < 2 or n % N_VIEWS for n in args.sizes):
        parser.error(f"every size must be a positive multiple of {N_VIEWS}")

    if args._worker:
        print(
            json.dumps(
                worker(args._worker, args.sizes[0], args.dim, args.classes, device, args.repeats, args.seed)
            )
        )
        return

    print(
        f"CECL forward+backward, device={device}, torch threads={torch.get_num_threads()}, D={args.dim}, "
        f"V={N_VIEWS}, classes={args.classes}, tau={TEMPERATURE}, w={WEIGHT}, median of {args.repeats}"
    )
    columns = [("N", 6), ("ours ms", 9), ("dense ms", 9), ("time x", 7), ("ours MiB", 9), ("dense MiB", 10)]
    print(" ".join(f"{name:>{width}}" for name, width in [*columns, ("mem x", 6)]), flush=True)
    memory_method = ""
    for n in args.sizes:
        check_agreement(n, args, device)
        ours = _run_worker("ours", n, args, device)
        dense = _run_worker("dense", n, args, device)
        memory_method = ours["memory"]
        row = (
            f"{n:>6} {ours['ms']:>9.1f} {dense['ms']:>9.1f} {ours['ms'] / dense['ms']:>7.3f} "
            f"{ours['mib']:>9.1f} {dense['mib']:>10.1f} {ours['mib'] / max(dense['mib'], 1e-9):>6.3f}"
        )
        print(row, flush=True)
    print(f"(loss values agree within 1e-5 at every N; peak extra memory via {memory_method})")


if __name__ == "__main__":
    main()
