"""One batch prepared ahead: a background thread makes batch k+1 while the training step runs on batch k.

What: :func:`prefetched` yields exactly what an iterator yields, in the same order, but draws each next
item in a background thread as soon as the previous one was handed out. On CUDA the thread queues its
work (the JPEG decode, the crops, the jitter) on its own stream, and the consumer's stream waits on an
event recorded after each item, so the device overlaps the next batch's preparation with the step and
no host synchronisation is added.

Why: on a GPU the device-decode path (cecl/data/streaming.py) spends its host time receiving bytes and
queueing the decode and augmentation; done inline, the step waits for all of it every batch. A thread
suffices: the work is kernel launches and C++ calls that release the GIL.

Why hand-written: ``DataLoader`` prefetches in worker processes, which cannot queue CUDA work for the
training process; torch has no thread-and-stream prefetcher for an arbitrary iterator.

Determinism: the thread consumes the iterator alone and in order, so the items do not change; a
semaphore keeps at most ``depth`` items prepared ahead of the one being used (memory: ``depth`` extra
batches). An exception in the thread is raised in the consumer, unchanged. When the consumer stops early,
the thread finishes the item it is making and ends before the generator returns (a persistent loader's
iterator must not be read by two passes at once).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any, TypeVar

import torch

T = TypeVar("T")
_END = object()


def _record(item: Any, stream: torch.cuda.Stream) -> None:
    """Mark the tensors of ``item`` (a tensor or a tuple/list of them) as used on ``stream``."""
    if isinstance(item, torch.Tensor):
        if item.is_cuda:
            item.record_stream(stream)
    elif isinstance(item, tuple | list):
        for part in item:
            _record(part, stream)


def prefetched(items: Iterator[T], device: torch.device, depth: int = 1) -> Iterator[T]:
    """``items`` in order, each next one made in a background thread while the previous is in use.

    ``depth`` 0 returns the items inline (no thread). On CUDA the thread works on its own stream.
    """
    if depth < 0:
        raise ValueError(f"prefetch depth must be >= 0, got {depth}")
    if depth == 0:
        yield from items
        return
    cuda = device.type == "cuda"
    # the thread's CUDA device is not the caller's (it is per thread): the index is fixed here
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
    side = torch.cuda.Stream(index) if cuda else None
    ready: queue.Queue[tuple[Any, Any, BaseException | None]] = queue.Queue()
    slots = threading.Semaphore(depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            if index is not None:
                torch.cuda.set_device(index)
            with torch.cuda.stream(side) if side is not None else nullcontext():
                while True:
                    slots.acquire()
                    if stop.is_set():
                        return
                    item = next(items, _END)
                    if item is _END:
                        break
                    event = None
                    if side is not None:
                        event = torch.cuda.Event()
                        event.record(side)
                    ready.put((item, event, None))
        except BaseException as err:  # handed to the consumer, which raises it
            ready.put((_END, None, err))
            return
        ready.put((_END, None, None))

    thread = threading.Thread(target=produce, name="cecl-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, event, error = ready.get()
            if error is not None:
                raise error
            if item is _END:
                return
            if event is not None:
                current = torch.cuda.current_stream(device)
                current.wait_event(event)
                _record(item, current)
            slots.release()  # the next item may be made while this one is in use
            yield item
    finally:
        stop.set()
        slots.release()
        thread.join()
        close = getattr(items, "close", None)
        if close is not None:
            close()  # a generator's own cleanup (a loader pass), now that the thread is done with it
