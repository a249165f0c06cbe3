"""Small builders shared by tests."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cecl.config import Params, parse_params
from cecl.datasets import TensorSplit
from cecl.methods import options_schemas
from cecl.models import Encoder
from cecl.pipeline import RunSetup, run_setup
from cecl.runs import RunKey

DATASET = "bm"  # the one dataset entry of ``tiny_params``


def _merge(base: Mapping, update: Mapping) -> dict:
    """``base`` with ``update`` merged in, recursively for mappings (other values are replaced)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def tiny_params(**sections: dict) -> Params:
    """A valid params file shrunk to seconds on a CPU: one BiasedMNIST entry ``bm``, a width-4 small CNN.

    ``sections`` override top-level sections, merged into the defaults below (nested mappings too, so
    ``pretrain={"monitor": {"every": 2}}`` keeps the other monitor keys).
    Every known method in ``pretrain.methods`` without a ``method_options`` section gets ``{}`` (its
    defaults), as the config requires a section for each.
    """
    raw: dict = {
        "seeds": [0],
        "datasets": {
            DATASET: {
                "family": "biased_mnist",
                "rho": 0.99,
                "train_size": 128,
                "val_size": 64,
                "test_size": 64,
            }
        },
        "model": {"backbone": "small_cnn", "backbone_options": {"width": 4}, "proj_dim": 16},
        "pretrain": {
            "datasets": [DATASET],
            "methods": ["ce", "simclr", "supcon", "cecl"],
            "epochs": 3,
            "batch_size": 32,
            "monitor": {"kind": "knn", "k": 20},
        },
        "probe": {"l2_per_decade": 1, "patience": None},  # the whole grid (tests count its rows)
        "sweep": {"dataset": DATASET},
    }
    merged = _merge(raw, sections)
    # The config wants a method_options section for every method in pretrain.methods (dvc.yaml tracks
    # them); a test that lists methods gets their defaults unless it passes a section itself.
    methods = merged["pretrain"].get("methods") if isinstance(merged.get("pretrain"), Mapping) else None
    options = merged.get("method_options")
    if isinstance(methods, list) and isinstance(options, Mapping | None):
        known = options_schemas()
        defaults = {m: {} for m in methods if isinstance(m, str) and m in known}
        merged["method_options"] = {**defaults, **(options or {})}  # a copy: the caller's dict is kept
    return parse_params(merged)


def tiny_setup(
    method: str, params: Params | None = None, seed: int = 0, overrides: dict | None = None
) -> RunSetup:
    """The RunSetup of ``method`` on the ``bm`` entry of ``params`` (default: ``tiny_params()``)."""
    return run_setup(params or tiny_params(), RunKey(DATASET, method, seed), overrides)


def synthetic_split(n: int, seed: int) -> TensorSplit:
    """Random coloured 28x28 'images' whose target is encoded in the brightness of one quadrant."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, 10, (n,), generator=g)
    images = torch.randint(0, 60, (n, 3, 28, 28), generator=g, dtype=torch.uint8)
    images[:, :, :14, :14] += (targets * 19).to(torch.uint8)[:, None, None, None]
    bias = torch.randint(0, 10, (n,), generator=g)
    return TensorSplit(images=images, targets=targets, bias=bias)


class GlobalAvgPool(nn.Module):
    """[B, C, H, W] -> [B, C]: mean over the spatial dimensions (as the registered backbones pool)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def bn_free_encoder(
    in_channels: int = 3,
    width: int = 4,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Encoder:
    """A BatchNorm-free conv encoder (conv, tanh, global average pool): ``width`` features.

    Per-process BatchNorm statistics would break the two-process exactness tests by design. mean = std =
    0.5 per channel is the old encoders' built-in ``x * 2 - 1``.
    """
    trunk = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.Tanh(), GlobalAvgPool())
    spec = {"backbone": "test_bn_free", "in_channels": in_channels, "options": {"width": width}}
    mean = [0.5] * in_channels if mean is None else list(mean)
    std = [0.5] * in_channels if std is None else list(std)
    return Encoder(trunk, width, mean, std, spec)


