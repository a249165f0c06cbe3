"""One batch prepared ahead (cecl/data/prefetch.py): the same items in the same order, exactly one ahead,
errors raised where the items are used, and a clean stop when the consumer stops early."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import torch

from cecl.data.prefetch import prefetched

CPU = torch.device("cpu")


def _numbers(n: int, made: list[int] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(n):
        if made is not None:
            made.append(i)
        yield torch.full((2, 3), float(i)), torch.tensor([i])


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_the_same_items_in_the_same_order(depth: int) -> None:
    inline = list(_numbers(7))
    ahead = list(prefetched(_numbers(7), CPU, depth))
    assert len(ahead) == 7
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(inline, ahead, strict=True)
    )


def test_exactly_depth_items_are_made_ahead() -> None:
    made: list[int] = []
    stream = prefetched(_numbers(10, made), CPU, 1)
    first = next(stream)
    assert int(first[1]) == 0
    for _ in range(200):  # the thread makes item 1 while item 0 is in use, then waits
        if len(made) == 2:
            break
        threading.Event().wait(0.01)
    threading.Event().wait(0.05)
    assert made == [0, 1]
    next(stream)
    threading.Event().wait(0.05)
    assert made == [0, 1, 2]
    stream.close()


def test_an_error_in_the_thread_is_raised_to_the_consumer_unchanged() -> None:
    def failing() -> Iterator[int]:
        yield 1
        raise LookupError("file x: not a readable image")

    stream = prefetched(failing(), CPU, 1)
    assert next(stream) == 1
    with pytest.raises(LookupError, match=r"^file x: not a readable image$"):
        next(stream)


def test_stopping_early_ends_the_thread_and_closes_the_source() -> None:
    closed = threading.Event()

    def source() -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            closed.set()

    before = threading.active_count()
    for item in prefetched(source(), CPU, 2):
        if item == 3:
            break
    assert closed.is_set() and threading.active_count() == before


def test_a_negative_depth_is_refused() -> None:
    with pytest.raises(ValueError, match="prefetch depth must be >= 0"):
        next(prefetched(iter([1]), CPU, -1))
