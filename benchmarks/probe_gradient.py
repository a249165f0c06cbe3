"""The final probe's gradient, closed form against autograd, side by side on trained encoders.

    python benchmarks/probe_gradient.py [--entries bmnist_rho99] [--methods ...] [--seeds 0]

For each encoder models/<entry>/<method>/seed_<s>/encoder.pt that `make repro` wrote, the features of
the entry's train, validation and test splits are extracted once, then the whole probe of the probe
stage (cecl/eval/linear_probe.py: params.yaml's ``probe`` grid, warm starts, patience) runs twice,
alternately: with ``fit_logistic`` as it is (the gradient written in closed form) and with the same
L-BFGS fed by autograd's gradient (the code before the change, kept here only as the reference). Prints
seconds, L-BFGS steps summed over the grid, the selected strength and the validation and test values of
the evaluator's primary metric for both, and the ratio of seconds. One thread, as the probe.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cecl.eval.linear_probe as lp
from benchmarks.monitor import encoder_arguments, machine, trained_encoders
from cecl.config import load_params
from cecl.eval.features import features_of
from cecl.pipeline import load_splits

CLOSED_FORM = lp.fit_logistic


def autograd_fit(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    l2: float,
    max_iter: int = 1000,
    tolerance: float = 1e-5,
    start: lp.LinearProbe | None = None,
) -> lp.Fit:
    """The reference: fit_logistic as it was, the same L-BFGS with autograd computing the gradient."""
    features = features.double()
    if start is None:
        probe = lp.LinearProbe(features.mean(0), features.std(0).clamp_min(1e-6), n_classes).double()
        nn.init.zeros_(probe.linear.weight)
        nn.init.zeros_(probe.linear.bias)
    else:
        probe = lp.LinearProbe(start.mean, start.std, n_classes).double()
        probe.load_state_dict(start.state_dict())
    z = (features - probe.mean) / probe.std
    weight, bias = probe.linear.weight, probe.linear.bias
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        max_eval=2 * max_iter,
        tolerance_grad=tolerance,
        tolerance_change=0.0,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def objective() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(F.linear(z, weight, bias), labels) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(objective)
    loss = objective()
    gradient = max(float(weight.grad.abs().max()), float(bias.grad.abs().max()))
    iterations = int(optimizer.state[weight].get("n_iter", 0))
    probe.requires_grad_(False)
    return lp.Fit(probe, l2, iterations, float(loss.detach()), gradient <= tolerance)


def main() -> None:
    args = encoder_arguments(__doc__.splitlines()[0])
    params = load_params()
    torch.set_num_threads(1)
    print(f"machine: {machine()}")
    print(
        f"{'entry':14} {'method':8} {'seed':>4} {'gradient':11} {'seconds':>8} {'steps':>6} {'l2':>8} "
        f"{'val':>7} {'test':>7}"
    )
    seconds: dict[str, list[float]] = {"closed form": [], "autograd": []}
    warm_x, warm_y = torch.randn(512, 64, dtype=torch.float64), torch.arange(512) % 10
    for fit in (CLOSED_FORM, autograd_fit):  # untimed: the first encoder's row must not pay first-call costs
        fit(warm_x, warm_y, 10, 1e-3, max_iter=20)
    for entry in args.entries or params.pretrain.datasets:
        spec = params.spec(entry)
        splits = load_splits(spec, torch.device("cpu"))
        evaluator = spec.evaluator()
        probe_params = params.recipe(entry).probe
        for method, seed, encoder in trained_encoders(
            entry, args.methods or params.pretrain.methods, args.seeds
        ):
            features = {name: features_of(encoder, split) for name, split in splits.items()}
            targets = {name: split.targets for name, split in splits.items()}
            bias = {name: split.bias for name, split in splits.items()}
            for name, fit in (("closed form", CLOSED_FORM), ("autograd", autograd_fit)):
                lp.fit_logistic = fit
                started = time.perf_counter()
                try:
                    result = lp.linear_probe(features, targets, bias, evaluator, probe_params)
                finally:
                    lp.fit_logistic = CLOSED_FORM
                secs = time.perf_counter() - started
                seconds[name].append(secs)
                steps = sum(int(row["iterations"]) for row in result.curve)
                print(
                    f"{entry:14} {method:8} {seed:>4} {name:11} {secs:>8.2f} {steps:>6} "
                    f"{result.selected['l2']:>8.1e} {result.val[evaluator.primary]:>7.4f} "
                    f"{result.test[evaluator.primary]:>7.4f}",
                    flush=True,
                )
    if seconds["closed form"]:
        total = {name: sum(values) for name, values in seconds.items()}
        ratios = [a / c for a, c in zip(seconds["autograd"], seconds["closed form"], strict=True)]
        print(
            f"total seconds: closed form {total['closed form']:.1f}, autograd {total['autograd']:.1f} "
            f"(autograd / closed form {total['autograd'] / total['closed form']:.2f}, "
            f"median per encoder {statistics.median(ratios):.2f})"
        )
    print(f"metric: each entry's evaluator's primary metric; command: {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
