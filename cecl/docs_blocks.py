"""The generated blocks of README.md and docs/: numbers that come from the run's files, never typed by hand.

A block is the text between ``<!-- BEGIN generated:NAME -->`` and ``<!-- END generated:NAME -->`` in
README.md or a page under docs/. Each NAME has one renderer here, reading only committed files (what the
pipeline wrote, and profiles/). It lives outside cecl/report, which the aggregate stage depends on as a
whole, so that changing the documentation's tooling never makes DVC re-run a stage.

- ``results-tables``: the bias and classification tables (cecl/report/tables.py, as ``aggregate`` renders
  them; ``results-tables-plain``, the README's, without run links) from every ``probe/**/metrics.json``
  (and ``transfer/**/metrics.json``, and the floors' ``floors/**/metrics.json``) in the checkout, in
  dvc.lock's stage order;
- ``results-official``: validation-selected vs the official protocol's test-selected accuracy, same source;
- ``results-machine``: the machines those results were computed on (their ``machine`` blocks);
- ``claims-summary``: one line per claim and entry, CECL minus each baseline and the direction, from
  reports/claims.md (written by ``aggregate``); ``claims-tables``: that file's tables and caveats;
- ``paper-vs-run``: what the paper states (its abstract: the only text of it we have), the reference anchors
  from other papers with their sources, and this run's CECL-minus-baseline cells with their verdicts, parsed
  from reports/claims.md (:func:`claim_verdicts`);
- ``convergence-table``: reports/tables/table_convergence.md;
- ``sweep``: the tables of sweep/sensitivity.md (the ``sweep`` stage);
- ``methods-table``, ``datasets-table``: what each registered method and dataset family supports, from
  the registries and profiles/ (cecl/docs_catalog.py);
- ``profile-costs``: every profile's cost plan on one H100 (cecl/plan on profiles/*.yaml as written, i.e.
  with the plug-ins' expected split sizes, whatever this checkout has prepared);
- ``prerequisites``: the README's box (system, disk, time, GPU driver); its time is the recorded
  ``make repro``'s total (the file below);
- images: docs/assets/convergence.png and heatmap.png, the plots of reports/report.html (which embeds
  reports/convergence.png and sweep/heatmap.png byte for byte; those two are DVC outputs, not in git), so
  the README and the site show them on the code host and in a fresh clone;
- run links: each cell of the result tables links to its seeds' MLflow runs, from
  docs/measurements/mlflow-runs.json (stage -> run id, experiment id and the sha256 of the metrics.json that
  run wrote), which ``make docs-results`` rewrites from this workspace's MLflow store (``record_runs``);
- ``stage-times``: the per-stage-kind wall times of a recorded ``make repro``
  (docs/measurements/repro-times.json; ``--record-times LOG`` writes it from the run's console log;
  ``--also "LABEL=LOG"`` adds one line per other run of the same commit, e.g. with the ISA capped).

    python -m cecl.docs_blocks                 # rewrite every block (make docs-results)
    python -m cecl.docs_blocks --check         # exit 1 naming every stale block, change nothing
    make repro 2>&1 | tee repro.log && python -m cecl.docs_blocks --record-times repro.log \\
        --machine "AMD EPYC, AVX-512, 2 cores"        # then make docs-results
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pandas as pd

from cecl.report.collect import read_metrics
from cecl.report.runlinks import runs_url
from cecl.report.tables import CellLink, Table, bias_table, classification_table, markdown, official_table
from cecl.runs import FLOORS_DIR, METRICS_FILE, FloorKey, RunKey, TransferKey

BLOCK = re.compile(
    r"(?P<begin><!-- BEGIN generated:(?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)"
    r"(?P<end><!-- END generated:(?P=name) -->)",
    re.DOTALL,
)
DOC_FILES = ("README.md", "docs")  # README.md and every docs/**/*.md
TIMES_FILE = Path("docs/measurements/repro-times.json")
CLAIMS_FILE = Path("reports/claims.md")
CONVERGENCE_FILE = Path("reports/tables/table_convergence.md")
SENSITIVITY_FILE = Path("sweep/sensitivity.md")
REPORT_HTML = Path("reports/report.html")
RUNS_FILE = Path("docs/measurements/mlflow-runs.json")  # stage -> the committed result's MLflow run
MLFLOW_UI = "http://127.0.0.1:5000"  # `mlflow ui` as the README starts it
ASSETS_DIR = Path("docs/assets")
# docs/assets/<name> <- the image of report.html whose alt text contains these words (cecl/report and
# stages/aggregate write them: "Online-probe validation accuracy per pretraining epoch", "... tau x w").
ASSET_IMAGES = {"convergence.png": "per pretraining epoch", "heatmap.png": "tau x w"}
STAGE_KINDS = ("prepare", "pretrain", "probe", "transfer", "sweep", "aggregate")


def _read(root: Path, relative: Path) -> str:
    path = root / relative
    if not path.is_file():
        raise FileNotFoundError(f"{relative} not found under {root}: run the pipeline first (make repro)")
    return path.read_text(encoding="utf-8")


# -- result tables, from probe/**/metrics.json --------------------------------------------------------


def run_keys(root: Path) -> tuple[list[RunKey], list[TransferKey]]:
    """The probe and transfer runs whose metrics.json git holds, in dvc.lock's stage order (the order
    of dvc.yaml's matrix, so methods come in params.yaml's order, as in aggregate's tables)."""
    lock = _read(root, Path("dvc.lock"))
    found = []
    for kind in ("probe", "transfer"):
        for path in sorted((root / kind).rglob(METRICS_FILE)):
            run = json.loads(path.read_text(encoding="utf-8")).get("run") or {}
            if not {"stage", "dataset", "method", "seed"} <= run.keys():
                raise ValueError(f"{path.relative_to(root)}: no run block with stage, dataset, method, seed")
            key = (
                TransferKey(run["source"], run["dataset"], run["method"], int(run["seed"]))
                if run.get("source")
                else RunKey(run["dataset"], run["method"], int(run["seed"]))
            )
            position = lock.find(f"\n  {run['stage']}:\n")
            found.append((position if position >= 0 else len(lock), str(path), key))
    keys = [key for _, _, key in sorted(found, key=lambda item: item[:2])]
    return [k for k in keys if isinstance(k, RunKey)], [k for k in keys if isinstance(k, TransferKey)]


