"""DVC stage prepare: build BiasedMNIST (ReBias construction) from real MNIST for every training rho.

Writes data/biased_mnist/{rho_*/train.npz, rho_*/val.npz, test.npz, manifest.json}; the MNIST
arrays are verified by SHA-256 before use.
"""

from __future__ import annotations

from cecl import paths
from cecl.cli import run_stage
from cecl.config import load_params
from cecl.data.biased_mnist import prepare_biased_mnist
from cecl.tracking import stage_run


def main() -> None:
    params = load_params()
    tags = {"dataset": "biased_mnist", "seed": params.data.seed, "device": "cpu"}
    with stage_run("prepare", params.tracking.experiment, {"data": params.data.model_dump()}, tags) as run:
        manifest = prepare_biased_mnist(params.data, paths.DATA_DIR)
        for key, split in manifest["splits"].items():
            run.log_metrics({f"{key}.count": split["count"], f"{key}.agreement": split["agreement"]})
        run.log_artifact(paths.DATA_DIR / "manifest.json")


if __name__ == "__main__":
    run_stage("prepare", main)
