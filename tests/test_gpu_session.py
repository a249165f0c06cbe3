"""The GPU check (benchmarks/gpu_session.py): its dry mode runs every phase and writes its JSON lines, real
mode without CUDA stops at once with one line, the closing block is valid throughput.yaml, and the wheels
`make gpu-wheels` carries cover every module its phases import beyond the lent host's stack."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import gpu_session as gs  # noqa: E402

# What the lent host has (issue 33: Python 3.12, torch, torchvision, numpy, scipy, scikit-learn, pyyaml,
# pytest, pillow), as import names, with what those packages themselves pull in.
HOST = {"torch", "torchvision", "numpy", "scipy", "sklearn", "yaml", "pytest", "PIL"}
HOST_DEPS = {
    # torch's own dependencies and its optional imports (present or absent on the host, never required)
    "filelock", "typing_extensions", "sympy", "mpmath", "networkx", "jinja2", "markupsafe", "fsspec",
    "triton", "nvidia", "cuda", "torchgen", "functorch", "pydot", "opt_einsum", "optree", "colorama",
    # pytest's, scipy's and scikit-learn's
    "pluggy", "iniconfig", "packaging", "pygments", "py", "joblib", "threadpoolctl", "cython_runtime",
}  # fmt: skip


def wheel_modules() -> set[str]:
    """Import names of the Makefile's GPU_WHEELS (distribution names with - as _)."""
    line = re.search(r"^GPU_WHEELS := (.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert line is not None, "Makefile: GPU_WHEELS missing"
    return {name.replace("-", "_") for name in line.group(1).split()}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit")
def test_real_mode_without_cuda_exits_at_once_with_one_line(tmp_path: Path) -> None:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_session.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "DRY": "0"},
    )
    seconds = time.perf_counter() - started
    assert done.returncode == 3
    assert len(done.stdout.strip().splitlines()) == 1 and "CUDA unusable" in done.stdout, done.stdout
    assert done.stderr == ""
    assert seconds < 5, seconds
    (record,) = gs.read_lines(tmp_path / gs.JSONL)
    assert record["result"] == "cuda_unusable" and record["reason"]


def test_the_closing_block_is_throughput_yaml_of_the_measured_rows() -> None:
    records = [
        {"phase": "env", "result": "versions", "gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11.0",
         "plan_device": "h100"},
        {"phase": "train:a", "result": "step", "arch": "resnet50", "precision": "bf16", "batch": 1024,
         "micro_batch": None, "images_per_s": 5123.4, "timed_steps": 5, "peak_allocated_gib": 30.0,
         "plan_saved_gib": 24.0},
        {"phase": "train:b", "result": "step", "arch": "resnet50", "precision": "bf16", "batch": 1024,
         "micro_batch": 256, "images_per_s": 4000.0, "timed_steps": 5, "peak_allocated_gib": 12.0,
         "plan_saved_gib": 10.0},
        {"phase": "train:c", "result": "step", "arch": "small_cnn", "precision": "fp32", "batch": 128,
         "micro_batch": None, "images_per_s": 90000.0, "timed_steps": 5, "peak_allocated_gib": 0.1,
         "plan_saved_gib": None},
    ]  # fmt: skip
    block = gs.closing_block(records, dry=False)
    rows = yaml.safe_load("rows:\n" + "\n".join(line for line in block.splitlines()))["rows"]
    assert rows == [
        {
            "device": "h100",
            "backbone": "resnet50",
            "options": {"cifar_stem": True},
            "size": 32,
            "precision": "bf16",
            "images_per_s": 5123,
            "source": "measured: benchmarks/gpu_session.py on NVIDIA H100 80GB HBM3, torch 2.11.0, "
            "batch 1024, 5 steps",
        }
    ]
    assert "1.25" in block  # 30 GiB measured over 24 GiB of counted tensors, the micro-batch row left out
    assert "DRY RUN" in gs.closing_block(records, dry=True)


def test_a_line_cut_by_a_kill_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / gs.JSONL
    gs.Lines(path, "p")("one", x=1)
    with path.open("a") as f:
        f.write('{"phase": "p", "result": "tw')
    assert [r["result"] for r in gs.read_lines(path)] == ["one"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, list[dict]]:
    out = tmp_path_factory.mktemp("gpu-session")
    done = subprocess.run(
        ["make", "-s", "gpu-session", "DRY=1", f"OUT={out}", f"PYTHON={sys.executable}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.returncode, gs.read_lines(out / gs.JSONL)


@pytest.mark.slow
def test_the_dry_mode_runs_every_phase_and_writes_its_lines(dry_run: tuple[int, list[dict]]) -> None:
    _, records = dry_run
    ends = {r["name"]: r for r in records if r["result"] == "phase_end"}
    assert list(ends) == gs.PHASES
    assert all(e["rc"] == 0 and not e["capped"] for e in ends.values()), ends
    times = [r["t"] for r in records]
    assert times == sorted(times)  # appended as measured, in order
    by = {(r["phase"], r["result"]) for r in records}
    for name, *_ in gs.CONFIGS:
        assert {(f"train:{name}", k) for k in ("plan", "step", "syncs")} <= by
    steps = [r for r in records if r["result"] == "step"]
    assert all(r["images_per_s"] > 0 and r["ms_per_step"] > 0 and r["plan_peak_gib"] > 0 for r in steps)
    assert {("env", "versions"), ("env", "nvjpeg"), ("decode", "decode"), ("eval", "knn_monitor")} <= by
    assert {("eval", "probe_eval"), ("checkpoint", "checkpoint"), ("session", "closing_block")} <= by
    assert any(r["result"] == "test" for r in records if r["phase"] == "tests")


@pytest.mark.slow
def test_the_carried_wheels_cover_every_import_of_the_phases(dry_run: tuple[int, list[dict]]) -> None:
    _, records = dry_run
    imported = set().union(*(set(r["modules"]) for r in records if r["result"] == "imports"))
    missing = imported - HOST - HOST_DEPS - wheel_modules()
    assert not missing, f"imported by the GPU check, neither on the host nor in GPU_WHEELS: {sorted(missing)}"


def test_the_real_mode_caps_leave_room_in_six_minutes() -> None:
    """Every phase's cap together, with about a minute for the interpreter starts and the closing block."""
    assert sum(gs.cap_of(phase, dry=False) for phase in gs.PHASES) <= 300
    assert {phase.split(":")[0] for phase in gs.PHASES} == set(gs.CAPS)
