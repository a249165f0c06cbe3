"""``make verify`` and the restore-path check (cecl/verify.py) on a real DVC repository with a real cache.

The repository is a two-output stage run by ``dvc repro`` (no torch, seconds). A flipped byte in a cache
object, which ``dvc status`` does not notice, is named in one line by the verify command and stops
``python -m cecl.repro`` before DVC could restore it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cecl.verify import cache_refusal, check_cache, check_workspace, dir_md5, restore_objects

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STAGE = """stages:
  make:
    cmd: mkdir -p out/sub && echo hello > out/a.txt && echo world > out/sub/b.txt && echo one > single.txt
    outs:
      - out
      - single.txt
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO)}


def _run(root: Path, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=root, env=_env(), capture_output=True, text=True, check=False)


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        assert _run(root, *command).returncode == 0
    (root / "dvc.yaml").write_text(STAGE)
    result = _run(root, "dvc", "repro", "-q")
    assert result.returncode == 0, result.stderr
    return root


def _store(root: Path) -> Path:
    return root / ".dvc/cache/files/md5"


def _flip(path: Path, keep_mtime: bool = True) -> None:
    """One bit flipped; by default the mtime is kept, as bit rot or a faulty disk or copy keeps it."""
    stat = path.stat()
    path.chmod(0o644)  # DVC writes objects read-only
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01
    path.write_bytes(bytes(data))
    path.chmod(0o444)
    if keep_mtime:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _object_of(root: Path, content: bytes) -> Path:
    return _store(root) / (name := hashlib.md5(content).hexdigest())[:2] / name[2:]


def test_a_clean_repository_verifies(repo: Path) -> None:
    result = _run(repo, sys.executable, "-m", "cecl.verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 cache object(s)" in result.stdout and "2 workspace output(s)" in result.stdout
    assert "all match" in result.stdout


def test_folder_md5_is_dvcs(repo: Path) -> None:
    """The folder digest computed here equals what DVC recorded in dvc.lock (an independent reference)."""
    lock = (repo / "dvc.lock").read_text()
    assert dir_md5(repo / "out") in lock
    assert (_store(repo) / dir_md5(repo / "out")[:2] / dir_md5(repo / "out")[2:]).is_file()


def test_a_flipped_cache_byte_is_named_in_one_line(repo: Path) -> None:
    bad = _object_of(repo, b"hello\n")
    _flip(bad)
    status = _run(repo, "dvc", "status")
    assert "up to date" in status.stdout, status.stdout  # DVC itself does not notice
    result = _run(repo, sys.executable, "-m", "cecl.verify")
    assert result.returncode == 1
    named = [line for line in result.stdout.splitlines() if line.startswith("MISMATCH")]
    assert len(named) == 1 and str(bad) in named[0]
    assert "1 mismatch" in result.stdout.splitlines()[-1]


def test_a_changed_workspace_output_is_named(repo: Path) -> None:
    (repo / "out/sub/b.txt").write_text("World\n")
    (repo / "single.txt").write_text("two\n")
    report = check_workspace(repo)
    assert report.checked == 2 and len(report.mismatches) == 2
    assert any("output out (make)" in line for line in report.mismatches)
    assert any("output single.txt (make)" in line for line in report.mismatches)
    (repo / "single.txt").unlink()
    assert check_workspace(repo).missing == 1  # a missing output is not a mismatch (a fresh clone)


def test_repro_refuses_a_damaged_object_before_dvc_restores_it(repo: Path) -> None:
    (repo / "single.txt").unlink()  # what `dvc repro` / checkout would restore from the cache
    bad = _object_of(repo, b"one\n")
    _flip(bad)
    result = _run(repo, sys.executable, "-m", "cecl.repro")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "make verify" in lines[0]
    assert not (repo / "single.txt").exists()  # nothing restored


def test_the_restore_check_rehashes_only_new_or_changed_objects(repo: Path) -> None:
    assert cache_refusal(repo) is None
    seen = repo / ".dvc/tmp/cecl-verified.json"
    assert seen.is_file()
    assert check_cache(_store(repo), seen).checked == 0  # every object passed before and is unchanged
    bad = _object_of(repo, b"world\n")
    _flip(bad, keep_mtime=False)  # rewritten: a new ctime, so re-hashed although its output is present
    assert str(bad) in (cache_refusal(repo) or "")
    _flip(bad)  # repaired, back to the good bytes
    assert cache_refusal(repo) is None
    rotten = _object_of(repo, b"hello\n")
    _flip(rotten)
    # bit rot keeps every stamp (ctime included, which a test cannot set back): record the damaged file's
    # stamps as passed, so only a full re-hash can find it
    record = json.loads(seen.read_text())
    key = rotten.relative_to(_store(repo)).as_posix()
    stat = rotten.stat()
    record[key] = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
    seen.write_text(json.dumps(record))
    assert cache_refusal(repo) is None  # its output is in the workspace: DVC will not restore it
    assert "1 mismatch" in _run(repo, sys.executable, "-m", "cecl.verify").stdout  # make verify re-reads all
    shutil.rmtree(repo / "out")  # now `dvc checkout` / `dvc repro` would restore out/ from the cache
    listing = _lock_md5(repo, "out")
    contents = [hashlib.md5(text).hexdigest() for text in (b"hello\n", b"world\n")]
    assert restore_objects(repo, _store(repo)) == {f"{md5[:2]}/{md5[2:]}" for md5 in (listing, *contents)}
    refusal = cache_refusal(repo)
    assert refusal is not None and str(rotten) in refusal


def _lock_md5(root: Path, path: str) -> str:
    (entry,) = [
        out
        for out in yaml.safe_load((root / "dvc.lock").read_text())["stages"]["make"]["outs"]
        if out["path"] == path
    ]
    return entry["md5"]
