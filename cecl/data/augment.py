"""Batched tensor augmentations for contrastive views: every image and every view gets its own draw.

Why hand-written: ``torchvision.transforms.v2`` applied to a batch tensor draws ONE set of random
parameters (one crop box, one jitter factor) for the whole batch, while contrastive learning needs
independent draws per image and per view; the per-sample alternative (a PIL / tensor transform in a
Python loop over images) is slow. Here the parameters are sampled as [B] tensors and applied in one
shot: RandomResizedCrop through ``affine_grid`` + ``grid_sample`` (one box per sample), colour
jitter and grayscale as per-sample arithmetic, so it is fast on CPU and GPU alike.

Randomness comes only from the ``torch.Generator`` passed in, with every random tensor created on
the images' device; the generator must live on that device too (a CPU generator for CPU images, a
CUDA generator for CUDA images). The same generator state gives the same augmentations.

Nothing here waits for the device: no value is read back, and the colour constants (luma weights, the
YIQ matrices) are copied to a device once per (device, dtype) and cached, not once per call (a copy from
host memory makes the host wait on CUDA).

Horizontal flips are off unless the recipe sets ``hflip_p`` (mirrored digits are not digits).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# The recipe's schema lives in cecl/data/recipe.py (torch-free); re-exported for the code that augments.
from cecl.data.recipe import SUPCON_RECIPE as SUPCON_RECIPE
from cecl.data.recipe import AugmentParams as AugmentParams

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.2989, 0.587, 0.114)
# RGB <-> YIQ (NTSC); Y is luma, hue is the angle in the (I, Q) plane.
_RGB_TO_YIQ = (
    (0.299, 0.587, 0.114),
    (0.595716, -0.274453, -0.321263),
    (0.211456, -0.522591, 0.311135),
)


@functools.cache
def colour_constants(
    device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(luma [3], RGB -> YIQ [3, 3], YIQ -> RGB [3, 3]) on ``device`` in ``dtype``, made once and cached.

    The inverse is taken in float64 on the host, then rounded once, as before the cache.
    """
    to_yiq = torch.tensor(_RGB_TO_YIQ, dtype=torch.float64)
    to_rgb = torch.linalg.inv(to_yiq)
    luma = torch.tensor(_LUMA, dtype=dtype)  # rounded from the Python floats, as new_tensor did
    return tuple(t.to(device=device, dtype=dtype) for t in (luma, to_yiq, to_rgb))  # type: ignore[return-value]


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]; floating images are returned as float32 unchanged."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if images.is_floating_point():
        return images.float()
    raise TypeError(f"expected uint8 or floating images, got {images.dtype}")


