"""From a table cell to its MLflow runs in one click: the MLflow URL of a cell's runs, and the run pages.

A cell summarises the probe (transfer, floor) runs of its seeds; each is one MLflow run named after its
DVC stage and tagged with the digest of what it wrote (cecl/report/provenance.py). A cell's target is
that run's page for one run, else MLflow's compare page of all of them (``#/compare-runs?runs=[...]``,
the route the MLflow UI itself links to when runs are selected), so one click shows every seed's metrics.

report.md / report.html are DVC outputs and must be byte-identical between equal runs, while run ids
differ on every run: so their cells link to a relative page ``runs/<cell>.html`` named after the cell's
stages only, and ``aggregate`` writes those pages from this workspace's MLflow store (like provenance.md:
not a DVC output, not in git). A page whose runs are all in the store forwards to them (meta refresh, and
a link); otherwise it says which stage has no run here and why.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

from cecl.io import write_text_atomic
from cecl.report.provenance import match_run, mlflow_url
from cecl.tracking import TrackedRun

RUNS_DIR = "runs"  # out_dir/runs/<cell>.html, beside report.html
MAX_NAME = 150  # longer page names (many seeds) become a digest


def compare_url(mlflow_ui: str, run_ids: Sequence[str], experiment_ids: Sequence[str]) -> str:
    """MLflow's compare page of ``run_ids`` (JSON lists in the query, as the UI writes them)."""
    runs = quote(json.dumps(list(run_ids), separators=(",", ":")))
    experiments = quote(json.dumps(sorted(set(experiment_ids)), separators=(",", ":")))
    return f"{mlflow_ui.rstrip('/')}/#/compare-runs?runs={runs}&experiments={experiments}"


def runs_url(mlflow_ui: str, runs: Sequence[tuple[str, str]]) -> str:
    """The one page showing ``runs`` ((run id, experiment id) pairs): the run's own page for one run."""
    if not runs:
        raise ValueError("runs_url needs at least one (run id, experiment id)")
    if len(runs) == 1:
        run_id, experiment_id = runs[0]
        return mlflow_url(mlflow_ui, experiment_id, run_id)
    return compare_url(mlflow_ui, [r for r, _ in runs], [e for _, e in runs])


def page_name(stages: Sequence[str]) -> str:
    """A file name for the page of a cell's ``stages``, from the names alone (deterministic, readable):
    the stages' common prefix then their differing tails, e.g. ``probe@bmnist_rho99-cecl-0,1,2.html``."""
    if not stages:
        raise ValueError("a cell without stages has no run page")
    prefix = os.path.commonprefix(list(stages))  # noqa: RUF071 (characters, not paths: 'cecl-0', 'cecl-1')
    name = prefix + ",".join(stage[len(prefix) :] for stage in stages) if len(stages) > 1 else stages[0]
    name = re.sub(r"[^A-Za-z0-9_.,@=-]+", "-", name)
    if len(name) > MAX_NAME:
        digest = hashlib.sha256("\n".join(stages).encode()).hexdigest()[:16]
        name = f"{name[:80]}-{digest}"
    return name + ".html"


def page_href(stages: Sequence[str]) -> str:
    """The relative link from report.md / report.html to the cell's page."""
    return f"{RUNS_DIR}/{quote(page_name(stages), safe='@,=')}"


def _page(stages: Sequence[str], found: Mapping[str, TrackedRun | str], mlflow_ui: str) -> str:
    """The HTML page of one cell: forwards to its runs when all are found, else lists why not."""
    runs = [found[s] for s in stages]
    matched = [r for r in runs if isinstance(r, TrackedRun)]
    complete = len(matched) == len(runs)
    target = runs_url(mlflow_ui, [(r.run_id, r.experiment_id) for r in matched]) if complete else ""
    items = []
    for stage, run in zip(stages, runs, strict=True):
        if isinstance(run, TrackedRun):
            url = mlflow_url(mlflow_ui, run.experiment_id, run.run_id)
            items.append(
                f'<li><code>{html.escape(stage)}</code>: <a href="{html.escape(url)}">{run.run_id}</a></li>'
            )
        else:
            items.append(f"<li><code>{html.escape(stage)}</code>: {html.escape(run)}</li>")
    head = f'<meta http-equiv="refresh" content="0; url={html.escape(target)}">\n' if target else ""
    lead = (
        f'<p>Opening <a href="{html.escape(target)}">the MLflow {"run" if len(runs) == 1 else "runs"}</a> '
        f"(start the UI first: <code>mlflow ui --backend-store-uri sqlite:///mlflow.db</code>).</p>"
        if target
        else "<p>Not every run of this cell is in this workspace's MLflow store:</p>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"{head}<title>MLflow runs of {html.escape(page_name(stages))}</title>\n</head>\n<body>\n"
        f"{lead}\n<ul>\n" + "\n".join(items) + "\n</ul>\n</body>\n</html>\n"
    )


def write_run_pages(
    out_dir: Path,
    cells: Iterable[Sequence[str]],
    digests: Mapping[str, str],
    tracked: Mapping[str, Sequence[TrackedRun]] | None,
    mlflow_ui: str,
) -> list[Path]:
    """One page per distinct cell (its stages) under out_dir/RUNS_DIR; ``digests``: stage -> the digest
    of its outputs in this workspace; ``tracked``: cecl.tracking.finished_stage_runs (None: not read)."""
    folder = Path(out_dir) / RUNS_DIR
    for old in folder.glob("*.html") if folder.is_dir() else ():  # a previous report's cells
        old.unlink()
    written = []
    for stages in dict.fromkeys(tuple(c) for c in cells if c):
        found = {
            stage: match_run(None if tracked is None else tracked.get(stage, []), digests.get(stage, ""))
            for stage in stages
        }
        path = folder / page_name(stages)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, _page(stages, found, mlflow_ui))
        written.append(path)
    return written
