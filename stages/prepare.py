"""DVC stage prepare@{dataset}: build one dataset entry's store (splits + manifest) from its raw sources.

Writes data/{dataset}/{train,val,test}.npz and manifest.json (n_classes, shape, counts, digests);
the raw data is verified by checksum before use unless the entry says ``verify: false``.
"""

from __future__ import annotations

from cecl import runs
from cecl.cli import dataset_stage
from cecl.config import load_params
from cecl.tracking import stage_run


def main(dataset: str) -> None:
    params = load_params()
    spec = params.spec(dataset)
    if not spec.options.verify:
        print(
            f"warning: prepare@{dataset}: verify is false: the raw data is NOT checked "
            "(recorded in the manifest)"
        )
    tags = {"dataset": dataset, "family": spec.family, "data_verified": spec.options.verify, "device": "cpu"}
    logged = {"dataset": spec.options.model_dump(mode="json")}
    with stage_run(runs.prepare_stage(dataset), params.tracking.experiment, logged, tags) as run:
        out = runs.data_dir(dataset)
        print(f"[prepare@{dataset}] building {spec.describe()}", flush=True)
        manifest = spec.prepare(out)
        for name, split in manifest["splits"].items():
            run.log_metrics({f"{name}.count": split["count"]})
            print(f"[prepare@{dataset}] {name}: {split['count']} images", flush=True)
        run.log_artifact(out / "manifest.json")


if __name__ == "__main__":
    dataset_stage("prepare", __doc__.splitlines()[0], main)
