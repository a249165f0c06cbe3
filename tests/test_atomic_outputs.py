"""A killed output write leaves nothing behind once the output is written again (cecl/io.py atomic_dir).

The fault of issue 35: a pretrain stage SIGKILLed inside ``atomic_dir`` left ``models/<ds>/<method>/
.seed_N.*``; aggregate's dependency on models/ then recorded the debris in dvc.lock for good. Here a
real process is killed mid-write, the write is repeated, and the parent folder (what DVC hashes) must
equal that of a clean write, byte for byte.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cecl.io import atomic_dir, partials_of, tree_digest
from cecl.verify import dir_md5

REPO = Path(__file__).resolve().parents[1]
WRITER = """
import sys, time
from pathlib import Path
from cecl.io import atomic_dir
with atomic_dir(Path(sys.argv[1])) as tmp:
    (tmp / "encoder.pt").write_bytes(b"half")
    print("writing", flush=True)
    time.sleep(300)
"""


def _write(final: Path) -> None:
    with atomic_dir(final) as tmp:
        (tmp / "encoder.pt").write_bytes(b"weights")
        (tmp / "history.csv").write_text("epoch\n1\n")


def test_a_killed_write_leaves_the_parent_equal_to_a_clean_write(tmp_path: Path) -> None:
    clean, killed = tmp_path / "clean/models/bm/simclr", tmp_path / "killed/models/bm/simclr"
    _write(clean / "seed_0")
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(killed / "seed_0")],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "writing"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    assert len(partials_of(killed / "seed_0")) == 1  # the debris a SIGKILL leaves
    _write(killed / "seed_0")  # the stage's rerun
    assert partials_of(killed / "seed_0") == []
    assert sorted(p.name for p in killed.iterdir()) == ["seed_0"]
    assert tree_digest(killed.parent.parent) == tree_digest(clean.parent.parent)
    assert dir_md5(killed.parent.parent) == dir_md5(clean.parent.parent)  # DVC's digest of models/


# A stage's writer: its output through atomic_dir, SIGKILLed mid-write when .kill exists.
STAGE_WRITER = """
import os, signal, sys
from pathlib import Path
from cecl.io import atomic_dir
with atomic_dir(Path(sys.argv[1])) as tmp:
    (tmp / "encoder.pt").write_bytes(b"weights")
    if Path(".kill").exists():
        os.kill(os.getpid(), signal.SIGKILL)
    (tmp / "history.csv").write_text("epoch\\n1\\n")
"""
STAGES = {
    "stages": {
        "train": {
            "cmd": "python write.py models/m/seed_0",
            "deps": ["write.py"],
            "outs": ["models/m/seed_0"],
        },
        # like aggregate: depends on the whole models/ folder, debris included
        "aggregate": {"cmd": "ls -A models/m > report.txt", "deps": ["models"], "outs": ["report.txt"]},
    }
}


def _dvc_workspace(root: Path) -> Path:
    import yaml

    root.mkdir()
    (root / "dvc.yaml").write_text(yaml.safe_dump(STAGES))
    (root / "write.py").write_text(STAGE_WRITER)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    return root


def _dvc_repro(root: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    return subprocess.run(
        [sys.executable, "-m", "dvc", "repro"], cwd=root, env=env, capture_output=True, text=True, check=False
    )


@pytest.mark.slow
def test_a_stage_killed_mid_write_then_rerun_leaves_dvc_lock_equal_to_a_clean_runs(tmp_path: Path) -> None:
    """The fault end to end through DVC: the stage is SIGKILLed inside its output write, then rerun; the
    dvc.lock (the stage's outputs and aggregate's digest of models/) equals a clean run's, byte for byte."""
    clean = _dvc_workspace(tmp_path / "clean")
    assert _dvc_repro(clean).returncode == 0
    killed = _dvc_workspace(tmp_path / "killed")
    (killed / ".kill").touch()
    first = _dvc_repro(killed)
    assert first.returncode != 0 and len(partials_of(killed / "models/m/seed_0")) == 1, first.stdout
    (killed / ".kill").unlink()
    rerun = _dvc_repro(killed)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert (killed / "dvc.lock").read_text() == (clean / "dvc.lock").read_text()
    assert (killed / "report.txt").read_text() == (clean / "report.txt").read_text()  # no debris listed


def test_a_failing_block_removes_its_temporary_and_keeps_the_previous_output(tmp_path: Path) -> None:
    final = tmp_path / "seed_0"
    _write(final)
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "encoder.pt").write_bytes(b"half")
        raise RuntimeError("stage failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed_0"]
    assert (final / "encoder.pt").read_bytes() == b"weights"


def test_only_this_outputs_temporaries_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".seed_1.partial-abc").mkdir()  # another output's (seed_1) temporary
    (tmp_path / ".seed_10.partial-abc").mkdir()
    (tmp_path / ".seed_1.partial-def").mkdir()
    _write(tmp_path / "seed_1")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".seed_10.partial-abc", "seed_1"]
