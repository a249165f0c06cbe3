"""Benchmark: images/s of the ImageNet folder's two training loaders on the CPU, side by side in one run.

Rows (cecl/data/streaming.py ``StreamingSource``, the family's SupContrast recipe, 2 views, 224 px):

* ``pil``: the workers read, decode with PIL and augment each image with torchvision's transforms v2,
  then the views are moved to the device and made float (``decode="pil"``).
* ``decode_jpeg``: the workers read bytes only; the batch is decoded by ``torchvision.io.decode_jpeg`` of
  the list, cropped image by image and jittered by the batched augmentation (``decode="device"``), here
  with ``device="cpu"``: the very path that runs on CUDA with nvJPEG, but on this machine's CPU.

Data: a synthetic folder in ImageNet's layout written to a temporary directory: ``--images`` JPEGs of
500 x 375 (ImageNet's typical size), smooth random colour fields at quality 90, in 4 classes. Each row
runs ``--warmup`` untimed batches, then ``--batches`` timed ones over as many epochs as needed; images/s
= images / wall seconds. The same ``--workers`` for both rows; the decode_jpeg row does its decode and
augmentation in the main process (as on a GPU), the pil row in the workers.

    python benchmarks/loader.py [--images 256] [--batch-size 64] [--workers 2] [--batches 6]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from cecl.datasets import spec_for
from cecl.datasets.imagenet_folder import ImageNetFolder, ImageNetFolderOptions

CLASSES = ("n01440764", "n01443537", "n01484850", "n01491361")


def write_folder(root: Path, n: int, seed: int = 0) -> None:
    """``n`` JPEGs of 500 x 375 in ``root/train/<wnid>/`` and a few in ``root/val/<wnid>/``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", n), ("val", 2 * len(CLASSES))):
        for i in range(count):
            wnid = CLASSES[i % len(CLASSES)]
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)  # smooth: compresses like a photo
            image = Image.fromarray(coarse).resize((500, 375), Image.Resampling.BICUBIC)
            noise = rng.integers(-12, 13, (375, 500, 3))
            pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{wnid}_{i}.JPEG", quality=90)


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{model}; {torch.get_num_threads()} torch threads, {len(os.sched_getaffinity(0))} cores "
        f"usable; capability {torch.backends.cpu.get_cpu_capability()}; torch {torch.__version__}"
    )


def images_per_second(spec: ImageNetFolder, out: Path, decode: str, args: argparse.Namespace) -> float:
    source = spec.batch_source(out, "train", seed=0, workers=args.workers)
    source.decode = decode  # type: ignore[assignment]
    done, start, epoch = -args.warmup, 0.0, 0
    while done < args.batches:
        for views, _ in source.epoch_batches(epoch, args.batch_size, 2):
            assert views.shape[-1] == spec.options.image_size
            done += 1
            if done == 0:
                start = time.perf_counter()
            if done >= args.batches:
                break
        epoch += 1
    return args.batches * args.batch_size / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256, help="training JPEGs in the synthetic folder")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="loader worker processes (both rows)")
    parser.add_argument("--batches", type=int, default=6, help="timed batches per row")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches per row")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*not verified")
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities")
    print(f"machine: {machine()}")
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp) / "raw", Path(tmp) / "prepared"
        write_folder(root, args.images)
        options = ImageNetFolderOptions(
            root=str(root), n_classes=len(CLASSES), val_per_class=1, scan="stat", verify=False, workers=0
        )
        spec = spec_for("imagenet", options)
        assert isinstance(spec, ImageNetFolder)
        spec.prepare(out)
        for decode in ("pil", "device"):
            rates[decode] = images_per_second(spec, out, decode, args)
    print(
        f"{args.images} JPEGs 500x375 -> 2 views of {options.image_size} px, batch {args.batch_size}, "
        f"{args.workers} workers, {args.batches} timed batches per row"
    )
    print(f"{'row':<14}{'images/s':>10}")
    print(f"{'pil':<14}{rates['pil']:>10.1f}")
    print(f"{'decode_jpeg':<14}{rates['device']:>10.1f}")
    print(f"decode_jpeg / pil: {rates['device'] / rates['pil']:.2f}x")
    return rates


if __name__ == "__main__":
    main()
