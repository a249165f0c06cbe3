"""cecl.repro's summary (which stages ran, were reused or restored, and each stage's wall time), and the
pruning of dvc.lock entries whose stages dvc.yaml no longer defines (on tiny DVC workspaces)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cecl.launch.lockfile import prune_stale, pruned_note
from cecl.repro import stage_seconds, summary

LINES = [
    (10.0, "Running stage 'prepare@bm':\n"),
    (10.5, "> python -m stages.prepare --dataset bm\n"),
    (14.0, "Stage 'prepare@fm' didn't change, skipping\n"),
    (14.2, "Running stage 'pretrain@bm-cecl-0':\n"),
    (40.2, "Stage 'probe@bm-cecl-0' is cached - skipping run, checking out outputs\n"),
    (41.0, "Running stage 'aggregate':\n"),
]


def test_each_ran_stage_lasts_until_the_next_stage_line_or_the_end() -> None:
    seconds = stage_seconds(LINES, end=50.0)
    assert seconds == pytest.approx({"prepare@bm": 4.0, "pretrain@bm-cecl-0": 26.0, "aggregate": 9.0})


def test_summary_names_times_and_counts() -> None:
    text = "".join(line for _, line in LINES)
    lines = summary(text, {"prepare@bm": "changed deps"}, stage_seconds(LINES, 50.0), total=45.4)
    assert lines[0] == "[repro] 3 stage(s) ran, 1 reused (up to date), 1 restored from the run-cache in 45 s"
    assert "  ran      prepare@bm (4.0 s): changed deps" in lines
    assert "  ran      pretrain@bm-cecl-0 (26.0 s): an upstream stage changed its outputs" in lines
    assert any(line.startswith("  reused   prepare@fm") for line in lines)
    assert any(line.startswith("  restored probe@bm-cecl-0") for line in lines)


# ------------------------------------------------------------------ dvc.lock entries of removed stages

FOREACH = {
    "stages": {
        "make": {
            "foreach": "${items}",
            "do": {"cmd": "echo ${item} > out_${item}.txt", "outs": ["out_${item}.txt"]},
        }
    }
}


def _dvc(root: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _foreach_workspace(root: Path, items: list[str]) -> Path:
    """A git + DVC workspace whose one foreach stage makes a file per item, run once by ``dvc repro``."""
    root.mkdir()
    (root / "dvc.yaml").write_text(yaml.safe_dump(FOREACH))
    (root / "params.yaml").write_text(yaml.safe_dump({"items": items}))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    _dvc(root, "init", "-q")
    _dvc(root, "repro")
    return root


def test_a_dropped_foreach_item_is_pruned_to_a_clean_runs_dvc_lock(tmp_path: Path) -> None:
    """A profile drops a foreach item: DVC keeps its dvc.lock entry; pruning leaves exactly the dvc.lock
    a clean ``dvc repro`` of the smaller params writes (the reference), byte for byte."""
    root = _foreach_workspace(tmp_path / "ws", ["a", "b", "c"])
    (root / "params.yaml").write_text(yaml.safe_dump({"items": ["a", "c"]}))
    _dvc(root, "repro")
    assert "make@b" in yaml.safe_load((root / "dvc.lock").read_text())["stages"]  # the fault: DVC keeps it
    assert prune_stale(root) == ["make@b"]
    clean = _foreach_workspace(tmp_path / "clean", ["a", "c"])
    assert (root / "dvc.lock").read_text() == (clean / "dvc.lock").read_text()
    assert "changed" not in _dvc(root, "status")  # DVC still reads every remaining entry as up to date


def test_nothing_stale_leaves_dvc_lock_untouched(tmp_path: Path) -> None:
    root = _foreach_workspace(tmp_path / "ws", ["a", "b"])
    before = (root / "dvc.lock").stat().st_mtime_ns, (root / "dvc.lock").read_bytes()
    assert prune_stale(root) == []
    assert ((root / "dvc.lock").stat().st_mtime_ns, (root / "dvc.lock").read_bytes()) == before


def test_the_pruned_line_names_the_first_entries_and_counts_the_rest() -> None:
    assert pruned_note(["b"]) == "dvc.lock: pruned 1 entry of stages no longer in dvc.yaml: b"
    assert pruned_note(list("abcde")).endswith("5 entries of stages no longer in dvc.yaml: a, b, c (+2 more)")


@pytest.mark.slow
def test_make_repro_prunes_a_removed_stage_with_one_line(tmp_path: Path) -> None:
    """``python -m cecl.repro`` (``make repro``) on a toy pipeline: a stage removed from dvc.yaml loses its
    dvc.lock entry, with one line saying so, and the remaining stage is reused."""
    from tests.test_launcher import _toy_repo
    from tests.test_pipeline_e2e import REPO, _env

    stages = {
        "a": {"cmd": "echo a > a.txt", "outs": ["a.txt"]},
        "b": {"cmd": "echo b > b.txt", "outs": ["b.txt"]},
    }
    root = _toy_repo(tmp_path / "toy", stages)
    env = {**_env(root), "PYTHONPATH": str(REPO), "CECL_WARM": "0"}

    def repro() -> str:
        result = subprocess.run(
            [sys.executable, "-m", "cecl.repro"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    repro()
    assert set(yaml.safe_load((root / "dvc.lock").read_text())["stages"]) == {"a", "b"}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"a": stages["a"]}}))
    out = repro()
    assert [line for line in out.splitlines() if "pruned" in line] == [
        "[repro] dvc.lock: pruned 1 entry of stages no longer in dvc.yaml: b"
    ]
    assert set(yaml.safe_load((root / "dvc.lock").read_text())["stages"]) == {"a"}
    assert "0 stage(s) ran, 1 reused" in out
    # Each launch its own log, printed; the first launch's is not overwritten by the second.
    logs = sorted((root / "logs/repro").glob("*/repro.log"), key=lambda log: log.stat().st_mtime_ns)
    assert len(logs) == 2 and f"[repro] log: {logs[1].relative_to(root)}" in out
    assert "Running stage 'b'" in logs[0].read_text() and "Running stage 'b'" not in logs[1].read_text()
    assert "[repro] 0 stage(s) ran, 1 reused" in logs[1].read_text()
