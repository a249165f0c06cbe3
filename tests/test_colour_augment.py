"""The paper's colour recipe on BiasedMNIST (3 channels), set per entry with ``augment:``.

The recipe (docs/datasets.md, "Colour augmentation on BiasedMNIST"): ColorJitter(0.4, 0.4, 0.4, 0.1) with
p 0.8 and grayscale with p 0.2 on top of the entry's crops. Checked on real BiasedMNIST-coloured images
(``cecl.datasets.biased_mnist.colourize``): about 20% of views come out grey (R = G = B everywhere) and
the background colour of the others moves, while the default recipe (crops only) keeps every view's
background one of the ten palette colours; one pretraining epoch runs with it.
"""

from __future__ import annotations

import numpy as np
import torch

from cecl.data.augment import BatchAugment
from cecl.datasets.biased_mnist import colourize
from cecl.train.loop import run_pretraining
from tests.helpers import DATASET, synthetic_split, tiny_params, tiny_setup

PAPER = {"crop_scale": [0.6, 1.0], "color_jitter": 1.0, "color_jitter_p": 0.8, "grayscale_p": 0.2}


def _digits(n: int) -> torch.Tensor:
    """n BiasedMNIST-coloured 'digits' (a white bar on a palette background), float [n, 3, 28, 28]."""
    grey = np.zeros((n, 28, 28), dtype=np.uint8)
    grey[:, 6:22, 12:16] = 200
    colours = np.arange(n) % 9  # palette colour 9 is grey (R = G = B) already: left out
    return torch.from_numpy(colourize(grey, colours)).float() / 255


def test_the_paper_recipe_is_an_entrys_augment_and_changes_colour() -> None:
    params = tiny_params(datasets={DATASET: {"augment": PAPER}})
    recipe = params.spec(DATASET).augment
    assert (recipe.color_jitter, recipe.color_jitter_p, recipe.grayscale_p) == (1.0, 0.8, 0.2)
    assert params.spec(DATASET).channels == 3 and recipe.needs_colour()

    images = _digits(2000)
    corner = images[:, :, 0, 0]  # a background pixel: the palette colour (crops keep it background)
    palette = {tuple(round(float(v), 3) for v in c) for c in corner}
    out = BatchAugment(recipe)(images, torch.Generator().manual_seed(0))
    grey = (out.amax(1) - out.amin(1)).amax((1, 2)) < 1e-6  # R = G = B at every pixel
    assert 0.17 < grey.float().mean() < 0.23  # grayscale p 0.2
    moved = (out[:, :, 0, 0] - corner).abs().amax(1) > 0.02
    assert moved[~grey].float().mean() > 0.7  # jitter p 0.8 (a small draw can leave a colour in place)

    default = BatchAugment(tiny_params().spec(DATASET).augment)(images, torch.Generator().manual_seed(0))
    kept = {tuple(round(float(v), 3) for v in c) for c in default[:, :, 0, 0]}
    assert kept <= palette  # crops only: every background stays a palette colour


def test_one_pretraining_epoch_runs_with_the_paper_recipe() -> None:
    params = tiny_params(datasets={DATASET: {"augment": PAPER}}, pretrain={"epochs": 1})
    setup = tiny_setup("cecl", params)
    assert setup.recipe.augment.grayscale_p == 0.2
    splits = {"train": synthetic_split(64, 0), "val": synthetic_split(32, 1)}
    _, history = run_pretraining(
        setup, splits["train"], splits["val"], torch.device("cpu"), "fp", progress=False
    )
    assert len(history) == 1 and np.isfinite(history[0].train_loss)
