"""The per-epoch monitors side by side on trained encoders: validation accuracy and seconds per evaluation.

    python benchmarks/monitor.py [--entries bmnist_rho99] [--methods ce simclr supcon cecl] [--seeds 0]

For each encoder models/<entry>/<method>/seed_<s>/encoder.pt that `make repro` wrote (params.yaml's
entries), on the entry's validation split and the monitor's fixed training subset (pretrain.monitor
.train_size), it times and scores:
- ``adam (old)``: the online probe this project used before the kNN monitor (Adam on standardised
  features, 200 epochs at lr 0.05, batch 256: the CPU default's last settings), kept here only as the
  reference it is compared with;
- ``knn``: cecl/eval/monitor.py, k = 200, temperature 0.1;
- ``probe``: the converged L-BFGS probe of cecl/eval/linear_probe.py on the same subset (the monitor's
  one-strength-per-decade grid).
Features are extracted once per encoder (timed separately: every monitor pays it). One thread, as the probe.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cecl import runs
from cecl.config import MonitorParams, load_params
from cecl.eval.features import features_of
from cecl.eval.linear_probe import LinearProbe, linear_probe, logits_of
from cecl.eval.monitor import MONITOR_PROBE, knn_scores
from cecl.pipeline import load_saved_model, load_splits


def adam_probe(train_x: torch.Tensor, train_y: torch.Tensor, n_classes: int, seed: int) -> LinearProbe:
    """The old online probe (reference only): Adam, 200 epochs, lr 0.05, batch 256, standardised features."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    probe = LinearProbe(train_x.mean(0), train_x.std(0).clamp_min(1e-6), n_classes)
    optimizer = torch.optim.Adam(probe.parameters(), lr=0.05)
    for _ in range(200):
        order = torch.randperm(len(train_y), generator=generator)
        for start in range(0, len(train_y), 256):
            idx = order[start : start + 256]
            loss = F.cross_entropy(probe(train_x[idx]), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return probe


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "?",
    )
    return (
        f"{model}, {torch.get_num_threads()} torch threads, ISA {torch.backends.cpu.get_cpu_capability()}, "
        f"torch {torch.__version__}"
    )


def encoder_arguments(description: str) -> argparse.Namespace:
    """--entries, --methods (default: params.yaml's) and --seeds (default 0): which trained encoders."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--entries", nargs="*")
    parser.add_argument("--methods", nargs="*")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    return parser.parse_args()


def trained_encoders(
    entry: str, methods: Iterable[str], seeds: Iterable[int]
) -> Iterator[tuple[str, int, torch.nn.Module]]:
    """(method, seed, encoder) of every encoder of ``entry`` that `make repro` wrote, on the CPU; a missing
    one is a printed line, not an error."""
    for method in methods:
        for seed in seeds:
            path = runs.RunKey(entry, method, seed).model_dir / runs.ENCODER_FILE
            if not path.exists():
                print(f"{entry:14} {method:8} {seed:>4} (no {path}: run make repro first)")
                continue
            yield method, seed, load_saved_model(path, torch.device("cpu")).encoder


def main() -> None:
    args = encoder_arguments(__doc__.splitlines()[0])
    params = load_params()
    torch.set_num_threads(1)
    print(f"machine: {machine()}")
    print(
        f"{'entry':14} {'method':8} {'seed':>4} {'extract s':>9}  "
        + "  ".join(f"{name + ' acc':>10} {name + ' s':>8}" for name in ("adam (old)", "knn", "probe"))
    )
    seconds: dict[str, list[float]] = {"adam (old)": [], "knn": [], "probe": []}
    for entry in args.entries or params.pretrain.datasets:
        spec = params.spec(entry)
        monitor: MonitorParams = params.recipe(entry).pretrain.monitor
        splits = load_splits(spec, torch.device("cpu"))
        train, val = splits["train"], splits["val"]
        if monitor.train_size is not None and monitor.train_size < len(train):
            keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
            train = train.subset(keep[: monitor.train_size].sort().values)
        evaluator = spec.evaluator()
        for method, seed, encoder in trained_encoders(
            entry, args.methods or params.pretrain.methods, args.seeds
        ):
            started = time.perf_counter()
            train_x, val_x = features_of(encoder, train), features_of(encoder, val)
            extract = time.perf_counter() - started
            results = {}
            started = time.perf_counter()
            probe = adam_probe(train_x, train.targets, evaluator.n_classes, seed)
            logits = logits_of(probe, val_x)
            results["adam (old)"] = (
                evaluator(logits, val.targets, val.bias),
                time.perf_counter() - started,
            )
            started = time.perf_counter()
            scores = knn_scores(
                train_x, train.targets, val_x, evaluator.n_classes, monitor.k, monitor.temperature
            )
            results["knn"] = (evaluator(scores, val.targets, val.bias), time.perf_counter() - started)
            started = time.perf_counter()
            fitted = linear_probe(
                {"train": train_x, "val": val_x},
                {"train": train.targets, "val": val.targets},
                {"train": None, "val": val.bias},
                evaluator,
                MONITOR_PROBE,
                scored=("val",),
            )
            results["probe"] = (fitted.val, time.perf_counter() - started)
            cells = []
            for name, (metrics, secs) in results.items():
                seconds[name].append(secs)
                cells.append(f"{metrics[evaluator.primary]:>10.4f} {secs:>8.2f}")
            print(f"{entry:14} {method:8} {seed:>4} {extract:>9.2f}  " + "  ".join(cells), flush=True)
    print(
        "median seconds per evaluation (features excluded): "
        + ", ".join(f"{name} {statistics.median(v):.2f}" for name, v in seconds.items() if v)
    )
    print(f"metric: each entry's evaluator's primary metric on validation; command: {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
