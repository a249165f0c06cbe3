"""ImageNet folders decoded in batches on the training device (cecl/data/streaming.py ``decode="device"``).

The path that runs on CUDA (``torchvision.io.decode_jpeg(list, device="cuda")``, per-image crops, the
batched augmentation) runs here on the CPU with ``device="cpu"``: only the decode's device differs. What
must hold: views of the right shape and range, the per-sample seeding contract (the bytes do not depend
on workers, ranks, batch size), the formats ImageNet holds (greyscale, CMYK, a PNG named .JPEG), a
corrupt file named in one line, the option's plumbing, and loaders that persist between epochs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torchvision.io import ImageReadMode, decode_image

from cecl import distributed
from cecl.data.augment import SUPCON_RECIPE, BatchAugment, Uniforms
from cecl.data.streaming import StreamingSource, decode_on, device_views
from cecl.datasets import DataIntegrityError, spec_for
from cecl.datasets.imagenet_folder import ImageNetFolder, ImageNetFolderOptions
from tests.fixtures.standins_imagenet_folder import WNIDS, truncate, write_imagenet_folder

SIZE = 16
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*not verified:UserWarning"),
    pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning"),
]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _spec(root: Path, **extra) -> ImageNetFolder:
    options = {"root": str(root), "n_classes": len(WNIDS), "image_size": SIZE, "val_per_class": 2}
    spec = spec_for("inet", ImageNetFolderOptions(**{**options, "verify": False, "workers": 0, **extra}))
    assert isinstance(spec, ImageNetFolder)
    return spec


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageNetFolder, Path, Path]:
    root = tmp_path_factory.mktemp("imagenet") / "raw"
    write_imagenet_folder(root)
    out = tmp_path_factory.mktemp("prepared") / "inet"
    spec = _spec(root, decode="device")
    spec.prepare(out)
    return spec, out, root


def _views(
    source: StreamingSource, epoch: int, batch_size: int, **kw
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(v.clone(), t.clone()) for v, t in source.epoch_batches(epoch, batch_size, 2, **kw)]


def _files(spec: ImageNetFolder, out: Path) -> tuple[list[torch.Tensor], list[str]]:
    """The training split's files: their bytes as uint8 tensors, and their paths."""
    index = spec.read_index(out, "train")
    paths = [index.path(i) for i in range(len(index))]
    return [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths], [
        str(p) for p in paths
    ]


def test_every_file_decodes_as_decode_image_does(prepared) -> None:
    """One batched call; the batch with a CMYK JPEG and a PNG falls back file by file."""
    spec, out, _ = prepared
    data, names = _files(spec, out)
    decoded = decode_on(data, names, torch.device("cpu"))
    for got, raw in zip(decoded, data, strict=True):
        assert torch.equal(got, decode_image(raw, mode=ImageReadMode.RGB))
    plain = [i for i, raw in enumerate(data) if raw[:2].tolist() == [0xFF, 0xD8]][:4]  # JPEGs only
    assert len(plain) == 4
    batched = decode_on([data[i] for i in plain], [names[i] for i in plain], torch.device("cpu"))
    assert all(torch.equal(a, decoded[i]) for a, i in zip(batched, plain, strict=True))


def test_device_views_are_float_views_at_the_training_size(prepared) -> None:
    spec, out, _ = prepared
    source = spec.batch_source(out, "train", seed=0)
    assert source.decodes_on_device
    (views, targets), *_ = _views(source, 0, 4)
    assert views.shape == (4, 2, 3, SIZE, SIZE) and views.dtype == torch.float32
    assert float(views.min()) >= 0.0 and float(views.max()) <= 1.0
    assert not torch.equal(views[:, 0], views[:, 1])  # two different views per image
    assert targets.dtype == torch.int64 and targets.shape == (4,)


def test_the_views_depend_only_on_seed_epoch_and_sample(prepared) -> None:
    """Same bytes with workers or not, on every rank's shard, at any batch size; other epochs differ."""
    spec, out, _ = prepared
    source = spec.batch_source(out, "train", seed=3)
    one = _views(source, 1, 8)
    assert len(one) == 1
    workers = _views(spec.batch_source(out, "train", seed=3, workers=2), 1, 8)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(one, workers, strict=True))
    for rank in range(3):
        start, stop = distributed.shard_bounds(8, rank, 3)
        (shard, targets), *_ = _views(source, 1, 8, rank=rank, world_size=3)
        assert torch.equal(shard, one[0][0][start:stop]) and torch.equal(targets, one[0][1][start:stop])
    small = torch.cat([v for v, _ in _views(source, 1, 4)])
    assert torch.equal(small[:8], one[0][0])  # the same permutation, cut in batches of 4
    assert not torch.equal(_views(source, 2, 8)[0][0], one[0][0])


def test_device_views_use_each_samples_own_numbers() -> None:
    """Two images, their numbers swapped: the views swap with them (nothing depends on batch position)."""
    images = [
        torch.randint(0, 256, (3, 30, 40), dtype=torch.uint8),
        torch.randint(0, 256, (3, 25, 19), dtype=torch.uint8),
    ]
    numbers = torch.rand(2, 2, Uniforms.COLUMNS, generator=torch.Generator().manual_seed(0))
    augment = BatchAugment(SUPCON_RECIPE)
    for batched in (False, True):  # the CPU's per-view loop and the accelerators' batched crop
        views = device_views(images, numbers, SIZE, augment, batched)
        swapped = device_views(images[::-1], numbers.flip(0), SIZE, augment, batched)
        assert torch.equal(views, swapped.flip(0))
    loop, one_go = (device_views(images, numbers, SIZE, augment, batched) for batched in (False, True))
    # the crops differ by one grey level at most (rounding); the jitter then scales a difference by its
    # brightness, contrast and saturation factors, each at most 1 + 0.4: at most 1.4 ** 3 levels
    assert (loop - one_go).abs().max() <= 1.4**3 / 255 + 1e-6


