"""``python -m cecl.launch --jobs N``: the pipeline with N stages in flight (``make repro JOBS=N``).

A thin mapping from DVC's DAG to Ray tasks: a stage is submitted once all its upstream stages
succeeded, and runs as ``dvc --wait-for-lock repro --single-item <stage>`` in a Ray task that holds its
slots (:mod:`cecl.launch.slots`): a pretrain stage as many GPUs as its dataset entry's
``pretrain.processes``, another training stage one, a light stage a share of one. DVC decides what runs
(stages it reports up to date, and whose upstream is up to date, are not submitted; each task's ``dvc
repro`` checks again) and writes dvc.lock, which ends up as a serial ``dvc repro`` writes it
(:mod:`cecl.launch.lockfile`). Parallel stages log to an MLflow server the launcher starts on 127.0.0.1
unless MLFLOW_TRACKING_URI is set.

Failures: a failing stage runs again while its checkpoint advances (a pretrain stage resumes from its
last epoch), else at most ``--retries`` times in a row (:mod:`cecl.launch.progress`); its dependents
never start, independent stages finish, and the launcher exits 1 naming the stage and its log
(``logs/launch/<launch id>/<stage>.log``: each launch its own folder, named by its UTC start time and pid,
:mod:`cecl.launch.runlogs`). Training stages have no timeout unless ``--timeout`` sets one (a paper
run is days); light stages stop after 2 h. Ctrl-C stops every stage process group; running the launcher
again finishes the rest (finished stages are up to date in dvc.lock).

Cluster: ``--address auto|ray://host:10001`` runs the tasks on a Ray cluster, each node in its own
checkout of the current commit; outputs travel through the default DVC remote and its run-cache, and a
final ``dvc repro --pull`` here writes dvc.lock without training anything.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from cecl import warm
from cecl.launch import children, lockfile
from cecl.launch.checkout import CheckoutSpec
from cecl.launch.dag import Plan, PlanError, read_plan
from cecl.launch.progress import RetryRule
from cecl.launch.runlogs import new_launch_dir
from cecl.launch.server import ServerError, ensure_experiment, mlflow_starting
from cecl.launch.single import LaunchBusy, clear_stale_rwlock, one_launch
from cecl.launch.slots import cluster_slots, is_training, local_slots, stage_sizes
from cecl.launch.tasks import StageFailed, StageJob, run_stage
from cecl.tracking import close_abandoned_local_runs, closed_note
from cecl.verify import cache_refusal

LOGS = Path("logs/launch")  # each launch's logs (and its stages' pid files) in a subfolder
SERVER_PID = Path("mlflow-server.pid")  # under LOGS
# Per stage kind; --timeout sets one for every stage. None: no limit (a paper pretrain run is days, and it
# is retried while its checkpoint advances).
TIMEOUT_S: dict[str, float | None] = {"training": None, "light": 2 * 3600.0}
# Per-worker variables Ray sets; a stage's own Ray (the sweep) must start its own local instance.
RAY_WORKER_ENV = ("RAY_JOB_ID", "RAY_RAYLET_PID", "RAY_CLIENT_MODE", "RAY_ADDRESS", "OMP_NUM_THREADS")


class LaunchError(ValueError):
    """Bad input or environment, found before work starts; printed as one line."""


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cecl.launch", description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help="stages to reproduce with their upstream (default: all)")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="slots on this host (GPUs or CPU slots)")
    parser.add_argument("--profile", help="compose profiles/NAME.yaml into params.yaml first")
    parser.add_argument(
        "--retries",
        type=int,
        default=1,
        help="re-runs of a failing stage in a row without checkpoint progress (default 1)",
    )
    parser.add_argument(
        "--timeout", type=float, help="seconds per stage, every stage (default: none training, 2 h light)"
    )
    parser.add_argument(
        "--max-gpu-hours",
        default="24",
        help="refuse a plan estimated above this many GPU-hours (default 24; none: no limit)",
    )
    parser.add_argument("--threads", type=int, help="torch threads per stage (default: cores // jobs)")
    parser.add_argument("--light-share", type=float, default=0.25, help="slot share of a light stage")
    parser.add_argument("--address", help="Ray cluster: auto, host:port or ray://host:10001")
    parser.add_argument(
        "--workdir", default="~/.cache/cecl-launch", help="cluster: base folder of each node's checkout"
    )
    parser.add_argument("--repo-url", help="cluster: git URL the nodes clone (default: origin, else here)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        raise LaunchError(f"--jobs must be at least 1 (got {args.jobs})")
    if args.retries < 0:
        raise LaunchError(f"--retries must be 0 or more (got {args.retries})")
    if args.timeout is not None and args.timeout <= 0:
        raise LaunchError(f"--timeout must be positive seconds (got {args.timeout:g})")
    if args.threads is not None and args.threads < 1:
        raise LaunchError(f"--threads must be at least 1 (got {args.threads})")
    if not 0 < args.light_share <= 1:
        raise LaunchError(f"--light-share must be in (0, 1] (got {args.light_share:g})")
    from cecl.plan import parse_max_gpu_hours  # with torch: only once the cheap checks passed

    try:
        args.max_gpu_hours = parse_max_gpu_hours(args.max_gpu_hours)
    except ValueError as err:
        raise LaunchError(str(err)) from None
    return args


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=False
    ).stdout.strip()


def _dvc(root: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True, check=False
    )
    return result.stdout.strip()


def cluster_checkout(root: Path, args: argparse.Namespace) -> CheckoutSpec:
    """What every node needs to make its own checkout: a clean commit, a git URL, the DVC remote."""
    commit = _git(root, "rev-parse", "HEAD")
    if not commit:
        raise LaunchError("cluster mode needs a git repository with a commit")
    dirty = [line for line in _git(root, "status", "--porcelain", "--untracked-files=no").splitlines()]
    dirty = [line for line in dirty if line[3:] != "dvc.lock"]
    if dirty:
        raise LaunchError(f"cluster mode runs the committed code; commit or stash first ({dirty[0][3:]} ...)")
    remote = _dvc(root, "remote", "default")
    if not remote:
        raise LaunchError("cluster mode needs a default DVC remote every node reaches (dvc remote add -d)")
    url = _dvc(root, "config", f"remote.{remote}.url")
    if "://" not in url and not Path(url).is_absolute():
        url = str((root / ".dvc" / url).resolve())  # DVC resolves a relative path from .dvc/
    repo_url = args.repo_url or _git(root, "remote", "get-url", "origin") or str(root)
    return CheckoutSpec(repo_url, commit, args.workdir, remote, url)


def _timeout(stage: str, override: float | None) -> float | None:
    return override or TIMEOUT_S["training" if is_training(stage) else "light"]


def _upstream_closure(plan: Plan, stage: str) -> tuple[str, ...]:
    above: set[str] = set()
    todo = list(plan.upstream[stage])
    while todo:
        name = todo.pop()
        if name not in above:
            above.add(name)
            todo += plan.upstream[name]
    return tuple(name for name in plan.order if name in above)


def schedule(
    plan: Plan, submit, wait, on_done, on_failed, retry=None
) -> tuple[set[str], dict[str, StageFailed]]:
    """Submit each stage of ``plan.to_run`` once its upstream stages in it succeeded; returns (done, failed).

    ``submit(stage) -> ref``, ``wait(refs) -> (ref, result | StageFailed)``; ``retry(stage, failure)``
    says whether a failed stage is submitted again (default: never). Not a scheduler: Ray places and
    queues the tasks; this only keeps DVC's DAG order.
    """
    to_run = set(plan.to_run)
    done: set[str] = set()
    failed: dict[str, StageFailed] = {}
    submitted: set[str] = set()
    in_flight: dict = {}
    while True:
        for stage in plan.to_run:
            ups = [u for u in plan.upstream[stage] if u in to_run]
            if stage not in submitted and all(u in done for u in ups):
                in_flight[submit(stage)] = stage
                submitted.add(stage)
        if not in_flight:
            return done, failed
        ref, outcome = wait(list(in_flight))
        stage = in_flight.pop(ref)
        if isinstance(outcome, StageFailed) and retry is not None and retry(stage, outcome):
            in_flight[submit(stage)] = stage
        elif isinstance(outcome, StageFailed):
            failed[stage] = outcome
            on_failed(stage, outcome)
        else:
            done.add(stage)
            on_done(stage, outcome)


def _ray_wait(refs: list):
    import ray

    (ref,), _ = ray.wait(refs, num_returns=1)
    try:
        return ref, ray.get(ref)
    except StageFailed as err:  # Ray raises RayTaskError(StageFailed): an instance of both
        return ref, getattr(err, "cause", err)


def _log_texts(root: Path, folder: Path, stages: Sequence[str]) -> str:
    return "".join(
        (root / folder / f"{s}.log").read_text(errors="replace")
        for s in stages
        if (root / folder / f"{s}.log").exists()
    )


def launch(args: argparse.Namespace, root: Path) -> int:
    from cecl.config import ConfigError, load_params
    from cecl.repro import summary, use_profile

    if not (root / "dvc.yaml").is_file():
        raise LaunchError(f"no dvc.yaml in {root} (run from the repository root)")
    refusal = cache_refusal(root)  # before DVC can restore a damaged cache object as a result
    if refusal is not None:
        raise LaunchError(refusal)
    # With --profile, the params are read from the profile itself: params.yaml is rewritten only after
    # every check below, the cost gate included, has passed.
    profile = root / "profiles" / f"{args.profile}.yaml" if args.profile else None
    if profile is not None and not profile.is_file():
        known = ", ".join(sorted(p.stem for p in (root / "profiles").glob("*.yaml")))
        raise LaunchError(f"no profile profiles/{args.profile}.yaml (profiles: {known})")
    try:
        params = load_params(profile or root / "params.yaml")
    except ConfigError as err:
        raise LaunchError(str(err) if profile else f"params.yaml: {err}") from None
    # The cost gate, before any stage starts or any file changes: the plan's total, or one line and exit.
    from cecl.plan import OverBudget, OverMemory, gate

    try:
        print(f"[launch] {gate(params, args.max_gpu_hours)}", flush=True)
    except (OverBudget, OverMemory) as err:
        raise LaunchError(str(err)) from None
    from cecl.repro import device_problem

    # A CUDA profile on a host without a usable GPU: one line, before params.yaml or any stage changes.
    if not args.address and (problem := device_problem(profile or root / "params.yaml")):
        raise LaunchError(problem)
    sizes = stage_sizes(params, args.light_share)  # pretrain processes; on GPUs: the sweep, large probes
    checkpoints = {key.stage("pretrain"): str(key.checkpoint) for key in params.runs()}
    if not args.address:
        try:
            slots = local_slots(args.jobs, params.device, args.threads, args.light_share, sizes)
        except ValueError as err:
            raise LaunchError(str(err)) from None
    if args.profile:
        use_profile(args.profile)
    spec = cluster_checkout(root, args) if args.address else None  # after the profile: it must be committed
    started = time.monotonic()
    # Leftovers first: a stage's `dvc` from an interrupted launch may still hold DVC's lock on its
    # outputs, and reading the plan takes those locks (it failed with LockError while one lived).
    logs = root / LOGS
    leftovers = children.kill_recorded(logs) if logs.is_dir() else []
    if leftovers:
        print(f"[launch] stopped leftovers of an interrupted launch: {', '.join(leftovers)}", flush=True)
    if spec is None and (note := lockfile.prune_note(root)):  # after the profile and the leftovers
        print(f"[launch] {note}", flush=True)
    plan = read_plan(root, args.targets)
    if spec is None:
        try:
            slots.check(plan.to_run)
        except ValueError as err:
            raise LaunchError(str(err)) from None
    print(f"[launch] {len(plan.to_run)} of {len(plan.order)} stage(s) to run (dvc status)", flush=True)
    if not plan.to_run and spec is None:
        print("\n".join(summary("", {})) + f" ({len(plan.order)} up to date)", flush=True)
        return 0
    logs.mkdir(parents=True, exist_ok=True)
    run_logs = new_launch_dir(root, "launch")  # this launch's logs: never another launch's
    lock_before = lockfile.stage_names(root)

    import contextlib

    import ray

    with contextlib.ExitStack() as stack:
        # The MLflow server (about 10 s to answer) and, on one host, the warm stage server (torch and MLflow
        # imported once for every stage, cecl/warm.py) start while Ray does (about 5 s).
        phase = time.monotonic()
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow_ready = (
            None
            if uri
            else stack.enter_context(
                mlflow_starting(root, root / run_logs / "mlflow-server.log", logs / SERVER_PID)
            )
        )
        warm_ready = stack.enter_context(warm.starting()) if spec is None else dict
        quiet = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
        if spec is None:
            runtime_env = {"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}}
            # "local": a new Ray of our own even when another (e.g. `ray start`) runs on this host;
            # without it ray.init joins that cluster and refuses the slot counts.
            ray.init(address="local", **slots.local_ray_init(), runtime_env=runtime_env, **quiet)
        else:
            import cecl

            ray.init(address=args.address, runtime_env={"py_modules": [cecl]}, **quiet)
            nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
            slots = cluster_slots(nodes, params.device, args.threads, args.light_share, sizes)
            try:
                slots.check(plan.to_run)
            except ValueError as err:
                raise LaunchError(str(err)) from None
        stack.callback(ray.shutdown)
        if mlflow_ready is not None:
            uri = mlflow_ready()
            print(f"[launch] MLflow server {uri} (backend sqlite:///{root / 'mlflow.db'})", flush=True)
        if spec is not None:
            hosts = {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
            if "127.0.0.1" in uri and len(hosts) > 1:
                raise LaunchError(
                    f"the cluster spans {len(hosts)} hosts: set MLFLOW_TRACKING_URI to a server all reach"
                )
        ensure_experiment(uri, params.tracking.experiment, root)
        warm_env = warm_ready()
        print(
            f"[launch] Ray, MLflow{' and the warm stage server' if warm_env else ''} ready in "
            f"{time.monotonic() - phase:.1f} s"
            + ("" if warm_env or spec is not None else "; stages run cold (no warm stage server)"),
            flush=True,
        )
        # After ray.init: Ray's core worker installs its own SIGTERM handler, and a launcher started in the
        # background of a non-interactive shell inherits SIGINT ignored; both must stop the stages.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _interrupt)
        print(
            f"[launch] {slots.describe()}; retries while the checkpoint advances, else {args.retries} in a "
            f"row; logs in {run_logs}/",
            flush=True,
        )
        remote = ray.remote(run_stage)
        keep = {k for k in os.environ if k.startswith("RAY_") and k != "RAY_ADDRESS"}
        env = {
            "MLFLOW_TRACKING_URI": uri,
            "OMP_NUM_THREADS": str(slots.threads),
            "MKL_NUM_THREADS": str(slots.threads),
            "RAY_ADDRESS": "local",  # the sweep starts its own Ray inside its slot
            "PYTHONUNBUFFERED": "1",
            **warm_env,
        }
        drop = tuple(k for k in RAY_WORKER_ENV if k not in keep)

        def server_check() -> None:
            if mlflow_ready is not None:
                mlflow_ready.check_alive()  # a dead server: stop, rather than run stages that cannot log

        def submit(stage: str):
            server_check()
            job = StageJob(
                stage=stage,
                root=str(root),
                log=str(run_logs / f"{stage}.log"),
                timeout_s=_timeout(stage, args.timeout),
                env=env,
                drop_env=drop,
                checkout=spec,
                upstream=_upstream_closure(plan, stage) if spec else (),
                checkpoint=checkpoints.get(stage),
            )
            # Ray re-runs a task only for a lost worker or node; a failed stage is resubmitted by `retry`.
            return remote.options(**slots.task_resources(stage), max_retries=args.retries).remote(job)

        rule = RetryRule(args.retries)

        def retry(stage: str, err: StageFailed) -> bool:
            server_check()
            if not rule.allow(stage, err.epochs_before, err.epochs_after):
                return False
            stalled = rule.stalled(stage)
            why = (
                f"its checkpoint advanced to epoch {err.epochs_after}"
                if stalled == 0
                else f"retry {stalled} of {args.retries} without progress"
            )
            print(f"[launch] retry  {stage}: {err}; {why}", flush=True)
            return True

        def on_done(stage: str, result: dict) -> None:
            if result.get("log_text"):
                (root / run_logs / f"{stage}.log").write_text(result["log_text"])
            tries = f", attempt {result['attempt']}" if result["attempt"] > 1 else ""
            print(f"[launch] done   {stage} in {result['seconds']:.1f} s{tries}", flush=True)

        def on_failed(stage: str, err: StageFailed) -> None:
            if err.log_text:
                (root / run_logs / f"{stage}.log").write_text(err.log_text)
            print(f"[launch] FAILED {stage}: {err}", flush=True)

        try:
            done, failed = schedule(plan, submit, _ray_wait, on_done, on_failed, retry)
        except ServerError:
            stopped = children.kill_recorded(logs) if spec is None else []
            stopped = [name for name in stopped if name != SERVER_PID.stem]
            print(f"[launch] stopped {', '.join(stopped) or 'no running stage'}", file=sys.stderr, flush=True)
            raise
        except KeyboardInterrupt:
            stopped = children.kill_recorded(logs) if spec is None else []
            stopped = [name for name in stopped if name != SERVER_PID.stem]  # stages only
            print(
                f"\n[launch] interrupted; stopped {', '.join(stopped) or 'no running stage'}. Finished "
                "stages are recorded in dvc.lock: run the same command again to finish the rest.",
                file=sys.stderr,
                flush=True,
            )
            return 130
    if spec is None:
        lockfile.serial_order(root, lock_before, plan.order)
        closed = close_abandoned_local_runs(root)  # a killed stage DVC then restored from its run-cache
        if closed:
            print(f"[launch] {closed_note(closed)}", flush=True)
    print("\n".join(summary(_log_texts(root, run_logs, plan.to_run), plan.reasons)), flush=True)
    print(
        f"[launch] {len(done)} of {len(plan.to_run)} stage(s) finished in "
        f"{time.monotonic() - started:.1f} s; logs in {run_logs}/",
        flush=True,
    )
    if failed:
        blocked = [s for s in plan.to_run if s not in done and s not in failed]
        for stage, err in failed.items():
            tries = (root / err.log).read_text(errors="replace").count(
                "[launch] attempt "
            ) or args.retries + 1
            why = err.why()
            print(f"--- last lines of {err.log}\n{err.tail}", file=sys.stderr)
            print(
                f"error: launch: stage '{stage}' failed after {tries} attempt(s) ({why}); log: {err.log}; "
                f"not started: {', '.join(blocked) or 'none'}",
                file=sys.stderr,
                flush=True,
            )
        return 1
    if spec is not None:
        print("[launch] dvc repro --pull here: dvc.lock from the run-cache the nodes pushed", flush=True)
        from cecl.repro import main as repro_main

        return repro_main(["--pull", *args.targets])
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str]) -> int:
    try:
        args = parse_args(argv)
        root = Path.cwd()
        with one_launch(root, "python -m cecl.launch"):  # before leftovers are stopped: never a live launch's
            note = clear_stale_rwlock(root)
            if note is not None:
                print(f"[launch] {note}", flush=True)
            return launch(args, root)
    except (LaunchError, PlanError, ServerError, LaunchBusy) as err:
        print(f"error: launch: {err}", file=sys.stderr)
        return 2
    except SystemExit:
        raise


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
