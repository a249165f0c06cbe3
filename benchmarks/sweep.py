"""ASHA versus the full grid on a small sweep: trial-epochs, wall time, and whether the best agrees.

Runs the same small grid twice on a local Ray (or RAY_ADDRESS's cluster), once with ASHA early
stopping and once with ``sweep.scheduler: none``, into a temporary folder (nothing in the project
changes, nothing is logged to MLflow). Uses params.yaml for everything else and the prepared
data/biased_mnist when present, else prepares the data into the temporary folder first.

    python benchmarks/sweep.py [--epochs 4] [--train-size 1000] [--temperatures 0.1 0.5]
        [--weights 0 0.5 1] [--methods cecl] [--rho 0.99]

At the pipeline's training rho (0.99) the validation split is biased like the training split, so
the online probe reaches ~rho from colour alone and the objective can be flat (every configuration
ties, ASHA stops nothing); ``--rho 0.1`` (colour carries no label information) shows ASHA at work.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cecl.config import Params, load_params  # noqa: E402
from cecl.paths import DATA_DIR  # noqa: E402
from cecl.tune import SweepSummary, init_ray, run_sweep  # noqa: E402


def small_params(base: Params, args: argparse.Namespace, scheduler: str) -> Params:
    grids: dict[str, dict[str, list[float]]] = {}
    for method in args.methods:
        grids[method] = {"temperature": args.temperatures}
        if method == "cecl":
            grids[method]["weight"] = args.weights
    sweep = base.sweep.model_copy(
        update={
            "rho": args.rho,
            "epochs": args.epochs,
            "train_size": args.train_size,
            "grids": grids,
            "scheduler": scheduler,
            "max_failures": 0,
        }
    )
    data = base.data.model_dump()
    if args.rho not in data["rhos"]:
        data["rhos"] = [args.rho]
    return Params.model_validate({**base.model_dump(), "data": data, "sweep": sweep.model_dump()})


def best_configs(summary: SweepSummary) -> dict[str, tuple[float, float | None, float, int]]:
    """Per method: (temperature, weight, best validation accuracy, configurations tied at it)."""
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
    for method, (tau, w, acc, ties) in best_configs(summary).items():
        weight = "" if w is None else f" w={w:g}"
        tied = f"  ({ties} configurations tie)" if ties > 1 else ""
        print(f"{'':<10} best {method}: tau={tau:g}{weight}  val acc {100 * acc:.2f}%{tied}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.1, 0.5])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    parser.add_argument("--methods", nargs="+", default=["cecl"])
    parser.add_argument("--rho", type=float, help="training (and validation) rho; default: sweep.rho")
    args = parser.parse_args()
    base = load_params(REPO / "params.yaml")
    args.rho = base.sweep.rho if args.rho is None else args.rho
    with tempfile.TemporaryDirectory(prefix="cecl-sweep-bench-") as tmp:
        runs = {name: small_params(base, args, name) for name in ("asha", "none")}
        data_dir = REPO / DATA_DIR
        if args.rho not in base.data.rhos or not (data_dir / "manifest.json").exists():
            from cecl.data.biased_mnist import prepare_biased_mnist

            data_dir = Path(tmp) / "data"
            print(f"preparing BiasedMNIST rho={args.rho:g} into {data_dir}", flush=True)
            prepare_biased_mnist(runs["asha"].data, data_dir)
        print(
            f"grid: {', '.join(f'{m} {g}' for m, g in runs['asha'].sweep.grids.items())}; "
            f"rho {args.rho:g}, epochs {args.epochs}, train_size {args.train_size}, "
            f"{base.sweep.max_concurrent} concurrent trials x {base.sweep.cpus_per_trial:g} CPU; "
            f"ASHA grace_period {base.sweep.asha.grace_period}, "
            f"reduction_factor {base.sweep.asha.reduction_factor:g}",
            flush=True,
        )
        started = time.perf_counter()
        init_ray(runs["asha"])
        print(f"ray.init {time.perf_counter() - started:.1f}s", flush=True)
        summaries = {}
        for name, params in runs.items():
            storage = Path(tmp) / f"ray_results_{name}"
            summaries[name] = run_sweep(params, root=Path(tmp), data_dir=data_dir, storage=storage, verbose=0)
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