def floor_keys(root: Path) -> list[FloorKey]:
    """The floors whose metrics.json git holds (floors/{dataset}/pixels, floors/{dataset}/init/seed_N)."""
    keys = []
    for path in sorted((root / FLOORS_DIR).rglob(METRICS_FILE)):
        run = json.loads(path.read_text(encoding="utf-8")).get("run") or {}
        seed = run.get("seed")
        keys.append(
            FloorKey(run.get("dataset", ""), run.get("method", ""), None if seed is None else int(seed))
        )
    return keys


def _probe_tables(root: Path) -> tuple[list[Table], Table]:
    runs, transfers = run_keys(root)
    probes = pd.DataFrame([read_metrics(root, key) for key in runs])
    moved = pd.DataFrame([read_metrics(root, key) for key in transfers])
    floors = pd.DataFrame([read_metrics(root, key) for key in floor_keys(root)])
    methods = list(dict.fromkeys([k.method for k in runs] + [k.method for k in transfers]))
    main = [bias_table(probes, methods, {}, floors), classification_table(probes, methods, {}, floors)]
    return [t for t in main if t.columns], official_table(probes, moved, methods, {})


def _table_markdown(table: Table, link: CellLink | None = None) -> str:
    """aggregate's Markdown of ``table`` without its link to provenance.md (not in git, not in the site);
    with ``link`` (:func:`run_link`), each cell links to its MLflow runs and the caption says where."""
    _, _, body = markdown(table, link=link).partition("\n\n")
    where = (
        f" Each cell links to its seeds' MLflow runs (the compare page; one run: its page) in the store that "
        f"produced these results (`{RUNS_FILE}`; open where that store is served, e.g. `mlflow ui` on the "
        "machine that ran them; your own rerun's cells link to yours in `reports/report.html`)."
        if link is not None and any(link(stages) for stages in table.stages.values())
        else ""
    )
    return f"{table.caption}{where}\n\n{body.strip()}"


def results_tables(root: Path, linked: bool = True) -> str:
    """The result tables; ``linked=False`` for the README, which is read as plain text on the code host,
    where links into the committing machine's MLflow store lead nowhere (the site's copy links)."""
    tables, _ = _probe_tables(root)
    if not tables:
        return "No probe results."
    link = run_link(root) if linked else None
    return "\n\n".join(_table_markdown(t, link) for t in tables)


def results_official(root: Path) -> str:
    _, table = _probe_tables(root)
    return _table_markdown(table, run_link(root)) if table.columns else "No probe results."


# -- from a cell to its MLflow runs: the committed record of which run wrote each committed result -------


