"""``python -m cecl.launch``: stages in parallel through Ray, dvc.lock as a serial ``dvc repro`` writes it.

The launcher on the real pipeline (a fresh clone launched with two slots equals the serial run byte for
byte, every stage has its MLflow run, a second launch runs nothing) is checked in
``tests/test_pipeline_e2e.py``, on the end-to-end lab's serial run. Here a small test-only pipeline
(plain shell commands, no training) checks retries, a failing stage that stops only its dependents, bad
input, and the cluster mode on a local two-node Ray cluster with two isolated checkouts and a
local-directory DVC remote.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from tests.test_pipeline_e2e import REPO, TINY, _env, _run, _write_params
from tests.test_pipeline_e2e import _launch as launch

pytestmark = pytest.mark.slow
# The launcher reads params.yaml (device, experiment) before anything runs; the toy stages never use it.
PARAMS = {
    **TINY,
    "datasets": {"bm": TINY["datasets"]["bm"]},
    "pretrain": {**TINY["pretrain"], "datasets": ["bm"]},
    "transfer": {"sources": [], "targets": []},
}


def _launch(
    root: Path, *args: str, check: bool = True, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The launcher in ``root``, with its package from this checkout (the toy repository has none)."""
    env = {**_env(root), "PYTHONPATH": str(REPO), **(extra_env or {})}
    return launch(root, *args, env=env, check=check)


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
    _write_params(root, PARAMS)
    _run(["git", "init", "-q"], root)
    _run(["dvc", "init", "-q"], root)
    _run(["git", "add", "-A"], root)
    _run(["git", "commit", "-qm", "toy"], root)
    return root


