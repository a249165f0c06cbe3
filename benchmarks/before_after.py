"""Throughput before and after a change, side by side in one run: benchmarks/throughput.py at two commits.

    python benchmarks/before_after.py [--before 80ca775^] [--rounds 2] [-- <throughput.py arguments>]

The ``--before`` commit is checked out into a temporary git worktree (this repository's .venv serves
both: the dependencies did not change); its own benchmarks/throughput.py then runs in it, and the current
tree's in this tree, alternately for ``--rounds`` rounds, so that a change in the machine's background
load hits both alike. Prints, per (workload, method), the pipeline's images/s (median over rounds; the
loop's own ``train_step``: index, augment, forward, backward, step) before and after and their ratio,
with the after tree's per-epoch monitor seconds for each policy. Default before: the commit before
the "GPU fast by construction" work (issue 21: no host syncs in the step, cached augmentation constants,
foreach EMA, per-rank augmentation).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ARGS = [
    *("--workloads", "params", "cifar", "--methods", "cecl", "--windows", "2", "--window-seconds", "1"),
    *("--warmup", "2", "--cifar-batches", "64", "--cifar-train-size", "1024", "--probe-repeats", "1"),
]


def run(tree: Path, args: list[str], out: Path) -> dict:
    """One throughput.py run in ``tree`` (its own code), its JSON results."""
    command = [sys.executable, "benchmarks/throughput.py", *args, "--json", str(out)]
    subprocess.run(command, cwd=tree, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="80ca775^", help="git ref of the 'before' code")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("rest", nargs="*", help="throughput.py arguments (after --)")
    args = parser.parse_args()
    bench_args = args.rest or DEFAULT_ARGS
    with tempfile.TemporaryDirectory(prefix="cecl-before-") as tmp:
        before = Path(tmp) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(before), args.before],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        (before / ".venv").symlink_to(ROOT / ".venv")
        try:
            results: dict[str, list[dict]] = {"before": [], "after": []}
            for round_ in range(args.rounds):
                for name, tree in (("before", before), ("after", ROOT)):
                    results[name].append(run(tree, bench_args, Path(tmp) / f"{name}-{round_}.json"))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, check=False)
    machine = results["after"][0].get("machine", {})
    print(f"machine: {json.dumps(machine, default=str)}")
    print(
        f"before: {args.before}; after: the working tree; {args.rounds} alternating rounds of "
        f"benchmarks/throughput.py {' '.join(bench_args)}"
    )
    print(
        f"{'workload':10} {'method':8} {'before img/s':>13} {'after img/s':>12} {'after/before':>13} "
        f"{'kNN s/epoch':>12} {'probe s/epoch':>14}"
    )

    def pipeline(name: str, workload: str, method: str) -> float:
        values = [
            e["pipeline"]
            for r in results[name]
            for e in r["summary"]
            if (e["workload"], e["method"]) == (workload, method) and e["pipeline"]
        ]
        return statistics.median(values) if values else float("nan")

    for entry in results["after"][0]["summary"]:
        workload, method = entry["workload"], entry["method"]
        old, new = pipeline("before", workload, method), pipeline("after", workload, method)
        knn = entry.get("probe_s_per_epoch", float("nan"))
        probe = entry.get("probe_fit_s_per_epoch", float("nan"))
        print(f"{workload:10} {method:8} {old:13.1f} {new:12.1f} {new / old:13.2f} {knn:12.2f} {probe:14.2f}")


if __name__ == "__main__":
    main()