def adam_steps(
    method: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], lr: float
) -> list[float]:
    """Train ``method`` (a cecl Method) with Adam, one step per (views, labels) batch; the loss history."""
    optimizer = torch.optim.Adam(method.parameters(), lr=lr)
    history = []
    for views, labels in batches:
        loss = method.training_loss(views, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_step()
        history.append(float(loss.detach()))
    return history


# --------------------------------------------------------------------------- two-process (gloo) tests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def join_process_group(
    process: int, world: int, port: int, device: str = "cpu", backend: str | None = None
) -> None:
    """Set the environment torchrun would set for ``process`` and join the group for training on
    ``device`` (the pipeline's backend for it, or ``backend``; one thread each)."""
    import torch.distributed as dist

    from cecl import distributed

    os.environ.update(
        RANK=str(process),
        LOCAL_RANK=str(process),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    if backend is None:
        assert distributed.init_from_env(torch.device(device))
    else:
        dist.init_process_group(backend, init_method="env://")
    assert distributed.world_size() == world and distributed.rank() == process


def split_on(split: TensorSplit, device: torch.device) -> TensorSplit:
    """``split`` with its tensors on ``device``, as the pretrain stage loads its splits."""
    bias = None if split.bias is None else split.bias.to(device)
    return TensorSplit(split.images.to(device), split.targets.to(device), bias)


def train_tiny(
    method: str,
    batch_size: int,
    checkpoint: Path,
    device: torch.device,
    compute: Mapping | None = None,
    on_epoch: Callable[[Any], None] | None = None,
) -> dict:
    """Two epochs of ``run_pretraining`` of ``method`` on fixed synthetic splits on ``device``, as the
    pretrain stage runs it (in each torchrun process, or alone; ``compute`` overrides params' section):
    losses, monitor accuracies, state (on the CPU), module types, and whether this process wrote the
    checkpoint."""
    from cecl.train.loop import run_pretraining

    params = tiny_params(
        pretrain={"epochs": 2, "batch_size": batch_size, "monitor": {"kind": "knn", "k": 20}},
        method_options={"supmoco": {"queue_size": 48}},
        **({"compute": dict(compute)} if compute else {}),
    )
    trained, history = run_pretraining(
        tiny_setup(method, params),
        split_on(synthetic_split(128, seed=1), device),
        split_on(synthetic_split(64, seed=2), device),
        device,
        fingerprint="test",
        checkpoint_path=checkpoint,
        on_epoch=on_epoch,
        progress=False,
    )
    return {
        "losses": [r.train_loss for r in history],
        "accuracies": [r.monitor_val_accuracy for r in history],
        "state": {k: v.detach().cpu().clone() for k, v in trained.state_dict().items()},
        "modules": sorted({type(m).__name__ for m in trained.modules()}),
        "checkpoint_written": checkpoint.exists(),
    }


def one_step(
    method: torch.nn.Module, loss_module: torch.nn.Module, views: torch.Tensor, labels: torch.Tensor
) -> dict:
    """Loss, parameter gradients, then one SGD step + after_step; returns everything to compare."""
    loss = loss_module(views, labels)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in method.named_parameters() if p.requires_grad}
    torch.optim.SGD(method.parameters(), lr=0.5).step()
    method.after_step()
    state = {k: v.detach().clone() for k, v in method.state_dict().items()}
    return {"loss": loss.detach().clone(), "grads": grads, "state": state}


def max_diff(a: dict, b: dict) -> float:
    """Largest absolute difference between two dicts of tensors with the same keys."""
    assert a.keys() == b.keys()
    return max((float((a[k].double() - b[k].double()).abs().max()) for k in a), default=0.0)


def sharded_step(method: torch.nn.Module, views: torch.Tensor, labels: torch.Tensor) -> dict:
    """``one_step`` as one torchrun process does it: this rank's shard of the global batch, under DDP."""
    from torch.nn.parallel import DistributedDataParallel

    from cecl import distributed

    ddp = DistributedDataParallel(distributed.TrainingLoss(method))
    local_views, local_labels = distributed.split_batch([views, labels])
    return {**one_step(method, ddp, local_views, local_labels), "local_size": local_views.shape[0]}


def committed(root: Path, path: str) -> str:
    """``path`` as committed (``git show HEAD:<path>``), else the file. The invariant "params.yaml is the
    CPU profile" is checked on the commit (what CI's clean clone has), so a user's uncommitted edits to
    params.yaml never fail ``make test``."""
    import subprocess

    shown = subprocess.run(
        ["git", "show", f"HEAD:{path}"], cwd=root, capture_output=True, text=True, check=False
    )
    return shown.stdout if shown.returncode == 0 else (root / path).read_text()


def bn_free_make_encoder(setup: RunSetup) -> Encoder:
    """``RunSetup.make_encoder`` with a BatchNorm-free trunk of the recipe's width and the spec's stats
    (per-process BatchNorm statistics would break the two-process exactness tests by design)."""
    width = setup.recipe.model.options().width
    return bn_free_encoder(setup.spec.channels, width=width, mean=setup.spec.mean, std=setup.spec.std)


def run_bn_free_rank(
    process: int, world: int, port: int, out_dir: Path, runs: Callable[[], dict[str, Any]]
) -> None:
    """One spawned process of a multi-process exactness test: join the gloo group, call ``runs()`` with
    BatchNorm-free encoders (``bn_free_make_encoder``), leave the group, save the results as
    ``out_dir/rank{process}.pt`` for the parent to compare with one process."""
    import pytest

    from cecl import distributed

    join_process_group(process, world, port)
    try:
        with pytest.MonkeyPatch.context() as patch:  # this spawned process, for the duration of the runs
            patch.setattr(RunSetup, "make_encoder", bn_free_make_encoder)
            results = runs()
    finally:
        distributed.cleanup()
    torch.save(results, out_dir / f"rank{process}.pt")


def spawn_ranks(worker: Callable[[int, str, int], None], out_dir: Path, world: int) -> list[dict[str, Any]]:
    """Run ``worker(process, str(out_dir), port)`` in ``world`` spawned processes (``run_bn_free_rank``
    saves each one's results); returns them in rank order."""
    import torch.multiprocessing as mp

    mp.spawn(worker, args=(str(out_dir), free_port()), nprocs=world, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(world)]
