"""DVC stage aggregate: the paper-style tables, convergence, claims and provenance, from the run files.

Reads every run params.yaml defines (dataset entry x method x seed, and the transfers): the probe and
transfer metrics.json, the pretraining history.csv, the sweep's sensitivity table, and for provenance.md
dvc.lock and this workspace's MLflow runs; writes reports/ (report.md, and report.html: the same page
with the plots inline, opening offline) and logs it to MLflow.
"""

from __future__ import annotations

from pathlib import Path

from cecl import runs
from cecl.cli import run_stage
from cecl.config import Params, load_params
from cecl.report import build_report
from cecl.report.html import write_html_report
from cecl.report.sanity import EntryScale
from cecl.tracking import finished_stage_runs, stage_run


def entry_scales(params: Params) -> dict[str, EntryScale]:
    """Each bias entry's rho and training-set size: whether a published paper-scale band applies."""
    scales = {}
    for name in params.datasets:
        spec = params.spec(name)
        rho = getattr(spec.options, "rho", None)
        if rho is not None:  # only BiasedMNIST entries have a published band (cecl/report/sanity.py)
            scales[name] = EntryScale(rho, spec.expected_sizes()["train"])
    return scales


def main() -> None:
    params = load_params()
    notes = {name: params.spec(name).describe() for name in params.datasets}
    tags = {"seeds": params.seeds, "device": "cpu"}
    logged = {"datasets": params.pretrain.datasets, "methods": params.pretrain.methods, "seeds": params.seeds}
    sensitivity = (runs.SWEEP_DIR / "sensitivity.md").read_text()
    heatmap = "![CECL validation accuracy over tau x w](../sweep/heatmap.png)\n"
    with stage_run("aggregate", params.tracking.experiment, logged, tags) as run:
        written = build_report(
            params.runs(),
            params.transfers(),
            root=Path.cwd(),
            out_dir=runs.REPORTS_DIR,
            extra_sections=[sensitivity + "\n" + heatmap],
            dataset_notes=notes,
            tracked=finished_stage_runs(params.tracking.experiment),
            floors=params.floors(),
            entry_scales=entry_scales(params),
        )
        written["report_html"] = write_html_report(written["report"])
        for path in written.values():
            run.log_artifact(path)


if __name__ == "__main__":
    run_stage("aggregate", main)
