"""The training loop under torchrun: two gloo processes train like one process on the global batch.

Each process runs ``run_pretraining`` exactly as ``stages/pretrain.py`` does under torchrun. The encoder is
BatchNorm-free here because on CPU BatchNorm statistics are per process by design (SyncBatchNorm, which the
loop uses on CUDA, needs a GPU); everything else (sharding of the global batch, the gathered global loss,
DDP's gradient averaging, momentum updates and queues) must match one process within float32 round-off.

The BN-free encoder replaces ``RunSetup.make_encoder`` (the one seam every method builder gets its encoder
from), patched with ``monkeypatch`` in the main process and with a ``MonkeyPatch.context`` in each spawned
process, so the patch ends with the test and cannot reach later tests.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from cecl.pipeline import RunSetup
from tests.helpers import bn_free_make_encoder, run_bn_free_rank, spawn_ranks, train_tiny

WORLD = 2
# (method, global batch size): 31 splits unevenly (16 + 15) across the two processes.
CASES = (("cecl", 31), ("ce", 32), ("supmoco", 32))
TOLERANCE = 1e-4
CPU = torch.device("cpu")


def _worker(process: int, out_dir: str, port: int) -> None:
    out = Path(out_dir)
    run_bn_free_rank(
        process,
        WORLD,
        port,
        out,
        lambda: {m: train_tiny(m, size, out / f"{m}-rank{process}.ckpt", CPU) for m, size in CASES},
    )


@pytest.mark.slow
def test_two_processes_train_like_one_process_on_the_global_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RunSetup, "make_encoder", bn_free_make_encoder)
    ranks = spawn_ranks(_worker, tmp_path, WORLD)
    torch.set_num_threads(1)
    for method, size in CASES:
        reference = train_tiny(method, size, tmp_path / f"{method}-single.ckpt", CPU)
        for r, got in enumerate(ranks):
            got = got[method]
            # The patch reached every process: no BatchNorm statistics anywhere in the trained method.
            assert not [k for k in got["state"] if "running_" in k], (method, r)
            assert got["state"].keys() == reference["state"].keys(), (method, r)
            for a, b in zip(got["losses"], reference["losses"], strict=True):
                assert a == pytest.approx(b, rel=TOLERANCE), (method, r, got["losses"], reference["losses"])
            for key, value in reference["state"].items():
                diff = float((got["state"][key].double() - value.double()).abs().max())
                assert diff <= TOLERANCE, f"{method} rank {r}: {key} differs by {diff:.2e}"
        # Rank 0 alone checkpoints; every process runs the monitor (each extracts its shard of the
        # features) and gets the single process's value.
        assert ranks[0][method]["checkpoint_written"] and not ranks[1][method]["checkpoint_written"]
        for r, got in enumerate(ranks):
            assert not any(math.isnan(a) for a in got[method]["accuracies"]), (method, r)
            assert got[method]["accuracies"] == pytest.approx(reference["accuracies"], abs=1e-6), (method, r)