def _metrics_path(key: RunKey | TransferKey | FloorKey) -> Path:
    return (key.probe_dir if isinstance(key, RunKey) else key.out_dir) / METRICS_FILE


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_link(root: Path) -> CellLink | None:
    """A cell's stages -> the MLflow URL of their runs in RUNS_FILE (None for a cell with an unrecorded
    stage); None without RUNS_FILE. The record is what the docs carry: run ids are in no committed
    result (equal runs write equal bytes), so ``record_runs`` writes it from the store that ran them."""
    path = root / RUNS_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    runs, ui = record["runs"], record["tracking_ui"]

    def link(stages: Sequence[str]) -> str | None:
        found = [runs.get(stage) for stage in stages]
        if not found or not all(found):
            return None
        return runs_url(ui, [(f["run_id"], f["experiment_id"]) for f in found if f])

    return link


def stale_run_records(root: Path) -> list[str]:
    """The committed results whose RUNS_FILE entry is missing or names other bytes of metrics.json
    (the record came from another run than the committed results), one line each."""
    path = root / RUNS_FILE
    runs = json.loads(path.read_text(encoding="utf-8"))["runs"] if path.is_file() else {}
    probes, transfers = run_keys(root)
    problems = []
    for key in [*probes, *transfers, *floor_keys(root)]:
        stage = key.stage("probe") if isinstance(key, RunKey) else key.stage()
        entry = runs.get(stage)
        if entry is None:
            problems.append(f"{stage}: not in {RUNS_FILE}")
        elif entry.get("metrics_sha256") != _sha256(root / _metrics_path(key)):
            problems.append(f"{stage}: {RUNS_FILE} records a run that wrote another metrics.json")
    return problems


def record_runs(root: Path, mlflow_ui: str = MLFLOW_UI) -> tuple[Path, list[str]]:
    """Write RUNS_FILE: for every committed probe, transfer and floor result, the newest FINISHED MLflow
    run of its stage that wrote exactly these outputs (tag ``outputs_sha256``, as provenance.md matches
    them), with the sha256 of its metrics.json (so a test can tell a stale record). Returns the file and
    the stages without such a run (left out of the record, their cells unlinked)."""
    import yaml

    from cecl.report.provenance import match_run
    from cecl.tracking import finished_stage_runs

    params = yaml.safe_load(_read(root, Path("params.yaml"))) or {}
    experiment = (params.get("tracking") or {}).get("experiment")
    if not experiment:
        raise ValueError("params.yaml has no tracking.experiment")
    tracked = finished_stage_runs(experiment, root)
    probes, transfers = run_keys(root)
    record, missing = {}, []
    for key in [*probes, *transfers, *floor_keys(root)]:
        row = read_metrics(root, key)
        found = match_run(tracked.get(row["stage"], []), row["outputs_sha256"])
        if isinstance(found, str):
            missing.append(f"{row['stage']}: {found}")
            continue
        record[row["stage"]] = {
            "run_id": found.run_id,
            "experiment_id": found.experiment_id,
            "metrics_sha256": _sha256(root / _metrics_path(key)),
        }
    data = {"tracking_ui": mlflow_ui, "experiment": experiment, "runs": dict(sorted(record.items()))}
    path = root / RUNS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path, missing


def results_machine(root: Path) -> str:
    """One line: the machines the committed results were computed on, from every committed metrics.json's
    ``machine`` block (cecl/machine.py: CPU model, vector ISA, torch threads, torch build, GPU)."""
    seen: dict[str, set[str]] = {}
    for kind in ("probe", "transfer", FLOORS_DIR.as_posix()):
        for path in sorted((root / kind).rglob(METRICS_FILE)):
            machine = json.loads(path.read_text(encoding="utf-8")).get("machine") or {}
            for where, info in machine.items():
                if isinstance(info, dict):
                    label = (
                        f"{info.get('cpu_model', '?')}, {info.get('cpu_isa', '?')}, "
                        f"{info.get('torch_threads', '?')} torch threads, torch {info.get('torch', '?')}, "
                        f"GPU {info.get('gpu', '?')}"
                    )
                    seen.setdefault(label, set()).add(where)
    if not seen:
        raise ValueError("no metrics.json with a machine block: run the pipeline first (make repro)")
    parts = [f"{label} ({' and '.join(sorted(stages))})" for label, stages in seen.items()]
    where = " (each `metrics.json`'s `machine`)."
    return "The committed results were computed on: " + "; ".join(parts) + where


