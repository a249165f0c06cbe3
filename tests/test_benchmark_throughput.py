"""Smoke test of benchmarks/throughput.py at tiny sizes: it runs, prints its tables, and its ratios are
computed from the figures it measured (not typed in or taken from elsewhere); its pipeline row is the
loop's own ``train_step``, and its speed options are params.yaml's ``compute:`` section."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from benchmarks import throughput
from cecl.config import ComputeParams, load_params
from cecl.train import loop
from tests.helpers import synthetic_split, tiny_params, tiny_setup

ROOT = Path(__file__).resolve().parent.parent


def test_quick_run_prints_tables_and_ratios_from_measured_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "throughput.json"
    steps: list[int] = []
    original = loop.train_step

    def counted(*args: Any) -> torch.Tensor:
        steps.append(torch.get_num_threads())
        return original(*args)

    monkeypatch.setattr(loop, "train_step", counted)  # rows 2 and the cross-check call the loop's step
    throughput.main(
        ["--quick", "--workloads", "params", "--methods", "cecl", "--threads", "1", "--json", str(out)]
    )
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())

    assert results["machine"]["cores"] and results["machine"]["torch"]
    assert results["settings"]["device"] == "cpu" and results["settings"]["quick"] is True
    by = {r["row"]: r for r in results["rows"]}
    assert {"bound", "pipeline", "pipeline_nchw", "loader", "loader_recipe", "loop"} <= set(by)
    for kind in ("bound", "pipeline", "pipeline_nchw", "loader", "loader_recipe"):
        row = by[kind]
        # each figure is the median of its timed windows, each window = steps x batch / seconds
        assert len(row["window_images_per_s"]) == results["settings"]["windows"]
        assert row["images_per_s"] == pytest.approx(statistics.median(row["window_images_per_s"]))
        assert row["images_per_s"] > 0 and row["peak_mib"] >= 0
    assert by["loader"]["workers"] == results["settings"]["workers"]
    # pipeline and pipeline_nchw: warm-up + 1 measured + windows x steps; then run_pretraining's steps
    s = results["settings"]
    per_row = s["warmup"] + 1 + s["windows"] * s["steps_per_window"]
    assert len(steps) == 2 * per_row + by["loop"]["steps"] and set(steps) == {1}  # compute.threads 1
    assert s["compute"] == {**load_params(ROOT / "params.yaml").compute.model_dump(), "threads": 1}

    (summary,) = results["summary"]
    assert summary["bound"] == by["bound"]["images_per_s"]
    assert summary["pipeline_over_bound"] == pytest.approx(
        by["pipeline"]["images_per_s"] / by["bound"]["images_per_s"], rel=1e-12
    )
    assert summary["pipeline_over_loader"] == pytest.approx(
        by["pipeline"]["images_per_s"] / by["loader"]["images_per_s"], rel=1e-12
    )
    assert summary["channels_last_on_over_off"] == pytest.approx(
        by["pipeline"]["images_per_s"] / by["pipeline_nchw"]["images_per_s"], rel=1e-12
    )
    assert summary["reaches_85pct_of_bound"] == (summary["pipeline_over_bound"] >= 0.85)
    assert summary["probe_s_per_epoch"] == pytest.approx(statistics.median(by["pipeline"]["probe_seconds"]))

    # the printed table carries the same figures and ratios
    header = next(line for line in printed.splitlines() if line.startswith("workload") and "2/1" in line)
    assert header.split()[:2] == ["workload", "method"]
    row = next(
        line
        for line in printed.splitlines()
        if line.startswith(f"{summary['workload']} ") and " cecl " in line
    )
    cells = row.split()
    assert cells[2:5] == [f"{by[k]['images_per_s']:.1f}" for k in ("bound", "pipeline", "loader")]
    assert cells[5:7] == [f"{summary['pipeline_over_bound']:.2f}", f"{summary['pipeline_over_loader']:.2f}"]
    assert "compute.channels_last on vs off" in printed and "per-epoch monitor" in printed
    assert (
        "compute: channels_last True, autocast None, compile False, fused_optimizer False, threads 1"
        in printed
    )
    assert throughput.format_report(results) in printed  # the report is rebuilt from the JSON alone


def test_ratios_follow_the_rows() -> None:
    """summarise derives every ratio from the rows' images/s; a changed figure changes the ratio."""
    rows = [
        {"workload": "w", "method": "m", "row": "bound", "images_per_s": 200.0},
        {"workload": "w", "method": "m", "row": "pipeline", "images_per_s": 150.0},
        {"workload": "w", "method": "m", "row": "loader", "images_per_s": 50.0},
        {"workload": "w", "method": "m", "row": "pipeline_nchw", "images_per_s": 100.0},
    ]
    (entry,) = throughput.summarise(rows)
    assert entry["pipeline_over_bound"] == 0.75 and entry["reaches_85pct_of_bound"] is False
    assert entry["pipeline_over_loader"] == 3.0 and entry["reaches_2x_loader"] is True
    assert entry["channels_last_on_over_off"] == 1.5
    rows[0] = {**rows[0], "images_per_s": 160.0}
    (entry,) = throughput.summarise(rows)
    assert entry["pipeline_over_bound"] == 150.0 / 160.0 and entry["reaches_85pct_of_bound"] is True
    rows[2] = {**rows[2], "error": "out of memory"}
    assert throughput.summarise(rows)[0]["pipeline_over_loader"] is None


