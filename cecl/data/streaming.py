"""Batch sources: what the training loop and the probes draw batches from, in memory or streamed.

The loop's contract (cecl/train/loop.py) is that the global batch is the unit: epoch ``e`` is one
permutation seeded by ``(seed, e)``, cut into ``steps(batch_size)`` full global batches (the last
incomplete one dropped), and with P ranks each rank keeps its contiguous shard of every global batch
(``cecl.distributed.shard_bounds``). Both sources below keep that contract, so exact resume (epoch e
depends only on (seed, e)) and exact multi-process training carry over:

* :class:`TensorBatchSource` wraps an in-memory :class:`~cecl.datasets.TensorSplit` and reproduces the
  loop's numbers exactly (same generator, same permutation, same on-device augmentation parameters of
  the whole global batch; each rank applies only its shard's, with the bytes of those rows of the
  whole batch's views).
* :class:`StreamingSource` serves an image folder (ImageNet: 140+ GB) without ever holding it:
  ``torch.utils.data.DataLoader`` worker processes read, decode (PIL) and augment each image on CPU
  with torchvision's transforms v2 and deliver uint8 batches; only about ``workers x prefetch_factor``
  batches exist at any time. Each rank decodes only its own shard. The randomness of a sample's views
  is seeded by ``(seed, epoch, sample index)``, never by a worker's or a rank's state, so the bytes do
  not depend on the number of workers, the number of ranks, or the epoch a run resumed at.
  With ``decode="device"`` (automatic when training on CUDA, see :class:`StreamingSource`) the workers
  only read each training sample's JPEG bytes and draw its augmentation numbers (from the same
  per-sample seed), and the batch is decoded on the device (``torchvision.io.decode_jpeg`` of the list),
  cropped and resized in one batched operation (cecl/data/resized_crops.py) and jittered there by the
  batched augmentation of cecl/data/augment.py. The
  loaders are built once per source and keep their workers between epochs (``persistent_workers``).

:func:`cecl.eval.features.features_of` extracts frozen features from either source in batches, for the
probe and the monitor (bounded memory: only the features are kept).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from cecl import distributed
from cecl.data.augment import AugmentParams, BatchAugment, Uniforms, ViewDraws, make_views, to_float
from cecl.data.errors import DataIntegrityError
from cecl.data.images import decode_rgb
from cecl.data.prefetch import prefetched
from cecl.data.resized_crops import batched_resized_crops
from cecl.data.rng import seeded_rng
from cecl.data.splits import TensorSplit

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
    by batch, the augmentation parameters of the whole global batch, of which this rank applies its
    shard's (``make_views`` with ``batch_rows``); the generator is consumed in exactly the loop's order
    because the batches are produced lazily.
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
        start, stop = distributed.take_shard(size, rank, world_size)
        recipe = self.augment if augment else None
        for step in range(steps):
            idx = order[step * size : (step + 1) * size][start:stop]
            # Every process draws the augmentation parameters of the whole global batch from the same
            # generator and applies only its shard's: the work is the shard's, and the bytes are the
            # same rows of the whole batch's views whatever the number of processes.
            views = make_views(
                self.split.images[idx], n_views, recipe, generator, batch_rows=size, first_row=start
            )
            yield views, self.split.targets[idx]

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
        return decode_rgb(self.read(i), str(self.index.path(i)))

    def read(self, i: int) -> bytes:
        """File ``i``'s bytes, checked against the index's size."""
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
        return data

    def __getitem__(self, key: Key) -> tuple[Tensor, int]:
        i, epoch, n_views, augment = key
        image = self.decode(i)
        if augment:
            with seeded_cpu_rng(sample_seed(self.seed, epoch, i)):
                views = [self.train_transform(image) for _ in range(n_views)]
        else:
            views = [self.eval_transform(image)] * n_views
        return torch.stack(views), int(self.index.targets[i])


class _FolderBytes(_FolderDataset):
    """For decoding on the device: one training request gives the file's bytes (uint8 [n], undecoded),
    the target, and the sample's augmentation numbers [V, Uniforms.COLUMNS] drawn from a CPU generator
    seeded by ``sample_seed(seed, epoch, index)`` (the per-sample contract of the PIL path)."""

    def __getitem__(self, key: Key) -> tuple[Tensor, int, Tensor, int]:  # type: ignore[override]
        i, epoch, n_views, _ = key
        data = torch.frombuffer(bytearray(self.read(i)), dtype=torch.uint8)
        generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, i))
        return data, int(self.index.targets[i]), torch.rand(n_views, Uniforms.COLUMNS, generator=generator), i


def _collate_bytes(
    items: list[tuple[Tensor, int, Tensor, int]],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(all files' bytes in one uint8 buffer, offsets [b + 1], targets [b], uniforms [b, V, K], sample
    indices [b]), built in the worker: one tensor crosses to the main process per batch instead of one per
    file (128 shared-memory segments, each a file descriptor to receive and keep open: 49 ms of host time
    per batch of 128 against about 5 ms for one buffer, benchmarks/batch_transfer.py)."""
    data, targets, uniforms, indices = zip(*items, strict=True)
    offsets = torch.zeros(len(data) + 1, dtype=torch.long)
    torch.cumsum(torch.tensor([len(d) for d in data]), 0, out=offsets[1:])
    return torch.cat(data), offsets, torch.tensor(targets), torch.stack(uniforms), torch.tensor(indices)


