"""Stage entry points: bad input and environment errors are one line with exit status 2, bugs are not."""

from __future__ import annotations

import pickle

import pytest
from mlflow.exceptions import MlflowException

from cecl.cli import run_stage
from cecl.io import ensure_writable


def _fails_with(capsys, error: BaseException) -> str:
    def body() -> None:
        raise error

    with pytest.raises(SystemExit) as exit_info:
        run_stage("probe@x", body)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: probe@x: ")
    return err


@pytest.mark.parametrize(
    "error",
    [
        PermissionError("cannot write outputs under /x: Permission denied"),
        OSError("disk full"),
        ValueError("bad\nmulti-line\nmessage"),
        pickle.UnpicklingError("invalid load key"),
        MlflowException("RESOURCE_DOES_NOT_EXIST: run abc not found"),
    ],
)
def test_user_errors_are_one_line(capsys, error) -> None:
    err = _fails_with(capsys, error)
    assert str(error).split()[0] in err


def test_a_bug_keeps_its_traceback() -> None:
    def body() -> None:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_stage("probe@x", body)


def test_unwritable_output_folder_is_found_before_work(tmp_path) -> None:
    blocker = tmp_path / "models"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(PermissionError, match="cannot write outputs under") as err:
        ensure_writable(blocker / "bm" / "cecl" / "seed_0")
    assert "\n" not in str(err.value)
    ensure_writable(tmp_path / "fine" / "seed_0")  # creatable: no error
    assert (tmp_path / "fine").is_dir() and not list((tmp_path / "fine").iterdir())