class Uniforms:
    """Pre-drawn U[0, 1) numbers, a table [N, K], handed out column by column where :meth:`BatchAugment.draw`
    would draw from a ``torch.Generator`` (``rand(N)`` takes one column, ``rand(N, 4)`` four).

    For randomness seeded per sample instead of per batch: the streamed image folders draw each sample's
    row from a generator seeded by (seed, epoch, sample index) in their loader workers
    (cecl/data/streaming.py), so the views do not depend on workers, ranks or batch composition.
    ``COLUMNS`` covers every recipe (4 crop, 1 flip, 10 jitter, 1 grayscale); unused columns are ignored.
    """

    COLUMNS = 16

    def __init__(self, table: torch.Tensor) -> None:
        if table.ndim != 2 or table.shape[1] < self.COLUMNS:
            raise ValueError(f"expected a table [N, >= {self.COLUMNS}], got {list(table.shape)}")
        self.table = table
        self.used = 0

    @property
    def device(self) -> torch.device:
        return self.table.device

    def take(self, size: tuple[int, ...], device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
        """The next ``prod(size[1:])`` columns as a [size] tensor on ``device`` in ``dtype``."""
        n, columns = size[0], math.prod(size[1:])
        if n != len(self.table) or self.used + columns > self.table.shape[1]:
            raise ValueError(
                f"a draw of {list(size)} from uniforms {list(self.table.shape)} ({self.used} used)"
            )
        out = self.table[:, self.used : self.used + columns].reshape(size)
        self.used += columns
        return out.to(device=device, dtype=dtype or torch.get_default_dtype())


Randomness = torch.Generator | Uniforms


def _rand(
    size: tuple[int, ...], generator: Randomness, device: torch.device, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``torch.rand(size)`` from a generator, or the next columns of pre-drawn :class:`Uniforms`."""
    if isinstance(generator, Uniforms):
        return generator.take(size, device, dtype)
    return torch.rand(size, generator=generator, device=device, dtype=dtype)


def _uniform(low: float, high: float, n: int, like: torch.Tensor, generator: Randomness) -> torch.Tensor:
    u = _rand((n,), generator, like.device, like.dtype)
    return low + (high - low) * u


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 1, H, W] luma."""
    weights = colour_constants(images.device, images.dtype)[0].view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


@dataclass(frozen=True)
class ViewDraws:
    """The random parameters of N views (one row per view), drawn by :meth:`BatchAugment.draw`.

    Drawing is cheap ([N] tensors); applying them is the work. Splitting the two lets every process of a
    multi-process run draw the parameters of the WHOLE global batch from the shared generator (so the
    generator advances identically everywhere) and apply only its own rows (:meth:`rows`): a view's bytes
    then depend on its row of the global batch, never on how many processes share the batch.
    """

    boxes: torch.Tensor | None  # [N, 4] crop boxes (left, top, width, height) as fractions; None: cropped
    flip: torch.Tensor | None  # bool [N]: horizontal flip (None: the recipe has none)
    jitter: Jitter | None  # colour jitter (None: the recipe has none)
    gray: torch.Tensor | None  # bool [N]: grayscale (None: the recipe has none)
    n: int  # views

    def __len__(self) -> int:
        return self.n

    def rows(self, start: int, stop: int) -> ViewDraws:
        """The draws of views ``start:stop`` (views, not images: image i's V views are rows iV..iV+V-1)."""
        return ViewDraws(
            boxes=None if self.boxes is None else self.boxes[start:stop],
            flip=None if self.flip is None else self.flip[start:stop],
            jitter=None if self.jitter is None else self.jitter.rows(start, stop),
            gray=None if self.gray is None else self.gray[start:stop],
            n=stop - start,
        )

    def after_crop(self, device: torch.device) -> ViewDraws:
        """The draws without the crop boxes (applied already, e.g. image by image), copied to ``device``."""

        def to(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=True)

        jitter = self.jitter
        if jitter is not None:
            f = jitter.factors
            jitter = Jitter(
                to(jitter.apply), (to(f[0]), to(f[1]), to(f[2])), to(jitter.hue_maps), to(jitter.order)
            )
        flip = None if self.flip is None else to(self.flip)
        gray = None if self.gray is None else to(self.gray)
        return ViewDraws(None, flip, jitter, gray, n=self.n)


@dataclass(frozen=True)
class Jitter:
    """The colour jitter's draws of N views (:meth:`BatchAugment.draw_jitter`)."""

    apply: torch.Tensor  # bool [N]: jitter applied (probability color_jitter_p)
    factors: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # brightness, contrast, saturation [N]
    hue_maps: torch.Tensor  # [N, 3, 3] RGB -> RGB maps of the hue shifts
    order: torch.Tensor  # int64 [N, 4]: the order of the four ops per view

    def rows(self, start: int, stop: int) -> Jitter:
        f = self.factors
        return Jitter(
            self.apply[start:stop],
            (f[0][start:stop], f[1][start:stop], f[2][start:stop]),
            self.hue_maps[start:stop],
            self.order[start:stop],
        )


class BatchAugment:
    """Per-sample RandomResizedCrop, horizontal flip, colour jitter (with ``color_jitter_p``), grayscale.

    ``augment(images, generator)`` draws the parameters (:meth:`draw`), then applies them
    (:meth:`apply`); the two halves are public so that a process can draw a whole global batch's
    parameters and apply only its shard's (:func:`make_views` with ``batch_rows``).
    """

    def __init__(self, params: AugmentParams) -> None:
        self.params = params

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """float [B, C, H, W] in [0, 1] -> augmented float [B, C, H, W] in [0, 1] (C = 3 for colour ops)."""
        self.check(images, generator)
        b, _, h, w = images.shape
        return self.apply(images, self.draw(b, h, w, images, generator))

    def check(self, images: torch.Tensor, generator: torch.Generator) -> None:
        """Refuse images this recipe cannot augment, or a generator on another device than the images."""
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"expected float images [B, C, H, W], got {images.dtype} {list(images.shape)}")
        if images.shape[1] != 3 and self.params.needs_colour():
            raise ValueError(f"colour jitter and grayscale need 3-channel images, got {images.shape[1]}")
        if generator.device.type != images.device.type:
            raise ValueError(
                f"the generator is on {generator.device} but the images on {images.device}: "
                "create the generator on the images' device"
            )

    def draw(
        self, n: int, h: int | torch.Tensor, w: int | torch.Tensor, like: torch.Tensor, generator: Randomness
    ) -> ViewDraws:
        """The random parameters of ``n`` views of H x W images, on ``like``'s device, in its dtype.

        The generator is consumed in one fixed order (crop boxes, flips, jitter, grayscale: the order of
        the single-pass implementation before the split), so the same state gives the same views.
        ``h`` / ``w`` may be [n] tensors: images of different sizes (a batch of decoded JPEGs).
        """
        p = self.params
        boxes = self.sample_boxes(n, h, w, like, generator)
        flip = _rand((n,), generator, like.device) < p.hflip_p if p.hflip_p > 0 else None
        jitter = self.draw_jitter(n, like, generator) if p.color_jitter > 0 and p.color_jitter_p > 0 else None
        gray = _rand((n,), generator, like.device) < p.grayscale_p if p.grayscale_p > 0 else None
        return ViewDraws(boxes, flip, jitter, gray, n=n)

    def apply(self, images: torch.Tensor, draws: ViewDraws) -> torch.Tensor:
        """Apply ``draws`` (row i to image i) to float [B, C, H, W] in [0, 1]; draws no randomness.

        Every operation is per sample, so row i of the output depends only on image i and draw i.
        """
        if len(draws) != len(images):
            raise ValueError(f"{len(draws)} rows of draws for {len(images)} images")
        out = images if draws.boxes is None else crop_resize(images, draws.boxes)
        if draws.flip is not None:
            out = torch.where(draws.flip.view(-1, 1, 1, 1), out.flip(-1), out)
        if draws.jitter is not None:
            out = _jitter(out, draws.jitter)
        if draws.gray is not None:
            gray = _grayscale(out).expand_as(out)
            out = torch.where(draws.gray.view(-1, 1, 1, 1), gray, out)
        return out.clamp_(0.0, 1.0)

    def random_resized_crop(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A crop box per sample (:meth:`sample_boxes`), resized back to H x W (:func:`crop_resize`)."""
        b, _, h, w = images.shape
        return crop_resize(images, self.sample_boxes(b, h, w, images, generator))

    def sample_boxes(
        self, b: int, h: int | torch.Tensor, w: int | torch.Tensor, like: torch.Tensor, generator: Randomness
    ) -> torch.Tensor:
        """[B, 4] crop boxes (left, top, width, height) as fractions of the image's width / height.

        Like torchvision: area fraction ~ U[scale], aspect ratio log-uniform in [ratio]. Instead of
        torchvision's up-to-10 rejection tries the box is clipped into the image, and its size and
        position are continuous (sub-pixel), not rounded to whole pixels.
        """
        p = self.params
        area = _uniform(*p.crop_scale, b, like, generator)
        ratio = _uniform(math.log(p.crop_ratio[0]), math.log(p.crop_ratio[1]), b, like, generator).exp()
        # (box_w * W) * (box_h * H) = area * W * H and (box_w * W) / (box_h * H) = ratio:
        box_w = torch.sqrt(area * ratio * h / w).clamp(max=1.0)
        box_h = torch.sqrt(area / ratio * w / h).clamp(max=1.0)
        left = _rand((b,), generator, like.device, like.dtype) * (1 - box_w)
        top = _rand((b,), generator, like.device, like.dtype) * (1 - box_h)
        return torch.stack([left, top, box_w, box_h], dim=1)

    def draw_jitter(self, n: int, like: torch.Tensor, generator: Randomness) -> Jitter:
        """The colour jitter's draws (see :meth:`color_jitter`): applied?, 3 factors, hue, op order."""
        s = self.params.color_jitter
        apply = _rand((n,), generator, like.device) < self.params.color_jitter_p
        b, c, t = (_uniform(max(0.0, 1 - 0.4 * s), 1 + 0.4 * s, n, like, generator) for _ in range(3))
        hue = _uniform(-0.1 * s, 0.1 * s, n, like, generator)
        order = _rand((n, 4), generator, like.device).argsort(dim=1)
        return Jitter(apply, (b, c, t), _hue_transform(hue, like.device, like.dtype), order)

    def color_jitter(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """torchvision's ColorJitter(0.4s, 0.4s, 0.4s, 0.1s), per sample, applied with probability p.

        Brightness, contrast and saturation factors ~ U[1 - 0.4s, 1 + 0.4s], hue shift ~ U[-0.1s, 0.1s]
        (fraction of the colour circle), applied in a random order per sample like torchvision.
        The hue shift is a rotation of the chroma plane in YIQ space: an approximation of
        torchvision's HSV hue shift (same idea, not bit-identical), which needs no branchy HSV code.

        Each of the four positions of the order applies ONE colour map per sample, the op it drew there
        (:func:`_colour_step`), so the batch is transformed 4 times, not 16 (every op at every position,
        then a selection), and which op a sample gets is never read back from the device.
        """
        return _jitter(images, self.draw_jitter(len(images), images, generator))


def _jitter(images: torch.Tensor, jitter: Jitter) -> torch.Tensor:
    """Apply the jitter's draws (:meth:`BatchAugment.color_jitter`) to float [B, 3, H, W]."""
    out = images
    for step in range(4):
        out = _colour_step(out, jitter.order[:, step], list(jitter.factors), jitter.hue_maps)
    return torch.where(jitter.apply.view(-1, 1, 1, 1), out, images)


def crop_resize(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Crop each image to its box ([B, 4] left, top, width, height as fractions) and resize to H x W.

    One bilinear ``grid_sample`` (align_corners=False), i.e. torchvision's crop + bilinear resize
    for the upsampling a crop needs; the one difference is the outermost output row/column, which
    interpolates towards the real neighbouring pixel where torchvision replicates the crop's edge.
    """
    b, c, h, w = images.shape
    left, top, box_w, box_h = boxes.to(images.dtype).unbind(dim=1)
    # affine_grid maps output coords in [-1, 1] to input coords: x_in = box_w * x_out + centre_x.
    theta = images.new_zeros(b, 2, 3)
    theta[:, 0, 0] = box_w
    theta[:, 0, 2] = 2 * left + box_w - 1
    theta[:, 1, 1] = box_h
    theta[:, 1, 2] = 2 * top + box_h - 1
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _hue_transform(shift: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[B, 3, 3] RGB -> RGB maps rotating the (I, Q) chroma by ``2 pi shift``."""
    _, to_yiq, to_rgb = colour_constants(device, dtype)
    angle = 2 * math.pi * shift
    cos, sin = angle.cos(), angle.sin()
    rotation = torch.zeros(len(shift), 3, 3, device=device, dtype=dtype)
    rotation[:, 0, 0].fill_(1.0)  # not `= 1.0`: torch 2.11 lifts the scalar to a tensor first (a host copy)
    rotation[:, 1, 1] = cos
    rotation[:, 1, 2] = -sin
    rotation[:, 2, 1] = sin
    rotation[:, 2, 2] = cos
    return to_rgb @ rotation @ to_yiq


def _hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the (I, Q) chroma by ``2 pi shift`` (the YIQ approximation of an HSV hue shift)."""
    transform = _hue_transform(shift, images.device, images.dtype)
    out = torch.einsum("bij,bjhw->bihw", transform, images)
    return out.clamp(0.0, 1.0)


def _colour_step(
    images: torch.Tensor, op: torch.Tensor, factors: list[torch.Tensor], hue_maps: torch.Tensor
) -> torch.Tensor:
    """One position of the jitter order: sample b gets op ``op[b]`` as one per-sample map over the batch,
    ``clamp(M_b x + s_b * gray(x) + c_b, 0, 1)``, with f the op's factor:

      0 brightness  f * x                          M = f I
      1 contrast    f * x + (1 - f) * mean(gray)   M = f I, c = (1 - f) * mean of gray(x)
      2 saturation  f * x + (1 - f) * gray(x)      M = f I, s = 1 - f
      3 hue         the YIQ chroma rotation        M = ``hue_maps[b]``

    The unchosen terms are exact zeros, so each sample gets its op's own arithmetic.
    """
    gray = _grayscale(images)
    factor = torch.stack(factors, dim=1).gather(1, op.clamp(max=2).unsqueeze(1))  # [B, 1]; unused by hue
    eye = torch.eye(3, device=images.device, dtype=images.dtype)
    maps = torch.where((op == 3).view(-1, 1, 1), hue_maps, factor.unsqueeze(2) * eye)  # [B, 3, 3]
    out = torch.einsum("bij,bjhw->bihw", maps, images)
    f = factor.view(-1, 1, 1, 1)
    out += torch.where((op == 2).view(-1, 1, 1, 1), 1 - f, 0.0) * gray
    out += torch.where((op == 1).view(-1, 1, 1, 1), (1 - f) * gray.mean(dim=(1, 2, 3), keepdim=True), 0.0)
    return out.clamp_(0.0, 1.0)


def make_views(
    images: torch.Tensor,
    n_views: int,
    augment: BatchAugment | None,
    generator: torch.Generator,
    *,
    batch_rows: int | None = None,
    first_row: int = 0,
) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float [B, V, C, H, W]: V independently augmented views of each image.

    ``augment=None`` gives the images themselves (V copies, no randomness drawn): the vanilla
    cross-entropy baseline of the bias benchmarks trains without augmentation.

    A shard of a global batch: with ``batch_rows`` N, ``images`` are rows ``first_row ..
    first_row + B - 1`` of a global batch of N images. The parameters of all N x V views are drawn (the
    generator advances exactly as for the whole batch, in every process alike) and only this shard's
    are applied, so the work is the shard's and its bytes equal the same rows of the whole batch's
    views, whatever the number of processes (every operation is per sample).
    """
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    b = len(images)
    n = b if batch_rows is None else batch_rows
    if not (first_row >= 0 and first_row + b <= n):
        raise ValueError(f"rows {first_row}..{first_row + b - 1} are outside a global batch of {n}")
    x = to_float(images)
    if augment is None:
        return x.unsqueeze(1).expand(b, n_views, *x.shape[1:])
    repeated = x.unsqueeze(1).expand(b, n_views, *x.shape[1:]).reshape(b * n_views, *x.shape[1:])
    augment.check(repeated, generator)
    draws = augment.draw(n * n_views, x.shape[2], x.shape[3], repeated, generator)
    if n != b:
        draws = draws.rows(first_row * n_views, (first_row + b) * n_views)
    return augment.apply(repeated, draws).reshape(b, n_views, *x.shape[1:])