def test_flaky_stage_is_retried_and_a_broken_one_stops_only_its_dependents(tmp_path: Path) -> None:
    root = _toy_repo(tmp_path / "toy", TOY_DVC["stages"])
    result = _launch(root, "--jobs", "2", "--retries", "1", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout + result.stderr
    assert (root / "second.txt").read_text() == "first\n" and (root / "other.txt").exists()
    assert "done   first" in out and "attempt 2" in out
    assert not (root / "after.txt").exists() and "after_broken" not in _launch_ran(out)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.fullmatch(  # dvc repro's own status (255); the log has the command's 3
        r"error: launch: stage 'broken' failed after 2 attempt\(s\) \(exit status \d+\); "
        r"log: logs/launch/\d{8}T\d{6}Z-p\d+/broken\.log; not started: after_broken",
        errors[0],
    ), result.stderr
    failed_log = root / errors[0].split("log: ")[1].split(";")[0]
    assert failed_log.read_text().count("Running stage 'broken'") == 2
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"first", "second", "other"}
    # Fix the broken stage: the next launch runs only it and its dependent (DVC's up-to-date check).
    stages = {**TOY_DVC["stages"], "broken": {**TOY_DVC["stages"]["broken"], "cmd": "echo ok > broken.txt"}}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    again = _launch(root, "--jobs", "2")
    assert "2 of 5 stage(s) to run" in again.stdout and (root / "after.txt").read_text() == "ok\n"
    # Per-launch logs: the second launch wrote its own folder (printed), the first's failure log is intact.
    dirs = sorted(
        (p for p in (root / "logs/launch").iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime_ns
    )
    folders = [p.name for p in dirs]  # in the order the launches last wrote them
    assert len(folders) == 2 and f"logs in logs/launch/{folders[1]}/" in again.stdout, folders
    assert (
        failed_log.parent.name == folders[0] and failed_log.read_text().count("Running stage 'broken'") == 2
    )
    assert "Running stage 'broken'" in (root / "logs/launch" / folders[1] / "broken.log").read_text()


def _launch_ran(output: str) -> list[str]:
    return re.findall(r"done   (\S+)", output)


def test_the_plan_is_what_dvc_status_reports_for_all_stages_and_for_targets(tmp_path: Path) -> None:
    """The launcher's plan (DVC's Python API, one status pass) against the ``dvc status --json`` CLI."""
    from cecl.launch.dag import read_plan

    stages = {k: v for k, v in TOY_DVC["stages"].items() if k in ("second", "other")}
    stages["first"] = {**TOY_DVC["stages"]["first"], "cmd": "echo first > first.txt"}
    root = _toy_repo(tmp_path / "toy", stages)
    _run(["dvc", "repro", "-s", "first"], root)  # first is up to date; second (its dependent) and other not
    plan = read_plan(root)
    reported = json.loads(_run(["dvc", "status", "--json"], root).stdout)
    assert set(plan.reasons) == set(reported) == {"second", "other"}
    assert sorted(plan.order) == ["first", "other", "second"] and plan.upstream["second"] == ["first"]
    assert plan.order.index("first") < plan.order.index("second")
    assert sorted(plan.to_run) == ["other", "second"]
    targeted = read_plan(root, ["second"])
    assert targeted.order == ["first", "second"] and targeted.to_run == ["second"]
    _run(["dvc", "repro", "-s", "other"], root)
    assert read_plan(root, ["other"]).to_run == []


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
    result = _launch(root, *args, check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(expected) and not (root / "logs").exists()
    (root / "dvc.yaml").unlink()
    result = _launch(root, check=False)
    assert result.returncode == 2 and "no dvc.yaml" in result.stderr


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
        result = _launch(user, "--address", cluster.address, "--workdir", str(workdir), "--jobs", "2")
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


def test_a_local_launch_and_sweep_start_their_own_ray_beside_a_running_cluster(tmp_path: Path) -> None:
    """Another Ray on this host (``ray start``, a colleague's job, a parallel test's cluster) must not be
    joined by a one-host launch or sweep: ray.init would connect to it and refuse the slot counts."""
    from ray.cluster_utils import Cluster

    stages = {k: v for k, v in TOY_DVC["stages"].items() if k in ("second", "other")}
    stages["first"] = {**TOY_DVC["stages"]["first"], "cmd": "echo first > first.txt"}
    root = _toy_repo(tmp_path / "toy", stages)
    sweep_ray = (
        "import ray; from cecl.tune.runner import init_ray; from tests.test_sweep import _sweep_params; "
        "init_ray(_sweep_params()); print(ray.cluster_resources()['CPU'])"
    )
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.wait_for_nodes()
        result = _launch(root, "--jobs", "2", check=False)
        sweep = subprocess.run(
            [sys.executable, "-c", sweep_ray],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        cluster.shutdown()
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (root / "second.txt").read_text() == "first\n" and (root / "other.txt").exists()
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    assert float(sweep.stdout.split()[-1]) == os.cpu_count()  # this host's CPUs, not the cluster's one


# Records its pid (under another name, then renamed, so that it is never read half-written), then sleeps
# unless ``.fast`` exists, then writes its output.
SLOW = textwrap.dedent(
    """
    import os, pathlib, time
    pathlib.Path("slow.pid.partial").write_text(str(os.getpid()))
    pathlib.Path("slow.pid.partial").replace("slow.pid")
    if not pathlib.Path(".fast").exists():
        time.sleep(300)
    pathlib.Path("slow.txt").write_text("slow\\n")
    """
)


def _alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return not stat.read_text().rsplit(") ", 1)[1].startswith("Z")  # a zombie has exited
    except (OSError, IndexError):
        return False


def test_an_interrupted_launch_leaves_nothing_running_and_the_next_one_finishes(tmp_path: Path) -> None:
    """Ctrl-C stops the running stage's process group (exit 130); after a SIGKILL of the launcher the
    orphaned stage is stopped by the next launch, which then finishes the pipeline."""
    stages = {
        "slow": {"cmd": "python slow.py", "deps": ["slow.py"], "outs": ["slow.txt"]},
        "after": {"cmd": "cp slow.txt after.txt", "deps": ["slow.txt"], "outs": ["after.txt"]},
    }
    root = _toy_repo(tmp_path / "toy", stages)
    (root / "slow.py").write_text(SLOW)
    marker = root / "slow.pid"

    def start() -> tuple[subprocess.Popen[str], int]:
        marker.unlink(missing_ok=True)
        launcher = subprocess.Popen(
            [sys.executable, "-m", "cecl.launch", "--jobs", "1"],
            cwd=root,
            env={**_env(root), "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, as in a terminal
        )
        deadline = time.monotonic() + 180
        while not marker.exists() and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "the slow stage never started"
        return launcher, int(marker.read_text())

    launcher, pid = start()
    launcher.send_signal(signal.SIGINT)
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 130 and "interrupted; stopped slow" in err, err
    assert not _alive(pid) and not (root / "slow.txt").exists() and not (root / "dvc.lock").exists()

    launcher, pid = start()
    os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and its process group
    launcher.wait()
    assert _alive(pid)  # the stage has its own session: Ray's worker or the next launch must stop it
    (root / ".fast").touch()
    result = _launch(root, "--jobs", "1")
    assert not _alive(pid), result.stdout
    assert "2 of 2 stage(s) to run" in result.stdout and (root / "after.txt").read_text() == "slow\n"


def test_the_next_launch_stops_recorded_leftovers_only(tmp_path: Path) -> None:
    """What a SIGKILLed launcher leaves (stage groups in their own sessions, pid files under logs/launch)
    is stopped by the next launch; a pid file whose pid now belongs to another process is not acted on."""
    from cecl.launch import children

    orphan = subprocess.Popen(["sleep", "300"], start_new_session=True)
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    # A group whose leader (dvc, here sh) is gone while its child (the stage, here sleep) lives on.
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 300 & echo $!; read line"],
        start_new_session=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert leader.stdout is not None and leader.stdin is not None
    member = int(leader.stdout.readline())
    try:
        children.record(tmp_path / "stage_a.pid", orphan.pid)
        (tmp_path / "stage_b.pid").write_text(f"{bystander.pid} 1\n")  # a start time that is not its own
        children.record(tmp_path / "stage_c.pid", leader.pid)
        leader.stdin.close()
        leader.wait(timeout=10)
        assert _alive(member)
        assert children.kill_recorded(tmp_path, grace_s=5) == ["stage_a", "stage_c"]
        assert orphan.wait(timeout=10) is not None and bystander.poll() is None and not _alive(member)
        assert list(tmp_path.glob("*.pid")) == []
    finally:
        for process in (orphan, bystander):
            process.kill()
            process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)
