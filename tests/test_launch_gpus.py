"""The launcher on GPU hosts: GPUs per stage from the entry's recipe, retries that follow progress.

Unit tests: the Ray resources of each stage kind (a pretrain stage holds its entry's
``pretrain.processes`` GPUs), the one-line refusal of a stage larger than the launch, the retry rule and
the checkpoint's epoch count it reads, the scheduler's resubmission and the default timeouts.
Slow tests: ``python -m cecl.launch --jobs 8`` on a toy pipeline under a fake 8-GPU host (Ray started
with ``num_gpus=8`` and CUDA_VISIBLE_DEVICES of 8 ids, no CUDA used), reading from inside each stage's
command (and a child process, as torchrun's) which GPUs it got; and a toy pretrain stage that crashes
after each epoch is retried until it finishes, while one that never progresses stops after ``--retries``.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from cecl.launch.__main__ import LaunchError, _timeout, parse_args, schedule
from cecl.launch.dag import Plan
from cecl.launch.progress import RetryRule, checkpoint_epochs
from cecl.launch.slots import Slots, cluster_slots, local_slots, stage_sizes
from cecl.launch.tasks import StageFailed, sorted_devices
from cecl.train.checkpoint import save_checkpoint
from tests.helpers import tiny_params
from tests.test_launcher import PARAMS, _launch, _toy_repo

ENTRY = {"family": "biased_mnist", "rho": 0.99, "train_size": 128, "val_size": 64, "test_size": 64}
BIG = {**ENTRY, "overrides": {"pretrain": {"processes": 8}}}


# ------------------------------------------------------------------------------------ resources per stage


def test_a_pretrain_stage_holds_its_entrys_processes_and_other_kinds_one_or_a_share() -> None:
    params = tiny_params(datasets={"big": BIG}, pretrain={"datasets": ["bm", "big"], "methods": ["ce"]})
    sizes = stage_sizes(params)
    assert sizes == {"pretrain@bm-ce-0": 1, "pretrain@big-ce-0": 8}
    gpu = Slots("gpu", 8, threads=2, light_share=0.25, sizes=sizes, largest=8)
    assert gpu.task_resources("pretrain@big-ce-0") == {"num_gpus": 8, "num_cpus": 0}
    assert gpu.task_resources("pretrain@bm-ce-0") == {"num_gpus": 1, "num_cpus": 0}
    assert gpu.task_resources("sweep") == {"num_gpus": 1, "num_cpus": 0}
    for light in ("prepare@big", "probe@big-ce-0", "transfer@bm-big-ce-0", "aggregate"):
        assert gpu.task_resources(light) == {"num_gpus": 0.25, "num_cpus": 0}
    # CPU host: a processes-k entry holds k CPU slots (k gloo processes of `threads` threads each).
    cpu = Slots("cpu", 8, threads=2, light_share=0.25, sizes=sizes, largest=8)
    assert cpu.task_resources("pretrain@big-ce-0") == {"num_cpus": 16}
    assert cpu.task_resources("pretrain@bm-ce-0") == {"num_cpus": 2}
    assert cpu.task_resources("probe@bm-ce-0") == {"num_cpus": 0.5}
    assert "hold 8 slots" in gpu.describe()


def test_a_stage_larger_than_the_launch_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(8))))
    sizes = {"pretrain@big-ce-0": 8, "pretrain@bm-ce-0": 1}
    slots = local_slots(8, "auto", None, 0.25, sizes)
    assert slots.device == "gpu" and slots.local_ray_init()["num_gpus"] == 8
    slots.check(["prepare@big", "pretrain@bm-ce-0", "pretrain@big-ce-0", "sweep"])
    small = local_slots(2, "auto", None, 0.25, sizes)
    small.check(["pretrain@bm-ce-0", "probe@big-ce-0"])  # the big one is not in this launch
    with pytest.raises(ValueError) as err:
        small.check(["pretrain@bm-ce-0", "pretrain@big-ce-0"])
    assert str(err.value) == (
        "stage 'pretrain@big-ce-0' needs 8 GPUs (its dataset entry's pretrain.processes) but --jobs is 2 "
        "(this host has 8 GPU(s)): raise --jobs on a larger host, or lower the entry's processes"
    )
    cpu = local_slots(4, "cpu", 1, 0.25, sizes)
    with pytest.raises(ValueError, match=r"needs 8 CPU slots .* but --jobs is 4"):
        cpu.check(["pretrain@big-ce-0"])


def test_on_a_cluster_a_stage_must_fit_on_its_largest_node() -> None:
    nodes = [{"CPU": 16.0, "GPU": 4.0}, {"CPU": 32.0, "GPU": 8.0}]
    slots = cluster_slots(nodes, "auto", None, 0.25, {"pretrain@big-ce-0": 8, "pretrain@huge-ce-0": 16})
    assert slots.device == "gpu" and slots.largest == 8
    slots.check(["pretrain@big-ce-0"])
    with pytest.raises(ValueError, match="largest node has 8 GPU"):
        slots.check(["pretrain@huge-ce-0"])
    cpu = cluster_slots([{"CPU": 16.0}], "auto", 4, 0.25, {"pretrain@big-ce-0": 8})
    assert cpu.device == "cpu" and cpu.largest == 4
    with pytest.raises(ValueError, match="needs 8 CPU slots"):
        cpu.check(["pretrain@big-ce-0"])


def test_a_stages_gpu_ids_are_sorted_for_torchrun() -> None:
    assert sorted_devices("10,3,7,0") == "0,3,7,10"
    assert sorted_devices("GPU-b,GPU-a") == "GPU-b,GPU-a"  # UUIDs: left as Ray gave them


# ------------------------------------------------------------------------------ retries, timeouts, flags


def test_retries_continue_while_the_checkpoint_advances_and_stop_after_the_limit_without() -> None:
    rule = RetryRule(limit=1)
    # A pretrain stage resumed at epoch 10: progress on every failure keeps it going, whatever the count.
    assert rule.allow("p", before=10, after=12)
    assert rule.allow("p", before=12, after=13)
    assert rule.allow("p", before=13, after=13)  # first failure without progress: the one retry
    assert not rule.allow("p", before=13, after=13)  # second in a row: given up
    # Progress resets the count of failures without progress.
    rule = RetryRule(limit=1)
    assert rule.allow("q", 0, 0) and rule.allow("q", 0, 1) and rule.allow("q", 1, 1)
    assert rule.stalled("q") == 1 and not rule.allow("q", 1, 1)
    # A checkpoint from an older run that the new attempt replaced with fewer epochs is no progress.
    assert not RetryRule(limit=0).allow("r", before=50, after=3)
    # Stages without a checkpoint: `limit` retries.
    rule = RetryRule(limit=2)
    assert [rule.allow("s", None, None) for _ in range(3)] == [True, True, False]
    assert not RetryRule(limit=0).allow("t", None, None)


def test_the_checkpoints_epoch_count(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    assert checkpoint_epochs(None) is None and checkpoint_epochs(path) == 0
    history = [{"epoch": e, "train_loss": 1.0 / e} for e in (1, 2, 3)]
    save_checkpoint(path, {"fingerprint": "f", "method": {"w": torch.zeros(4, 4)}, "history": history})
    assert checkpoint_epochs(path) == 3
    path.write_bytes(b"truncated")
    assert checkpoint_epochs(path) == 0


def test_the_scheduler_resubmits_a_failed_stage_that_retry_allows() -> None:
    plan = Plan(order=["a", "b"], upstream={"a": [], "b": ["a"]}, to_run=["a", "b"])
    outcomes = {"a": [StageFailed("a", 1, False, "a.log", "", "", 0, 1), {"attempt": 2}], "b": [{}]}
    submitted: list[str] = []

    def submit(stage: str) -> tuple[str, int]:
        submitted.append(stage)
        return stage, len(submitted)

    def wait(refs: list) -> tuple:
        return refs[0], outcomes[refs[0][0]].pop(0)

    asked: list[tuple[str, int | None]] = []

    def retry(stage: str, err: StageFailed) -> bool:
        asked.append((stage, err.epochs_after))
        return True

    done, failed = schedule(plan, submit, wait, lambda *_: None, lambda *_: None, retry)
    assert submitted == ["a", "a", "b"] and done == {"a", "b"} and not failed and asked == [("a", 1)]
    # Without `retry`, a failure is final and its dependents never start.
    outcomes["a"] = [StageFailed("a", 1, False, "a.log", "")]
    submitted.clear()
    done, failed = schedule(plan, submit, wait, lambda *_: None, lambda *_: None)
    assert submitted == ["a"] and not done and set(failed) == {"a"}


def test_training_stages_have_no_timeout_by_default() -> None:
    assert _timeout("pretrain@big-ce-0", None) is None and _timeout("sweep", None) is None
    assert _timeout("probe@big-ce-0", None) == 2 * 3600.0
    assert _timeout("pretrain@big-ce-0", 600.0) == _timeout("aggregate", 600.0) == 600.0


def test_the_gpu_hour_limit_is_parsed_and_stored() -> None:
    assert parse_args([]).max_gpu_hours == 24.0
    assert parse_args(["--max-gpu-hours", "2000"]).max_gpu_hours == 2000.0
    assert parse_args(["--max-gpu-hours", "none"]).max_gpu_hours is None
    assert parse_args(["--max-gpu-hours", "off"]).max_gpu_hours is None
    with pytest.raises(LaunchError, match="--max-gpu-hours must be 0 or more"):
        parse_args(["--max-gpu-hours", "-1"])


# ------------------------------------------------------------------ Ray: a fake 8-GPU host, toy stages

# Writes the CUDA_VISIBLE_DEVICES its stage command sees and the one a child process (as torchrun's
# workers) inherits.
GPUS = textwrap.dedent(
    """
    import os, pathlib, subprocess, sys
    seen = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    pathlib.Path(sys.argv[1]).write_text(f"{seen} {child}\\n")
    """
)
MATRIX = {"dataset": ["big", "bm"], "method": ["cecl"], "seed": [0]}
GPU_STAGES = {
    "pretrain": {
        "matrix": MATRIX,
        "cmd": "python gpus.py pretrain-${item.dataset}.txt",
        "deps": ["gpus.py"],
        "outs": ["pretrain-${item.dataset}.txt"],
    },
    "probe": {
        "matrix": MATRIX,
        "cmd": "python gpus.py probe-${item.dataset}.txt",
        "deps": ["pretrain-${item.dataset}.txt"],
        "outs": ["probe-${item.dataset}.txt"],
    },
}
GPU_PARAMS = {
    **PARAMS,
    "device": "auto",
    "seeds": [0],
    "datasets": {"big": BIG, "bm": PARAMS["datasets"]["bm"]},
    "method_options": {"cecl": PARAMS["method_options"]["cecl"]},
    "pretrain": {**PARAMS["pretrain"], "datasets": ["big", "bm"], "methods": ["cecl"]},
}
EIGHT = ",".join(map(str, range(8)))


def _fake_gpu_env(root: Path) -> dict[str, str]:
    """8 fake GPU ids (nothing initialises CUDA), no warm server, MLflow in a file (no server)."""
    return {"CUDA_VISIBLE_DEVICES": EIGHT, "CECL_WARM": "0", "MLFLOW_TRACKING_URI": f"sqlite:///{root}/m.db"}


def _gpu_repo(root: Path) -> Path:
    root = _toy_repo(root, GPU_STAGES)
    (root / "gpus.py").write_text(GPUS)
    (root / "params.yaml").write_text(yaml.safe_dump(GPU_PARAMS, sort_keys=False))
    return root


@pytest.mark.slow
def test_jobs_8_on_8_gpus_gives_an_8_process_entry_all_8_and_a_1_process_entry_one(tmp_path: Path) -> None:
    root = _gpu_repo(tmp_path / "toy")
    result = _launch(root, "--jobs", "8", extra_env=_fake_gpu_env(root))
    assert "4 of 4 stage(s) to run" in result.stdout and "hold 8 slots" in result.stdout, result.stdout
    seen = {p.stem: p.read_text().split() for p in root.glob("*.txt")}
    assert seen["pretrain-big"] == [EIGHT, EIGHT]  # the stage and its torchrun-like child: all 8
    for one in ("pretrain-bm", "probe-big", "probe-bm"):  # one process, light stages: one GPU each
        assert len(seen[one]) == 2 and seen[one][0] == seen[one][1] and seen[one][0] in EIGHT.split(",")


@pytest.mark.slow
def test_an_8_process_entry_with_jobs_2_fails_in_one_line_before_anything_starts(tmp_path: Path) -> None:
    root = _gpu_repo(tmp_path / "toy")
    result = _launch(root, "--jobs", "2", extra_env=_fake_gpu_env(root), check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(
        "error: launch: stage 'pretrain@big-cecl-0' needs 8 GPUs (its dataset entry's pretrain.processes) "
        "but --jobs is 2 (this host has 8 GPU(s))"
    )
    assert not (root / "logs").exists() and not list(root.glob("*.txt"))
    # Only the stages of this launch count: the one-GPU entry's stages run with two GPUs.
    ok = _launch(root, "--jobs", "2", "probe@bm-cecl-0", extra_env=_fake_gpu_env(root))
    assert "2 of 2 stage(s) to run" in ok.stdout and (root / "probe-bm.txt").exists()


# Epoch-checkpointing toy "training": cecl crashes after each of its first 3 epochs (each attempt resumes
# from the checkpoint and adds one), then finishes; ce crashes at once every time, never checkpointing.
TRAIN = textwrap.dedent(
    """
    import pathlib, sys, torch
    method = sys.argv[1]
    if method == "ce":
        sys.exit("ce: crashing before any epoch")
    path = pathlib.Path("checkpoints/pretrain/bm-cecl-0/last.pt")
    history = torch.load(path, weights_only=True)["history"] if path.exists() else []
    if len(history) < 3:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"history": [*history, {"epoch": len(history) + 1}]}, path)
        sys.exit(f"cecl: crashing after epoch {len(history) + 1}")
    pathlib.Path("trained-cecl.txt").write_text(f"{len(history)} epochs\\n")
    """
)


@pytest.mark.slow
def test_a_stage_is_retried_while_its_checkpoint_advances(tmp_path: Path) -> None:
    stages = {
        "pretrain": {
            "matrix": {"dataset": ["bm"], "method": ["ce", "cecl"], "seed": [0]},
            "cmd": "python train.py ${item.method}",
            "deps": ["train.py"],
            "outs": ["trained-${item.method}.txt"],
        }
    }
    root = _toy_repo(tmp_path / "toy", stages)
    (root / "train.py").write_text(TRAIN)
    params = {
        **PARAMS,
        "seeds": [0],
        "method_options": {"ce": {}, "cecl": PARAMS["method_options"]["cecl"]},
        "pretrain": {**PARAMS["pretrain"], "methods": ["ce", "cecl"]},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / ".gitignore").write_text((root / ".gitignore").read_text() + "/checkpoints/\n")
    env = {"CECL_WARM": "0", "MLFLOW_TRACKING_URI": f"sqlite:///{root}/m.db"}
    result = _launch(root, "--jobs", "2", "--retries", "1", extra_env=env, check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert (root / "trained-cecl.txt").read_text() == "3 epochs\n"
    assert re.search(r"done   pretrain@bm-cecl-0 in [\d.]+ s, attempt 4", out), out
    assert out.count("retry  pretrain@bm-cecl-0") == 3 and "advanced to epoch 3" in out
    assert "retry  pretrain@bm-ce-0" in out and "retry 1 of 1 without progress" in out
    assert "error: launch: stage 'pretrain@bm-ce-0' failed after 2 attempt(s)" in result.stderr