# -- claims, convergence and sweep, from what aggregate and the sweep wrote ---------------------------


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def markdown_tables(text: str) -> Iterable[tuple[str, str, list[dict[str, str]], list[str]]]:
    """(heading, label, rows, raw lines) of every pipe table in ``text``: the last '### ' heading and
    the last 'text:' line above it; rows as header -> cell."""
    heading = label = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading, label = line.lstrip("#").strip(), ""
        elif line.rstrip().endswith(":") and not line.startswith(("|", "-")):
            label = line.rstrip()[:-1]
        elif line.startswith("|"):
            raw = []
            while i < len(lines) and lines[i].startswith("|"):
                raw.append(lines[i])
                i += 1
            header = _cells(raw[0])
            rows = [dict(zip(header, _cells(r), strict=False)) for r in raw[2:]]
            yield heading, label, rows, raw
            continue
        i += 1


def claims_summary(root: Path) -> str:
    """One line per (claim, entry): CECL minus each baseline, its 95% CI, Holm (or Welch) p and the
    direction; for the floors block, each method minus each floor and its standing."""
    lines = []
    for heading, label, rows, _ in markdown_tables(_read(root, CLAIMS_FILE)):
        if rows and {"where", "method", "floor", "method − floor", "95% CI", "standing"} <= rows[0].keys():
            for where in dict.fromkeys(row["where"] for row in rows):  # the floors block
                parts = [
                    f"{row['method']} vs {row['floor'].removeprefix('floor: ')} {row['method − floor']} "
                    f"({row['95% CI']}): {row['standing']}"
                    for row in rows
                    if row["where"] == where
                ]
                lines.append(f"- **{heading}**, {where}: " + "; ".join(parts) + ".")
            continue
        needed = {"where", "baseline", "CECL − baseline", "95% CI", "direction"}
        if not rows or not needed <= rows[0].keys():
            raise ValueError(f"{CLAIMS_FILE}: a table under {heading!r} lacks the columns {sorted(needed)}")
        title = heading + (f", {label[0].lower()}{label[1:]}" if label else "")
        for where in dict.fromkeys(row["where"] for row in rows):
            parts = []
            for row in (r for r in rows if r["where"] == where):
                test = "Holm p" if "Holm p" in row else "Welch p"
                p = row.get(test, "n/a")
                ci = row["95% CI"] + (f", {test} {p}" if p not in ("", "n/a") else "")
                parts.append(f"vs {row['baseline']} {row['CECL − baseline']} ({ci}): {row['direction']}")
            lines.append(f"- **{title}**, {where}: " + "; ".join(parts) + ".")
    if not lines:
        raise ValueError(f"{CLAIMS_FILE}: no claim tables")
    return "\n".join(lines)


# -- paper vs this run ---------------------------------------------------------------------------------

# What the paper states, per claim heading of reports/claims.md (matched by the words in the key). Only the
# abstract is available to us (docs/methods.md; /work/shared/paper.md): its tables are not, so no per-dataset
# number of the paper is given here, and none may be invented.
PAPER_SAYS = {
    "BiasedMNIST": '"22.9% improvement compared to original contrastive loss functions" (abstract; rho, '
    "baseline and absolute vs relative not stated)",
    "convergence": "faster convergence than 16 contrastive methods (abstract; no figure available to us)",
    "classification": "better accuracy than 16 contrastive methods on 8 datasets (abstract; its tables are "
    "not available to us)",
}
# Published numbers from other papers that a paper-scale run should land near (not the CECL paper's).
ANCHORS = (
    (
        "BiasedMNIST, unbiased accuracy %, vanilla CE, SimpleConvNet",
        "rho .999 / .997 / .995 / .990: 10.4 / 33.4 / 72.1 / 89.1",
        "[ReBias, Bahng et al. 2020, Table 1](https://github.com/clovaai/rebias)",
    ),
    (
        "CIFAR-10 top-1 %, ResNet-50, batch 1024",
        "CE 95.0, SupCon 96.0, SimCLR 93.6",
        "[SupContrast README](https://github.com/HobbitLong/SupContrast)",
    ),
    (
        "CIFAR-100 top-1 %, ResNet-50, batch 1024",
        "CE 75.3, SupCon 76.5, SimCLR 70.7",
        "[SupContrast README](https://github.com/HobbitLong/SupContrast)",
    ),
    (
        "CIFAR-10 top-1 %, ResNet-18, 1000 epochs, online linear",
        "SupCon 93.82, SimCLR 90.74, BYOL 92.58",
        "[solo-learn README](https://github.com/vturrisi/solo-learn)",
    ),
    (
        "CIFAR-100 top-1 %, ResNet-18, 1000 epochs, online linear",
        "SupCon 70.38, SimCLR 65.78, BYOL 70.46",
        "[solo-learn README](https://github.com/vturrisi/solo-learn)",
    ),
)
VERDICT_HEADERS = ("verdict", "direction")


