"""DVC stage floor-pixels@{dataset} / floor-init@{dataset}-{seed}: a floor probed like every encoder.

Writes floors/{dataset}/pixels or floors/{dataset}/init/seed_{seed}/{metrics.json, curve.csv} in the probe
stage's schema (``run.kind`` "floor", ``run.method`` "pixels" or "init", ``run.seed`` null for pixels,
no pretraining stage): the raw pixels or the untrained encoder a seed's pretraining starts from, probed
by cecl/floors.py with the final probe's protocol. The report places every method against them.
"""

from __future__ import annotations

import argparse

from cecl import runs
from cecl.cli import run_stage
from cecl.config import load_params
from cecl.floors import evaluate_floor
from cecl.train.device import compute_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="a pretraining entry of params.yaml")
    parser.add_argument("--kind", required=True, choices=runs.FLOOR_KINDS)
    parser.add_argument("--seed", type=int, default=None, help="init floors only: the training seed")
    args = parser.parse_args()
    try:
        key = runs.FloorKey(args.dataset, args.kind, args.seed)
    except ValueError as err:
        parser.error(str(err))

    def body() -> None:
        params = load_params()
        with compute_threads(params.compute):
            evaluate_floor(params, key)

    run_stage(key.stage(), body)


if __name__ == "__main__":
    main()
