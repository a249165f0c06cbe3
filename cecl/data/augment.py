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

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from cecl.schema import Strict

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


class AugmentParams(Strict):
    """Batched tensor augmentations applied independently to each view (see cecl/data/augment.py)."""

    crop_scale: tuple[float, float] = (0.6, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 4.0 / 3.0)
    color_jitter: float = Field(0.0, ge=0.0, le=1.0)  # strength s: ColorJitter(0.4s,0.4s,0.4s,0.1s)
    color_jitter_p: float = Field(0.8, ge=0.0, le=1.0)
    grayscale_p: float = Field(0.0, ge=0.0, le=1.0)
    hflip_p: float = Field(0.0, ge=0.0, le=1.0)  # horizontal flip (CIFAR-style recipes; never for digits)

    def needs_colour(self) -> bool:
        """Whether the recipe has colour operations (only defined on 3-channel images)."""
        return (self.color_jitter > 0 and self.color_jitter_p > 0) or self.grayscale_p > 0

    @field_validator("crop_scale", "crop_ratio")
    @classmethod
    def _ordered_positive(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        low, high = bounds
        if not 0.0 < low <= high:
            raise ValueError(f"needs 0 < low <= high, got {list(bounds)}")
        return bounds

    @field_validator("crop_scale")
    @classmethod
    def _scale_at_most_one(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        if bounds[1] > 1.0:
            raise ValueError(f"crop scale cannot exceed 1, got {list(bounds)}")
        return bounds


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]; floating images are returned as float32 unchanged."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if images.is_floating_point():
        return images.float()
    raise TypeError(f"expected uint8 or floating images, got {images.dtype}")


def _uniform(low: float, high: float, n: int, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, generator=generator, device=like.device, dtype=like.dtype)
    return low + (high - low) * u


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 1, H, W] luma."""
    weights = colour_constants(images.device, images.dtype)[0].view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


# SupContrast's recipe for natural images (the released CECL code applies it to every dataset; BiasCon's
# contrastive recipe for faces too): RandomResizedCrop(scale 0.2-1), horizontal flip, ColorJitter(0.4,
# 0.4, 0.4, 0.1) with p 0.8 (strength 1 in AugmentParams' convention), RandomGrayscale(0.2).
SUPCON_RECIPE = AugmentParams(
    crop_scale=(0.2, 1.0), color_jitter=1.0, color_jitter_p=0.8, grayscale_p=0.2, hflip_p=0.5
)


class BatchAugment:
    """Per-sample RandomResizedCrop, horizontal flip, colour jitter (with ``color_jitter_p``), grayscale."""

    def __init__(self, params: AugmentParams) -> None:
        self.params = params

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """float [B, C, H, W] in [0, 1] -> augmented float [B, C, H, W] in [0, 1] (C = 3 for colour ops)."""
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"expected float images [B, C, H, W], got {images.dtype} {list(images.shape)}")
        if images.shape[1] != 3 and self.params.needs_colour():
            raise ValueError(f"colour jitter and grayscale need 3-channel images, got {images.shape[1]}")
        if generator.device.type != images.device.type:
            raise ValueError(
                f"the generator is on {generator.device} but the images on {images.device}: "
                "create the generator on the images' device"
            )
        out = self.random_resized_crop(images, generator)
        p = self.params
        if p.hflip_p > 0:
            flip = torch.rand(len(out), generator=generator, device=out.device) < p.hflip_p
            out = torch.where(flip.view(-1, 1, 1, 1), out.flip(-1), out)
        if p.color_jitter > 0 and p.color_jitter_p > 0:
            out = self.color_jitter(out, generator)
        if p.grayscale_p > 0:
            apply = torch.rand(len(out), generator=generator, device=out.device) < p.grayscale_p
            gray = _grayscale(out).expand_as(out)
            out = torch.where(apply.view(-1, 1, 1, 1), gray, out)
        return out.clamp_(0.0, 1.0)

    def random_resized_crop(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A crop box per sample (:meth:`sample_boxes`), resized back to H x W (:func:`crop_resize`)."""
        b, _, h, w = images.shape
        return crop_resize(images, self.sample_boxes(b, h, w, images, generator))

    def sample_boxes(
        self, b: int, h: int, w: int, like: torch.Tensor, generator: torch.Generator
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
        left = torch.rand(b, generator=generator, device=like.device, dtype=like.dtype) * (1 - box_w)
        top = torch.rand(b, generator=generator, device=like.device, dtype=like.dtype) * (1 - box_h)
        return torch.stack([left, top, box_w, box_h], dim=1)

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
        b = len(images)
        s = self.params.color_jitter
        apply = torch.rand(b, generator=generator, device=images.device) < self.params.color_jitter_p
        factors = [_uniform(max(0.0, 1 - 0.4 * s), 1 + 0.4 * s, b, images, generator) for _ in range(3)]
        hue = _uniform(-0.1 * s, 0.1 * s, b, images, generator)
        order = torch.rand(b, 4, generator=generator, device=images.device).argsort(dim=1)
        hue_maps = _hue_transform(hue, images.device, images.dtype)
        out = images
        for step in range(4):
            out = _colour_step(out, order[:, step], factors, hue_maps)
        return torch.where(apply.view(-1, 1, 1, 1), out, images)


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
    rotation[:, 0, 0] = 1.0
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
    images: torch.Tensor, n_views: int, augment: BatchAugment | None, generator: torch.Generator
) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float [B, V, C, H, W]: V independently augmented views of each image.

    ``augment=None`` gives the images themselves (V copies, no randomness drawn): the vanilla
    cross-entropy baseline of the bias benchmarks trains without augmentation.
    """
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    x = to_float(images)
    if augment is None:
        return x.unsqueeze(1).expand(len(x), n_views, *x.shape[1:])
    b = len(x)
    repeated = x.unsqueeze(1).expand(b, n_views, *x.shape[1:]).reshape(b * n_views, *x.shape[1:])
    return augment(repeated, generator).reshape(b, n_views, *x.shape[1:])