def _column(header: Sequence[str], *starts: str) -> str | None:
    return next((h for h in header for s in starts if h.lower().startswith(s.lower())), None)


def claim_verdicts(text: str) -> list[dict[str, str]]:
    """One row per comparison in reports/claims.md: claim, where, baseline, difference, ci, verdict.

    The one place that knows claims.md's table layout, written defensively (its columns are being
    reworked): any pipe table with a 'where' and a 'baseline' column counts; the verdict is the column
    named 'verdict' or 'direction', else the last; the difference the first 'CECL −'/'CECL -' column; the
    interval the first column whose name contains 'CI'. A table missing one of those is a ValueError.
    """
    rows = []
    for heading, label, table, _ in markdown_tables(text):
        if not table or not {"where", "baseline"} <= table[0].keys():
            continue
        header = list(table[0])
        verdict = next((h for h in header if h.lower() in VERDICT_HEADERS), header[-1])
        difference = _column(header, "CECL −", "CECL -")
        ci = next((h for h in header if "CI" in h), None)
        if difference is None or ci is None:
            raise ValueError(f"{CLAIMS_FILE}: the table under {heading!r} has no 'CECL − ...' or CI column")
        claim = heading + (f", {label[0].lower()}{label[1:]}" if label else "")
        for row in table:
            rows.append(
                {
                    "claim": claim,
                    "where": row["where"],
                    "baseline": row["baseline"],
                    "difference": row[difference],
                    "ci": row[ci],
                    "verdict": row[verdict],
                }
            )
    if not rows:
        raise ValueError(f"{CLAIMS_FILE}: no claim tables with 'where' and 'baseline' columns")
    return rows


def _paper_says(claim: str) -> str:
    return next((says for key, says in PAPER_SAYS.items() if key.lower() in claim.lower()), "not stated")


def paper_vs_run(root: Path) -> str:
    """Two tables: what the paper and the anchors say (with sources), then this run's verdicts per claim."""
    verdicts = claim_verdicts(_read(root, CLAIMS_FILE))
    claims = list(dict.fromkeys(row["claim"].split(",")[0] for row in verdicts))
    known = ["| claim | the paper says |", "|:--|:--|"]
    known += [f"| {claim} | {_paper_says(claim)} |" for claim in claims]
    anchors = ["| reference anchor (not this paper) | numbers | source |", "|:--|:--|:--|"]
    anchors += [f"| {what} | {numbers} | {source} |" for what, numbers, source in ANCHORS]
    run = ["| claim | where | CECL vs | CECL − baseline (95% CI) | verdict |", "|:--|:--|:--|:--|:--|"]
    run += [
        f"| {r['claim']} | {r['where']} | {r['baseline']} | {r['difference']} ({r['ci']}) | {r['verdict']} |"
        for r in verdicts
    ]
    return "\n\n".join(
        [
            "\n".join(known),
            "\n".join(anchors),
            "This run (`reports/claims.md`; differences in accuracy points, or in epochs for convergence):",
            "\n".join(run),
        ]
    )


def claims_tables(root: Path) -> str:
    """The claims' tables, each under its claim, and the caveats paragraph, as reports/claims.md has them."""
    text = _read(root, CLAIMS_FILE)
    parts = []
    for heading, label, _, raw in markdown_tables(text):
        title = heading + (f": {label[0].lower()}{label[1:]}" if label else "")
        parts.append(f"**{title}**\n\n" + "\n".join(raw))
    caveats = text.partition("### Caveats")[2].strip()
    if caveats:
        parts.append(f"**Caveats.** {caveats}")
    return "\n\n".join(parts)


def convergence_table(root: Path) -> str:
    text = _read(root, CONVERGENCE_FILE)
    caption, _, body = text.partition("\n\n")
    caption = re.sub(r"\s*Run ids and output hashes: \[[^\]]*\]\([^)]*\)\.", "", caption)
    return f"{caption.strip()}\n\n{body.strip()}"


