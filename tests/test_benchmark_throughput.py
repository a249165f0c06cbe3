"""Smoke test of benchmarks/throughput.py at tiny sizes: it runs, prints its tables, and its ratios are
computed from the figures it measured (not typed in or taken from elsewhere)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from benchmarks import throughput


def test_quick_run_prints_tables_and_ratios_from_measured_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "throughput.json"
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
    assert "compute.channels_last on vs off" in printed and "online probe" in printed
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
