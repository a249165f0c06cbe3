"""The linear probe: multinomial logistic regression on frozen, standardised features, solved to convergence.

For each L2 strength ``l2`` of a log-spaced grid (``probe.l2``), the convex problem

    min_{W, b}  (1/N) sum_i CE(softmax(W^T z_i + b), y_i)  +  (l2 / 2) ||W||_F^2,    z_i = (f_i - mu) / sigma

(``mu``, ``sigma``: the training features' mean and standard deviation; the bias ``b`` is not penalised)
is solved with full-batch L-BFGS (strong-Wolfe line search) on the features' device, in float64 (in
float32 the line search stalls above the tolerance at strong L2), until the largest gradient entry is
below ``tolerance`` or ``max_iter`` iterations. The gradient is the closed form

    dL/dW = R^T Z + l2 W,    dL/db = sum_i R_i,    R = (softmax(Z W^T + b) - onehot(y)) / N

written out rather than taken by autograd: a fit takes hundreds of evaluations, and autograd's graph made
the whole probe of the CPU default's seed-0 encoders 1.42x slower (benchmarks/probe_gradient.py, which
keeps the autograd version as its reference). tests/test_linear_probe.py recomputes the gradient at the
solution with autograd. This is scikit-learn's
``LogisticRegression(C = 1 / (l2 N))`` objective, and CLIP's linear-probe protocol: the strength is
selected on the validation split (the evaluator's primary metric; the strongest among ties) and that
model is scored on test. It is a deterministic function of the features: no epochs, learning rate or
seed to tune. The grid is walked from the strongest to the weakest strength, each fit starting from the
previous solution (a strictly convex problem has one minimum, so this only saves iterations). The walk
stops after ``patience`` strengths without a better validation value: the weak end is the slow end, and
validation accuracy against the strength rises to one plateau (measured on the CPU default's 24 probes).

Why not refit on train + validation as CLIP does: for the bias benchmarks the validation split is
drawn at another bias level (BiasedMNIST's rho 0.1) and would leak unbiased data into the probe.

Why hand-written rather than scikit-learn: the fit runs on the training device (a GPU for ImageNet's
1.28 M x 2048 features) and on torch tensors; tests/test_linear_probe.py checks it against scikit-learn.

The official protocol of the released code (best *test* accuracy over probe epochs) has no epochs here;
its counterpart, the best test accuracy over the grid, is reported next to it as test-selected, i.e.
optimistic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cecl.config import ProbeParams
from cecl.eval.base import Evaluator


class LinearProbe(nn.Module):
    """Standardise with fixed training statistics, then one linear layer."""

    def __init__(self, mean: Tensor, std: Tensor, n_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = nn.Linear(mean.numel(), n_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear((features.to(self.mean.dtype) - self.mean) / self.std)


@dataclass(frozen=True)
class Fit:
    probe: LinearProbe
    l2: float
    iterations: int
    train_loss: float  # the regularised objective at the solution
    converged: bool


def fit_logistic(
    features: Tensor,
    labels: Tensor,
    n_classes: int,
    l2: float,
    max_iter: int = 1000,
    tolerance: float = 1e-5,
    start: LinearProbe | None = None,
) -> Fit:
    """The L2-regularised multinomial logistic regression of the module docstring at one strength.

    Up to ``BLOCK_ROWS`` rows the standardised float64 features are held whole (as always); above, the
    objective and its gradient are summed over blocks of ``BLOCK_ROWS`` rows, each standardised in float64
    from ``features`` as given (float32), so no float64 copy of the whole matrix exists: ImageNet's
    1.28 M x 2048 probe (1000 classes) needs about 18 GB by ``probe_memory_bytes``, not about 90 GB.
    """
    with _one_cpu_thread(features.device):
        n = len(features)
        blocked = n > BLOCK_ROWS
        if start is None:
            mean, std = _moments(features) if blocked else _moments_whole(features)
            probe = LinearProbe(mean, std, n_classes).to(device=features.device, dtype=torch.float64)
            nn.init.zeros_(probe.linear.weight)  # a deterministic start: the problem is convex
            nn.init.zeros_(probe.linear.bias)
        else:
            probe = LinearProbe(start.mean, start.std, n_classes).to(
                device=features.device, dtype=torch.float64
            )
            probe.load_state_dict(start.state_dict())
        labels = labels.to(features.device)
        probe.requires_grad_(False)  # the gradient is written by hand (module docstring)
        weight, bias = probe.linear.weight, probe.linear.bias
        optimizer = torch.optim.LBFGS(
            [weight, bias],
            lr=1.0,
            max_iter=max_iter,
            max_eval=2 * max_iter,
            tolerance_grad=tolerance,
            tolerance_change=0.0,  # stop on the gradient only (converged), or on max_iter
            history_size=20,
            line_search_fn="strong_wolfe",
        )
        if blocked:

            def objective() -> Tensor:
                loss, weight.grad, bias.grad = _blocked_objective(features, labels, probe, l2)
                return loss

        else:
            z = (features.double() - probe.mean) / probe.std
            rows = torch.arange(len(z), device=z.device)

            def objective() -> Tensor:
                logits = torch.addmm(bias, z, weight.t())
                log_norm = torch.logsumexp(logits, dim=1)
                loss = (log_norm - logits[rows, labels]).mean() + 0.5 * l2 * weight.pow(2).sum()
                residual = torch.exp(logits - log_norm[:, None])
                residual[rows, labels] -= 1.0
                residual /= len(z)
                weight.grad = torch.addmm(weight, residual.t(), z, beta=l2)
                bias.grad = residual.sum(0)
                return loss

        optimizer.step(objective)
        loss = objective()
        gradient = max(float(weight.grad.abs().max()), float(bias.grad.abs().max()))
        iterations = int(optimizer.state[weight].get("n_iter", 0))
        weight.grad = bias.grad = None
        return Fit(probe, l2, iterations, float(loss), gradient <= tolerance)


# Rows per block of the blocked objective (fit_logistic). Up to this many rows the whole standardised
# float64 matrix is held (the exact arithmetic every committed result used); 131 072 x 2048 float64 is 2 GiB.
BLOCK_ROWS = 131_072
LBFGS_HISTORY = 20


def _moments_whole(features: Tensor) -> tuple[Tensor, Tensor]:
    whole = features.double()
    return whole.mean(0), whole.std(0).clamp_min(1e-6)


def _moments(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and (unbiased) standard deviation per column in float64, two passes over row blocks."""
    n = len(features)
    total = sum(features[i : i + BLOCK_ROWS].double().sum(0) for i in range(0, n, BLOCK_ROWS))
    mean = total / n
    squares = sum(
        (features[i : i + BLOCK_ROWS].double() - mean).pow(2).sum(0) for i in range(0, n, BLOCK_ROWS)
    )
    return mean, (squares / (n - 1)).sqrt().clamp_min(1e-6)