def sweep_tables(root: Path) -> str:
    parts = [
        f"**{heading}**\n\n" + "\n".join(raw)
        for heading, _, _, raw in markdown_tables(_read(root, SENSITIVITY_FILE))
    ]
    return "\n\n".join(parts) or "No sweep table."


# -- the profiles' cost plans -------------------------------------------------------------------------


def profile_costs(root: Path) -> str:
    """One row per profiles/*.yaml: stages, H100-hours (days on 8 GPUs), the largest estimated peak."""
    import contextlib
    import tempfile

    from cecl.config import load_params
    from cecl.plan import GATE_DEVICE, plan_params

    rows = ["| profile | stages | plan on one H100 | largest peak / GPU |", "|---|---:|---:|---:|"]
    paths = sorted((root / "profiles").glob("*.yaml"))
    if not paths:
        raise ValueError(f"no profiles/*.yaml under {root}")
    # The plan reads data/<entry>/manifest.json relative to the working directory when an entry is prepared;
    # an empty one makes every count the plug-in's expected size, the same in any checkout.
    with tempfile.TemporaryDirectory() as empty, contextlib.chdir(empty):
        plans = [(path, plan_params(load_params(path), GATE_DEVICE)) for path in paths]
        for path, plan in sorted(plans, key=lambda item: item[1].gpu_hours):  # cheapest first
            hours = plan.gpu_hours
            shown = f"{hours:,.0f} h ({hours / 8 / 24:.1f} days on 8)" if hours >= 1000 else f"{hours:.3g} h"
            peak = max(entry.peak_gib for entry in plan.entries)
            rows.append(f"| `{path.stem}` | {plan.stages} | {shown.replace(',', ' ')} | {peak:.1f} GiB |")
    return "\n".join(rows)


# -- stage times of a recorded make repro --------------------------------------------------------------


def _span(values: Sequence[float]) -> str:
    return f"{min(values):6.1f}-{max(values):6.1f}"


def stage_times(root: Path) -> str:
    data = json.loads(_read(root, TIMES_FILE))
    lines = [f"{data['command']} ({data['context']}, commit {data['commit']}; {data['machine']})"]
    lines += [line for line in (data.get("plan"), data["summary"]) if line]
    for kind in data["kinds"]:
        lines.append(
            f"{kind['kind']:<9} n={kind['n']:>3} wall {_span(kind['wall'])} s (sum {kind['wall_sum']:7.1f}), "
            f"in-stage {_span(kind['in_stage'])} s, overhead mean {kind['overhead_mean']:.1f} s"
        )
    if data.get("second_run"):
        lines.append(f"a second `python -m cecl.repro` right after: {data['second_run']}")
    for other in data.get("also", []):
        sums = ", ".join(f"{kind['kind']} {kind['wall_sum']:.1f}" for kind in other["kinds"])
        lines.append(f"{other['label']}: {other['summary'].removeprefix('[repro] ')} (sums: {sums})")
    return "```\n" + "\n".join(lines) + "\n```"


# The prerequisites box's fixed rows; the time row is the recorded run's (TIMES_FILE). The disk figure is
# `du -sh .venv` of an installed environment (6.8G: torch's CUDA 13 wheels are installed even for the CPU).
PREREQUISITES = (
    ("system", "x86_64 Linux with `make`, `git` and CPython 3.11 (`python3 -m venv`)"),
    ("disk", "about 7 GB for `.venv/` (torch's CUDA wheels, even for the CPU run), plus the run's outputs"),
    ("GPU (optional)", "an NVIDIA driver 580 or newer: the locked torch is a CUDA 13 build"),
)


def prerequisites(root: Path) -> str:
    """The README's prerequisites table; its time row from the recorded make repro (TIMES_FILE)."""
    data = json.loads(_read(root, TIMES_FILE))
    found = re.search(r" in (\d+) s", data["summary"])
    if found is None:
        raise ValueError(f"{TIMES_FILE}: its summary has no total time ('... in N s')")
    seconds = int(found.group(1))
    time = (
        f"`make repro` took {seconds} s ({seconds / 60:.1f} min) on this project's CI-class machine "
        f"({data['machine']}, no GPU; commit {data['commit']})"
    )
    rows = [*PREREQUISITES[:2], ("time", time), *PREREQUISITES[2:]]
    return "\n".join(["| before you start | |", "|:--|:--|", *(f"| {k} | {v} |" for k, v in rows)])


