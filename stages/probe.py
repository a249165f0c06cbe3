"""DVC stage probe@{dataset}-{method}-{seed}: linear evaluation of a frozen encoder on its dataset's test set.

Writes probe/{dataset}/{method}/seed_{seed}/metrics.json (validation-selected test metrics from the
dataset's evaluator, plus the best test accuracy over the L2 grid, labelled as test-selected) and
curve.csv (one row per L2 strength of the converged linear probe, cecl/eval/linear_probe.py). The
transfer stage runs the same evaluation on another dataset.

Under ``pretrain.protocol: joint`` (BiasCon) nothing is fitted: the jointly trained classifier saved in
encoder.pt, from the pretraining epoch selected on validation, is scored on val and test
(``protocol: "joint"``; curve.csv is that one epoch's row). For ce, whose own head is saved too, the
head's own metrics are also recorded under ``own_head`` whatever the protocol. The evaluation is one
library call (cecl/evaluate.py).
"""

from __future__ import annotations

from cecl import runs
from cecl.cli import run_key_stage
from cecl.config import load_params
from cecl.evaluate import evaluate_encoder
from cecl.train.device import compute_threads


def main(key: runs.RunKey) -> None:
    params = load_params()
    params.check_run(key)
    with compute_threads(params.compute):
        evaluate_encoder(params, key, key, key.dataset, key.probe_dir)


if __name__ == "__main__":
    run_key_stage("probe", __doc__.splitlines()[0], main)
