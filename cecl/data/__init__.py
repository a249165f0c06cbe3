"""Batched view augmentations (per image and per view random crops, flips, colour jitter, grayscale)."""

from cecl.data.augment import AugmentParams, BatchAugment, make_views, to_float

__all__ = ["AugmentParams", "BatchAugment", "make_views", "to_float"]
