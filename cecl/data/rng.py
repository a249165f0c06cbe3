"""The seeded generator every split, subsample and shuffle draws from (torch-free).

Below the dataset plug-ins (cecl/datasets/splitting.py draws the splits from it) and the loaders
(cecl/data/streaming.py shuffles image folders with it), so neither imports the other for it.
"""

from __future__ import annotations

import hashlib

import numpy as np


def seeded_rng(seed: int, *purpose: object) -> np.random.Generator:
    """A generator seeded from ``seed`` and a purpose (e.g. rho and split), independent of call order."""
    text = ":".join(repr(part) for part in (seed, *purpose))
    entropy = int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "little")
    return np.random.default_rng(np.random.SeedSequence(entropy))