def _blocked_objective(
    features: Tensor, labels: Tensor, probe: LinearProbe, l2: float
) -> tuple[Tensor, Tensor, Tensor]:
    """The objective and its closed-form gradient (module docstring) summed over row blocks."""
    weight, bias = probe.linear.weight, probe.linear.bias
    n = len(features)
    loss = weight.new_zeros(())
    grad_w, grad_b = torch.zeros_like(weight), torch.zeros_like(bias)
    for i in range(0, n, BLOCK_ROWS):
        z = (features[i : i + BLOCK_ROWS].double() - probe.mean) / probe.std
        y = labels[i : i + BLOCK_ROWS]
        rows = torch.arange(len(z), device=z.device)
        logits = torch.addmm(bias, z, weight.t())
        log_norm = torch.logsumexp(logits, dim=1)
        loss += (log_norm - logits[rows, y]).sum()
        residual = torch.exp(logits - log_norm[:, None])
        residual[rows, y] -= 1.0
        grad_w.addmm_(residual.t(), z)
        grad_b += residual.sum(0)
    loss = loss / n + 0.5 * l2 * weight.pow(2).sum()
    return loss, grad_w / n + l2 * weight, grad_b / n


def probe_memory_bytes(rows: int, dim: int, classes: int, held_rows: int = 0) -> int:
    """Peak bytes of one ``fit_logistic`` on ``rows`` x ``dim`` float32 features and ``classes`` classes,
    plus ``held_rows`` more float32 feature rows kept beside it (the validation and test splits).

    Counted: the float32 features; the float64 standardised block (the whole matrix up to BLOCK_ROWS,
    with its float64 copy) and about four [block, classes] float64 temporaries (logits, the exp argument,
    residual, log_norm's work); the weights, their gradient and L-BFGS's 2 x 20 history vectors plus
    its direction and line-search copies. An estimate of the tensors, not of the allocator's slack.
    """
    block = min(rows, BLOCK_ROWS)
    params = (dim + 1) * classes
    features = (rows + held_rows) * dim * 4
    standardised = block * dim * 8 * (2 if rows <= BLOCK_ROWS else 1)
    temporaries = 4 * block * classes * 8
    solver = (2 * LBFGS_HISTORY + 6) * params * 8
    return features + standardised + temporaries + solver


