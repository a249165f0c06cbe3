"""Wall time of a small profile: serial ``dvc repro`` vs ``python -m cecl.launch --jobs 2``, and the
launcher's per-stage overhead, so users can predict the speedup on N GPUs.

Run from the repository root: ``python benchmarks/launch.py``. It copies the repository's tracked files
(``git ls-files``) into two throwaway git repositories under a temporary folder with the tiny profile of
``tests/test_launcher.py``, reproduces one serially and one with the launcher, and reads the per-stage
logs: a stage's wall time in its Ray task, the time its ``dvc repro`` spends before the stage's command
starts (Ray task start + DVC index read + repository lock wait) and after it ends (saving outputs and
writing dvc.lock under the lock), and the stage's own ``done in``. Prediction for N slots: roughly
``max(critical path, sum of training stages / N) + per-stage overhead x stages / N``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_launcher import TINY  # noqa: E402

ENV = {
    **{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
    "GIT_AUTHOR_NAME": "b",
    "GIT_AUTHOR_EMAIL": "b@b",
    "GIT_COMMITTER_NAME": "b",
    "GIT_COMMITTER_EMAIL": "b@b",
    "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
}


def _copy(dest: Path) -> Path:
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()  # fmt: skip
    for name in names:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    (dest / "params.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "bench"]):
        subprocess.run(["git", *args], cwd=dest, env=ENV, check=True, capture_output=True)
    return dest


def _timed(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, result.stdout


def main() -> None:
    threads = max(1, (os.cpu_count() or 1) // 2)
    with tempfile.TemporaryDirectory(prefix="bench-launch-") as tmp:
        serial, parallel = _copy(Path(tmp) / "serial"), _copy(Path(tmp) / "parallel")
        env = {**ENV, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        t_serial, _ = _timed(["dvc", "repro"], serial, env)
        t_launch, out = _timed([sys.executable, "-m", "cecl.launch", "--jobs", "2"], parallel, ENV)
        done = {m[0]: float(m[1]) for m in re.findall(r"done   (\S+) in ([\d.]+) s", out)}
        rows = []
        for stage, wall in done.items():
            log = (parallel / "logs/launch" / f"{stage}.log").read_text()
            inside = re.search(r"\] done in ([\d.]+)s", log)
            rows.append((stage, wall, float(inside.group(1)) if inside else float("nan")))
    print(f"machine: {os.cpu_count()} cores, {os.uname().machine}; profile: tests/test_launcher.py TINY")
    print(f"serial dvc repro (OMP_NUM_THREADS={threads}): {t_serial:.1f} s")
    print(f"cecl.launch --jobs 2:                      {t_launch:.1f} s  (ratio {t_serial / t_launch:.2f})")
    print(f"{'stage':<22} {'task wall s':>11} {'in-stage s':>11} {'overhead s':>11}")
    for stage, wall, inside in rows:
        print(f"{stage:<22} {wall:>11.1f} {inside:>11.1f} {wall - inside:>11.1f}")
    overhead = [w - i for _, w, i in rows if i == i]
    if overhead:
        print(f"mean per-stage overhead (Ray task + dvc repro bookkeeping + process start): "
              f"{sum(overhead) / len(overhead):.1f} s over {len(overhead)} stages")  # fmt: skip


if __name__ == "__main__":
    main()