def split_buffer(buffer: Tensor, offsets: Tensor) -> list[Tensor]:
    """The files of one :func:`_collate_bytes` buffer, as views of it (no copy)."""
    bounds = offsets.tolist()  # a CPU tensor: no device sync
    return [buffer[start:stop] for start, stop in itertools.pairwise(bounds)]


def decode_on(data: list[Tensor], names: list[str], device: torch.device) -> list[Tensor]:
    """JPEG bytes -> RGB uint8 [3, h_i, w_i] on ``device``, the whole list in one batched
    ``torchvision.io.decode_jpeg`` (nvJPEG on CUDA, libjpeg-turbo on the CPU: the same call).

    When the batch fails (a CMYK JPEG nvJPEG refuses, a PNG named .JPEG as ImageNet has one of, a
    corrupt file), the files are decoded one by one, a failing one on the CPU with ``decode_image`` (any
    format), and a file nothing decodes is a one-line DataIntegrityError naming it.
    """
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    rgb = ImageReadMode.RGB
    try:
        return decode_jpeg(data, mode=rgb, device=device)
    except RuntimeError:
        pass
    images = []
    for one, name in zip(data, names, strict=True):
        try:
            images.append(decode_jpeg(one, mode=rgb, device=device))
        except RuntimeError:
            try:
                images.append(decode_image(one, mode=rgb).to(device))
            except RuntimeError as err:
                reason = " ".join(str(err).split()) or type(err).__name__
                raise DataIntegrityError(f"{name}: not a readable image ({reason})") from None
    return images


def device_views(
    images: list[Tensor], uniforms: Tensor, size: int, augment: BatchAugment, batched: bool | None = None
) -> Tensor:
    """Decoded images (uint8 [3, h_i, w_i] on the device) -> float views [b, V, 3, size, size] in [0, 1].

    The recipe's draws come from each sample's own numbers (``uniforms`` [b, V, K] on the CPU,
    :class:`~cecl.data.augment.Uniforms`); the crop boxes are computed on the CPU from each image's size
    (known to the host without waiting for the device) and rounded to whole pixels. All views are cut
    and resized to ``size`` at once by :func:`~cecl.data.resized_crops.batched_resized_crops` (the
    antialiased bilinear filter of torchvision's ``resized_crop``, as the PIL path's RandomResizedCrop,
    in a few batched matrix products instead of one call per view: :func:`per_view_crops` is the loop it
    replaces, kept as its reference). The flip, jitter and grayscale are then :meth:`BatchAugment.apply`
    on the stacked views, on the device.

    ``batched`` None: batched off the CPU only. The batched products are sized for an accelerator, where
    the host's cost is what matters; on a CPU the arithmetic is the cost and the loop's uint8 kernels are
    about 20x cheaper (benchmarks/crop.py ``--cpu-pixels``: 213 ms against 4409 ms per 256 views).
    """
    b, v, _ = uniforms.shape
    device = images[0].device
    boxes, draws = crop_boxes(images, uniforms, augment)
    batched = device.type != "cpu" if batched is None else batched
    crops = (batched_resized_crops if batched else per_view_crops)(images, boxes, size)
    views = augment.apply(to_float(crops), draws.after_crop(device))
    return views.reshape(b, v, 3, size, size)