@dataclass(frozen=True)
class ProbeResult:
    selected: dict[str, float]  # what was selected on validation: {"l2": ...} (joint: {"epoch": ...})
    val: dict[str, float]
    test: dict[str, float]
    official: dict[str, float] | None  # test-selected (optimistic): {"l2", "test_accuracy"}; None: joint
    curve: list[dict[str, float]]  # one row per grid strength (joint: the selected epoch): val and test
    # "weak" / "strong": the strength selected on validation is the grid's weakest / strongest, so the
    # optimum may lie beyond it (widen probe.l2_min / l2_max); None inside the grid, and where nothing is
    # selected from a grid (one strength, a saved head). metrics.json's ``selected_at_edge``.
    selected_at_edge: str | None = None


def grid_edge(l2: float, grid: list[float]) -> str | None:
    """Which edge of ``grid`` (strongest first) the selected ``l2`` sits on: "strong", "weak" or None.

    A one-point grid has no edge to widen: None.
    """
    if len(grid) < 2:
        return None
    if l2 == grid[0]:
        return "strong"
    return "weak" if l2 == grid[-1] else None


def linear_probe(
    features: dict[str, Tensor],
    targets: dict[str, Tensor],
    bias: dict[str, Tensor | None],
    evaluator: Evaluator,
    params: ProbeParams,
    progress: Callable[[str], None] | None = None,
    scored: tuple[str, ...] = ("val", "test"),
) -> ProbeResult:
    """Fit on ``features["train"]`` over the grid, select on ``val`` (module docstring), score ``scored``.

    ``scored`` without "test" (the per-epoch monitor) scores validation only; ``test`` is then empty.
    """
    say = progress or (lambda line: None)
    primary = f"val_{evaluator.primary}"
    curve: list[dict[str, float]] = []
    best: tuple[dict[str, float], Fit] | None = None
    previous: LinearProbe | None = None
    since_best = 0
    for index, l2 in enumerate(params.grid()):
        if params.patience is not None and since_best >= params.patience:
            say(f"stopped after {since_best} weaker strengths without a better {primary} (probe.patience)")
            break
        started = time.perf_counter()
        fit = fit_logistic(
            features["train"],
            targets["train"],
            evaluator.n_classes,
            l2,
            params.max_iter,
            params.tolerance,
            previous,
        )
        previous = fit.probe
        row: dict[str, float] = {
            "grid_index": index,  # the MLflow step of this row (strongest L2 first)
            "l2": l2,
            "iterations": fit.iterations,
            "train_objective": fit.train_loss,
        }
        for name in scored:
            metrics = evaluator(logits_of(fit.probe, features[name]), targets[name], bias[name])
            row.update({f"{name}_{k}": v for k, v in metrics.items()})
        curve.append(row)
        unconverged = "" if fit.converged else ", NOT converged: raise probe.max_iter"
        seconds = time.perf_counter() - started
        say(
            f"l2 {l2:.1e}: {primary} {row[primary]:.4f} ({fit.iterations} steps{unconverged}, {seconds:.1f}s)"
        )
        if best is None or row[primary] > best[0][primary]:  # strictly better: the strongest among ties
            best, since_best = (row, fit), 0
        else:
            since_best += 1
    assert best is not None  # the grid has at least one point
    row, fit = best
    edge = grid_edge(fit.l2, params.grid())  # the walk reached the weak edge to pick it
    if edge is not None:
        bound = "probe.l2_min" if edge == "weak" else "probe.l2_max"
        say(f"l2 {fit.l2:.1e} selected at the {edge} edge of the grid: widen {bound}")
    official = None
    if "test" in scored:
        top = max(curve, key=lambda r: (r["test_accuracy"], r["l2"]))
        official = {"l2": top["l2"], "test_accuracy": top["test_accuracy"]}
    return ProbeResult(
        selected={"l2": fit.l2, "iterations": fit.iterations, "at_grid_edge": edge is not None},
        val={k.removeprefix("val_"): v for k, v in row.items() if k.startswith("val_")},
        test={k.removeprefix("test_"): v for k, v in row.items() if k.startswith("test_")},
        official=official,
        curve=curve,
        selected_at_edge=edge,
    )


@contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """One CPU thread: the result is then independent of the machine's core count (and, on these small
    [N, D] x [D, K] products, intra-op threads cost about what they save)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def logits_of(probe: nn.Module, features: Tensor, batch_size: int = 8192) -> Tensor:
    """The logits of a probe or a classifier head on fixed features: in eval mode (the module's training
    flag is restored after), in batches (bounded memory on large splits)."""
    was_training = probe.training
    probe.eval()
    try:
        return torch.cat([probe(features[i : i + batch_size]) for i in range(0, len(features), batch_size)])
    finally:
        probe.train(was_training)
