"""One byte buffer per batch (cecl/data/streaming.py): the worker's collate concatenates the files'
bytes with offsets, and the main process gets back exactly each file's bytes as views of one tensor."""

from __future__ import annotations

import torch

from cecl.data.streaming import _collate_bytes, split_buffer


def _items(lengths: list[int]) -> list[tuple[torch.Tensor, int, torch.Tensor, int]]:
    g = torch.Generator().manual_seed(0)
    return [
        (
            torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g),
            i % 3,
            torch.rand(2, 5, generator=g),
            10 + i,
        )
        for i, n in enumerate(lengths)
    ]


def test_the_buffer_gives_back_every_files_bytes_as_views() -> None:
    items = _items([5, 1, 0, 17, 3])  # an empty file included
    buffer, offsets, targets, uniforms, indices = _collate_bytes(items)
    assert buffer.dtype == torch.uint8 and buffer.dim() == 1 and len(buffer) == 26
    assert offsets.tolist() == [0, 5, 6, 6, 23, 26]
    files = split_buffer(buffer, offsets)
    assert [f.tolist() for f in files] == [item[0].tolist() for item in items]
    assert all(f.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr() for f in files)
    assert targets.tolist() == [0, 1, 2, 0, 1] and indices.tolist() == [10, 11, 12, 13, 14]
    assert torch.equal(uniforms, torch.stack([item[2] for item in items]))


def test_a_worker_sends_one_bytes_tensor_per_batch() -> None:
    from torch.utils.data import DataLoader

    items = _items([7, 9, 11, 13])
    loader = DataLoader(items, batch_size=4, num_workers=1, collate_fn=_collate_bytes)
    (batch,) = list(loader)
    buffer, offsets = batch[0], batch[1]
    assert isinstance(buffer, torch.Tensor)  # not a list of per-file tensors
    assert [f.tolist() for f in split_buffer(buffer, offsets)] == [item[0].tolist() for item in items]
