"""Batch sources: what the training loop and the probes draw batches from, in memory or streamed.

The loop's contract (cecl/train/loop.py) is that the global batch is the unit: epoch ``e`` is one
permutation seeded by ``(seed, e)``, cut into ``steps(batch_size)`` full global batches (the last
incomplete one dropped), and with P ranks each rank keeps its contiguous shard of every global batch
(``cecl.distributed.shard_bounds``). Both sources below keep that contract, so exact resume (epoch e
depends only on (seed, e)) and exact multi-process training carry over:

* :class:`TensorBatchSource` wraps an in-memory :class:`~cecl.datasets.TensorSplit` and reproduces the
  loop's current numbers exactly (same generator, same permutation, same on-device augmentation of the
  whole global batch, then the shard).
* :class:`StreamingSource` serves an image folder (ImageNet: 140+ GB) without ever holding it:
  ``torch.utils.data.DataLoader`` worker processes read, decode (PIL) and augment each image on CPU
  with torchvision's transforms v2 and deliver uint8 batches; only about ``workers x prefetch_factor``
  batches exist at any time. Each rank decodes only its own shard. The randomness of a sample's views
  is seeded by ``(seed, epoch, sample index)``, never by a worker's or a rank's state, so the bytes do
  not depend on the number of workers, the number of ranks, or the epoch a run resumed at.

:func:`features_of` extracts frozen features from either source in batches under ``no_grad``, for the
probes (bounded memory: only the features are kept).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from cecl import distributed
from cecl.data.augment import AugmentParams, BatchAugment, make_views, to_float
from cecl.datasets.base import TensorSplit
from cecl.datasets.errors import DataIntegrityError
from cecl.datasets.sources.images import decode_rgb
from cecl.datasets.splitting import seeded_rng

if TYPE_CHECKING:
    from PIL import Image

    from cecl.datasets.base import DatasetSpec

Batch = tuple[Tensor, Tensor]  # (views float [b, V, C, H, W] in [0, 1] | images uint8 [b, C, H, W], targets)
_EVAL_EPOCH = -1  # the key of an un-augmented (evaluation transform) read


# ----------------------------------------------------------------------------- seeds


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """The loop's generator of epoch ``epoch`` (the same formula as loop.py's ``_epoch_generator``)."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The streaming source's permutation of ``n`` samples for epoch ``epoch`` (seeded by (seed, epoch))."""
    return seeded_rng(seed, "streaming epoch order", epoch).permutation(n)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of sample ``index``'s augmentations in epoch ``epoch``: a 63-bit SHA-256 of the three."""
    text = f"{seed}:{epoch}:{index}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


@contextmanager
def seeded_cpu_rng(seed: int) -> Iterator[None]:
    """Run torchvision's random transforms (which draw from torch's global CPU generator) from ``seed``,
    restoring the global state afterwards.

    Hand-written instead of ``torch.random.fork_rng`` + ``torch.manual_seed``: ``manual_seed`` also
    reseeds every CUDA generator, which with ``workers: 0`` (decoding in the training process) would
    change the training's CUDA random stream; only the CPU default generator is touched here.
    """
    generator = torch.default_generator
    state = generator.get_state()
    generator.manual_seed(seed)
    try:
        yield
    finally:
        generator.set_state(state)


# ----------------------------------------------------------------------------- the interface


