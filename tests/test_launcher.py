"""``python -m cecl.launch``: stages in parallel through Ray, dvc.lock as a serial ``dvc repro`` writes it.

- ``lab``: a copy of the repository with a tiny profile (one dataset, one seed, ce and cecl, one epoch)
  is reproduced twice from the same commit: serially by ``dvc repro`` and by the launcher with two slots.
- A small test-only pipeline (plain shell commands, no training) checks retries, a failing stage that
  stops only its dependents, bad input, and the cluster mode on a local two-node Ray cluster with two
  isolated checkouts and a local-directory DVC remote.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from cecl.io import tree_digest
from tests.test_pipeline_e2e import GIT_ENV, _copy_repo, _env, _git, _mlflow_runs, _run, _write_params
from tests.test_pipeline_e2e import TINY as E2E_TINY

pytestmark = pytest.mark.slow
THREADS = max(1, (os.cpu_count() or 1) // 2)  # what the launcher gives each of its 2 CPU slots
# The end-to-end test's tiny profile, cut to one dataset entry, one seed and one epoch (7 stages).
TINY = copy.deepcopy(E2E_TINY)
TINY.update(seeds=[0], transfer={"sources": [], "targets": []})
TINY["datasets"] = {"bm": E2E_TINY["datasets"]["bm"]}
TINY["pretrain"].update(datasets=["bm"], epochs=1)
TINY["probe"]["epochs"] = 2
# Identifiers minted per run by MLflow (run ids) and Ray Tune (trial ids): the only legitimate
# difference between two runs of the same commit (see test_parallel_outputs_equal_serial_ones).


def _launch(root: Path, *args: str, env: dict | None = None, check: bool = True, timeout: int = 1200):
    result = subprocess.run(
        [sys.executable, "-m", "cecl.launch", *args],
        cwd=root,
        env=env or _env(root),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"launch failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr}"
        )
    return result


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("launch")
    origin = _copy_repo(base / "origin")
    _write_params(origin, TINY)
    _git(origin, "commit", "-qam", "tiny launch profile")
    serial, parallel = base / "serial", base / "parallel"
    for clone in (serial, parallel):
        _git(base, "clone", "-q", str(origin), str(clone))
    # The same torch thread count as the launcher's slots: CPU float reductions depend on it (README).
    env = {**_env(serial), "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
    subprocess.run(["dvc", "repro"], cwd=serial, env=env, check=True, capture_output=True, timeout=1200)
    launched = _launch(parallel, "--jobs", "2")
    return {"base": base, "origin": origin, "serial": serial, "parallel": parallel, "launched": launched}


def _outputs(root: Path) -> dict[str, bytes]:
    """Every file of every stage output in dvc.lock (directories expanded), by path."""
    files: dict[str, bytes] = {}
    for entry in yaml.safe_load((root / "dvc.lock").read_text())["stages"].values():
        for out in entry.get("outs", []):
            path = root / out["path"]
            for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
                files[str(file.relative_to(root))] = file.read_bytes()
    return files


@pytest.mark.heavy
def test_parallel_outputs_equal_serial_ones(lab: dict) -> None:
    """dvc.lock, every output file and the reports, byte for byte (no run id is inside a tracked file)."""
    serial, parallel = lab["serial"], lab["parallel"]
    assert "7 stage(s) ran" in lab["launched"].stdout, lab["launched"].stdout
    a, b = _outputs(serial), _outputs(parallel)
    assert a.keys() == b.keys() and len(a) > 10
    assert [name for name in a if a[name] != b[name]] == []
    assert _lock_diff(serial, parallel) == []  # entries in serial order too
    assert "Running stage" not in _run(["dvc", "repro"], parallel).stdout  # DVC agrees: nothing to do


def _lock_diff(a: Path, b: Path) -> list[str]:
    result = subprocess.run(
        ["diff", str(a / "dvc.lock"), str(b / "dvc.lock")], capture_output=True, text=True
    )
    return [line for line in result.stdout.splitlines() if line[:1] in "<>"]


@pytest.mark.heavy
def test_every_stage_has_its_mlflow_run(lab: dict) -> None:
    parallel = lab["parallel"]
    stages = _run(["dvc", "stage", "list", "--name-only"], parallel).stdout.split()
    runs = _mlflow_runs(parallel)
    assert set(stages) <= set(runs), sorted(set(stages) - set(runs))
    assert all(len(runs[s]) == 1 and runs[s][0].info.status == "FINISHED" for s in stages)
    assert runs["pretrain@bm-cecl-0"][0].data.tags["outputs_sha256"] == tree_digest(
        parallel / "models/bm/cecl/seed_0"
    )
    assert "MLflow server http://127.0.0.1:" in lab["launched"].stdout
    assert (parallel / "logs/launch/pretrain@bm-cecl-0.log").read_text().count("[launch] attempt ") == 1
    assert "logs/" in _git(parallel, "check-ignore", "logs/launch/sweep.log")


@pytest.mark.heavy
def test_second_launch_runs_nothing(lab: dict) -> None:
    result = _launch(lab["parallel"], "--jobs", "2")
    assert "0 of 7 stage(s) to run" in result.stdout and "0 stage(s) ran" in result.stdout


# --------------------------------------------------------------------- a test-only pipeline (no training)

TOY_DVC = {
    "stages": {
        "first": {"cmd": "python flaky.py first.txt", "deps": ["flaky.py"], "outs": ["first.txt"]},
        "second": {"cmd": "cat first.txt > second.txt", "deps": ["first.txt"], "outs": ["second.txt"]},
        "broken": {"cmd": "echo no luck && exit 3", "deps": ["flaky.py"], "outs": ["broken.txt"]},
        "after_broken": {"cmd": "cp broken.txt after.txt", "deps": ["broken.txt"], "outs": ["after.txt"]},
        "other": {"cmd": "echo other > other.txt", "deps": ["flaky.py"], "outs": ["other.txt"]},
    }
}
# Fails the first time it runs in a checkout (a marker outside DVC's outputs), then writes its output.
FLAKY = textwrap.dedent(
    """
    import pathlib, sys
    marker = pathlib.Path(".flaky-marker")
    if not marker.exists():
        marker.touch()
        sys.exit("flaky: failing once on purpose")
    pathlib.Path(sys.argv[1]).write_text("first\\n")
    """
)


def _toy_repo(root: Path, stages: dict) -> Path:
    root.mkdir(parents=True)
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    (root / "flaky.py").write_text(FLAKY)
    (root / ".gitignore").write_text("/.flaky-marker\n/logs/\nmlflow.db\nmlartifacts/\n")
    _write_params(root, TINY)
    _run(["git", "init", "-q"], root)
    _run(["dvc", "init", "-q"], root)
    _run(["git", "add", "-A"], root)
    _run(["git", "commit", "-qm", "toy"], root)
    return root


def _toy_env(root: Path) -> dict[str, str]:
    from tests.test_pipeline_e2e import REPO

    return {**_env(root), "PYTHONPATH": str(REPO)}  # the launcher's package from this checkout


def test_flaky_stage_is_retried_and_a_broken_one_stops_only_its_dependents(tmp_path: Path) -> None:
    root = _toy_repo(tmp_path / "toy", TOY_DVC["stages"])
    result = _launch(root, "--jobs", "2", "--retries", "1", env=_toy_env(root), check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout + result.stderr
    assert (root / "second.txt").read_text() == "first\n" and (root / "other.txt").exists()
    assert "done   first" in out and "attempt 2" in out
    assert not (root / "after.txt").exists() and "after_broken" not in _launch_ran(out)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.fullmatch(  # dvc repro's own status (255); the log has the command's 3
        r"error: launch: stage 'broken' failed after 2 attempt\(s\) \(exit status \d+\); "
        r"log: logs/launch/broken\.log; not started: after_broken",
        errors[0],
    ), result.stderr
    assert (root / "logs/launch/broken.log").read_text().count("Running stage 'broken'") == 2
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"first", "second", "other"}
    # Fix the broken stage: the next launch runs only it and its dependent (DVC's up-to-date check).
    stages = {**TOY_DVC["stages"], "broken": {**TOY_DVC["stages"]["broken"], "cmd": "echo ok > broken.txt"}}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    again = _launch(root, "--jobs", "2", env=_toy_env(root))
    assert "2 of 5 stage(s) to run" in again.stdout and (root / "after.txt").read_text() == "ok\n"


def _launch_ran(output: str) -> list[str]:
    return re.findall(r"done   (\S+)", output)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--jobs", "0"], "error: launch: --jobs must be at least 1 (got 0)"),
        (["nope"], "error: launch: "),
        (["--retries", "-1"], "error: launch: --retries must be 0 or more (got -1)"),
    ],
)
def test_bad_input_is_one_line_before_work(tmp_path: Path, args: list[str], expected: str) -> None:
    root = _toy_repo(tmp_path / "toy", TOY_DVC["stages"])
    result = _launch(root, *args, env=_toy_env(root), check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(expected) and not (root / "logs").exists()
    (root / "dvc.yaml").unlink()
    result = _launch(root, env=_toy_env(root), check=False)
    assert result.returncode == 2 and "no dvc.yaml" in result.stderr


@pytest.mark.heavy
def test_cluster_mode_two_checkouts_and_a_dvc_remote(tmp_path: Path) -> None:
    """A local two-node Ray cluster: each node works in its own checkout; the user's final
    ``dvc repro --pull`` restores every stage from the run-cache and runs none."""
    from ray.cluster_utils import Cluster

    stages = {k: v for k, v in TOY_DVC["stages"].items() if k in ("first", "second", "other")}
    stages["first"] = {**stages["first"], "cmd": "echo first > first.txt"}
    origin = _toy_repo(tmp_path / "origin", stages)
    user = tmp_path / "user"
    _run(["git", "clone", "-q", str(origin), str(user)], tmp_path)
    _run(["dvc", "remote", "add", "--local", "-d", "lab", str(tmp_path / "remote")], user)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        cluster.wait_for_nodes()
        workdir = tmp_path / "nodes"
        result = _launch(
            user, "--address", cluster.address, "--workdir", str(workdir), "--jobs", "2", env=_toy_env(user)
        )
    finally:
        cluster.shutdown()
    out = result.stdout
    checkouts = [p for p in workdir.iterdir() if p.is_dir()]
    assert 1 <= len(checkouts) <= 2 and all((p / ".launch-ready").exists() for p in checkouts)
    ran_on = {p.name for p in checkouts if (p / "dvc.lock").exists()}
    assert ran_on, out
    final = out[out.index("dvc repro --pull here") :]
    assert "Running stage" not in final and "3 restored from the run-cache" in final, out
    assert (user / "second.txt").read_text() == "first\n" and (user / "other.txt").exists()
    assert set(yaml.safe_load((user / "dvc.lock").read_text())["stages"]) == {"first", "second", "other"}
    assert "Running stage" not in _run(["dvc", "repro"], user).stdout


_ = GIT_ENV  # re-exported helpers come from tests.test_pipeline_e2e
