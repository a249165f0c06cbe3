"""The cost plan (cecl/plan): its arithmetic against hand counts, its measurements against closed forms,
every checked-in profile planned offline, and the gate that stops a launch over budget changing nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cecl.config import load_params
from cecl.plan import OverBudget, OverMemory, format_plan, gate, plan_params, trains_on_cpu
from cecl.plan.estimate import (
    ACTIVATION_OVERHEAD,
    GIB,
    LBFGS_ITERATIONS_PER_STRENGTH,
    MONITOR_LBFGS_ITERATIONS,
    PROBE_ROWS,
    RESERVED_GIB,
)
from cecl.plan.footprint import footprint
from cecl.plan.method_passes import method_passes
from cecl.plan.throughput import Throughput, Workload
from cecl.repro import main as repro_main
from tests.helpers import DATASET, tiny_params

REPO = Path(__file__).resolve().parent.parent
PROFILES = sorted(p.stem for p in (REPO / "profiles").glob("*.yaml"))
GPU_PROFILES = [p for p in PROFILES if p.startswith("gpu-")] + ["cifar100-1000ep"]


def _small_cnn_saved_bytes(width: int, channels: int, size: int) -> int:
    """What autograd saves per image in small_cnn (float32), counted from its layers by hand: each conv
    saves its input, each BatchNorm its input, each ReLU its output, each max-pool its int64 indices
    (its input is the ReLU's output, already counted); the global mean saves nothing."""
    f32, i64 = 4, 8
    h1, h2, h3 = size, size // 2, size // 4
    w = width
    return (
        f32 * (channels * h1 * h1 + 2 * w * h1 * h1)  # conv1 input; BN1 input, ReLU1 output
        + i64 * w * h2 * h2  # pool1 indices
        + f32 * (w * h2 * h2 + 2 * 2 * w * h2 * h2)  # conv2 input; BN2 input, ReLU2 output
        + i64 * 2 * w * h3 * h3  # pool2 indices
        + f32 * (2 * w * h3 * h3 + 2 * 4 * w * h3 * h3)  # conv3 input; BN3 input, ReLU3 output
    )


@pytest.mark.parametrize(("width", "channels", "size"), [(4, 3, 8), (16, 1, 28), (16, 3, 28)])
def test_activation_bytes_equal_a_hand_count_of_the_saved_tensors(
    width: int, channels: int, size: int
) -> None:
    fp = footprint("small_cnn", {"width": width}, (channels, size, size), bf16=False)
    assert fp.activation_bytes == _small_cnn_saved_bytes(width, channels, size)
    macs = 9 * (channels * width * size**2 + width * 2 * width * (size // 2) ** 2)
    macs += 9 * 2 * width * 4 * width * (size // 4) ** 2
    assert fp.macs == macs


def test_bf16_roughly_halves_a_resnets_activation_bytes() -> None:
    fp32 = footprint("resnet18", {"cifar_stem": True}, (3, 32, 32), bf16=False).activation_bytes
    bf16 = footprint("resnet18", {"cifar_stem": True}, (3, 32, 32), bf16=True).activation_bytes
    assert 0.4 < bf16 / fp32 < 0.6


@pytest.mark.parametrize(
    ("method", "joint", "trained", "frozen", "encoders"),
    [
        ("simclr", False, 2, 0, 1),  # both views through the encoder, trained
        ("ce", False, 1, 0, 1),  # one view
        ("byol", False, 2, 2, 2),  # the momentum target encodes both views, without gradient
        ("moco_v2", False, 1, 1, 2),  # queries from view 1, keys of view 2 by the key encoder
        ("cecl", True, 3, 0, 1),  # joint: the CE head's view 0 is a third trained pass
    ],
)
def test_method_passes_are_counted_on_the_real_methods(
    method: str, joint: bool, trained: int, frozen: int, encoders: int
) -> None:
    from cecl.methods import options_schemas

    passes = method_passes(method, options_schemas()[method]().model_dump_json(), 2, joint, 10)
    assert (passes.trained, passes.frozen, passes.encoders) == (trained, frozen, encoders)


@pytest.mark.parametrize(
    ("monitor", "evaluated", "monitor_fits"),
    [
        ({"kind": "knn"}, 3, 0),  # every epoch, no fit (the kNN's product is not counted)
        ({"kind": "probe", "every": 2}, 2, 1),  # epochs 2 and 3 (the last); MONITOR_PROBE's one strength
        ({"kind": "auto"}, 3, 1),  # BiasedMNIST's group-bias evaluator: auto is the probe
    ],
)
def test_one_entrys_arithmetic_equals_a_hand_count(monitor: dict, evaluated: int, monitor_fits: int) -> None:
    """simclr on 128 training images (batch 32), 3 epochs, the monitor on all of train, the final probe
    over the 7-strength grid (l2_per_decade 1); 64 validation and 64 test images; throughput given."""
    # no sweep grids: the sweep needs the monitor every epoch (every: 1)
    params = tiny_params(pretrain={"methods": ["simclr"], "monitor": monitor}, sweep={"grids": {}})
    fp = footprint("small_cnn", {"width": 4}, (3, 28, 28), bf16=False)
    work = Workload("small_cnn", (("width", 4),), 28, "fp32", fp.macs)
    measured = {work: Throughput(1000.0, "given", scaled=False)}
    plan = plan_params(params, "cpu", measured, probe_step_s=0.01)
    (entry,) = plan.entries
    trained_units = 3 * 128 * 2 * 3  # epochs x images x views x (forward + backward)
    online = evaluated * (128 + 64)  # each evaluated epoch: features of train (no subset) and validation
    final = 128 + 64 + 64  # the probe stage's features of every split
    assert entry.costs.units == trained_units + online + final
    # one strength's iterations over 128 rows: the monitor's fit and a strength of the final grid
    online_steps = evaluated * monitor_fits * MONITOR_LBFGS_ITERATIONS * 128 / PROBE_ROWS
    final_steps = 7 * LBFGS_ITERATIONS_PER_STRENGTH * 128 / PROBE_ROWS
    assert entry.costs.probe_steps == pytest.approx(online_steps + final_steps)
    assert entry.flops == 2 * entry.costs.units * fp.macs
    assert entry.images_trained == 3 * 128
    assert entry.seconds == pytest.approx(entry.costs.units / 3000 + (online_steps + final_steps) * 0.01)
    # memory: 32 images x 2 trained views, the weights with Adam (weights, grads, 2 moments), the views
    weights = fp.parameters * 4 * 4
    views = 32 * 2 * 3 * 28 * 28 * 4
    expected = (fp.activation_bytes * 32 * 2 * ACTIVATION_OVERHEAD + weights + views) / GIB + RESERVED_GIB
    assert entry.peak_gib == pytest.approx(expected)


def test_gradient_caching_adds_one_forward_and_bounds_the_memory() -> None:
    whole = plan_params(tiny_params(pretrain={"methods": ["simclr"]}), "h100").entries[0]
    chunked = plan_params(tiny_params(pretrain={"methods": ["simclr"], "micro_batch": 8}), "h100").entries[0]
    extra = chunked.costs.units - whole.costs.units
    assert extra == 3 * 128 * 2  # one more forward per trained image
    per_image = whole.footprint.activation_bytes * 2 * ACTIVATION_OVERHEAD / GIB
    assert whole.peak_gib - chunked.peak_gib == pytest.approx(per_image * (32 - 8))


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_plans_offline(profile: str) -> None:
    params = load_params(REPO / "profiles" / f"{profile}.yaml")
    plan = plan_params(params, "h100")
    text = format_plan(plan, params)
    assert "total:" in text and "Shows:" in text
    assert plan.gpu_hours > 0 and len(plan.entries) == len(params.pretrain.datasets)


@pytest.mark.parametrize("profile", [*GPU_PROFILES, "paper"])
def test_gpu_profiles_fit_an_80_gb_gpu_and_fail_fast_without_one(profile: str) -> None:
    params = load_params(REPO / "profiles" / f"{profile}.yaml")
    plan = plan_params(params, "h100")
    assert not plan.over_memory(), [e.memory_advice() for e in plan.over_memory()]
    assert all(e.peak_gib < 80 * 1e9 / GIB for e in plan.entries)
    assert params.device == "cuda" and params.compute.autocast == "bf16" and params.compute.fused_optimizer


def test_the_tiers_cost_what_their_names_say() -> None:
    hours = {p: plan_params(load_params(REPO / "profiles" / f"{p}.yaml"), "h100").gpu_hours for p in PROFILES}
    assert hours["gpu-smoke"] < 2 < hours["gpu-day"] <= 24 < hours["gpu-week"] + hours["gpu-week-bias"] <= 200
    assert hours["paper"] > 5000
    assert hours["cpu"] < 0.5


def test_an_entry_over_memory_names_a_micro_batch_that_fits() -> None:
    params = load_params(REPO / "profiles" / "paper.yaml")
    raw = params.model_dump()
    raw["compute"]["autocast"] = None
    raw["datasets"] = {k: v.model_dump() for k, v in params.datasets.items()}
    raw["datasets"]["imagenet"]["overrides"]["pretrain"]["processes"] = 1
    from cecl.config import parse_params

    fp32 = parse_params(raw)
    with pytest.raises(
        OverMemory, match=r"imagenet: estimated peak .* set pretrain.micro_batch: (\d+)"
    ) as err:
        gate(fp32, max_gpu_hours=None)
    micro = int(err.value.args[0].split("pretrain.micro_batch: ")[1].split()[0])
    raw["datasets"]["imagenet"]["overrides"]["pretrain"]["micro_batch"] = micro
    fixed = plan_params(parse_params(raw), "h100")
    assert not [e for e in fixed.over_memory() if e.entry == "imagenet"]
    raw["datasets"]["imagenet"]["overrides"]["pretrain"]["micro_batch"] = micro * 2
    assert [e.entry for e in plan_params(parse_params(raw), "h100").over_memory()] == ["imagenet"]


def test_a_launch_over_budget_stops_with_one_line_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    shutil.copy2(REPO / "profiles" / "cpu.yaml", tmp_path / "params.yaml")
    before = (tmp_path / "params.yaml").read_bytes()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        repro_main(["--profile", "paper"])
    message = str(stop.value)
    assert "\n" not in message and "over the 24 GPU-hour limit" in message and "--max-gpu-hours" in message
    assert (tmp_path / "params.yaml").read_bytes() == before
    assert not (tmp_path / "dvc.lock").exists()
    with pytest.raises(SystemExit, match="--max-gpu-hours must be a number"):
        repro_main(["--max-gpu-hours", "lots"])


def test_a_budget_that_holds_passes_the_gate() -> None:
    line = gate(tiny_params(), max_gpu_hours=24)
    assert line.startswith("plan: ") and "H100-hours" in line
    # tiny_params trains on the CPU here (device auto, no CUDA) or says cpu: the line points at the estimate
    assert ("make plan DEVICE=cpu CALIBRATE=1" in line) == trains_on_cpu(tiny_params())


def test_a_cpu_run_is_pointed_at_the_calibrated_estimate_and_a_gpu_run_is_not() -> None:
    raw = tiny_params().model_dump()
    raw["datasets"] = {k: v.model_dump() for k, v in tiny_params().datasets.items()}
    from cecl.config import parse_params

    cpu, cuda = parse_params({**raw, "device": "cpu"}), parse_params({**raw, "device": "cuda"})
    assert trains_on_cpu(cpu) and not trains_on_cpu(cuda)
    assert "CALIBRATE=1" in gate(cpu) and "CALIBRATE=1" not in gate(cuda)
    with pytest.raises(OverBudget, match="over the 0 GPU-hour limit"):
        gate(tiny_params(), max_gpu_hours=0)
    assert DATASET in tiny_params().pretrain.datasets


def test_the_launcher_stops_over_budget_with_one_line_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cecl.launch.__main__ import main as launch_main

    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    shutil.copy2(REPO / "profiles" / "cpu.yaml", tmp_path / "params.yaml")
    shutil.copy2(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    before = sorted(p.name for p in tmp_path.iterdir()), (tmp_path / "params.yaml").read_bytes()
    monkeypatch.chdir(tmp_path)
    assert launch_main(["--jobs", "1", "--profile", "paper"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: launch: plan: ") and "over the 24 GPU-hour limit" in err
    assert (sorted(p.name for p in tmp_path.iterdir()), (tmp_path / "params.yaml").read_bytes()) == before


def test_a_pretrain_stage_on_a_gpu_too_small_stops_before_loading_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage's own check (stages/pretrain.py), with the GPU faked: a 1 GiB device cannot hold the tiny
    entry's estimate (1.5 GiB of reserve alone), so the stage raises the one-line advice before it
    touches the (absent) prepared data."""
    import types

    import torch
    import yaml

    from cecl.runs import RunKey
    from stages import pretrain

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pretrain, "resolve_device", lambda name: torch.device("cuda", 0))
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(total_memory=GIB)
    )
    with pytest.raises(ValueError, match=r"^bmnist_rho99: estimated peak 1\.\d GiB per GPU exceeds 1\.0 GiB"):
        pretrain.main(RunKey("bmnist_rho99", "cecl", 0))
    assert not (tmp_path / "data").exists()
    assert not [p for p in (tmp_path / "models").rglob("*") if p.is_file()]  # no encoder, no checkpoint


def test_prepared_data_counts_replace_the_expected_sizes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from cecl.plan.estimate import split_sizes

    params = tiny_params()
    monkeypatch.chdir(tmp_path)
    assert split_sizes(params, DATASET) == ({"train": 128, "val": 64, "test": 64}, "expected")
    manifest = {
        "options": params.datasets[DATASET].model_dump(mode="json"),
        "splits": {"train": {"count": 120}, "val": {"count": 60}, "test": {"count": 50}},
    }
    (tmp_path / "data" / DATASET).mkdir(parents=True)
    (tmp_path / "data" / DATASET / "manifest.json").write_text(json.dumps(manifest))
    assert split_sizes(params, DATASET) == ({"train": 120, "val": 60, "test": 50}, "prepared")
    manifest["options"]["rho"] = 0.5  # prepared with other options: not this entry's data
    (tmp_path / "data" / DATASET / "manifest.json").write_text(json.dumps(manifest))
    assert split_sizes(params, DATASET)[1] == "expected"


def test_a_plugin_without_expected_sizes_is_planned_for_memory_and_said_not_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cecl.datasets.biased_mnist import BiasedMNIST

    def undeclared(self: object) -> dict[str, int]:
        raise NotImplementedError

    monkeypatch.setattr(BiasedMNIST, "expected_sizes", undeclared)
    params = tiny_params()
    plan = plan_params(params, "h100")
    (entry,) = plan.entries
    assert entry.sizes_from == "unknown" and entry.costs.units == 0 and entry.peak_gib > 0
    assert "Not counted (their dataset family declares no expected_sizes" in format_plan(plan, params)
    assert gate(params).startswith("plan: ")  # the launch is not blocked by what cannot be counted


def test_sweep_epochs_follow_successive_halving() -> None:
    from cecl.plan.estimate import trial_epochs

    # 9 trials, rungs at 1 and 3 epochs, a third continues: 9 x 1 + 3 x 2 + 1 x 3 (the CPU default's sweep)
    assert trial_epochs(9, 6, "asha", 1, 3) == 9 * 1 + 3 * 2 + 1 * 3
    assert trial_epochs(9, 6, "none", 1, 3) == 54
    assert trial_epochs(25, 20, "asha", 2, 2) == 25 * 2 + 12.5 * 2 + 6.25 * 4 + 3.125 * 8 + 1.5625 * 4