@runtime_checkable
class BatchSource(Protocol):
    """What the loop and the probes need from a split (in memory or streamed).

    ``epoch_batches`` yields, for this rank, ``steps(batch_size)`` pairs (views float [b, V, C, H, W] in
    [0, 1], targets int64 [b]) on the source's device: its contiguous shard of each global batch of
    epoch ``epoch``. ``eval_batches`` yields every sample once, in index order, un-augmented (uint8
    [b, C, H, W], targets), for feature extraction.
    """

    @property
    def targets(self) -> Tensor: ...

    @property
    def bias(self) -> Tensor | None: ...

    def __len__(self) -> int: ...

    def steps(self, batch_size: int) -> int: ...

    def epoch_batches(
        self,
        epoch: int,
        batch_size: int,
        n_views: int,
        augment: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> Iterator[Batch]: ...

    def eval_batches(self, batch_size: int) -> Iterator[Batch]: ...

    def subset(self, index: Tensor) -> BatchSource: ...


def full_batches(n: int, batch_size: int) -> tuple[int, int]:
    """(effective batch size, steps): the loop's rule, the batch capped at ``n``, the last one dropped."""
    if n < 1:
        raise ValueError("a batch source needs at least one sample")
    size = min(batch_size, n)
    return size, n // size


# ----------------------------------------------------------------------------- in memory


class TensorBatchSource:
    """A TensorSplit served as the loop serves it today, bit for bit.

    Epoch ``e``: ``epoch_generator(seed, e)`` draws the permutation on the split's device, then, batch
    by batch, the augmentation of the whole global batch (``make_views``), which is then sharded; the
    generator is consumed in exactly the loop's order because the batches are produced lazily.
    """

    def __init__(self, split: TensorSplit, seed: int, augment: BatchAugment | None) -> None:
        self.split = split
        self.seed = seed
        self.augment = augment

    @property
    def targets(self) -> Tensor:
        return self.split.targets

    @property
    def bias(self) -> Tensor | None:
        return self.split.bias

    @property
    def device(self) -> torch.device:
        return self.split.images.device

    def __len__(self) -> int:
        return len(self.split)

    def steps(self, batch_size: int) -> int:
        return full_batches(len(self), batch_size)[1]

    def epoch_batches(
        self,
        epoch: int,
        batch_size: int,
        n_views: int,
        augment: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> Iterator[Batch]:
        size, steps = full_batches(len(self), batch_size)
        generator = epoch_generator(self.seed, epoch, self.device)
        order = torch.randperm(len(self), generator=generator, device=self.device)
        for step in range(steps):
            idx = order[step * size : (step + 1) * size]
            views = make_views(self.split.images[idx], n_views, self.augment if augment else None, generator)
            # The whole global batch is augmented (same generator in every process), then sharded.
            shard = distributed.split_batch([views, self.split.targets[idx]], rank, world_size)
            yield shard[0], shard[1]

    def eval_batches(self, batch_size: int) -> Iterator[Batch]:
        for start in range(0, len(self), batch_size):
            yield (
                self.split.images[start : start + batch_size],
                self.split.targets[start : start + batch_size],
            )

    def subset(self, index: Tensor) -> TensorBatchSource:
        return TensorBatchSource(self.split.subset(index), self.seed, self.augment)


# ----------------------------------------------------------------------------- streamed from files


@dataclass(frozen=True)
class FolderIndex:
    """The files of one split: paths relative to ``root``, labels, and sizes in bytes (checked on read).

    Paths are one numpy bytes array, not a list of str: DataLoader workers are forked, and touching
    millions of Python objects (their reference counts) copies their pages into every worker, the
    well-known slow memory growth of list-backed datasets; a numpy array has no per-item objects.
    """

    root: Path
    paths: np.ndarray  # bytes (dtype S), UTF-8 encoded relative paths
    targets: np.ndarray  # int64 [N]
    sizes: np.ndarray  # int64 [N]

    def __post_init__(self) -> None:
        n = len(self.paths)
        if self.paths.dtype.kind != "S" or self.targets.shape != (n,) or self.sizes.shape != (n,):
            raise ValueError("FolderIndex: paths (bytes), targets and sizes must be 1-D and of equal length")

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, index: int) -> Path:
        return self.root / self.paths[index].decode()

    def subset(self, index: np.ndarray) -> FolderIndex:
        return FolderIndex(self.root, self.paths[index], self.targets[index], self.sizes[index])


@dataclass(frozen=True)
class ImageTransforms:
    """The per-image CPU transforms of a streamed split (torchvision transforms v2 on PIL images).

    Training views: SupContrast's pipeline in torchvision's own transforms, parameterised by the
    recipe's :class:`AugmentParams`: RandomResizedCrop(size, scale, ratio), horizontal flip,
    ColorJitter(0.4s, 0.4s, 0.4s, 0.1s) applied with probability p, RandomGrayscale. Evaluation:
    Resize(eval_resize) + CenterCrop(size), the released code's test transform (Resize 256 at 224).
    Both end in uint8 [3, size, size]. Built on first use in each process (the dataset caches them),
    so the parent need not import torchvision and the object pickles small to spawned workers.
    """

    size: int
    eval_resize: int
    augment: AugmentParams

    def train(self) -> Any:
        from torchvision.transforms import v2

        p = self.augment
        steps: list[Any] = [
            v2.RandomResizedCrop(self.size, scale=p.crop_scale, ratio=p.crop_ratio, antialias=True)
        ]
        if p.hflip_p > 0:
            steps.append(v2.RandomHorizontalFlip(p.hflip_p))
        if p.color_jitter > 0 and p.color_jitter_p > 0:
            s = p.color_jitter
            jitter = v2.ColorJitter(0.4 * s, 0.4 * s, 0.4 * s, 0.1 * s)
            steps.append(v2.RandomApply([jitter], p=p.color_jitter_p))
        if p.grayscale_p > 0:
            steps.append(v2.RandomGrayscale(p.grayscale_p))
        return v2.Compose([*steps, v2.PILToTensor()])

    def evaluation(self) -> Any:
        from torchvision.transforms import v2

        return v2.Compose(
            [v2.Resize(self.eval_resize, antialias=True), v2.CenterCrop(self.size), v2.PILToTensor()]
        )


# A read request, what the batch sampler yields per sample: (index, epoch, n_views, augment). Carrying
# the epoch in the request (not in worker state) is what makes the bytes independent of the workers.
Key = tuple[int, int, int, bool]


class _FolderDataset(Dataset):
    """Reads, checks, decodes and transforms one file per request; holds only the index."""

    def __init__(self, index: FolderIndex, transforms: ImageTransforms, seed: int) -> None:
        self.index = index
        self.transforms = transforms
        self.seed = seed

    def __len__(self) -> int:
        return len(self.index)

    @cached_property
    def train_transform(self) -> Any:
        return self.transforms.train()

    @cached_property
    def eval_transform(self) -> Any:
        return self.transforms.evaluation()

    def decode(self, i: int) -> Image.Image:
        path = self.index.path(i)
        try:
            data = path.read_bytes()
        except OSError as err:
            raise DataIntegrityError(f"{path}: cannot be read ({err.strerror or err})") from None
        if len(data) != self.index.sizes[i]:
            raise DataIntegrityError(
                f"{path}: {len(data)} bytes, the index says {self.index.sizes[i]} (changed since prepare: "
                "re-run prepare)"
            )
        return decode_rgb(data, str(path))

    def __getitem__(self, key: Key) -> tuple[Tensor, int]:
        i, epoch, n_views, augment = key
        image = self.decode(i)
        if augment:
            with seeded_cpu_rng(sample_seed(self.seed, epoch, i)):
                views = [self.train_transform(image) for _ in range(n_views)]
        else:
            views = [self.eval_transform(image)] * n_views
        return torch.stack(views), int(self.index.targets[i])


class _Requests:
    """The batch sampler: lists of read requests, one list per batch (computed lazily)."""

    def __init__(self, batches: list[np.ndarray], epoch: int, n_views: int, augment: bool) -> None:
        self.batches = batches  # sample indices per batch (this rank's shards only)
        self.epoch, self.n_views, self.augment = epoch, n_views, augment

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[Key]]:
        for batch in self.batches:
            yield [(int(i), self.epoch, self.n_views, self.augment) for i in batch]


