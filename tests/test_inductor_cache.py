"""compute.compile keeps Inductor's cache in the project (cecl/train/device.py ``persist_inductor_cache``)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cecl.train.device import INDUCTOR_CACHE, INDUCTOR_CACHE_ENV, PROJECT_ROOT, persist_inductor_cache


def test_the_cache_is_set_to_the_project_folder_and_inductor_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    monkeypatch.delenv(INDUCTOR_CACHE_ENV, raising=False)
    folder = tmp_path / ".cache" / "inductor"
    assert persist_inductor_cache(folder) == folder
    assert folder.is_dir() and Path(cache_dir()) == folder  # what Inductor itself will use


def test_a_users_cache_folder_is_respected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INDUCTOR_CACHE_ENV, str(tmp_path / "mine"))
    assert persist_inductor_cache(tmp_path / "project") == tmp_path / "mine"
    assert not (tmp_path / "project").exists()
    assert os.environ[INDUCTOR_CACHE_ENV] == str(tmp_path / "mine")


def test_the_default_folder_is_in_the_checkout_and_git_ignored() -> None:
    assert INDUCTOR_CACHE == PROJECT_ROOT / ".cache" / "inductor"
    assert (PROJECT_ROOT / "cecl" / "train" / "device.py").is_file()
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(INDUCTOR_CACHE / "x")], cwd=PROJECT_ROOT, check=False
    )
    assert ignored.returncode == 0
