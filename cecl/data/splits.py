"""The in-memory split every loader, monitor and probe reads (:class:`TensorSplit`).

Plain data types below the dataset plug-ins: a plug-in builds them (cecl/datasets), the loaders and the
evaluation read them (cecl/data/streaming.py, cecl/eval), so neither of those imports the plug-ins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from cecl.datasets.store import Split


@dataclass(frozen=True)
class TensorSplit:
    """One split on a device: images uint8 [N, C, H, W], targets int64 [N], bias int64 [N] or None."""

    images: torch.Tensor
    targets: torch.Tensor
    bias: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def subset(self, index: torch.Tensor) -> TensorSplit:
        bias = None if self.bias is None else self.bias[index]
        return TensorSplit(self.images[index], self.targets[index], bias)

    @staticmethod
    def from_split(split: Split, device: torch.device) -> TensorSplit:
        bias = None if split.bias is None else torch.from_numpy(split.bias).to(device)
        return TensorSplit(
            torch.from_numpy(split.images).to(device), torch.from_numpy(split.targets).to(device), bias
        )
