"""``make compare``: this workspace's per-seed test metrics held against a reference, cell by cell.

    python -m cecl.compare [--reference REF] [--tolerance 0.01] [--root .]

REF is a git ref of the repository in the current directory (default HEAD: the committed results) or a
folder holding probe/ (and transfer/); ``--root`` is the workspace compared (default: here). No stage runs
it, so it lives outside cecl/report (a DVC dependency of aggregate).
A cell is (kind, entry, method) with its evaluator's primary test metric (unbiased accuracy for the
bias benchmarks, accuracy otherwise) over the seeds found on each side. It agrees when

- both sides have n >= 2 seeds: Welch's 95% interval of the difference of means contains 0
  (cecl/report/stats.py), i.e. the rerun lies within the seeds' spread;
- otherwise (n = 1 on a side): |difference| <= ``--tolerance`` (absolute, in accuracy fractions).

It prints one table, the machines each side was trained and probed on (metrics.json's ``machine``),
and exits 1 when a cell moved beyond it, 2 when nothing could be compared. Same CPU model, ISA,
thread count and torch build give byte-identical files; another CPU gives other round-off, other
encoders, and numbers that this check expects to agree only within the seeds' spread.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cecl.report.stats import welch

PRIMARY = {"group_bias": "unbiased_accuracy", "classification": "accuracy"}
FOLDERS = ("probe", "transfer")
Cell = tuple[str, str, str]  # kind, entry (target, or source->target), method


@dataclass
class Side:
    """One side of the comparison: per-cell per-seed values and the machines that made them."""

    name: str
    values: dict[Cell, dict[int, float]]
    machines: set[str]


def _cell_of(metrics: dict[str, Any]) -> tuple[Cell, int, float]:
    run = metrics["run"]
    entry = run["dataset"] if not run.get("source") else f"{run['source']}->{run['dataset']}"
    metric = PRIMARY[metrics["evaluator"]]
    return (run["kind"], entry, run["method"]), int(run["seed"]), float(metrics["test"][metric])


def _machine_line(metrics: dict[str, Any]) -> str:
    machine = (metrics.get("machine") or {}).get("pretrain") or {}
    if not machine:
        return "unrecorded (metrics.json before machine tracking)"
    return (
        f"{machine.get('cpu_model')} ({machine.get('cpu_isa')}, {machine.get('torch_threads')} threads), "
        + (f"torch {machine.get('torch')}, GPU {machine.get('gpu')}")
    )


def _side(name: str, files: dict[str, str]) -> Side:
    """Parse metrics.json texts keyed by their path."""
    values: dict[Cell, dict[int, float]] = defaultdict(dict)
    machines: set[str] = set()
    for path, text in sorted(files.items()):
        try:
            metrics = json.loads(text)
            cell, seed, value = _cell_of(metrics)
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"{name}: {path} is not a probe metrics.json ({type(err).__name__}: {err})"
            ) from None
        values[cell][seed] = value
        machines.add(_machine_line(metrics))
    return Side(name, dict(values), machines)


def workspace(root: Path) -> Side:
    """This workspace's metrics.json files."""
    files = {
        str(path.relative_to(root)): path.read_text()
        for folder in FOLDERS
        for path in sorted((root / folder).glob("**/metrics.json"))
    }
    return _side(f"workspace {root}", files)


def reference(ref: str, root: Path) -> Side:
    """The reference: a folder holding probe/ (and transfer/), else a git ref of the repository at ``root``
    (the command's: the current directory, whatever ``--root`` the workspace has)."""
    folder = Path(ref)
    if folder.is_dir():
        side = workspace(folder)
        side.name = f"folder {ref}"
        return side
    try:
        listed = subprocess.run(
            ["git", "ls-tree", "-r", "--name-only", ref, "--", *FOLDERS],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except subprocess.CalledProcessError as err:
        raise ValueError(
            f"reference {ref!r} is neither a folder nor a git ref ({err.stderr.strip()})"
        ) from None
    files = {
        path: subprocess.run(
            ["git", "show", f"{ref}:{path}"], cwd=root, capture_output=True, text=True, check=True
        ).stdout
        for path in listed
        if path.endswith("metrics.json")
    }
    return _side(f"git {ref}", files)


@dataclass(frozen=True)
class Row:
    cell: Cell
    n_here: int
    n_ref: int
    diff: float
    low: float
    high: float
    rule: str
    agrees: bool


def compare(here: Side, ref: Side, tolerance: float) -> tuple[list[Row], list[str]]:
    """One row per cell present on both sides; the cells present on only one side, named."""
    rows: list[Row] = []
    for cell in sorted(set(here.values) & set(ref.values)):
        a, b = list(here.values[cell].values()), list(ref.values[cell].values())
        difference = welch(a, b)
        if len(a) >= 2 and len(b) >= 2:
            low, high = difference.ci_low, difference.ci_high
            agrees = low <= 0 <= high
            rule = "Welch 95% CI"
        else:
            low, high = difference.diff - tolerance, difference.diff + tolerance
            agrees = abs(difference.diff) <= tolerance
            rule = f"|d| <= {tolerance:g}"
        rows.append(Row(cell, len(a), len(b), difference.diff, low, high, rule, agrees))
    only = [f"{' '.join(c)} (only in {here.name})" for c in sorted(set(here.values) - set(ref.values))]
    only += [f"{' '.join(c)} (only in {ref.name})" for c in sorted(set(ref.values) - set(here.values))]
    return rows, only


def render(rows: list[Row], only: list[str], here: Side, ref: Side) -> str:
    lines = [
        f"here:      {here.name}; trained on {'; '.join(sorted(here.machines)) or '-'}",
        f"reference: {ref.name}; trained on {'; '.join(sorted(ref.machines)) or '-'}",
        "",
        "| kind | entry | method | n here | n ref | here - ref (points) | interval | rule | verdict |",
        "|---|---|---|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        interval = "n/a" if math.isnan(r.low) else f"[{100 * r.low:+.2f}, {100 * r.high:+.2f}]"
        verdict = "agrees" if r.agrees else "MOVED"
        lines.append(
            f"| {r.cell[0]} | {r.cell[1]} | {r.cell[2]} | {r.n_here} | {r.n_ref} | {100 * r.diff:+.2f} | "
            f"{interval} | {r.rule} | {verdict} |"
        )
    lines += [f"not compared: {line}" for line in only]
    moved = sum(not r.agrees for r in rows)
    lines.append(f"{len(rows)} cells compared, {moved} moved beyond the seeds' spread or the tolerance")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cecl.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default="HEAD", help="git ref or results folder (default HEAD)")
    parser.add_argument("--tolerance", type=float, default=0.01, help="allowed |difference| at n = 1")
    parser.add_argument("--root", type=Path, default=Path("."), help="the workspace (default .)")
    args = parser.parse_args(argv)
    if not 0 <= args.tolerance < 1:
        print(f"error: --tolerance must be a fraction in [0, 1), got {args.tolerance}", file=sys.stderr)
        return 2
    try:
        here, ref = workspace(args.root), reference(args.reference, Path("."))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows, only = compare(here, ref, args.tolerance)
    print(render(rows, only, here, ref))
    if not rows:
        print("error: no cell is on both sides: nothing compared", file=sys.stderr)
        return 2
    return 1 if any(not r.agrees for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
