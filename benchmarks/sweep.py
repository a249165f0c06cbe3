"""ASHA versus the full grid on a small sweep: trial-epochs, images trained, wall time, agreement.

Runs a grid twice on a local Ray (or RAY_ADDRESS's cluster), once with ASHA early stopping and once
with ``sweep.scheduler: none``, into a temporary folder (nothing in the project changes, nothing is
logged to MLflow). It prepares its own BiasedMNIST entry (``bench``) into that folder and uses
params.yaml for everything else (model, pretraining recipe, method options, ASHA settings, resources).
Both runs compare configurations as the sweep stage does: by the last-epoch validation value of the
trials that ran the whole budget (cecl/tune/runner.py ``best_per_method``); ASHA's stopped trials are
not compared.

    python benchmarks/sweep.py [--epochs 4] [--train-size 1000] [--val-size 1000] [--rho 0.99]
        [--temperatures 0.1 0.5] [--weights 0 0.5 1] [--methods cecl]
    python benchmarks/sweep.py --default   # params.yaml's full grid against the old default (ASHA,
                                           # 6 epochs on 4 000 images): cost and the selection

ASHA "finds" the best configuration when the configuration it picks scores, in the full grid's run,
within the 95% interval of the grid's best validation value (normal approximation of a proportion on
the validation split's n images; the unbiased objective is a mean of group accuracies, so this is an
approximation, stated as such). With ``--default`` the two runs train to different budgets, so the
comparison says whether the cheap full grid picks what the old default picked.

The objective is the online probe's unbiased accuracy on the validation split, which is unbiased
(rho 0.1) whatever the training rho, so colour cannot score on it. At a high training rho colour is
a shortcut during training; ``--rho 0.1`` makes colour uninformative in training too (a plain
digit-recognition sweep). At tiny sizes and few epochs the objective can be flat (configurations
tie, ASHA stops nothing decisive); the comparison then says the agreement is uninformative.
"""

from __future__ import annotations

import argparse
import math
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


# The CPU default's sweep before issue 31: ASHA (grace 1, reduction 3, one trial at a time), 6 epochs on a
# 4 000-image subsample, best value over epochs. Its heat map's shape came from grid order.
OLD_DEFAULT = {"scheduler": "asha", "epochs": 6, "train_size": 4000}


def default_params(raw: dict, scheduler: str) -> Params:
    """params.yaml's sweep (entry, grid, epochs, train_size) for ``none``; the old default for ``asha``."""
    sweep = {**raw["sweep"], **(OLD_DEFAULT if scheduler == "asha" else {"scheduler": scheduler})}
    raw = {**raw, "transfer": {"sources": [], "targets": []}}
    raw["pretrain"] = {**raw["pretrain"], "datasets": [sweep["dataset"]]}
    raw["datasets"] = {sweep["dataset"]: raw["datasets"][sweep["dataset"]]}
    raw["sweep"] = {**sweep, "max_failures": 0}
    return parse_params(raw, "benchmarks/sweep.py")


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
    """Per method: (temperature, weight, last-epoch validation objective, configurations tied at it)."""
    return {
        method: (best["temperature"], best.get("weight"), best["final_val_accuracy"], best["ties"])
        for method, best in summary.best["methods"].items()
    }


def describe(name: str, summary: SweepSummary, images: int) -> None:
    stopped = sum(o.stopped_early for o in summary.outcomes)
    print(
        f"{name:<10} trials {len(summary.outcomes):>2}  trial-epochs {summary.trial_epochs:>3}  "
        f"images trained {summary.trial_epochs * images:>7}  stopped early {stopped:>2}  "
        f"wall {summary.seconds:6.1f}s"
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
    parser.add_argument("--default", action="store_true", help="params.yaml's sweep instead of the options")
    args = parser.parse_args()
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    if args.default:
        runs = {name: default_params(raw, name) for name in ("asha", "none")}
    else:
        runs = {name: small_params(raw, args, name) for name in ("asha", "none")}
    base = runs["asha"]
    entry = base.sweep.dataset
    spec = base.spec(entry)
    with tempfile.TemporaryDirectory(prefix="cecl-sweep-bench-") as tmp:
        data_dir = Path(tmp) / "data" / entry
        print(f"preparing {spec.describe()} into {data_dir}", flush=True)
        spec.prepare(data_dir)
        sweep = base.sweep
        print(
            f"grid: {', '.join(f'{m} {g}' for m, g in sweep.grids.items())}; "
            f"epochs {sweep.epochs}, {sweep.max_concurrent} trials at once x {sweep.cpus_per_trial:g} CPU; "
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
        n_train = spec.expected_sizes()["train"]
        images = {k: min(n_train, p.sweep.train_size or n_train) for k, p in runs.items()}
        describe(f"ASHA {runs['asha'].sweep.epochs} ep", summaries["asha"], images["asha"])
        describe(f"grid {runs['none'].sweep.epochs} ep", summaries["none"], images["none"])
        asha, full = summaries["asha"], summaries["none"]
        print(
            f"ASHA / full grid: trial-epochs {asha.trial_epochs / full.trial_epochs:.2f}, "
            f"wall time {asha.seconds / full.seconds:.2f}"
        )
        n_val = len(spec.load(data_dir, "val"))
        for method, config in best_configs(full).items():
            agrees = best_configs(asha).get(method, (None,))[:2] == config[:2]
            note = f" (uninformative: {config[3]} configurations tie)" if config[3] > 1 else ""
            print(f"same best configuration for {method}: {'yes' if agrees else 'no'}{note}")
            print(within_ci(method, asha, full, n_val))


def within_ci(method: str, asha: SweepSummary, full: SweepSummary, n_val: int) -> str:
    """Whether ASHA's pick scores, in the full grid, within the 95% interval of the grid's best."""
    grid = {(o.temperature, o.weight): o.final_val_accuracy for o in full.outcomes if o.method == method}
    best = best_configs(full)[method][2]
    pick = best_configs(asha).get(method)
    if pick is None or grid.get(pick[:2]) is None:
        return f"{method}: ASHA picked no configuration the full grid scored"
    half = 1.96 * math.sqrt(max(best * (1 - best), 1e-12) / n_val)
    value = grid[pick[:2]]
    verdict = "within" if best - value <= half else "outside"
    return (
        f"{method}: ASHA's pick (tau={pick[0]:g}, w={pick[1]}) scores {100 * value:.2f}% in the full grid; "
        f"grid best {100 * best:.2f}% +- {100 * half:.2f} (95%, n={n_val}): {verdict} the interval"
    )


if __name__ == "__main__":
    main()
