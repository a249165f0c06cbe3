"""Per-rank augmentation: each process draws the augmentation parameters of the whole global batch from
the shared generator and applies only its shard's (cecl/data/augment.py ``make_views(batch_rows=...)``,
cecl/data/streaming.py ``TensorBatchSource``).

What must hold: a shard's views are byte-identical to the same rows of the whole batch's views (so they do
not depend on the number of processes), one process gives the views the single-pass implementation gave
(kept below as an independent reference), the generator ends in the same state, and the work per
process is its shard.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cecl import distributed
from cecl.data.augment import SUPCON_RECIPE, AugmentParams, BatchAugment, crop_resize, make_views, to_float
from cecl.data.streaming import TensorBatchSource
from tests.helpers import join_process_group, spawn_ranks, synthetic_split

RECIPES = {
    "supcon": SUPCON_RECIPE,
    "crop only": AugmentParams(),
    "jitter + gray, no flip": AugmentParams(crop_scale=(0.3, 0.9), color_jitter=0.5, grayscale_p=0.3),
}


def _single_pass(augment: BatchAugment, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``BatchAugment.__call__`` as written before the draw / apply split, verbatim but for the names:
    crop, then the flip draw, the jitter, the grayscale draw, interleaved with their application."""
    out = augment.random_resized_crop(images, generator)
    p = augment.params
    if p.hflip_p > 0:
        flip = torch.rand(len(out), generator=generator, device=out.device) < p.hflip_p
        out = torch.where(flip.view(-1, 1, 1, 1), out.flip(-1), out)
    if p.color_jitter > 0 and p.color_jitter_p > 0:
        out = augment.color_jitter(out, generator)
    if p.grayscale_p > 0:
        apply = torch.rand(len(out), generator=generator, device=out.device) < p.grayscale_p
        luma = torch.tensor([0.2989, 0.587, 0.114], dtype=out.dtype).view(1, 3, 1, 1)
        gray = (out * luma).sum(dim=1, keepdim=True).expand_as(out)
        out = torch.where(apply.view(-1, 1, 1, 1), gray, out)
    return out.clamp_(0.0, 1.0)


def _old_make_views(images: torch.Tensor, n_views: int, augment: BatchAugment, generator: torch.Generator):
    x = to_float(images)
    b = len(x)
    repeated = x.unsqueeze(1).expand(b, n_views, *x.shape[1:]).reshape(b * n_views, *x.shape[1:])
    return _single_pass(augment, repeated, generator).reshape(b, n_views, *x.shape[1:])


def _images(n: int, h: int = 24, w: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, 3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
    )


@pytest.mark.parametrize("recipe", RECIPES.values(), ids=RECIPES.keys())
@pytest.mark.parametrize("n_views", [1, 2, 3])
def test_one_process_gives_the_single_pass_views(recipe: AugmentParams, n_views: int) -> None:
    augment, images = BatchAugment(recipe), _images(13)
    gen_new, gen_old = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert torch.equal(
        make_views(images, n_views, augment, gen_new), _old_make_views(images, n_views, augment, gen_old)
    )
    assert torch.equal(gen_new.get_state(), gen_old.get_state())  # the same draws, in the same order


@pytest.mark.parametrize("recipe", RECIPES.values(), ids=RECIPES.keys())
@pytest.mark.parametrize("world", [2, 3, 5])
def test_a_shard_is_the_same_rows_of_the_whole_batch(recipe: AugmentParams, world: int) -> None:
    """13 images split unevenly: each process's views equal the rows of the one-process views, byte for
    byte, and every process's generator ends where the one process's does."""
    augment, images, n_views = BatchAugment(recipe), _images(13), 2
    whole_gen = torch.Generator().manual_seed(7)
    whole = make_views(images, n_views, augment, whole_gen)
    for process in range(world):
        start, stop = distributed.shard_bounds(len(images), process, world)
        gen = torch.Generator().manual_seed(7)
        shard = make_views(images[start:stop], n_views, augment, gen, batch_rows=len(images), first_row=start)
        assert torch.equal(shard, whole[start:stop]), (world, process)
        assert torch.equal(gen.get_state(), whole_gen.get_state())


