"""One batched resized crop for all views (cecl/data/resized_crops.py) against its references.

References, independent of the code under test: torch's own antialiased ``interpolate`` of an identity
matrix (its weight matrix, for the filter weights) and the per-view loop of torchvision's
``resized_crop`` (cecl/data/streaming.py ``per_view_crops``) for whole batches of views.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cecl.data.augment import SUPCON_RECIPE, BatchAugment, Uniforms
from cecl.data.resized_crops import _chunks, batched_resized_crops, filter_weights
from cecl.data.streaming import crop_boxes, per_view_crops


def _photo(h: int, w: int, seed: int) -> torch.Tensor:
    """A smooth random colour field with noise (uint8 [3, h, w]): compresses and resizes like a photo."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 256, (1, 3, 6, 8), generator=g).float()
    smooth = F.interpolate(coarse, (h, w), mode="bicubic", align_corners=False)
    return (smooth + 8 * torch.randn(1, 3, h, w, generator=g)).clamp(0, 255).round().to(torch.uint8)[0]


@pytest.mark.parametrize("length", [1, 5, 16, 23, 40, 97])
@pytest.mark.parametrize("size", [16, 24])
def test_filter_weights_are_torchs_own_antialiased_bilinear_weights(length: int, size: int) -> None:
    """Resizing an identity matrix gives the filter's weight matrix: shrinking, enlarging and 1:1."""
    eye = torch.eye(length, dtype=torch.float64)[None, None]
    reference = F.interpolate(eye, size=(size, length), mode="bilinear", antialias=True, align_corners=False)
    weights = filter_weights(torch.tensor([3]), torch.tensor([length]), size, length + 7)[0].double()
    assert torch.allclose(weights[:, 3 : 3 + length], reference[0, 0], atol=1e-5)  # float32 taps
    assert weights[:, :3].abs().max() == 0 and weights[:, 3 + length :].abs().max() == 0  # outside the box


def test_batched_crops_equal_the_per_view_loop() -> None:
    """Images of several shapes (some repeated), the recipe's own boxes, 2 views each: every pixel within
    one grey level of torchvision's per-view ``resized_crop`` (its uint8 CPU kernel rounds in fixed point)."""
    shapes = [(30, 40), (40, 30), (30, 40), (17, 61), (64, 64), (30, 40), (12, 9)]
    images = [_photo(h, w, seed) for seed, (h, w) in enumerate(shapes)]
    uniforms = torch.rand(len(images), 2, Uniforms.COLUMNS, generator=torch.Generator().manual_seed(1))
    boxes, _ = crop_boxes(images, uniforms, BatchAugment(SUPCON_RECIPE))
    reference = per_view_crops(images, boxes, 24)
    for chunk_elements in (2**26, 3 * 40 * 64):  # one chunk; one image (or shape) per chunk
        got = batched_resized_crops(images, boxes, 24, chunk_elements=chunk_elements)
        assert got.shape == reference.shape == (14, 3, 24, 24) and got.dtype == torch.uint8
        difference = (got.int() - reference.int()).abs()
        assert int(difference.max()) <= 1 and float((difference > 0).float().mean()) < 0.2
    # a float resize rounded as torchvision rounds it on CUDA: the same filter, so at most the rounding
    floats = torch.stack(
        [
            F.interpolate(
                images[j // 2][None, :, t : t + h, x : x + w].float(),
                (24, 24),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )[0]
            for j, (t, x, h, w) in enumerate(boxes.tolist())
        ]
    )
    assert (floats.round().clamp(0, 255) - got.float()).abs().max() <= 1
    assert torch.allclose(floats, got.float(), atol=0.5 + 1e-3)


def test_a_box_of_the_whole_image_at_its_own_size_is_the_image() -> None:
    image = _photo(24, 24, 0)
    boxes = torch.tensor([[0, 0, 24, 24]])
    assert torch.equal(batched_resized_crops([image], boxes, 24), image[None])


def test_chunks_bound_the_padded_size_and_cover_every_image() -> None:
    shapes = [(10, 10), (500, 400), (10, 10), (20, 30), (500, 400), (11, 10)]
    for limit in (1, 3 * 500 * 400, 3 * 500 * 400 * 2, 10**9):
        chunks = _chunks(shapes, limit)
        assert sorted(i for c in chunks for i in c) == list(range(len(shapes)))
        for chunk in chunks:
            h, w = max(shapes[i][0] for i in chunk), max(shapes[i][1] for i in chunk)
            assert len(chunk) == 1 or len(chunk) * 3 * h * w <= limit
    assert len(_chunks(shapes, 10**9)) == 1


def test_bad_boxes_are_one_line() -> None:
    with pytest.raises(ValueError, match=r"boxes must be \[V \* 2, 4\]"):
        batched_resized_crops([_photo(8, 8, 0), _photo(8, 8, 1)], torch.zeros(3, 4, dtype=torch.long), 4)
