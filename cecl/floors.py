"""The floors every pretrained encoder must beat, probed with exactly the final probe's protocol.

- ``pixels``: the raw pixels, normalised per channel as every encoder normalises them, flattened: a
  linear classifier on the images themselves (one per dataset entry; nothing is trained, no seed).
- ``init``: the untrained encoder a seed's pretraining starts from. :func:`initial_encoder` seeds torch's
  global generator with the seed and builds the encoder with ``cecl.pipeline.build_encoder``, exactly as
  ``cecl.train.loop.build_training`` does before a method builds its encoder first
  (tests/test_floors.py checks the weights equal those of every method's untrained encoder at that seed).

:func:`evaluate_floor` is the floor stage's one call. Both floors go through
:func:`cecl.eval.encoder.probe_encoder`, the probe stage's call: the same features
extraction, the same L2 grid selected on validation, the same test scoring. A method that does not
beat its floors has learned nothing a linear classifier on the pixels (or a random network) does not
already give.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cecl import runs
from cecl.config import Params
from cecl.eval.encoder import Splits, probe_encoder
from cecl.eval.linear_probe import ProbeResult
from cecl.io import ensure_writable
from cecl.machine import machine_info
from cecl.models import Encoder
from cecl.pipeline import build_encoder, load_splits
from cecl.records import metrics_record, run_record, write_evaluation
from cecl.tracking import stage_run
from cecl.train.device import AUTOCAST_DTYPES, resolve_device

# Features a pixel floor may have: the probe's [D, K] weights and the [N, D] float64 standardised copy must
# stay small. 3 x 64 x 64 (every 64-pixel dataset of the profiles) passes; ImageNet at 224 x 224 does not.
MAX_PIXEL_FEATURES = 3 * 64 * 64


def floor_keys(params: Params) -> list[runs.FloorKey]:
    """Every floor of ``params``: pixels per pretraining entry, then init per entry x seed."""
    return params.floors()


def check_floor(params: Params, key: runs.FloorKey) -> None:
    """A one-line error for a floor params.yaml does not define, before any data is read."""
    if key.dataset not in params.pretrain.datasets:
        raise ValueError(
            f"dataset {key.dataset!r} is not in params.yaml pretrain.datasets {params.pretrain.datasets}"
        )
    if key.seed is not None and key.seed not in params.seeds:
        raise ValueError(f"seed {key.seed} is not in params.yaml seeds {params.seeds}")


def pixel_side(channels: int, image_size: tuple[int, int]) -> int | None:
    """The side the pixels are average-pooled to when channels x H x W is over MAX_PIXEL_FEATURES (ImageNet
    at 224 px: 64, so 3 x 64 x 64 features), else None: the pixels as they are."""
    if channels * math.prod(image_size) <= MAX_PIXEL_FEATURES:
        return None
    return math.isqrt(MAX_PIXEL_FEATURES // channels)


def pixel_encoder(params: Params, dataset: str) -> Encoder:
    """The identity "encoder": the entry's per-channel normalisation, then flattening (larger images
    average-pooled to ``pixel_side`` first, so the probe's float64 copy stays small)."""
    spec = params.spec(dataset)
    side = pixel_side(spec.channels, spec.image_size)
    if side is None:
        features = spec.channels * math.prod(spec.image_size)
        identity = {"backbone": "pixels", "in_channels": spec.channels, "options": {}}
        return Encoder(nn.Flatten(), features, spec.mean, spec.std, identity)
    identity = {"backbone": "pixels", "in_channels": spec.channels, "options": {"pooled_to": side}}
    pooled = nn.Sequential(nn.AdaptiveAvgPool2d(side), nn.Flatten())
    return Encoder(pooled, spec.channels * side * side, spec.mean, spec.std, identity)


def initial_encoder(params: Params, dataset: str, seed: int) -> Encoder:
    """The encoder pretraining at ``seed`` starts from: the seeded generator, then the one construction."""
    torch.manual_seed(seed)  # as cecl.train.loop.build_training seeds before building the method
    recipe = params.recipe(dataset)
    return build_encoder(params.spec(dataset), recipe.model, params.compute)


def floor_encoder(params: Params, key: runs.FloorKey) -> Encoder:
    if key.kind == "pixels":
        return pixel_encoder(params, key.dataset)
    assert key.seed is not None  # FloorKey checks it
    return initial_encoder(params, key.dataset, key.seed)


def probe_floor(
    params: Params,
    key: runs.FloorKey,
    splits: Splits,
    device: torch.device,
    progress: Callable[[str], None] | None = None,
    autocast: torch.dtype | None = None,
) -> ProbeResult:
    """The final probe of ``key``'s floor on ``splits`` (train, val, test) of its dataset entry."""
    spec = params.spec(key.dataset)
    encoder = floor_encoder(params, key).to(device)
    return probe_encoder(
        encoder, splits, spec.evaluator(), params.recipe(key.dataset).probe, progress, autocast
    )


def floor_config(params: Params, key: runs.FloorKey) -> dict[str, Any]:
    """metrics.json's ``config`` of a floor: what defines its features (the model for init)."""
    if key.kind == "pixels":
        spec = params.spec(key.dataset)
        side = pixel_side(spec.channels, spec.image_size)
        return {"features": "pixels"} if side is None else {"features": "pixels", "pooled_to": side}
    return {"features": "init", "model": params.recipe(key.dataset).model.model_dump()}


def evaluate_floor(params: Params, key: runs.FloorKey) -> None:
    """Probe the floor ``key``; write its metrics.json (the probe's schema, cecl/records.py) and curve.csv
    to ``key.out_dir``: the floor stage's one library call."""
    check_floor(params, key)
    spec = params.spec(key.dataset)
    out = key.out_dir
    ensure_writable(out)
    device = resolve_device(params.device)
    name = key.stage()
    probe_params = params.recipe(key.dataset).probe
    verified = spec.data_verified(runs.data_dir(key.dataset))
    tags = {
        "dataset": key.dataset,
        "floor": key.kind,
        "seed": "" if key.seed is None else str(key.seed),
        "family": spec.family,
        "device": str(device),
        "data_verified": verified,
    }
    logged = {"probe": probe_params.model_dump(), "protocol": "linear_probe"}
    with stage_run(name, params.tracking.experiment, logged, tags) as run:
        splits = load_splits(spec, device)
        print(f"[{name}] probing the {key.kind} floor on {spec.describe()}", flush=True)
        autocast = params.compute.autocast
        result = probe_floor(
            params,
            key,
            splits,
            device,
            progress=lambda line: print(f"[{name}] {line}", flush=True),
            autocast=AUTOCAST_DTYPES[autocast] if autocast else None,
        )
        run.log_curve(result.curve, step="grid_index")
        evaluator = spec.evaluator()
        metrics = metrics_record(  # the probe's schema: the report reads floors as it reads probes
            run=run_record(
                stage=name,
                kind="floor",
                dataset=key.dataset,
                family=spec.family,
                method=key.kind,
                seed=key.seed,
            ),
            evaluator=evaluator.name,
            declared=evaluator.metrics,
            primary=evaluator.primary,
            protocol="linear_probe",
            val_description=spec.val_description(),
            data_verified=verified,
            result=result,
            config=floor_config(params, key),
            machine={"pretrain": None, "probe": machine_info()},
        )
        write_evaluation(out, metrics, result.curve)
        run.log_metrics({f"selected_test_{k}": v for k, v in result.test.items()})
        run.record_outputs(out)
        run.log_artifact(out)
        print(f"[{name}] test {result.test} ({result.selected}, selected on validation)", flush=True)
