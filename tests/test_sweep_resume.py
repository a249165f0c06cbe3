"""A killed and resumed sweep gives the outcomes of an uninterrupted one (cecl/tune/runner.py).

Under ``scheduler: none`` the interrupted experiment is restored and its unfinished trial continues from
its checkpoint. Under ASHA Ray rebuilds the scheduler without its rung records, so the experiment is
restarted from scratch with one line instead. Either way the rows of sweep/results.csv must equal those
of an uninterrupted sweep (the fault of issue 35: a resumed ASHA sweep stopped other trials). On this
tiny sweep ASHA stops no trial even uninterrupted, so the ASHA case checks the clean restart, not the
divergence itself (with the restart disabled its rows matched too).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cecl.tune import SweepInterrupted, run_sweep
from tests.test_sweep import _InterruptOnce, _sweep_params, project, ray_session  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("scheduler", ["none", "asha"])
def test_a_resumed_sweep_equals_an_uninterrupted_one(
    project: Path,  # noqa: F811
    ray_session,  # noqa: F811
    tmp_path: Path,
    capsys,
    scheduler: str,
) -> None:
    params = _sweep_params(
        epochs=2,
        scheduler=scheduler,
        max_concurrent=1,  # one trial at a time: the interruption point is deterministic
        grids={"cecl": {"temperature": [0.1, 0.5, 1.0, 2.0], "weight": [0.5]}},
    )
    kwargs = {"data_dir": project / "data/bm", "verbose": 0}
    clean = run_sweep(params, root=tmp_path / "clean", storage=tmp_path / "clean/ray_results", **kwargs)

    log = tmp_path / "results.jsonl"
    storage = tmp_path / "killed/ray_results"
    interrupt = _InterruptOnce(log, at=(0.5, 1))  # after the first trial finished
    with pytest.raises(SweepInterrupted):
        run_sweep(params, root=tmp_path / "killed", storage=storage, callbacks=[interrupt], **kwargs)
    capsys.readouterr()
    resumed = run_sweep(params, root=tmp_path / "killed", storage=storage, **kwargs)
    out = capsys.readouterr().out
    restarted = "restarting the interrupted experiment" in out
    assert restarted == (scheduler == "asha"), out
    assert [o.row() for o in resumed.outcomes] == [o.row() for o in clean.outcomes]
    seen = [(r["tau"], r["epoch"]) for r in map(json.loads, log.read_text().splitlines())]
    before = seen[: seen.index((0.5, 1)) + 1]  # up to the interruption
    assert before[:2] == [(0.1, 1), (0.1, 2)]  # the first trial had finished
    after = seen[len(before) :]  # by the callback Ray restored with the experiment (none after a restart)
    if scheduler == "none":
        assert after and (0.1, 1) not in after  # resumed: the finished trial did not run again
