"""The augmentation recipe's schema (params.yaml ``augment``) and SupContrast's recipe, torch-free.

Apart from cecl/data/augment.py, which applies a recipe to tensors, so that reading a params file or a
dataset family's options (cecl/config.py, cecl/datasets) does not load torch.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from cecl.schema import Strict

__all__ = ["SUPCON_RECIPE", "AugmentParams"]


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


# SupContrast's recipe for natural images (the released CECL code applies it to every dataset; BiasCon's
# contrastive recipe for faces too): RandomResizedCrop(scale 0.2-1), horizontal flip, ColorJitter(0.4,
# 0.4, 0.4, 0.1) with p 0.8 (strength 1 in AugmentParams' convention), RandomGrayscale(0.2).
SUPCON_RECIPE = AugmentParams(
    crop_scale=(0.2, 1.0), color_jitter=1.0, color_jitter_p=0.8, grayscale_p=0.2, hflip_p=0.5
)
