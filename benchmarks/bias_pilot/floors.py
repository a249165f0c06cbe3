"""The floors of the bias pilot (docs/bias-pilot.md): raw pixels and the untrained encoder of seed 0.

Run in the pilot's scratch clone after ``dvc repro probe`` (its params.yaml is benchmarks/bias_pilot/
params.yaml): ``python benchmarks/bias_pilot/floors.py a99 e6k5 f10k3``. Each floor is probed with the
final probe's protocol (cecl.eval.encoder.probe_encoder: L-BFGS, L2 selected on validation). The
pipeline's own floor stages (stages/floor.py) came later and compute the same two floors for every run.
"""

from __future__ import annotations

import sys
import time

import torch
from torch import nn

from cecl import runs
from cecl.config import load_params
from cecl.eval.encoder import probe_encoder
from cecl.pipeline import load_splits, run_setup
from cecl.train.loop import build_training


class Pixels(nn.Module):
    """Normalised, flattened pixels: what a linear probe reads without any encoder."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return ((images - self.mean) / self.std).flatten(1)


def main(entries: list[str]) -> None:
    params = load_params()
    for dataset in entries:
        spec = params.spec(dataset)
        splits = load_splits(spec, torch.device("cpu"))
        probe = params.recipe(dataset).probe
        untrained = build_training(run_setup(params, runs.RunKey(dataset, "cecl", 0)), torch.device("cpu"))
        for kind, encoder in (("pixels", Pixels(spec.mean, spec.std)), ("init", untrained.method.encoder)):
            started = time.perf_counter()
            result = probe_encoder(encoder, splits, spec.evaluator(), probe)
            print(dataset, kind, result.test, result.selected, f"{time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main(sys.argv[1:])
