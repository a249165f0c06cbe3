"""The ImageNet folder's device path with one batch prefetched (cecl/data/streaming.py ``prefetch``):
on the CPU it must give the same batches in the same order as inline decoding, with or without loader
workers, in every epoch, and a stop in the middle of an epoch must leave the persistent loader usable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cecl.data.streaming import StreamingSource
from cecl.datasets import spec_for
from cecl.datasets.imagenet_folder import ImageNetFolder, ImageNetFolderOptions
from tests.fixtures.standins_imagenet_folder import WNIDS, write_imagenet_folder

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*not verified:UserWarning"),
    pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning"),
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageNetFolder, Path]:
    root = tmp_path_factory.mktemp("imagenet") / "raw"
    write_imagenet_folder(root)
    options = {"root": str(root), "n_classes": len(WNIDS), "image_size": 16, "val_per_class": 2}
    spec = spec_for("inet", ImageNetFolderOptions(**options, verify=False, workers=0, decode="device"))
    assert isinstance(spec, ImageNetFolder)
    out = tmp_path_factory.mktemp("prepared") / "inet"
    spec.prepare(out)
    return spec, out


def _epoch(source: StreamingSource, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(v.clone(), t.clone()) for v, t in source.epoch_batches(epoch, 4, 2)]


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_prefetching_gives_the_same_batches_in_the_same_order(prepared, workers: int) -> None:
    spec, out = prepared
    inline = spec.batch_source(out, "train", seed=5, workers=workers)
    inline.prefetch = 0
    ahead = spec.batch_source(out, "train", seed=5, workers=workers)
    assert ahead.prefetch == 1 and ahead.decodes_on_device
    for epoch in (0, 1):
        reference = _epoch(inline, epoch)
        assert len(reference) > 2
        assert _same(_epoch(ahead, epoch), reference)
    assert not _same(_epoch(ahead, 0), _epoch(ahead, 1))


def test_a_pass_stopped_early_leaves_the_loader_usable(prepared) -> None:
    spec, out = prepared
    source = spec.batch_source(out, "train", seed=5, workers=2)
    reference = _epoch(source, 0)
    batches = source.epoch_batches(0, 4, 2)
    next(batches)
    batches.close()  # the thread is joined; the persistent loader's pass can start again
    assert _same(_epoch(source, 0), reference)
