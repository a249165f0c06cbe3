"""Aggregate report over many datasets, methods and seeds: tables, convergence, claims, provenance.

build_report() is the one entry point the aggregate stage calls; it reads every run's stage outputs and
the floors (collect.py), writes the tables (tables.py), the convergence figure and DVC plot data
(plots.py), the claims (claims.py, sanity.py), provenance.md (provenance.py) and report.md into out_dir.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from cecl.report.claims import claims_markdown
from cecl.report.collect import Collected, collect, ordered
from cecl.report.plots import plot_convergence, write_convergence_csv
from cecl.report.provenance import provenance_markdown
from cecl.report.runlinks import RUNS_DIR, page_href, write_run_pages
from cecl.report.sanity import EntryScale
from cecl.report.summary import write_summary
from cecl.report.tables import (
    PROVENANCE_FILE,
    TABLES_DIR,
    Table,
    bias_table,
    classification_table,
    configuration_markdown,
    convergence_entries,
    convergence_frame,
    convergence_table,
    markdown,
    official_table,
    transfer_table,
    write_table,
)
from cecl.runs import FloorKey, RunKey, TransferKey
from cecl.tracking import TrackedRun

__all__ = ["EntryScale", "build_report", "collect"]

TITLE = "# CECL reproduction report"
EMPTY_KIND = {
    "classification": "No classification probe runs were measured: no classification table.",
    "bias": "No bias-benchmark (group_bias) probe runs were measured: no bias table.",
    "transfer": "No transfer runs were measured: no transfer table.",
}


def _summary_paragraph(collected: Collected, notes: Mapping[str, str]) -> str:
    """What was run: datasets (with notes), methods, seeds, protocols and the selection split."""
    results = pd.concat([f for f in (collected.probes, collected.transfers) if len(f)], ignore_index=True)
    datasets = ordered([*collected.probes.get("dataset", []), *collected.transfers.get("source", [])])
    described = ", ".join(f"`{d}` ({notes[d]})" if notes.get(d) else f"`{d}`" for d in datasets)
    methods = ", ".join(f"`{m}`" for m in ordered(results["method"])) if len(results) else "none"
    seeds = ", ".join(str(s) for s in sorted(set(results["seed"]))) if len(results) else "none"
    text = f"Pretraining datasets: {described or 'none'}. Methods: {methods}. Seeds: {seeds}."
    if len(collected.floors):
        floored = ", ".join(f"`{d}`" for d in ordered(collected.floors["dataset"]))
        text += (
            f" Floors, probed with the same protocol, on {floored}: the raw pixels and the untrained "
            "encoder each seed starts from."
        )
    if len(collected.transfers):
        pairs = ordered(zip(collected.transfers["source"], collected.transfers["dataset"], strict=True))
        text += " Transfer (source → target): " + ", ".join(f"`{s}` → `{t}`" for s, t in pairs) + "."
    if len(results):
        protocols = ", ".join(f"`{p}`" for p in ordered(results["protocol"]))
        text += f" Evaluation protocol(s): {protocols}."
        selection = ordered(
            zip(results["dataset"], results["selected_on"], results["val_description"], strict=True)
        )
        text += (
            " The probe epoch of every result is selected on a validation split, never on test: "
            + "; ".join(
                f"`{d}`: `{split}`" + (f" = {description}" if description else "")
                for d, split, description in selection
            )
            + "."
        )
    text += (
        " Accuracies are percent with one decimal; every cell is mean ± 95% CI half-width over seeds "
        f"(Student t) with n = seeds. Every table is also in {TABLES_DIR}/ as Markdown, LaTeX (booktabs) "
        "and a tidy CSV (fractions at full precision, per-seed values). Stage names, output hashes and "
        f"MLflow runs: [{PROVENANCE_FILE}]({PROVENANCE_FILE})."
    )
    return text


def _table_section(table: Table, empty: str | None) -> str:
    """The table with each cell linked to its runs' page (runs/<cell>.html, cecl/report/runlinks.py)."""
    if not table.columns:
        return f"## {table.title}\n\n{empty or 'Nothing measured.'}"
    return f"## {table.title}\n\n{markdown(table, link=page_href)}"


def _digests(collected: Collected) -> dict[str, str]:
    """stage -> the digest of its outputs in this workspace (what its MLflow run is tagged with)."""
    frames = (collected.pretrain, collected.probes, collected.transfers, collected.floors)
    found: dict[str, str] = {}
    for frame in frames:
        if len(frame) and {"stage", "outputs_sha256"} <= set(frame.columns):
            found.update(zip(frame["stage"], frame["outputs_sha256"], strict=True))
    return found


