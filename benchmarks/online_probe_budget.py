"""How much the per-epoch online probe's budget (epochs, lr, batch) changes what it reads, side by side.

Run from the repository root after ``make repro`` (it reads the prepared data): ``python
benchmarks/online_probe_budget.py bmnist_rho90:cecl:0 bmnist_rho90:ce:0 [--budgets 20:0.01:256 ...]``.

For each ``dataset:method:seed`` it pretrains once with params.yaml's recipe and, after every epoch,
probes that epoch's encoder with params.yaml's own online-probe budget and with every ``--budgets``
entry (``epochs:lr:batch``), on the same training subset and validation split. The online probe reads
the encoder only (frozen features, its own seeded generator), so the budgets see the same encoders and
the training is the one the pipeline's stage runs. Prints accuracy (%) per epoch and seconds per probe.
Nothing is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch
from pydantic import ValidationError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cecl.train.loop as loop  # noqa: E402
from cecl.config import load_params  # noqa: E402
from cecl.pipeline import RunSetup, load_splits, run_setup, training_source  # noqa: E402
from cecl.runs import RunKey  # noqa: E402

DEFAULT_BUDGETS = ("20:0.01:256", "50:0.05:256", "200:0.05:256", "200:0.1:1024")


def budget(text: str) -> tuple[int, float, int]:
    """``epochs:lr:batch`` -> its three values (an argparse type: bad input is a one-line error)."""
    try:
        epochs, lr, batch = text.split(":")
        return int(epochs), float(lr), int(batch)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"budget {text!r} is not epochs:lr:batch, e.g. 200:0.05:256"
        ) from None


def with_budget(setup: RunSetup, values: tuple[int, float, int]) -> RunSetup:
    """``setup`` with its online probe at ``values`` (validated like params.yaml's own)."""
    pretrain = setup.recipe.pretrain
    epochs, lr, batch_size = values
    fields = {**pretrain.online_probe.model_dump(), "epochs": epochs, "lr": lr, "batch_size": batch_size}
    probe = type(pretrain.online_probe)(**fields)
    recipe = dataclasses.replace(setup.recipe, pretrain=pretrain.model_copy(update={"online_probe": probe}))
    return dataclasses.replace(setup, recipe=recipe)


def run_key(text: str) -> RunKey:
    """``dataset:method:seed`` -> its RunKey (an argparse type)."""
    try:
        dataset, method, seed = text.split(":")
        return RunKey(dataset, method, int(seed))
    except ValueError:
        raise argparse.ArgumentTypeError(f"run {text!r} is not dataset:method:seed") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("runs", nargs="+", type=run_key, help="dataset:method:seed")
    parser.add_argument("--budgets", nargs="+", type=budget, default=None, help="epochs:lr:batch")
    args = parser.parse_args(argv)
    budgets = args.budgets or [budget(text) for text in DEFAULT_BUDGETS]
    names = [":".join(f"{v:g}" for v in values) for values in budgets]
    params = load_params()
    try:  # every run and budget checked before any training
        for key in args.runs:
            params.check_run(key)
        setups = [run_setup(params, key) for key in args.runs]
        for setup in setups:
            for values in budgets:
                with_budget(setup, values)
    except ValidationError as err:
        first = err.errors()[0]
        parser.error(f"--budgets: online_probe.{first['loc'][0]}: {first['msg']}")
    except ValueError as err:
        parser.error(str(err).splitlines()[0])
    device = torch.device("cpu")
    pipeline_probe = loop.online_probe_accuracy
    for setup in setups:
        spec = f"{setup.key.dataset}:{setup.key.method}:{setup.key.seed}"
        readings: list[list[tuple[float, float]]] = []

        # The loop's own probe call, followed by the same probe at each budget on the same encoder.
        def probed(method_, setup_, train, val, probe_seed, readings=readings):
            accuracy = pipeline_probe(method_, setup_, train, val, probe_seed)
            row = []
            for values in budgets:
                started = time.perf_counter()
                value = pipeline_probe(method_, with_budget(setup_, values), train, val, probe_seed)
                row.append((value, time.perf_counter() - started))
            readings.append(row)
            return accuracy

        loop.online_probe_accuracy = probed
        try:
            val = load_splits(setup.spec, device, ("val",))["val"]
            _, history = loop.run_pretraining(
                setup, training_source(setup, device), val, device, fingerprint="bench", progress=False
            )
        finally:
            loop.online_probe_accuracy = pipeline_probe
        own = setup.recipe.pretrain.online_probe
        print(f"{spec}: accuracy (%) per epoch; params.yaml's is {own.epochs}:{own.lr:g}:{own.batch_size}")
        print(f"{'budget':<16}" + "".join(f"{r.epoch:>7}" for r in history) + "  s/probe")
        print(f"{'params.yaml':<16}" + "".join(f"{100 * r.online_probe_val_accuracy:7.1f}" for r in history))
        for i, name in enumerate(names):
            cells = "".join(f"{100 * row[i][0]:7.1f}" for row in readings)
            seconds = sum(row[i][1] for row in readings) / len(readings)
            print(f"{name:<16}{cells}  {seconds:7.2f}")


if __name__ == "__main__":
    main()
