"""Retries that follow a training stage's progress: a stage that advanced its checkpoint runs again.

Why: one ImageNet32 pretrain run is 80-240 GPU-hours; a fixed number of retries gives up on a long run
that crashes now and then (a node lost, an NCCL hang killed by a timeout) although every attempt resumed
from its last epoch (stages/pretrain.py checkpoints every epoch under ``checkpoints/``, see
:attr:`cecl.runs.RunKey.checkpoint`). The rule (:class:`RetryRule`): a failed stage is retried whenever
its checkpoint's epoch count went up since its last failure (or since it was first submitted); otherwise
at most ``limit`` times in a row (``--retries``). Stages without a checkpoint get ``limit`` retries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


def checkpoint_epochs(path: Path | None) -> int | None:
    """Epochs a pretrain checkpoint holds (``len(state["history"])``); 0 when absent or unreadable,
    None when the stage has no checkpoint. Memory-mapped: the weights are not read."""
    if path is None:
        return None
    if not path.is_file():
        return 0
    import torch  # only when a checkpoint exists: most stages never pay the import

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return len(state["history"])
    except Exception:  # a half-written or foreign file: the stage itself starts from scratch then
        return 0


@dataclass
class RetryRule:
    """Whether a failed stage runs again: after progress always, else ``limit`` times in a row."""

    limit: int
    _last: dict[str, int] = field(default_factory=dict)  # epochs at the stage's last failure
    _stalled: dict[str, int] = field(default_factory=dict)  # failures in a row without progress

    def allow(self, stage: str, before: int | None, after: int | None) -> bool:
        """Record a failure of ``stage`` whose attempt started with ``before`` checkpointed epochs and
        ended with ``after`` (None: no checkpoint); True if it should run again."""
        last = self._last.get(stage, before)
        progressed = after is not None and last is not None and after > last
        if after is not None:
            self._last[stage] = after
        self._stalled[stage] = 0 if progressed else self._stalled.get(stage, 0) + 1
        return progressed or self._stalled[stage] <= self.limit

    def stalled(self, stage: str) -> int:
        """Failures of ``stage`` in a row without progress (for the launcher's messages)."""
        return self._stalled.get(stage, 0)