def crop_boxes(images: list[Tensor], uniforms: Tensor, augment: BatchAugment) -> tuple[Tensor, ViewDraws]:
    """The whole-pixel crop boxes [b V, 4] (top, left, height, width; int64 on the CPU) of every view,
    image-major, and the views' draws, from each sample's numbers ``uniforms`` [b, V, K]."""
    b, v, _ = uniforms.shape
    heights = torch.tensor([float(im.shape[-2]) for im in images]).repeat_interleave(v)
    widths = torch.tensor([float(im.shape[-1]) for im in images]).repeat_interleave(v)
    draws = augment.draw(b * v, heights, widths, heights, Uniforms(uniforms.reshape(b * v, -1)))
    boxes = draws.boxes
    assert boxes is not None
    left, top = (boxes[:, 0] * widths).round(), (boxes[:, 1] * heights).round()
    width = (boxes[:, 2] * widths).round().clamp(min=1).minimum(widths - left)
    height = (boxes[:, 3] * heights).round().clamp(min=1).minimum(heights - top)
    return torch.stack([top, left, height, width], dim=1).long(), draws  # CPU numbers: no device sync


def per_view_crops(images: list[Tensor], boxes: Tensor, size: int) -> Tensor:
    """The per-view loop (one torchvision ``resized_crop`` per view, several launches each): the reference
    :func:`~cecl.data.resized_crops.batched_resized_crops` is tested and benchmarked against."""
    from torchvision.transforms.v2.functional import resized_crop

    v = len(boxes) // len(images)
    return torch.stack(
        [
            resized_crop(images[j // v], t, lft, hgt, wdt, [size, size], antialias=True)
            for j, (t, lft, hgt, wdt) in enumerate(boxes.tolist())
        ]
    )


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


class _Switch:
    """The batch sampler of a persistent DataLoader: the requests of the pass now being iterated.

    A DataLoader takes its batch sampler once; it iterates it in the training process at each pass, so
    pointing this at the next pass's requests lets the loader (and its workers) live across epochs.
    """

    def __init__(self) -> None:
        self.requests = _Requests([], 0, 1, False)

    def __len__(self) -> int:
        return len(self.requests)

    def __iter__(self) -> Iterator[list[Key]]:
        return iter(self.requests)


Decode = Literal["auto", "pil", "device"]


class StreamingSource:
    """A split served from its files by DataLoader workers (see the module docstring).

    Memory: the index (paths, targets, sizes) and at most ``workers x prefetch_factor`` batches in
    flight (with ``workers: 0`` one batch), plus ``prefetch`` decoded batches on the device path; no
    attribute ever holds decoded images of the split.

    ``decode`` picks where training views are decoded: ``pil`` in the workers (PIL + torchvision's
    transforms v2 on each image), ``device`` on the source's device in batches (:func:`decode_on`,
    :func:`device_views`: the workers only read bytes), ``auto`` (the default) ``device`` when the
    source's device is CUDA, else ``pil``. Both keep the per-sample seeding; their views differ (two
    implementations of the recipe: YIQ hue, continuous crop boxes rounded to pixels on the device).
    Evaluation reads (``eval_batches``) and un-augmented training views always take the PIL path.
    ``prefetch``: batches the device path prepares ahead of the step in a background thread (0: inline).
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
        decode: Decode = "auto",
        prefetch: int = 1,
    ) -> None:
        self.index = index
        self.seed = seed
        self.transforms = transforms
        self.device = torch.device(device)
        self.workers = workers
        self.prefetch_factor = prefetch_factor
        self.multiprocessing_context = multiprocessing_context
        self.decode = decode
        self.prefetch = prefetch
        self._loaders: dict[tuple[bool, bool], tuple[DataLoader, _Switch]] = {}  # (device decode, eval)

    @property
    def decodes_on_device(self) -> bool:
        """Whether augmented training views are decoded on the device (``decode``, see the class)."""
        return self.decode == "device" or (self.decode == "auto" and self.device.type == "cuda")

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
        """The same source restricted to ``index`` (e.g. the monitor's fixed subset)."""
        return StreamingSource(
            self.index.subset(index.cpu().numpy()),
            seed=self.seed,
            transforms=self.transforms,
            device=self.device,
            workers=self.workers,
            prefetch_factor=self.prefetch_factor,
            multiprocessing_context=self.multiprocessing_context,
            decode=self.decode,
            prefetch=self.prefetch,
        )

    def loader(self, requests: _Requests) -> DataLoader:
        """The DataLoader of a pass over ``requests``, built once per kind (decoded images, or bytes for
        the device) and reused: with workers they persist between passes (``persistent_workers``). The
        bytes do not change: every request carries its epoch, and nothing reads the workers' seeds."""
        on_device = requests.augment and self.decodes_on_device
        # Training and evaluation passes never share a loader: a persistent loader has one iterator, so
        # two passes of one kind must not interleave (a pass is one epoch, or one extraction).
        kind = (on_device, requests.epoch == _EVAL_EPOCH)
        if kind not in self._loaders:
            extra: dict[str, Any] = {}
            if self.workers > 0:
                extra = {
                    "prefetch_factor": self.prefetch_factor,
                    "multiprocessing_context": self.multiprocessing_context,
                    "persistent_workers": True,
                }
            switch = _Switch()
            dataset = (_FolderBytes if on_device else _FolderDataset)(self.index, self.transforms, self.seed)
            loader = DataLoader(
                dataset,
                batch_sampler=switch,
                num_workers=self.workers,
                # the bytes go to nvJPEG from pageable memory; pinning thousands of small buffers costs more
                pin_memory=self.device.type == "cuda" and not on_device,
                collate_fn=_collate_bytes if on_device else None,
                # Its own generator: DataLoader draws a base seed for its workers from the global one
                # otherwise, shifting the training process's random stream (the views never use it).
                generator=torch.Generator().manual_seed(self.seed),
                **extra,
            )
            self._loaders[kind] = (loader, switch)
        loader, switch = self._loaders[kind]
        switch.requests = requests
        return loader

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
        if augment and self.decodes_on_device:
            yield from self.device_batches(epoch, batch_size, n_views, rank, world_size)
            return
        for views, targets in self.uint8_batches(epoch, batch_size, n_views, augment, rank, world_size):
            views = views.to(self.device, non_blocking=True)
            yield to_float(views), targets.to(self.device, non_blocking=True)

    def device_batches(
        self,
        epoch: int,
        batch_size: int,
        n_views: int,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> Iterator[Batch]:
        """Augmented training batches decoded on the device: the workers read bytes, the device decodes
        the batch (:func:`decode_on`) and makes the views (:func:`device_views`); with ``prefetch`` k > 0
        a background thread (a CUDA stream on a GPU) makes the next k batches while the step runs on this
        one (cecl/data/prefetch.py): the same batches in the same order."""
        rank = distributed.rank() if rank is None else rank
        world_size = distributed.world_size() if world_size is None else world_size
        requests = _Requests(self.shard_indices(epoch, batch_size, rank, world_size), epoch, n_views, True)
        yield from prefetched(self._decoded(requests), self.device, self.prefetch)

    def _decoded(self, requests: _Requests) -> Iterator[Batch]:
        """The device-decoded batches of ``requests``, made inline (:meth:`device_batches` prefetches)."""
        augment = BatchAugment(self.transforms.augment)
        for buffer, offsets, targets, uniforms, indices in _unwrapped(self.loader(requests)):
            data = split_buffer(buffer, offsets)
            images = decode_on(data, [str(self.index.path(int(i))) for i in indices], self.device)
            views = device_views(images, uniforms, self.transforms.size, augment)
            yield views, targets.to(self.device, non_blocking=True)

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
