"""Every command validates before it changes anything: a CUDA profile on a host without a usable GPU is
refused by ``make repro`` (cecl.repro) and ``make repro JOBS=N`` (cecl.launch) with one line, before
params.yaml, dvc.lock or data/ are touched; and docs/datasets.md's recipe for one dataset's rows of the
paper profile runs as written up to the device check.

The GPU is hidden with CUDA_VISIBLE_DEVICES=-1, so the refusal is the same on a GPU host.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cecl.repro import device_problem

ROOT = Path(__file__).resolve().parents[1]
NO_GPU = {"CUDA_VISIBLE_DEVICES": "-1"}


def _workspace(tmp_path: Path) -> Path:
    """The files a run reads and writes first: params.yaml, dvc.yaml, dvc.lock and profiles/."""
    work = tmp_path / "work"
    shutil.copytree(ROOT / "profiles", work / "profiles")
    for name in ("params.yaml", "dvc.yaml", "dvc.lock"):
        shutil.copy2(ROOT / name, work / name)
    return work


def _digests(work: Path) -> dict[str, str]:
    return {
        str(p.relative_to(work)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(work.rglob("*"))
        if p.is_file()
    }


def _run(work: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        **NO_GPU,
        "PYTHONPATH": str(ROOT),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    return subprocess.run(
        [sys.executable, *argv], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow  # a child process imports torch (several seconds, minutes on a loaded machine)
@pytest.mark.parametrize(
    "argv",
    [
        ("-m", "cecl.repro", "--profile", "gpu-smoke"),
        ("-m", "cecl.launch", "--jobs", "1", "--profile", "gpu-smoke"),
    ],
    ids=["repro", "launch"],
)
def test_a_gpu_profile_without_a_usable_gpu_stops_before_anything_changes(tmp_path: Path, argv) -> None:
    work = _workspace(tmp_path)
    before = _digests(work)
    result = _run(work, *argv)
    assert result.returncode != 0, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "needs device 'cuda'" in errors[0], result.stderr
    assert "CUDA_VISIBLE_DEVICES='-1' hides every GPU" in errors[0], errors[0]
    assert _digests(work) == before, "params.yaml, dvc.lock or a profile changed"
    assert sorted(p.name for p in work.iterdir()) == ["dvc.lock", "dvc.yaml", "params.yaml", "profiles"]
    assert "params.yaml <-" not in result.stdout


def test_cpu_and_auto_profiles_need_no_gpu_and_bad_params_are_named(tmp_path: Path) -> None:
    assert device_problem(ROOT / "profiles" / "cpu.yaml") is None  # device: auto, no child process
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "profiles" / "cpu.yaml").read_text() + "\nno_such_key: 1\n")
    assert "no_such_key" in (device_problem(bad) or "")


def _recipe(markdown: str) -> list[str]:
    """The commands of the fenced block that follows 'For one dataset's rows only' in docs/datasets.md."""
    after = markdown.split("For one dataset's rows only", 1)[1]
    block = re.search(r"```(?:sh|bash)?\n(.*?)```", after, re.DOTALL)
    assert block, "docs/datasets.md: no command block after 'For one dataset's rows only'"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_the_one_dataset_recipe_of_docs_datasets_runs_as_written(tmp_path: Path) -> None:
    """The recipe's commands, verbatim, in a scratch workspace with the Makefile (``make -o`` keeps
    ``install`` from reinstalling). Without a GPU the last one, ``make repro``, must pass the budget
    gate and stop at the device check: the narrowed profile is valid, and under the budget it names."""
    work = _workspace(tmp_path)
    shutil.copy2(ROOT / "Makefile", work / "Makefile")
    (work / ".venv").symlink_to(Path(sys.executable).parents[1])
    commands = _recipe((ROOT / "docs" / "datasets.md").read_text(encoding="utf-8"))
    assert [c.split()[0] for c in commands] == ["cp", ".venv/bin/python", "make", "make"], commands
    results = []
    for command in commands:
        if command.startswith("make "):
            command = command.replace("make ", "make --no-print-directory -o .venv/.installed ", 1)
        env = {**os.environ, **NO_GPU, "PYTHONPATH": str(ROOT)}
        run = subprocess.run(
            command, shell=True, cwd=work, env=env, capture_output=True, text=True, timeout=300
        )
        results.append(run)
    *setup, repro = results
    for run in setup:
        assert run.returncode == 0, run.args + run.stdout + run.stderr
    total = re.search(r"total: ([\d.]+) h100-hours", setup[-1].stdout)
    budget = float(re.search(r"MAX_GPU_HOURS=([\d.]+)", commands[-1]).group(1))
    assert total and float(total.group(1)) < budget, setup[-1].stdout
    assert "[repro] plan:" in repro.stdout, repro.stdout + repro.stderr
    assert repro.returncode != 0 and "needs device 'cuda'" in repro.stderr, repro.stdout + repro.stderr