RAN_LINE = re.compile(r"^\s*ran\s+(\S+) \(([\d.]+) s\)")
RUNNING = re.compile(r"Running stage '([^']+)'")
DONE = re.compile(r"\] done in ([\d.]+)s")
SUMMARY = re.compile(r"\[repro\] \d+ stage\(s\) ran, .*")
SECOND = re.compile(r"\[repro\] (\d+) stage\(s\) ran, (\d+) reused.* in (\d+) s")


def parse_repro_log(text: str) -> dict:
    """Per stage kind: n, wall min/max/sum (the summary's ``ran STAGE (X s)``), in-stage min/max (the
    stage's own ``done in``), mean overhead (wall - in-stage); and the plan and summary lines."""
    own, current = {}, None
    plan = summary = None
    walls = {}
    for line in text.splitlines():
        if found := RUNNING.search(line):
            current = found.group(1)
        elif (found := DONE.search(line)) and current and current not in own:
            own[current] = float(found.group(1))
        elif found := RAN_LINE.match(line):
            walls[found.group(1)] = float(found.group(2))
        elif "] plan: " in line and plan is None:
            plan = line.strip()
        elif found := SUMMARY.search(line):
            summary = found.group(0).strip()
    if summary is None or not walls:
        raise ValueError("no `[repro] N stage(s) ran` summary with stage times in the log (run make repro)")
    kinds = []
    names = list(dict.fromkeys([*STAGE_KINDS, *(s.split("@")[0] for s in walls)]))
    for kind in names:
        stages = [s for s in walls if s.split("@")[0] == kind]
        if not stages:
            continue
        wall = [walls[s] for s in stages]
        inside = [own.get(s, walls[s]) for s in stages]
        kinds.append(
            {
                "kind": kind,
                "n": len(stages),
                "wall": [round(min(wall), 1), round(max(wall), 1)],
                "wall_sum": round(sum(wall), 1),
                "in_stage": [round(min(inside), 1), round(max(inside), 1)],
                "overhead_mean": round(statistics.fmean(w - i for w, i in zip(wall, inside, strict=True)), 1),
            }
        )
    return {"plan": plan, "summary": summary, "kinds": kinds}


def record_times(
    root: Path,
    log: Path,
    machine: str,
    context: str,
    second: Path | None,
    also: Sequence[tuple[str, Path]] = (),
) -> Path:
    """Write TIMES_FILE from ``log``; ``second``: a rerun right after; ``also``: (label, log) of other
    runs of the same commit (their summary and per-kind sums)."""
    data: dict = {"command": "make repro", "context": context, "machine": machine}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    data["commit"] = commit.stdout.strip() or "unknown"
    data.update(parse_repro_log(log.read_text(encoding="utf-8", errors="replace")))
    if second is not None:
        found = SECOND.search(second.read_text(encoding="utf-8", errors="replace"))
        if found is None:
            raise ValueError(f"{second}: no `[repro] N stage(s) ran, M reused ... in T s` line")
        data["second_run"] = f"{found.group(1)} stage(s) ran, {found.group(2)} reused, in {found.group(3)} s"
    data["also"] = []
    for label, other in also:
        parsed = parse_repro_log(other.read_text(encoding="utf-8", errors="replace"))
        data["also"].append({"label": label, "summary": parsed["summary"], "kinds": parsed["kinds"]})
    path = root / TIMES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def _catalog():
    """cecl/docs_catalog.py, imported when a page has its blocks (it loads torch and every plug-in)."""
    from cecl import docs_catalog

    return docs_catalog


# -- blocks in files ------------------------------------------------------------------------------------

RENDERERS: dict[str, Callable[[Path], str]] = {
    "results-tables": results_tables,
    "results-tables-plain": lambda root: results_tables(root, linked=False),
    "results-official": results_official,
    "results-machine": results_machine,
    "claims-summary": claims_summary,
    "claims-tables": claims_tables,
    "paper-vs-run": paper_vs_run,
    "convergence-table": convergence_table,
    "sweep": sweep_tables,
    "stage-times": stage_times,
    "prerequisites": prerequisites,
    "profile-costs": profile_costs,
    "methods-table": lambda root: _catalog().methods_table(root),
    "datasets-table": lambda root: _catalog().datasets_table(root),
}


def doc_files(root: Path) -> list[Path]:
    files = [root / "README.md"] if (root / "README.md").is_file() else []
    return files + sorted((root / "docs").rglob("*.md"))


