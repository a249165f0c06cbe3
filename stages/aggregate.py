"""DVC stage aggregate: the paper-style tables, the convergence plot and the claims, from metric files.

Reads probe/rho_*/*/metrics.json, models/rho_*/*/history.csv (the rhos and methods in params.yaml)
and the sweep's sensitivity table; writes reports/ (Markdown, CSV and LaTeX tables, convergence PNG
and DVC plot data, claims.md, report.md) and logs them to MLflow.
"""

from __future__ import annotations

from cecl import paths
from cecl.cli import run_stage
from cecl.config import load_params
from cecl.io import atomic_dir
from cecl.report import collect_histories, collect_probe_metrics, write_all
from cecl.report.tables import configuration_markdown
from cecl.tracking import stage_run


def main() -> None:
    params = load_params()
    rhos, methods = params.data.rhos, params.pretrain.methods
    probe = collect_probe_metrics(paths.PROBE_DIR, rhos, methods)
    histories = collect_histories(paths.MODELS_DIR, rhos, methods)
    tags = {"dataset": "biased_mnist", "seed": params.pretrain.seed, "device": "cpu"}
    logged = {"rhos": rhos, "methods": methods}
    with stage_run("aggregate", params.tracking.experiment, logged, tags) as run:
        with atomic_dir(paths.REPORTS_DIR) as tmp:
            sensitivity = (paths.SWEEP_DIR / "sensitivity.md").read_text()
            heatmap = "![CECL validation accuracy over tau x w](../sweep/heatmap.png)\n"
            sections = [configuration_markdown(probe), sensitivity + "\n" + heatmap]
            written = write_all(probe, histories, tmp, extra_sections=sections)
        for path in written.values():
            run.log_artifact(paths.REPORTS_DIR / path.name)


if __name__ == "__main__":
    run_stage("aggregate", main)
