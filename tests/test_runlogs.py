"""Per-launch log folders (cecl/launch/runlogs.py): named by the UTC start time and the launch's pid, never
shared. The launches that use them are checked in tests/test_launcher.py (two launcher runs keep both
folders) and tests/test_repro.py (two ``python -m cecl.repro`` runs keep both logs)."""

from __future__ import annotations

import calendar
from pathlib import Path

import pytest

from cecl.launch.runlogs import launch_id, new_launch_dir


def test_the_id_is_the_utc_start_time_then_the_pid() -> None:
    now = calendar.timegm((2026, 12, 8, 0, 1, 46, 0, 0, 0))  # an independent UTC clock reading
    assert launch_id(now, 4321) == "20261208T000146Z-p4321"
    assert launch_id(now, 4321) < launch_id(now + 1, 1)  # names sort by start time


def test_two_launches_get_two_folders_and_an_existing_one_is_never_reused(tmp_path: Path) -> None:
    first = new_launch_dir(tmp_path, "launch", launch_id(0.0, 1))
    second = new_launch_dir(tmp_path, "launch", launch_id(0.0, 2))  # the same second, another process
    assert first != second and (tmp_path / first).is_dir() and (tmp_path / second).is_dir()
    assert first.parts[:2] == ("logs", "launch")
    (tmp_path / first / "a.log").write_text("first launch\n")
    with pytest.raises(FileExistsError):
        new_launch_dir(tmp_path, "launch", launch_id(0.0, 1))
    assert (tmp_path / first / "a.log").read_text() == "first launch\n"