class StreamingSource:
    """A split served from its files by DataLoader workers (see the module docstring).

    Memory: the index (paths, targets, sizes) and at most ``workers x prefetch_factor`` batches in
    flight (with ``workers: 0`` one batch); no attribute ever holds decoded images of the split.
    """

    def __init__(
        self,
        index: FolderIndex,
        *,
        seed: int,
        transforms: ImageTransforms,
        device: torch.device | str = "cpu",
        workers: int = 0,
        prefetch_factor: int = 2,
        multiprocessing_context: str | None = None,
    ) -> None:
        self.index = index
        self.seed = seed
        self.transforms = transforms
        self.device = torch.device(device)
        self.workers = workers
        self.prefetch_factor = prefetch_factor
        self.multiprocessing_context = multiprocessing_context

    @property
    def targets(self) -> Tensor:
        return torch.from_numpy(self.index.targets).to(self.device)

    @property
    def bias(self) -> Tensor | None:
        return None  # image folders have no bias attribute

    def __len__(self) -> int:
        return len(self.index)

    def steps(self, batch_size: int) -> int:
        return full_batches(len(self), batch_size)[1]

    def subset(self, index: Tensor) -> StreamingSource:
        """The same source restricted to ``index`` (e.g. the online probe's fixed subset)."""
        return StreamingSource(
            self.index.subset(index.cpu().numpy()),
            seed=self.seed,
            transforms=self.transforms,
            device=self.device,
            workers=self.workers,
            prefetch_factor=self.prefetch_factor,
            multiprocessing_context=self.multiprocessing_context,
        )

    def loader(self, requests: _Requests) -> DataLoader:
        """The DataLoader of one pass: a fresh one per epoch (its workers end with the pass)."""
        extra: dict[str, Any] = {}
        if self.workers > 0:
            extra = {
                "prefetch_factor": self.prefetch_factor,
                "multiprocessing_context": self.multiprocessing_context,
            }
        return DataLoader(
            _FolderDataset(self.index, self.transforms, self.seed),
            batch_sampler=requests,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            # Its own generator: DataLoader draws a base seed for its workers from the global one
            # otherwise, shifting the training process's random stream (the views never use it).
            generator=torch.Generator().manual_seed(self.seed),
            **extra,
        )

    def shard_indices(self, epoch: int, batch_size: int, rank: int, world_size: int) -> list[np.ndarray]:
        """This rank's sample indices of each global batch of epoch ``epoch`` (contiguous shards)."""
        size, steps = full_batches(len(self), batch_size)
        order = epoch_order(self.seed, epoch, len(self))
        start, stop = distributed.shard_bounds(size, rank, world_size)
        return [order[step * size : (step + 1) * size][start:stop] for step in range(steps)]

    def uint8_batches(
        self,
        epoch: int,
        batch_size: int,
        n_views: int,
        augment: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> Iterator[Batch]:
        """What the workers deliver: (views uint8 [b, V, 3, S, S], targets int64 [b]) on CPU."""
        rank = distributed.rank() if rank is None else rank
        world_size = distributed.world_size() if world_size is None else world_size
        shards = self.shard_indices(epoch, batch_size, rank, world_size)
        yield from _unwrapped(self.loader(_Requests(shards, epoch, n_views, augment)))

    def epoch_batches(
        self,
        epoch: int,
        batch_size: int,
        n_views: int,
        augment: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> Iterator[Batch]:
        # Each rank keeps its shard of global batches of batch_size: the gathers take every rank's size
        # from the shard bounds instead of exchanging sizes (a host-device sync per gather).
        distributed.set_global_batch(batch_size)
        for views, targets in self.uint8_batches(epoch, batch_size, n_views, augment, rank, world_size):
            views = views.to(self.device, non_blocking=True)
            yield to_float(views), targets.to(self.device, non_blocking=True)

    def eval_batches(self, batch_size: int) -> Iterator[Batch]:
        """Every sample once in index order, evaluation transform: (uint8 [b, 3, S, S], targets)."""
        batches = [np.arange(i, min(i + batch_size, len(self))) for i in range(0, len(self), batch_size)]
        for views, targets in _unwrapped(self.loader(_Requests(batches, _EVAL_EPOCH, 1, False))):
            yield views[:, 0].to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)


def _unwrapped(loader: DataLoader) -> Iterator[Batch]:
    """Iterate ``loader``; a data error raised in a worker comes back as its own one-line message.

    DataLoader re-raises a worker's exception as the same type with the worker's whole traceback as
    message, which the stages' one-line error printer would cut before the part that names the file.
    """
    try:
        yield from loader
    except DataIntegrityError as err:
        last = str(err).strip().splitlines()[-1]  # the worker traceback's "module.Type: message" line
        head, sep, message = last.partition(": ")
        raise DataIntegrityError(message if sep and head.endswith("DataIntegrityError") else last) from None


# ----------------------------------------------------------------------------- helpers for the stages


@torch.no_grad()
def features_of(encoder: nn.Module, source: BatchSource | TensorSplit, batch_size: int = 1024) -> Tensor:
    """Encoder outputs of every sample, in index order, in batches under no_grad in eval mode.

    In-memory splits go through ``cecl.train.probe.extract_features`` itself (same batches, so the
    same numbers as before); a streamed one is fed the same way (uint8 / 255, eval mode), batch by
    batch from its workers: only the features are kept, never the images, so it fits ImageNet.
    """
    from cecl.train.probe import extract_features  # here: cecl.train's loop imports this module

    if isinstance(source, TensorBatchSource):
        source = source.split
    if isinstance(source, TensorSplit):
        return extract_features(encoder, source.images, batch_size)
    was_training = encoder.training
    encoder.eval()
    try:
        chunks = [encoder(to_float(images)) for images, _ in source.eval_batches(batch_size)]
    finally:
        encoder.train(was_training)
    return torch.cat(chunks)


def batch_source(
    spec: DatasetSpec,
    data_dir: Path,
    split: str,
    device: torch.device,
    *,
    seed: int,
    augment: AugmentParams,
) -> BatchSource:
    """The batch source of one prepared split: the spec's own (streamed) if it has one, else in memory.

    Duck-typed on ``spec.batch_source`` because DatasetSpec (cecl/datasets/base.py) has no such hook
    yet; the proposed default there is exactly this function's fallback.
    """
    own = getattr(spec, "batch_source", None)
    if own is not None:
        return own(data_dir, split, device, seed=seed, augment=augment)
    return TensorBatchSource(spec.tensors(data_dir, split, device), seed, BatchAugment(augment))
