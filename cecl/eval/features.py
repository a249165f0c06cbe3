"""Frozen-encoder features of a split: what the linear probe, the kNN monitor and the evaluators read.

Extraction runs in eval mode (BatchNorm running statistics: an image's features do not depend on the
batch it is in), under ``torch.inference_mode`` (no autograd bookkeeping at all) and, when training uses
one, under the training autocast (bf16 on a GPU halves the extraction's time and memory); features come
back as float32. In-memory splits are fed in bounded batches, streamed ones (ImageNet) batch by batch
from their workers, so only features are ever kept.

``sharded=True`` under torchrun: every process extracts its contiguous shard of the split
(``cecl.distributed.shard_bounds``) and the shards are all-gathered, so P GPUs extract P times faster
instead of rank 0 working while the others wait.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from cecl import distributed
from cecl.data.augment import to_float
from cecl.data.splits import TensorSplit
from cecl.data.streaming import BatchSource, TensorBatchSource

# Input elements (images x channels x pixels) of one feature-extraction forward: 2**24 floats = 64 MiB of
# input, 1024 images up to 3 x 64 x 64 (every dataset of the profiles: 1024 images per forward), 111
# ImageNet-sized 3 x 224 x 224 images, whose activations then stay a few GiB.
EXTRACT_ELEMENTS = 2**24


def extract_features(
    encoder: nn.Module, images: Tensor, batch_size: int = 1024, autocast: torch.dtype | None = None
) -> Tensor:
    """Float32 encoder outputs of uint8 images [N, C, H, W] in bounded batches (module docstring)."""
    per_image = max(1, images[0].numel()) if len(images) else 1
    batch = max(1, min(batch_size, EXTRACT_ELEMENTS // per_image))
    return _in_eval_mode(
        encoder,
        lambda: (to_float(images[i : i + batch]) for i in range(0, len(images), batch)),
        images.device,
        autocast,
    )


def features_of(
    encoder: nn.Module,
    source: BatchSource | TensorSplit,
    batch_size: int = 1024,
    autocast: torch.dtype | None = None,
    sharded: bool = False,
) -> Tensor:
    """Float32 features of every sample of ``source``, in index order (module docstring).

    ``sharded``: every process of a torchrun group must call it; each extracts its shard, all get all.
    """
    if isinstance(source, TensorBatchSource):
        source = source.split
    n = len(source)
    if sharded and distributed.is_distributed():
        start, stop = distributed.shard_bounds(n, distributed.rank(), distributed.world_size())
        mine = torch.arange(start, stop, device=source.targets.device)
        local = features_of(encoder, source.subset(mine), batch_size, autocast, sharded=False)
        return distributed.gather_shards(local, n)
    if isinstance(source, TensorSplit):
        return extract_features(encoder, source.images, batch_size, autocast)
    # buffers too: the raw-pixel floor's encoder has only its normalisation buffers (cecl/floors.py)
    device = next(itertools.chain(encoder.parameters(), encoder.buffers())).device
    return _in_eval_mode(
        encoder, lambda: (to_float(images) for images, _ in source.eval_batches(batch_size)), device, autocast
    )


def _in_eval_mode(
    encoder: nn.Module,
    batches: Callable[[], Iterable[Tensor]],
    device: torch.device,
    autocast: torch.dtype | None,
) -> Tensor:
    """``encoder`` over ``batches()`` (float inputs) in eval mode, inference mode and ``autocast``."""
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.inference_mode(), _autocast(device, autocast):
            chunks = [encoder(x).float() for x in batches()]
    finally:
        encoder.train(was_training)
    if not chunks:  # an empty split (or a process's empty shard of a tiny one)
        return torch.zeros(0, encoder.feature_dim, device=device)
    return torch.cat(chunks)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
