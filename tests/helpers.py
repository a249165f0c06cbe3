"""Small builders shared by tests."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable

import torch

from cecl.config import Params, parse_params
from cecl.train.probe import TensorSplit


def tiny_params(**sections: dict) -> Params:
    """Defaults shrunk to seconds on a CPU; ``sections`` override top-level sections."""
    raw: dict = {
        "data": {"rhos": [0.99], "val_size": 64, "train_size": 128, "test_size": 64},
        "model": {"width": 4, "proj_dim": 16},
        "pretrain": {
            "epochs": 3,
            "batch_size": 32,
            "online_probe": {"epochs": 1, "batch_size": 64},
        },
        "probe": {"epochs": 3, "batch_size": 64},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return parse_params(raw)


def synthetic_split(n: int, seed: int) -> TensorSplit:
    """Random coloured 28x28 'images' whose label is encoded in the brightness of one quadrant."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.randint(0, 60, (n, 3, 28, 28), generator=g, dtype=torch.uint8)
    images[:, :, :14, :14] += (labels * 19).to(torch.uint8)[:, None, None, None]
    colours = torch.randint(0, 10, (n,), generator=g)
    return TensorSplit(images=images, labels=labels, colours=colours)


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


def join_process_group(process: int, world: int, port: int) -> None:
    """Set the environment torchrun would set for ``process`` and join the gloo group (one thread each)."""
    from cecl import distributed

    os.environ.update(
        RANK=str(process),
        LOCAL_RANK=str(process),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    assert distributed.init_from_env() and distributed.world_size() == world
    assert distributed.rank() == process


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