def build_report(
    runs: Sequence[RunKey],
    transfers: Sequence[TransferKey],
    root: Path,
    out_dir: Path,
    extra_sections: Sequence[str] = (),
    mlflow_ui: str = "http://127.0.0.1:5000",
    dataset_notes: Mapping[str, str] | None = None,
    tracked: Mapping[str, Sequence[TrackedRun]] | None = None,
    floors: Sequence[FloorKey] = (),
    entry_scales: Mapping[str, EntryScale] | None = None,
) -> dict[str, Path]:
    """Read every run under ``root`` and write the report into ``out_dir``; returns kind -> path.

    Files (a table kind without runs writes none of its files): in out_dir/tables/ (dvc.yaml's
    ``reports/tables`` output) table_classification / table_bias / table_transfer .md/.csv/.tex,
    table_official.md/.tex and table_convergence.md/.csv; in out_dir convergence.png, convergence.csv
    (DVC plot data), summary.json (the DVC metrics file: cecl/report/summary.py), claims.md,
    provenance.md (links to ``tracked``, the MLflow runs by stage; not a DVC output) and report.md.
    Kinds are the file names with '.' as '_' ('table_bias_tex', 'convergence_png', ...), i.e.
    'table_<name>_<ext>', 'convergence_png', 'convergence_csv', 'summary', 'claims',
    'provenance', 'report', and 'runs_<page>' for out_dir/runs/<page>.html, each table cell's page that
    opens its MLflow runs (cecl/report/runlinks.py; like provenance.md, not a DVC output).
    ``dataset_notes`` (entry -> one-line description) go into captions, report.md and the claims'
    caveats. ``floors`` (cecl/runs.py FloorKey: raw pixels per entry, the
    untrained encoder per seed) add the floor rows to the bias and classification tables and the floors
    block to the claims; ``entry_scales`` (entry -> EntryScale(rho, training images)) enables the claims'
    paper-scale sanity rows. Raises FileNotFoundError / ValueError from collect().
    """
    runs, transfers = list(runs), list(transfers)
    if not runs and not transfers:
        raise ValueError("build_report needs at least one run")
    notes = dict(dataset_notes or {})
    root, out_dir = Path(root), Path(out_dir)
    collected = collect(runs, transfers, root, floors)
    out_dir.mkdir(parents=True, exist_ok=True)
    methods = ordered([k.method for k in runs] + [k.method for k in transfers])
    epochs = convergence_frame(collected.histories)
    entries = convergence_entries(collected.histories)

    tables = {
        "classification": classification_table(collected.probes, methods, notes, collected.floors),
        "bias": bias_table(collected.probes, methods, notes, collected.floors),
        "transfer": transfer_table(collected.transfers, methods, notes),
        "official": official_table(collected.probes, collected.transfers, methods, notes),
        "convergence": convergence_table(epochs, methods, notes, entries),
    }
    paths: dict[str, Path] = {}
    for table in tables.values():
        # the convergence table is written whenever there are histories: its caption says which entries
        # were monitored too briefly to compare (docs_blocks reads it)
        if table.columns or (table.name == "convergence" and entries):
            paths.update(write_table(table, out_dir / TABLES_DIR))

    sections = [TITLE, _summary_paragraph(collected, notes)]
    sections += [_table_section(tables[kind], EMPTY_KIND[kind]) for kind in EMPTY_KIND]
    sections.append(_table_section(tables["official"], "No probe or transfer results."))
    convergence = ["## Convergence"]
    if not collected.histories.empty:
        paths["convergence_png"] = plot_convergence(
            collected.histories, out_dir / "convergence.png", methods, notes
        )
        paths["convergence_csv"] = write_convergence_csv(collected.histories, out_dir / "convergence.csv")
        convergence += [
            "Online-probe validation accuracy after each pretraining epoch: mean over seeds, band = "
            "min–max over seeds (per-seed curves: convergence.csv).",
            "![Online-probe validation accuracy per pretraining epoch](convergence.png)",
        ]
        convergence.append(markdown(tables["convergence"]))
    else:
        convergence.append("No pretraining runs: no convergence plot.")
    sections.append("\n\n".join(convergence))

    paths["summary"] = write_summary(collected, out_dir / "summary.json")
    claims = claims_markdown(collected, epochs, notes, entries, entry_scales)
    paths["claims"] = out_dir / "claims.md"
    paths["claims"].write_text(claims)
    sections.append(claims)
    sections.append(configuration_markdown(collected.probes, collected.transfers))
    sections += list(extra_sections)

    cells = [stages for table in tables.values() for stages in table.stages.values()]
    for page in write_run_pages(out_dir, cells, _digests(collected), tracked, mlflow_ui):
        paths[f"{RUNS_DIR}_{page.name.replace('.', '_')}"] = page
    paths["provenance"] = out_dir / PROVENANCE_FILE
    paths["provenance"].write_text(provenance_markdown(collected, root, mlflow_ui, tracked))
    sections.append(
        f"## Provenance\n\nEvery run's DVC stage, output md5 (dvc.lock) and MLflow run: "
        f"[{PROVENANCE_FILE}]({PROVENANCE_FILE}). Each table cell links to a page in `{RUNS_DIR}/` "
        "that opens its seeds' MLflow runs (MLflow's compare page; the run's own page for one run) in this "
        "workspace's store (start `mlflow ui` first)."
    )
    paths["report"] = out_dir / "report.md"
    paths["report"].write_text("\n\n".join(section.strip("\n") for section in sections) + "\n")
    return paths
