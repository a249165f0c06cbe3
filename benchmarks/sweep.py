"""ASHA versus the full grid on a small sweep: trial-epochs, wall time, and whether the best agrees.

Runs the same small grid twice on a local Ray (or RAY_ADDRESS's cluster), once with ASHA early
stopping and once with ``sweep.scheduler: none``, into a temporary folder (nothing in the project
changes, nothing is logged to MLflow). It prepares its own BiasedMNIST entry (``bench``) into that
folder, with the training rho given on the command line, and uses params.yaml for everything else
(model, pretraining recipe, method options, ASHA settings, resources).

    python benchmarks/sweep.py [--epochs 4] [--train-size 1000] [--val-size 1000] [--rho 0.99]
        [--temperatures 0.1 0.5] [--weights 0 0.5 1] [--methods cecl]

The objective is the online probe's unbiased accuracy on the validation split, which is unbiased
(rho 0.1) whatever the training rho, so colour cannot score on it. At a high training rho colour is
a shortcut during training; ``--rho 0.1`` makes colour uninformative in training too (a plain
digit-recognition sweep). At tiny sizes and few epochs the objective can be flat (configurations
tie, ASHA stops nothing decisive); the comparison then says the agreement is uninformative.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cecl.config import Params, parse_params  # noqa: E402
from cecl.tune import SweepSummary, init_ray, run_sweep  # noqa: E402

ENTRY = "bench"


def small_params(raw: dict, args: argparse.Namespace, scheduler: str) -> Params:
    """params.yaml with one BiasedMNIST entry at ``--rho`` and the small grid, for ``scheduler``."""
    grids: dict[str, dict[str, list[float]]] = {}
    for method in args.methods:
        grids[method] = {"temperature": args.temperatures}
        if method == "cecl":
            grids[method]["weight"] = args.weights
    raw = {**raw}
    raw["datasets"] = {
        ENTRY: {
            "family": "biased_mnist",
            "rho": args.rho,
            "train_size": args.train_size,
            "val_size": args.val_size,
            "test_size": 100,  # never loaded by the sweep
        }
    }
    raw["pretrain"] = {**raw["pretrain"], "datasets": [ENTRY]}
    raw["transfer"] = {"sources": [], "targets": []}
    raw["sweep"] = {
        **raw["sweep"],
        "dataset": ENTRY,
        "epochs": args.epochs,
        "train_size": None,  # the entry is prepared at --train-size
        "grids": grids,
        "scheduler": scheduler,
        "max_failures": 0,
    }
    return parse_params(raw, "benchmarks/sweep.py")


def best_configs(summary: SweepSummary) -> dict[str, tuple[float, float | None, float, int]]:
    """Per method: (temperature, weight, best validation objective, configurations tied at it)."""
    return {
        method: (best["temperature"], best.get("weight"), best["best_val_accuracy"], best["ties"])
        for method, best in summary.best["methods"].items()
    }


def describe(name: str, summary: SweepSummary) -> None:
    stopped = sum(o.stopped_early for o in summary.outcomes)
    print(
        f"{name:<10} trials {len(summary.outcomes):>2}  trial-epochs {summary.trial_epochs:>3}  "
        f"stopped early {stopped:>2}  wall {summary.seconds:6.1f}s"
    )
    metric = summary.best["metric"].replace("_", " ")
    for method, (tau, w, value, ties) in best_configs(summary).items():
        weight = "" if w is None else f" w={w:g}"
        tied = f"  ({ties} configurations tie)" if ties > 1 else ""
        print(f"{'':<10} best {method}: tau={tau:g}{weight}  val {metric} {100 * value:.2f}%{tied}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--val-size", type=int, default=1000)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.1, 0.5])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    parser.add_argument("--methods", nargs="+", default=["cecl"])
    parser.add_argument("--rho", type=float, default=0.99, help="training rho of the benchmark's entry")
    args = parser.parse_args()
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    runs = {name: small_params(raw, args, name) for name in ("asha", "none")}
    base = runs["asha"]
    spec = base.spec(ENTRY)
    with tempfile.TemporaryDirectory(prefix="cecl-sweep-bench-") as tmp:
        data_dir = Path(tmp) / "data" / ENTRY
        print(f"preparing {spec.describe()} into {data_dir}", flush=True)
        spec.prepare(data_dir)
        sweep = base.sweep
        print(
            f"grid: {', '.join(f'{m} {g}' for m, g in sweep.grids.items())}; "
            f"epochs {args.epochs}, {sweep.max_concurrent} concurrent trials x {sweep.cpus_per_trial:g} CPU; "
            f"ASHA grace_period {sweep.asha.grace_period}, reduction_factor {sweep.asha.reduction_factor:g}",
            flush=True,
        )
        started = time.perf_counter()
        init_ray(base)
        print(f"ray.init {time.perf_counter() - started:.1f}s", flush=True)
        summaries = {}
        for name, params in runs.items():
            storage = Path(tmp) / f"ray_results_{name}"
            summaries[name] = run_sweep(params, root=Path(tmp), data_dir=data_dir, storage=storage, verbose=0)
            summaries[name].raise_if_failed()
        print()
        describe("ASHA", summaries["asha"])
        describe("full grid", summaries["none"])
        asha, full = summaries["asha"], summaries["none"]
        print(
            f"ASHA / full grid: trial-epochs {asha.trial_epochs / full.trial_epochs:.2f}, "
            f"wall time {asha.seconds / full.seconds:.2f}"
        )
        for method, config in best_configs(full).items():
            agrees = best_configs(asha).get(method, (None,))[:2] == config[:2]
            note = f" (uninformative: {config[3]} configurations tie)" if config[3] > 1 else ""
            print(f"same best configuration for {method}: {'yes' if agrees else 'no'}{note}")


if __name__ == "__main__":
    main()
