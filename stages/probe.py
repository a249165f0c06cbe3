"""DVC stage probe@{dataset}-{method}-{seed}: linear evaluation of a frozen encoder on its dataset's test set.

Writes probe/{dataset}/{method}/seed_{seed}/metrics.json (validation-selected test metrics from the
dataset's evaluator, plus the best test accuracy over the L2 grid, labelled as test-selected) and
curve.csv (one row per L2 strength of the converged linear probe, cecl/eval/linear_probe.py). The
transfer stage runs the same evaluation on another dataset.

Under ``pretrain.protocol: joint`` (BiasCon) nothing is fitted: the jointly trained classifier saved in
encoder.pt, from the pretraining epoch selected on validation, is scored on val and test
(``protocol: "joint"``; curve.csv is that one epoch's row). For ce, whose own head is saved too, the
head's own metrics are also recorded under ``own_head`` whatever the protocol.
"""

from __future__ import annotations

import csv
from pathlib import Path

from cecl import runs
from cecl.cli import run_key_stage
from cecl.config import Params, load_params
from cecl.eval.encoder import probe_encoder, score_classifier
from cecl.eval.linear_probe import ProbeResult
from cecl.io import atomic_dir, ensure_writable, tree_digest, write_json
from cecl.machine import machine_info
from cecl.pipeline import load_saved_model, load_splits, run_tags
from cecl.tracking import stage_run
from cecl.train.device import resolve_device
from cecl.train.loop import AUTOCAST_DTYPES, compute_threads


def evaluate_encoder(
    params: Params, key: runs.RunKey | runs.TransferKey, pretrained: runs.RunKey, target: str, out: Path
) -> None:
    """Evaluate the encoder of ``pretrained`` on dataset entry ``target``; write metrics.json and curve.csv.

    A probe stage (``target`` is the pretraining entry) follows the entry's ``pretrain.protocol``; a
    transfer is always a linear probe of the frozen encoder on the target.
    """
    spec = params.spec(target)
    ensure_writable(out)
    device = resolve_device(params.device)
    model_file = pretrained.model_dir / runs.ENCODER_FILE
    splits = load_splits(spec, device)
    probe_params = params.recipe(target).probe
    kind = "transfer" if isinstance(key, runs.TransferKey) else "probe"
    protocol = params.recipe(pretrained.dataset).pretrain.protocol if kind == "probe" else "linear_probe"
    name = key.stage(kind)
    logged = {"probe": probe_params.model_dump(), "protocol": protocol}
    with stage_run(name, params.tracking.experiment, logged, run_tags(key, spec, device)) as run:
        evaluator = spec.evaluator()
        saved = load_saved_model(model_file, device, params.compute)
        if protocol == "joint":
            print(
                f"[{name}] scoring {pretrained.stage('pretrain')}'s joint classifier on {spec.describe()}",
                flush=True,
            )
            result = score_classifier(saved.encoder, *saved.head(), splits, evaluator)
        else:
            print(
                f"[{name}] probing {pretrained.stage('pretrain')}'s encoder on {spec.describe()}", flush=True
            )
            autocast = params.compute.autocast
            result = probe_encoder(
                saved.encoder,
                splits,
                evaluator,
                probe_params,
                progress=lambda line: print(f"[{name}] {line}", flush=True),
                autocast=AUTOCAST_DTYPES[autocast] if autocast else None,
            )
        own_head: ProbeResult | None = None
        if kind == "probe" and key.method == "ce":  # scored by its own head and by the probe
            own_head = (
                result
                if protocol == "joint"
                else score_classifier(saved.encoder, *saved.head(), splits, evaluator)
            )
        run.log_curve(result.curve, step="epoch" if protocol == "joint" else "grid_index")
        metrics = {
            "run": {
                "stage": name,
                "kind": kind,
                "dataset": target,
                "family": spec.family,
                "source": key.source if isinstance(key, runs.TransferKey) else None,
                "method": key.method,
                "seed": key.seed,
                "pretrain_stage": pretrained.stage("pretrain"),
                # The encoder folder's digest, not its MLflow run id: metrics.json stays byte-identical
                # between equal runs, and provenance.md finds the runs by these digests.
                "pretrain_outputs_sha256": tree_digest(pretrained.model_dir),
            },
            "evaluator": spec.evaluator().name,
            "protocol": protocol,
            "selected_on": "val",
            "val_description": spec.val_description(),
            "data_verified": spec.data_verified(runs.data_dir(target)),
            # The probe: {"l2", "iterations"} (cecl/eval/linear_probe.py); joint: {"epoch"} of pretraining.
            "selected": result.selected,
            # "weak" / "strong": selected at that edge of the L2 grid (widen it); null inside or joint
            "selected_at_edge": result.selected_at_edge,
            "val_accuracy": result.val[spec.evaluator().primary],
            "val": result.val,
            "test": result.test,
            # The best test accuracy over the L2 grid (selects on test: optimistic), the counterpart of the
            # released code's best-over-epochs. Joint: null (one classifier, selected on validation).
            "official_protocol": result.official,
            "config": params.method_options[key.method].model_dump(),
            # where the encoder was trained and where it was probed (cecl/machine.py; make compare shows them)
            "machine": {"pretrain": saved.machine, "probe": machine_info()},
        }
        if own_head is not None:
            metrics["own_head"] = {
                "epoch": own_head.selected["epoch"],
                "val": own_head.val,
                "test": own_head.test,
            }
        with atomic_dir(out) as tmp:
            write_json(tmp / runs.METRICS_FILE, metrics)
            with (tmp / runs.CURVE_FILE).open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(result.curve[0]))
                writer.writeheader()
                writer.writerows(result.curve)
        run.log_metrics({f"selected_test_{k}": v for k, v in result.test.items()})
        if own_head is not None:
            run.log_metrics({f"own_head_test_{k}": v for k, v in own_head.test.items()})
        run.record_outputs(out)
        run.log_artifact(out)
        print(f"[{name}] test {result.test} ({result.selected}, selected on validation)", flush=True)


def main(key: runs.RunKey) -> None:
    params = load_params()
    params.check_run(key)
    with compute_threads(params.compute):
        evaluate_encoder(params, key, key, key.dataset, key.probe_dir)


if __name__ == "__main__":
    run_key_stage("probe", __doc__.splitlines()[0], main)