def render_file(text: str, root: Path, cache: dict[str, str] | None = None) -> str:
    """``text`` with every generated block replaced by its renderer's output (unknown names: ValueError)."""
    cache = {} if cache is None else cache

    def replace(match: re.Match) -> str:
        name = match.group("name")
        if name not in RENDERERS:
            raise ValueError(f"unknown generated block {name!r} (known: {', '.join(RENDERERS)})")
        if name not in cache:
            cache[name] = RENDERERS[name](root).strip("\n")
        return f"{match.group('begin')}{cache[name]}\n{match.group('end')}"

    return BLOCK.sub(replace, text)


def blocks(text: str) -> dict[str, str]:
    """name -> body of every generated block in ``text``."""
    return {m.group("name"): m.group("body") for m in BLOCK.finditer(text)}


def report_images(root: Path) -> dict[str, bytes]:
    """docs/assets name -> the PNG bytes report.html embeds for it (a missing one: ValueError)."""
    import base64

    html = _read(root, REPORT_HTML)
    found = {}
    for tag in re.finditer(r"<img\b[^>]*>", html):
        src = re.search(r'src="data:image/png;base64,([^"]+)"', tag.group(0))
        alt = re.search(r'alt="([^"]*)"', tag.group(0))
        for name, words in ASSET_IMAGES.items():
            if src and alt and words in alt.group(1) and name not in found:
                found[name] = base64.b64decode(src.group(1))
    missing = sorted(set(ASSET_IMAGES) - set(found))
    if missing:
        raise ValueError(f"{REPORT_HTML}: no embedded image for {missing} (alt text {ASSET_IMAGES})")
    return found


def update(root: Path, check: bool = False) -> list[Path]:
    """Rewrite (or with ``check`` only find) the files whose blocks differ from what the files generate,
    and the docs/assets images that differ from report.html's."""
    stale, cache = [], {}
    for name, data in report_images(root).items():
        path = root / ASSETS_DIR / name
        if not path.is_file() or path.read_bytes() != data:
            stale.append(path)
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
    for path in doc_files(root):
        text = path.read_text(encoding="utf-8")
        if "<!-- BEGIN generated:" not in text:
            continue
        new = render_file(text, root, cache)
        if new != text:
            stale.append(path)
            if not check:
                path.write_text(new, encoding="utf-8")
    return stale


def _refresh_run_record(root: Path) -> None:
    """RUNS_FILE from this workspace's MLflow store when it has one; else the committed record stays
    (a clone that never ran has no runs to link to, and must not create an empty mlflow.db)."""
    if not (root / "mlflow.db").is_file() and not os.environ.get("MLFLOW_TRACKING_URI"):
        print(f"kept {RUNS_FILE}: no MLflow store here (mlflow.db or MLFLOW_TRACKING_URI)")
        return
    from cecl.tracking import TrackingUnavailable

    try:
        path, missing = record_runs(root)
    except TrackingUnavailable as error:
        print(f"kept {RUNS_FILE}: {error}")
        return
    print(f"wrote {path.relative_to(root)}" + (f"; no run for {len(missing)} result(s):" if missing else ""))
    for line in missing:
        print(f"  {line}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cecl.docs_blocks", description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path.cwd())
    parser.add_argument("--check", action="store_true", help="exit 1 naming every stale file; change nothing")
    parser.add_argument("--record-times", type=Path, metavar="LOG", help="a `make repro` console log")
    parser.add_argument(
        "--second", type=Path, metavar="LOG", help="the log of a second make repro right after"
    )
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="LABEL=LOG",
        help="another make repro of the same commit, e.g. 'AVX2 kernels forced=avx2.log' (repeatable)",
    )
    parser.add_argument("--machine", default="", help="e.g. 'AMD EPYC, AVX-512, 2 cores'")
    parser.add_argument("--context", default="fresh clone, .venv present")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    try:
        if args.record_times:
            if not args.machine:
                parser.error("--record-times needs --machine (the CPU model, vector ISA and cores)")
            also = []
            for item in args.also:
                label, sep, log = item.rpartition("=")
                if not sep or not label or not log:
                    parser.error(f"--also {item!r}: expected LABEL=LOG")
                also.append((label, Path(log)))
            written = record_times(root, args.record_times, args.machine, args.context, args.second, also)
            print(f"wrote {written}")
            return 0
        if not args.check:
            _refresh_run_record(root)
        stale = update(root, check=args.check)
    except (OSError, ValueError, KeyError) as error:
        print(f"error: docs_blocks: {error}", file=sys.stderr)
        return 2
    for path in stale:
        print(f"{'stale' if args.check else 'updated'}: {path.relative_to(root)}")
    if args.check and stale:
        print("run `make docs-results` (after make repro) and commit the result", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