def test_a_corrupt_file_is_one_line_naming_it(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    files = write_imagenet_folder(root)
    spec = _spec(root, decode="device")
    spec.prepare(tmp_path / "out")
    name = next(p for p, b in files.items() if p.startswith("train/") and b[:2] == b"\xff\xd8")
    (root / name).write_bytes(b"\xff\xd8" + bytes(len(files[name]) - 2))  # same size, not a JPEG
    with pytest.raises(DataIntegrityError, match=rf"^{root / name}: not a readable image") as err:
        for _ in spec.batch_source(tmp_path / "out", "train", seed=0).epoch_batches(0, 64, 2):
            pass
    assert "\n" not in str(err.value)
    truncate(root / name)
    with pytest.raises(DataIntegrityError, match="changed since prepare"):
        for _ in spec.batch_source(tmp_path / "out", "train", seed=0).epoch_batches(0, 64, 2):
            pass


def test_the_option_picks_the_path_and_stays_out_of_the_manifest(prepared, tmp_path: Path) -> None:
    spec, out, root = prepared
    assert ImageNetFolderOptions().decode == "auto"
    auto = _spec(root).batch_source(out, "train", seed=0)
    assert not auto.decodes_on_device  # auto on the CPU: PIL in the workers
    assert _spec(root).batch_source(out, "train", "cuda", seed=0).decodes_on_device  # auto on CUDA
    assert not _spec(root, decode="pil").batch_source(out, "train", "cuda", seed=0).decodes_on_device
    _spec(root, decode="pil").prepare(tmp_path / "pil")
    assert json.loads((tmp_path / "pil" / "manifest.json").read_text()) == json.loads(
        (out / "manifest.json").read_text()
    )
    # un-augmented views (the ce baseline) and evaluation reads stay on the PIL path
    (plain, _), *_ = _views(spec.batch_source(out, "train", seed=0), 0, 4, augment=False)
    (pil, _), *_ = _views(_spec(root, decode="pil").batch_source(out, "train", seed=0), 0, 4, augment=False)
    assert torch.equal(plain, pil)


def test_loaders_persist_between_epochs(prepared) -> None:
    spec, out, _ = prepared
    source = spec.batch_source(out, "train", seed=0, workers=2)
    first = _views(source, 0, 4)
    loaders = dict(source._loaders)
    assert len(loaders) == 1 and all(loader.persistent_workers for loader, _ in loaders.values())
    second = _views(source, 1, 4)
    assert {k: v[0] for k, v in source._loaders.items()} == {k: v[0] for k, v in loaders.items()}
    assert [v for v, _ in _views(source, 0, 4)] and all(
        torch.equal(a[0], b[0]) for a, b in zip(first, _views(source, 0, 4), strict=True)
    )
    assert not torch.equal(first[0][0], second[0][0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_nvjpeg_decodes_like_the_cpu_and_views_stay_on_the_gpu(prepared) -> None:
    spec, out, _ = prepared
    data, names = _files(spec, out)
    gpu = decode_on(data, names, torch.device("cuda"))
    cpu = decode_on(data, names, torch.device("cpu"))
    for a, b in zip(gpu, cpu, strict=True):
        assert a.device.type == "cuda" and a.shape == b.shape
        assert (a.cpu().float() - b.float()).abs().mean() < 3.0  # nvJPEG's IDCT is not libjpeg's
    source = spec.batch_source(out, "train", "cuda", seed=0)
    (views, targets), *_ = _views(source, 0, 4)
    assert views.device.type == "cuda" and targets.device.type == "cuda"
    assert views.shape == (4, 2, 3, SIZE, SIZE)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_the_gpu_the_batched_crop_matches_the_loop_and_prefetch_changes_nothing(prepared) -> None:
    """The batched crop on CUDA within one grey level of the per-view loop there; the prefetching thread's
    own stream gives the same batches as inline decoding."""
    from cecl.data.resized_crops import batched_resized_crops
    from cecl.data.streaming import crop_boxes, per_view_crops

    spec, out, _ = prepared
    data, names = _files(spec, out)
    images = decode_on(data, names, torch.device("cuda"))
    numbers = torch.rand(len(images), 2, Uniforms.COLUMNS, generator=torch.Generator().manual_seed(0))
    boxes, _ = crop_boxes(images, numbers, BatchAugment(SUPCON_RECIPE))
    loop, batched = per_view_crops(images, boxes, SIZE), batched_resized_crops(images, boxes, SIZE)
    assert batched.is_cuda and int((loop.int() - batched.int()).abs().max()) <= 1
    inline = spec.batch_source(out, "train", "cuda", seed=0)
    inline.prefetch = 0
    ahead = spec.batch_source(out, "train", "cuda", seed=0)
    for a, b in zip(_views(inline, 0, 4), _views(ahead, 0, 4), strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
