"""Small builders shared by tests."""

from __future__ import annotations

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