def test_cifar_workload_builds_the_resnet_recipe() -> None:
    """Workload (b) without training: cifar10 entry, ResNet-18 CIFAR stem, the batch asked for, SGD."""
    import yaml

    raw = yaml.safe_load((Path(__file__).resolve().parent.parent / "profiles" / "cpu.yaml").read_text())
    workload = throughput.cifar_workload(raw, "resnet18", 256, 300, 16, seed=0)
    setup = workload.setups["cecl"]
    assert setup.recipe.model.backbone == "resnet18" and setup.recipe.model.options().cifar_stem
    assert setup.recipe.pretrain.batch_size == 256 and setup.recipe.pretrain.optimizer.name == "sgd"
    assert (
        tuple(workload.train.images.shape) == (300, 3, 32, 32)
        and workload.train.images.dtype.is_floating_point is False
    )
    assert setup.recipe.augment.hflip_p == 0.5 and workload.loader_recipe is None


def test_flags_override_the_compute_section_of_params(tmp_path: Path) -> None:
    """--autocast / --compile / --fused / --threads set compute keys; absent flags keep the file's."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["compute"] = {**raw["compute"], "autocast": "bf16", "fused_optimizer": True}
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))

    def effective(*flags: str) -> tuple[ComputeParams, list[throughput.Workload]]:
        args = throughput.parse_args(["--quick", "--params", str(params_file), *flags])
        return throughput.build_workloads(args, torch.device("cpu"))

    compute, workloads = effective()
    assert compute == ComputeParams(autocast="bf16", fused_optimizer=True)  # the file's section
    compute, workloads = effective("--autocast", "none", "--compile", "--no-fused", "--threads", "3")
    assert compute == ComputeParams(autocast=None, compile=True, fused_optimizer=False, threads=3)
    assert {w.name for w in workloads} == {"bmnist_rho99", "cifar32-resnet18-b4"}
    for workload in workloads:  # every setup trains with exactly these options
        assert all(setup.compute == compute for setup in workload.setups.values()), workload.name
    flipped = throughput.with_recipe(workloads[0].setups["cecl"], channels_last=False)
    assert flipped.compute == compute.model_copy(update={"channels_last": False})  # the rest kept


def test_pipeline_row_trains_exactly_like_run_pretraining() -> None:
    """Row 2 over two full epochs (rolling over once) ends with run_pretraining's weights, bit for bit."""
    setup = tiny_setup("cecl", tiny_params(pretrain={"epochs": 2}))
    train, val = synthetic_split(64, 0), synthetic_split(32, 1)
    trained, _ = loop.run_pretraining(setup, train, val, torch.device("cpu"), "x", progress=False)
    settings = throughput.Settings(device=torch.device("cpu"))
    replica = throughput.LoopReplica(setup, train, settings)
    for _ in range(2 * replica.epoch.steps):
        replica()
    assert replica.epoch.index == 1
    state = replica.training.method.state_dict()
    for key, value in trained.state_dict().items():
        assert torch.equal(value, state[key]), key
