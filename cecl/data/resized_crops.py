"""Many antialiased resized crops of many differently sized images in a few batched matrix products.

What: ``batched_resized_crops(images, owner, boxes, size)`` returns, for every view ``k``, the pixel box
``boxes[k] = (top, left, height, width)`` of ``images[owner[k]]`` resized to ``size x size`` with the
antialiased bilinear filter of ``torchvision.transforms.v2.functional.resized_crop(..., antialias=True)``
(PIL's filter: a triangle stretched by the scale when shrinking), rounded back to uint8 as torchvision
rounds a float resize of uint8 images.

Why: the per-view loop (one ``resized_crop`` per view) costs several kernel launches per view: 256 views
of an ImageNet batch cost 41-53 ms of host time per batch on a GPU, more than the step it feeds. A
resize is linear and separable, so a crop-then-resize is ``A_h @ image @ A_w^T`` with ``A_h`` [size, H]
and ``A_w`` [size, W] the filter's weights, zero outside the box. All views' weights are built at once
on the host (the boxes are host numbers) and applied to zero-padded image chunks with two ``matmul``
calls per chunk: a handful of launches per batch, whatever its number of views.

Why hand-written: no library resizes a batch of different boxes with the antialiased filter (torch's
``interpolate`` takes one output size for a batch of same-sized inputs; ``roi_align`` and
``grid_sample`` average or interpolate differently, and alias when shrinking). The weights follow
ATen's ``_compute_index_ranges_weights`` (aten/src/ATen/native/cpu/UpSampleKernel.cpp) and are checked
against ``interpolate`` of an identity matrix in tests/test_resized_crops.py.

Launches: the images of one shape are stacked and copied into the padded chunk at once (an ImageNet
batch has far fewer shapes than images: most are 500 x 375, 375 x 500 or 500 x 333). Memory: images
are padded per chunk to the chunk's largest height and width; images are sorted by
shape and a chunk is closed before its padded float copy would exceed ``chunk_elements`` (one very large
image then costs its own chunk, not a batch of its size).
"""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK_ELEMENTS = 2**26  # padded float elements per chunk: 256 MiB


def filter_weights(starts: Tensor, lengths: Tensor, size: int, extent: int) -> Tensor:
    """The antialiased bilinear weights [K, size, extent] (float32, on the device of ``starts``) that
    resize the ``lengths[k]`` input pixels from ``starts[k]`` (along one axis of an ``extent``-long
    padded axis) to ``size`` outputs.

    Row ``i`` of view ``k``: scale = length / size; the input pixel ``j`` of the box gets
    ``max(0, 1 - |j + 0.5 - scale (i + 0.5)| / max(scale, 1))`` and the row is normalised to sum 1
    (ATen's windowed loop keeps exactly these non-zero taps). Computed where the images are, so the
    host only queues a few element-wise kernels.
    """
    device = starts.device
    length = lengths.to(torch.float32)[:, None, None]
    scale = length / size
    centre = scale * (torch.arange(size, dtype=torch.float32, device=device)[None, :, None] + 0.5)
    pixel = torch.arange(extent, dtype=torch.float32, device=device)[None, None, :] - starts[:, None, None]
    weights = (1.0 - ((pixel + 0.5 - centre) / scale.clamp(min=1.0)).abs()).clamp_(min=0.0)
    weights = weights.mul_((pixel >= 0) & (pixel < length))
    return weights.div_(weights.sum(dim=2, keepdim=True))


def _chunks(shapes: list[tuple[int, int]], limit: int) -> list[list[int]]:
    """Image indices grouped by shape (sorted) so that each group's padded [n, 3, H, W] <= ``limit``
    elements (a group holds at least one image)."""
    order = sorted(range(len(shapes)), key=lambda i: shapes[i])
    chunks: list[list[int]] = []
    height = width = 0
    for i in order:
        h, w = max(height, shapes[i][0]), max(width, shapes[i][1])
        if chunks and (len(chunks[-1]) + 1) * 3 * h * w <= limit:
            chunks[-1].append(i)
            height, width = h, w
        else:
            chunks.append([i])
            height, width = shapes[i]
    return chunks


def _runs(shapes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(start, stop) of each run of equal consecutive shapes."""
    starts = [i for i in range(len(shapes)) if i == 0 or shapes[i] != shapes[i - 1]]
    return list(zip(starts, [*starts[1:], len(shapes)], strict=True))


def batched_resized_crops(
    images: list[Tensor], boxes: Tensor, size: int, chunk_elements: int = CHUNK_ELEMENTS
) -> Tensor:
    """uint8 views [B * V, 3, size, size] of ``images`` (B uint8 [3, h_b, w_b] on one device), V per
    image: view ``b * V + j`` is box ``boxes[b * V + j]`` (top, left, height, width; integers on the
    CPU, inside image ``b``) resized to ``size x size`` (see the module docstring)."""
    n = len(images)
    if n == 0 or boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) % n:
        raise ValueError(f"boxes must be [V * {n}, 4] (top, left, height, width), got {list(boxes.shape)}")
    v = len(boxes) // n
    device = images[0].device
    boxes = boxes.long().reshape(n, v, 4)
    on_device = boxes.to(device, non_blocking=True)  # the weights are made on the device from these
    out = torch.empty(n, v, 3, size, size, dtype=torch.uint8, device=device)
    shapes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    for chunk in _chunks(shapes, chunk_elements):
        height, width = max(shapes[b][0] for b in chunk), max(shapes[b][1] for b in chunk)
        padded = torch.zeros(len(chunk), height, 3, width, dtype=torch.float32, device=device)
        # one stack and one copy per distinct shape (the chunk is sorted by shape, so each is a run)
        for first, last in _runs([shapes[b] for b in chunk]):
            h, w = shapes[chunk[first]]
            same = torch.stack([images[b] for b in chunk[first:last]])
            padded[first:last, :h, :, :w] = same.permute(0, 2, 1, 3)
        index = torch.tensor(chunk).to(device, non_blocking=True) if chunk != list(range(n)) else slice(None)
        mine = on_device[index].reshape(len(chunk) * v, 4)
        rows = filter_weights(mine[:, 0], mine[:, 2], size, height).reshape(len(chunk), v * size, height)
        cols = filter_weights(mine[:, 1], mine[:, 3], size, width).transpose(1, 2)  # [n V, W, size]
        # [n, V size, H] @ [n, H, 3 W]: every view's rows of its own image, all views of an image at once
        tall = torch.bmm(rows, padded.reshape(len(chunk), height, 3 * width))
        tall = tall.reshape(len(chunk) * v, size, 3, width).transpose(1, 2)  # [n V, 3, size, W]
        resized = torch.matmul(tall, cols[:, None])  # [n V, 3, size, size]
        out[index] = resized.reshape(len(chunk), v, 3, size, size).round_().clamp_(0, 255).to(torch.uint8)
    return out.reshape(n * v, 3, size, size)