def test_make_views_refuses_rows_outside_the_batch() -> None:
    with pytest.raises(ValueError, match="outside a global batch of 4"):
        make_views(_images(3), 2, BatchAugment(AugmentParams()), torch.Generator(), batch_rows=4, first_row=2)


def test_draw_then_apply_is_the_call() -> None:
    augment = BatchAugment(SUPCON_RECIPE)
    x = to_float(_images(6))
    draws = augment.draw(6, 24, 20, x, torch.Generator().manual_seed(1))
    assert torch.equal(augment.apply(x, draws), augment(x, torch.Generator().manual_seed(1)))
    assert torch.equal(crop_resize(x[2:4], draws.rows(2, 4).boxes), crop_resize(x, draws.boxes)[2:4])
    with pytest.raises(ValueError, match="6 rows of draws for 2 images"):
        augment.apply(x[:2], draws)


# ----------------------------------------------------------------------------- the in-memory source


def _batches(source: TensorBatchSource, epoch: int, size: int, rank: int, world: int) -> list:
    return list(source.epoch_batches(epoch, size, 2, rank=rank, world_size=world))


@pytest.mark.parametrize(("size", "world"), [(32, 2), (23, 2), (23, 3)])
def test_tensor_source_shards_do_not_depend_on_the_world_size(size: int, world: int) -> None:
    source = TensorBatchSource(synthetic_split(70, seed=1), seed=5, augment=BatchAugment(SUPCON_RECIPE))
    for epoch in (0, 2):
        one = _batches(source, epoch, size, 0, 1)
        # The reference of the one-process run: the single-pass views of each whole global batch.
        generator = torch.Generator().manual_seed(5 * 1_000_003 + epoch)
        order = torch.randperm(70, generator=generator)
        for step, (views, targets) in enumerate(one):
            idx = order[step * size : (step + 1) * size]
            assert torch.equal(views, _old_make_views(source.split.images[idx], 2, source.augment, generator))
            assert torch.equal(targets, source.split.targets[idx])
        for rank in range(world):
            start, stop = distributed.shard_bounds(size, rank, world)
            for (views, targets), (whole, whole_targets) in zip(
                _batches(source, epoch, size, rank, world), one, strict=True
            ):
                assert torch.equal(views, whole[start:stop]) and torch.equal(
                    targets, whole_targets[start:stop]
                )


def test_each_rank_augments_only_its_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    rows: list[int] = []
    apply = BatchAugment.apply
    monkeypatch.setattr(
        BatchAugment,
        "apply",
        lambda self, images, draws: rows.append(len(images)) or apply(self, images, draws),
    )
    source = TensorBatchSource(synthetic_split(70, seed=1), seed=5, augment=BatchAugment(SUPCON_RECIPE))
    _batches(source, 0, 31, 1, 2)
    assert rows == [15 * 2, 15 * 2]  # rank 1's 15 of 31 images, 2 views each, per step


# ----------------------------------------------------------------------------- two real processes

WORLD = 2


def _worker(process: int, out_dir: str, port: int) -> None:
    join_process_group(process, WORLD, port)
    try:
        source = TensorBatchSource(synthetic_split(70, seed=1), seed=5, augment=BatchAugment(SUPCON_RECIPE))
        batches = list(source.epoch_batches(1, 31, 2))  # rank and world size from the process group
        declared = distributed.declared_global_batch()
    finally:
        distributed.cleanup()
    torch.save({"batches": batches, "declared": declared}, Path(out_dir) / f"rank{process}.pt")


@pytest.mark.slow
def test_two_gloo_processes_augment_their_shards_like_one_process(tmp_path: Path) -> None:
    ranks = spawn_ranks(_worker, tmp_path, WORLD)
    source = TensorBatchSource(synthetic_split(70, seed=1), seed=5, augment=BatchAugment(SUPCON_RECIPE))
    one = _batches(source, 1, 31, 0, 1)
    for rank, got in enumerate(ranks):
        start, stop = distributed.shard_bounds(31, rank, WORLD)
        assert got["declared"] == 31  # the gathers know every rank's size from the shard bounds
        for (views, targets), (whole, whole_targets) in zip(got["batches"], one, strict=True):
            assert torch.equal(views, whole[start:stop]) and torch.equal(targets, whole_targets[start:stop])
