"""Evaluation of a pretrained encoder on a dataset entry: the one library call behind the probe and transfer
stages (a stage reads params, calls :func:`evaluate_encoder`, and the outputs are written here).

Follows ``pretrain.protocol`` for a probe: ``linear_probe`` fits the L2-regularised linear probe of the
frozen encoder (cecl/eval/linear_probe.py); ``joint`` scores the jointly trained head saved in encoder.pt
(the pretraining epoch selected on validation). A transfer is always a linear probe. Cross-entropy's own
head is also scored (``own_head``) in a probe stage, whatever the protocol.
"""

from __future__ import annotations

from pathlib import Path

from cecl import runs
from cecl.config import Params
from cecl.eval.encoder import probe_encoder, score_classifier
from cecl.eval.linear_probe import ProbeResult
from cecl.io import ensure_writable, tree_digest
from cecl.machine import machine_info
from cecl.pipeline import load_splits, run_tags
from cecl.records import metrics_record, run_record, write_evaluation
from cecl.saved_model import load_saved_model
from cecl.tracking import stage_run
from cecl.train.device import AUTOCAST_DTYPES, resolve_device


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
        metrics = metrics_record(
            run=run_record(
                stage=name,
                kind=kind,
                dataset=target,
                family=spec.family,
                source=key.source if isinstance(key, runs.TransferKey) else None,
                method=key.method,
                seed=key.seed,
                pretrain_stage=pretrained.stage("pretrain"),
                pretrain_outputs_sha256=tree_digest(pretrained.model_dir),
            ),
            evaluator=evaluator.name,
            declared=evaluator.metrics,
            primary=evaluator.primary,
            protocol=protocol,
            val_description=spec.val_description(),
            data_verified=spec.data_verified(runs.data_dir(target)),
            result=result,
            config=params.method_options[key.method].model_dump(),
            machine={"pretrain": saved.machine, "probe": machine_info()},
            own_head=own_head,
        )
        write_evaluation(out, metrics, result.curve)
        run.log_metrics({f"selected_test_{k}": v for k, v in result.test.items()})
        if own_head is not None:
            run.log_metrics({f"own_head_test_{k}": v for k, v in own_head.test.items()})
        run.record_outputs(out)
        run.log_artifact(out)
        print(f"[{name}] test {result.test} ({result.selected}, selected on validation)", flush=True)
