"""DVC stage transfer@{source}-{target}-{method}-{seed}: a frozen encoder pretrained on one dataset entry,
linear probe on another (the paper's Caltech-101/256 transfer protocol).

Writes transfer/{source}__{target}/{method}/seed_{seed}/{metrics.json, curve.csv}, in the probe
stage's format (the target's evaluator; the epoch selected on the target's validation split).
Under ``pretrain.protocol: joint`` too it stays a linear probe of the frozen encoder (``protocol:
"linear_probe"``): the jointly trained head knows only the source's classes. The encoder is then the
one of the source's validation-selected joint epoch (what encoder.pt holds).
"""

from __future__ import annotations

from cecl import runs
from cecl.cli import transfer_stage
from cecl.config import load_params
from cecl.evaluate import evaluate_encoder
from cecl.train.device import compute_threads


def main(key: runs.TransferKey) -> None:
    params = load_params()
    if key not in params.transfers():
        pairs = ", ".join(f"{s}->{t}" for s, t in params.transfer_pairs()) or "none"
        raise ValueError(
            f"{key.stage()} is not a transfer of params.yaml (pairs: {pairs}; see transfer, seeds)"
        )
    with compute_threads(params.compute):
        evaluate_encoder(params, key, key.pretrained, key.target, key.out_dir)


if __name__ == "__main__":
    transfer_stage(__doc__.splitlines()[0], main)
