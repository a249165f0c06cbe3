"""DVC stage prepare@{dataset}: build one dataset entry's store (splits + manifest) from its raw sources.

Writes data/{dataset}/{train,val,test}.npz and manifest.json (n_classes, shape, counts, digests);
the raw data is verified by checksum before use unless the entry says ``verify: false``.

Console: one ``[prepare@{dataset}]`` line per step (flushed), as pretrain prints one per epoch: what
it reads (the entry and its raw source), whether the raw data was verified, and each file it wrote
with its counts; the lines come from the manifest the build wrote, so they say what is on disk.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cecl import runs
from cecl.cli import dataset_stage
from cecl.config import load_params
from cecl.datasets.store import MANIFEST
from cecl.tracking import stage_run

SOURCE_OPTIONS = ("source", "root")  # the entry options that say where the raw data is read from


def _scalars(mapping: Mapping[str, Any]) -> str:
    """``key=value`` for the short, plain entries of the manifest's ``sources`` (no digests, lists)."""
    items = [
        f"{key}={value}"
        for key, value in mapping.items()
        if isinstance(value, str | int | float)
        and not isinstance(value, bool)
        and not any(word in key for word in ("sha256", "md5"))
        and len(str(value)) <= 120
    ]
    return ", ".join(items)


def _verified_line(verify: bool, manifest: Mapping[str, Any]) -> str:
    if not verify:
        return "raw data NOT verified (verify: false; recorded in the manifest)"
    if manifest["verified"]:
        return "raw data verified against its published checksums"
    return "raw data could not be verified (no published digest for what was found; recorded in the manifest)"


def _split_line(out: Path, name: str, split: Mapping[str, Any], n_classes: int) -> str:
    classes = sum(1 for count in split.get("per_class", []) if count)
    extra = f"{classes} of {n_classes} classes"
    if "aligned_fraction" in split:
        extra += f", {100 * split['aligned_fraction']:.1f}% bias-aligned"
    return f"wrote {out / split['file']}: {split['count']} images ({extra}), sha256 {split['sha256'][:12]}"


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
    stage = runs.prepare_stage(dataset)

    def say(line: str) -> None:
        print(f"[{stage}] {line}", flush=True)

    with stage_run(stage, params.tracking.experiment, logged, tags) as run:
        out = runs.data_dir(dataset)
        where = ", ".join(
            f"{k} {getattr(spec.options, k)}" for k in SOURCE_OPTIONS if hasattr(spec.options, k)
        )
        checks = "verifying checksums" if spec.options.verify else "checksums not verified"
        say(f"reading the raw {spec.family} data{f' ({where})' if where else ''}, {checks}")
        say(f"building {spec.describe()}")
        manifest = spec.prepare(out)
        sources = _scalars(manifest["sources"])
        if sources:
            say(f"read {sources}")
        say(_verified_line(spec.options.verify, manifest))
        run.set_tags({"data_verified": bool(manifest.get("verified", False))})  # what the family could check
        for name, split in manifest["splits"].items():
            run.log_metrics({f"{name}.count": split["count"]})
            say(_split_line(out, name, split, int(manifest["n_classes"])))
        total = sum(split["count"] for split in manifest["splits"].values())
        say(f"wrote {out / MANIFEST}: {len(manifest['splits'])} splits, {total} images")
        run.log_artifact(out / MANIFEST)


if __name__ == "__main__":
    dataset_stage("prepare", __doc__.splitlines()[0], main)
