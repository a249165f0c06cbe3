"""Slots sized from what a stage asks (cecl/launch/slots.py): the sweep holds ``gpus_per_trial x
max_concurrent`` GPUs on a GPU host (capped at the launch's largest, one slot on a CPU host), and a probe
or transfer stage whose planned probe memory exceeds a light stage's share of the card holds a whole GPU.
The arithmetic is checked against hand-computed values, on CPU-only machines (no CUDA used)."""

from __future__ import annotations

import pytest

from cecl.launch.slots import Slots, local_slots, stage_sizes, sweep_gpus
from cecl.plan.estimate import probe_stage_gib
from tests.helpers import tiny_params

ENTRY = {"family": "biased_mnist", "rho": 0.99, "train_size": 128, "val_size": 64, "test_size": 64}


@pytest.mark.parametrize(
    ("per_trial", "concurrent", "gpus"),
    [
        (1.0, 4, 4),
        (0.5, 2, 1),
        (0.5, 3, 2),
        (0.0, 2, 1),
        (0.1, 10, 1),
        (0.25, 3, 1),
        (2.0, 3, 6),
        (0.3, 4, 2),
    ],
)
def test_sweep_gpus_are_the_concurrent_trials_reservations(
    per_trial: float, concurrent: int, gpus: int
) -> None:
    assert sweep_gpus(per_trial, concurrent) == gpus


def _sweep_params(per_trial: float, concurrent: int):  # type: ignore[no-untyped-def]
    params = tiny_params(pretrain={"methods": ["cecl"]})
    sweep = params.sweep.model_copy(update={"gpus_per_trial": per_trial, "max_concurrent": concurrent})
    return params.model_copy(update={"sweep": sweep})


def test_the_sweep_holds_its_trials_gpus_on_a_gpu_host_only() -> None:
    sizes = stage_sizes(_sweep_params(1.0, 4))
    assert sizes["sweep"] == 4
    gpu = Slots("gpu", 8, threads=2, sizes=sizes, largest=8)
    assert gpu.task_resources("sweep") == {"num_gpus": 4, "num_cpus": 0}
    assert "the sweep holds 4 GPU(s)" in gpu.describe()
    small = Slots("gpu", 2, threads=2, sizes=sizes, largest=2)  # fewer GPUs: fewer trials at once
    assert small.task_resources("sweep") == {"num_gpus": 2, "num_cpus": 0}
    small.check(["sweep"])  # never refused: Ray queues the trials that do not fit
    cpu = Slots("cpu", 8, threads=2, sizes=sizes, largest=8)
    assert cpu.task_resources("sweep") == {"num_cpus": 2}  # a CPU host: one slot, as before
    assert "sweep" not in stage_sizes(_sweep_params(0.5, 2))  # one GPU: the default


def test_a_probe_over_a_light_share_of_the_card_holds_a_whole_gpu() -> None:
    params = tiny_params(datasets={"bm": ENTRY}, pretrain={"methods": ["ce", "cecl"]})
    planned = probe_stage_gib(params)
    assert set(planned) == {"probe@bm-ce-0", "probe@bm-cecl-0"}
    gib = planned["probe@bm-ce-0"]
    assert 0 < gib == planned["probe@bm-cecl-0"]  # the same features and rows (tests/test_plan_probe.py)
    for share in (0.25, 0.5):
        big = stage_sizes(params, share, card_gib=0.99 * gib / share)  # just over the share: whole GPU
        small = stage_sizes(params, share, card_gib=1.01 * gib / share)  # just under: a share, as before
        assert big["probe@bm-ce-0"] == 1 and "probe@bm-ce-0" not in small
        gpu = Slots("gpu", 4, threads=1, light_share=share, sizes=big, largest=4)
        assert gpu.task_resources("probe@bm-ce-0") == {"num_gpus": 1, "num_cpus": 0}
        assert gpu.task_resources("prepare@bm") == {"num_gpus": share, "num_cpus": 0}
        assert "2 large probe stage(s) hold a whole GPU each" in gpu.describe()
        cpu = Slots("cpu", 4, threads=2, light_share=share, sizes=big, largest=4)
        assert cpu.task_resources("probe@bm-ce-0") == {"num_cpus": 2 * share}  # CPU hosts: unchanged


def test_the_cpu_default_sizes_are_unchanged() -> None:
    params = tiny_params(pretrain={"methods": ["ce", "cecl"]})
    assert stage_sizes(params) == {"pretrain@bm-ce-0": 1, "pretrain@bm-cecl-0": 1}
    slots = local_slots(2, "cpu", 1, 0.25, stage_sizes(params))
    assert slots.task_resources("sweep") == {"num_cpus": 1} and slots.task_resources("probe@bm-ce-0") == {
        "num_cpus": 0.25
    }
