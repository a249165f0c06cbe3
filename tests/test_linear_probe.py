"""The converged linear probe (cecl/eval/linear_probe.py) against independent references.

- scikit-learn's ``LogisticRegression(C = 1 / (l2 N))`` on the same standardised features: the same
  solution (probabilities, weights, test accuracy) at several strengths, and the same L2 selected when the
  grid is walked with scikit-learn (best validation accuracy, the strongest among ties);
- determinism (bitwise-equal curves and weights, whatever the thread count);
- convergence (the gradient, recomputed with autograd, is below the tolerance; warm and cold starts
  reach the same objective);
- the grid (values, order, validation) and the at-the-edge flag.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from sklearn.linear_model import LogisticRegression

from cecl.config import ConfigError, ProbeParams
from cecl.eval import Classification
from cecl.eval import linear_probe as lp
from cecl.eval.linear_probe import Fit, ProbeResult, fit_logistic, linear_probe, logits_of
from tests.helpers import tiny_params

N_TRAIN, N_EVAL, DIM, CLASSES = 2000, 1000, 32, 5
# Strengths whose validation accuracies (on the data below) peak inside the grid, 8 samples clear of the
# runner-up: the selection is not decided by round-off.
GRID = ProbeParams(
    l2_min=1e-5, l2_max=10.0, l2_per_decade=2, patience=None
)  # the whole grid, as the references fit it
TIGHT = 1e-8  # gradient tolerance when two solutions are compared to 1e-8


def _gaussian_classes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K Gaussian clusters in the first 8 of 32 dimensions (the rest noise), then per-dimension scales
    and offsets (so standardisation matters); float32 features as an encoder gives them. The cluster
    centres are fixed; ``seed`` draws the samples."""
    g = torch.Generator().manual_seed(1234)
    centres = torch.zeros(CLASSES, DIM)
    centres[:, :8] = 0.25 * torch.randn(CLASSES, 8, generator=g)
    scales = 0.2 + 3.0 * torch.rand(DIM, generator=g)
    offsets = 2.0 * torch.randn(DIM, generator=g)
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    features = (centres[labels] + torch.randn(n, DIM, generator=g)) * scales + offsets
    return features.float(), labels


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {
        "train": _gaussian_classes(N_TRAIN, 0),
        "val": _gaussian_classes(N_EVAL, 1),
        "test": _gaussian_classes(N_EVAL, 2),
    }


def _probe(data: dict, params: ProbeParams = GRID) -> ProbeResult:
    return linear_probe(
        {name: f for name, (f, _) in data.items()},
        {name: y for name, (_, y) in data.items()},
        dict.fromkeys(data),
        Classification(CLASSES),
        params,
    )


def _standardise(data: dict) -> dict[str, np.ndarray]:
    """The probe's standardisation, computed here: the training features' mean and (unbiased) std."""
    train = data["train"][0].double()
    mean, std = train.mean(0), train.std(0)
    return {name: ((f.double() - mean) / std).numpy() for name, (f, _) in data.items()}


def _sklearn(z: dict[str, np.ndarray], data: dict, l2: float) -> LogisticRegression:
    """scikit-learn's multinomial logistic regression with the probe's objective at strength ``l2``:
    C * sum CE + ||W||^2 / 2 = N C * (mean CE + (l2 / 2) ||W||^2) for C = 1 / (l2 N)."""
    model = LogisticRegression(C=1.0 / (l2 * N_TRAIN), solver="lbfgs", tol=1e-12, max_iter=100_000)
    return model.fit(z["train"], data["train"][1].numpy())


# --------------------------------------------------------------------------- scikit-learn


@pytest.mark.parametrize("l2", [1.0, 1e-2, 1e-4])
def test_the_fit_is_scikit_learns_logistic_regression(data: dict, l2: float) -> None:
    features, labels = data["train"]
    fit = fit_logistic(features, labels, CLASSES, l2, max_iter=1000, tolerance=TIGHT)
    assert fit.converged
    z = _standardise(data)
    reference = _sklearn(z, data, l2)
    for name in ("train", "test"):
        mine = torch.softmax(logits_of(fit.probe, data[name][0]), dim=1).numpy()
        theirs = reference.predict_proba(z[name])
        assert np.abs(mine - theirs).max() < 1e-4, name
        accuracy = float((mine.argmax(1) == data[name][1].numpy()).mean())
        assert abs(accuracy - reference.score(z[name], data[name][1].numpy())) <= 0.002, name
    # W is unique (penalised); the bias only up to a common shift (unpenalised, softmax-invariant).
    np.testing.assert_allclose(fit.probe.linear.weight.numpy(), reference.coef_, atol=1e-4, rtol=1e-3)


def test_the_grid_selects_the_l2_scikit_learn_selects(data: dict) -> None:
    result = _probe(data)
    z = _standardise(data)
    val_labels = data["val"][1].numpy()
    best_l2, best = None, -math.inf
    for row, l2 in zip(result.curve, GRID.grid(), strict=True):  # strongest first
        accuracy = _sklearn(z, data, l2).score(z["val"], val_labels)
        assert abs(row["val_accuracy"] - accuracy) <= 0.002, l2
        if accuracy > best:  # strictly better: the strongest among ties
            best_l2, best = l2, accuracy
    assert result.selected["l2"] == best_l2
    assert best_l2 not in (GRID.grid()[0], GRID.grid()[-1])  # the test means something: an interior peak
    assert result.selected["at_grid_edge"] is False
    # The reported numbers are the selected row's, and the test-selected counterpart is labelled apart.
    (row,) = [r for r in result.curve if r["l2"] == best_l2]
    assert result.val == {
        "accuracy": row["val_accuracy"],
        "mean_per_class_accuracy": row["val_mean_per_class_accuracy"],
    }
    assert result.test["accuracy"] == row["test_accuracy"]
    assert result.selected["iterations"] == row["iterations"]
    top = max(r["test_accuracy"] for r in result.curve)
    assert result.official is not None and result.official["test_accuracy"] == top
    assert result.official["l2"] == max(r["l2"] for r in result.curve if r["test_accuracy"] == top)


# --------------------------------------------------------------------------- determinism


def _recorded_fits(monkeypatch: pytest.MonkeyPatch, data: dict) -> tuple[ProbeResult, list[Fit]]:
    """``linear_probe`` on ``data`` with every Fit it makes recorded (the probe weights are not returned)."""
    fits: list[Fit] = []

    def recording(*args, **kwargs) -> Fit:
        fit = fit_logistic(*args, **kwargs)  # the real one, imported before any patch
        fits.append(fit)
        return fit

    monkeypatch.setattr(lp, "fit_logistic", recording)
    return _probe(data), fits


def test_two_probes_are_bitwise_equal_whatever_the_thread_count(
    data: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        first, first_fits = _recorded_fits(monkeypatch, data)
        torch.set_num_threads(2)
        second, second_fits = _recorded_fits(monkeypatch, data)
        assert torch.get_num_threads() == 2  # the fit's one-thread section restores the caller's setting
    finally:
        torch.set_num_threads(threads)
    assert first.curve == second.curve  # floats compared with ==: bitwise
    assert (first.selected, first.val, first.test, first.official) == (
        second.selected,
        second.val,
        second.test,
        second.official,
    )
    assert len(first_fits) == len(second_fits) == len(GRID.grid())
    for a, b in zip(first_fits, second_fits, strict=True):
        assert a.l2 == b.l2 and a.iterations == b.iterations and a.train_loss == b.train_loss
        for key, value in a.probe.state_dict().items():
            assert torch.equal(value, b.probe.state_dict()[key]), (a.l2, key)


# --------------------------------------------------------------------------- convergence


def _objective(fit: Fit, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The module docstring's objective at the fit's solution, from scratch: standardise with the
    training features' statistics, mean cross-entropy + (l2 / 2) ||W||^2, bias unpenalised; and the
    largest entry of its gradient (autograd)."""
    x = features.double()
    z = (x - x.mean(0)) / x.std(0)
    weight = fit.probe.linear.weight.detach().clone().requires_grad_(True)
    bias = fit.probe.linear.bias.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(z @ weight.T + bias, labels) + 0.5 * fit.l2 * weight.pow(2).sum()
    grads = torch.autograd.grad(loss, [weight, bias])
    return loss.detach(), max(float(g.abs().max()) for g in grads)


@pytest.mark.parametrize("l2", [1.0, 1e-3, 1e-5])
def test_the_solution_is_converged_to_the_tolerance(data: dict, l2: float) -> None:
    features, labels = data["train"]
    fit = fit_logistic(features, labels, CLASSES, l2)  # the default tolerance, 1e-5
    loss, gradient = _objective(fit, features, labels)
    assert fit.converged and gradient <= 1e-5, gradient
    assert float(loss) == pytest.approx(fit.train_loss, rel=1e-12)
    assert fit.probe.linear.weight.dtype == torch.float64
    x = features.double()  # the standardisation is the training features'
    torch.testing.assert_close(fit.probe.mean, x.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(fit.probe.std, x.std(0), rtol=0, atol=1e-12)


def test_warm_and_cold_starts_reach_the_same_objective(data: dict) -> None:
    features, labels = data["train"]
    stronger = fit_logistic(features, labels, CLASSES, 1e-2, tolerance=TIGHT)
    warm = fit_logistic(features, labels, CLASSES, 1e-3, tolerance=TIGHT, start=stronger.probe)
    cold = fit_logistic(features, labels, CLASSES, 1e-3, tolerance=TIGHT)
    assert warm.converged and cold.converged
    assert warm.train_loss == pytest.approx(cold.train_loss, rel=1e-8)
    for fit in (warm, cold):
        loss, gradient = _objective(fit, features, labels)
        assert gradient <= TIGHT and float(loss) == pytest.approx(fit.train_loss, rel=1e-12)
    assert warm.iterations < cold.iterations  # what the warm start is for
    assert stronger.probe.linear.weight.requires_grad is False  # the start was not modified by the warm fit
    assert stronger.train_loss == pytest.approx(_objective(stronger, features, labels)[0].item(), rel=1e-12)


def test_an_unconverged_fit_says_so(data: dict) -> None:
    features, labels = data["train"]
    fit = fit_logistic(features, labels, CLASSES, 1e-5, max_iter=2)
    assert not fit.converged and fit.iterations <= 2
    assert _objective(fit, features, labels)[1] > 1e-5


# --------------------------------------------------------------------------- the grid


def test_the_grid_is_log_spaced_strongest_first() -> None:
    default = ProbeParams()
    assert (default.l2_min, default.l2_max, default.l2_per_decade) == (1e-7, 0.1, 2)
    expected = [10.0 ** (-1 - i / 2) for i in range(13)]  # 0.1, 0.0316, 0.01, ..., 1e-7
    assert default.grid() == pytest.approx(expected, rel=1e-12)
    assert ProbeParams(l2_per_decade=1).grid() == pytest.approx([10.0**-e for e in range(1, 8)], rel=1e-12)
    assert GRID.grid() == pytest.approx([10.0 ** (1 - i / 2) for i in range(13)], rel=1e-12)
    assert ProbeParams(l2_min=1e-3, l2_max=1e-3).grid() == pytest.approx([1e-3], rel=1e-12)
    assert all(a > b for a, b in zip(default.grid(), default.grid()[1:], strict=False))


def test_l2_min_above_l2_max_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="l2_min"):
        ProbeParams(l2_min=1.0, l2_max=0.1)
    with pytest.raises(ConfigError, match=r"probe") as err:
        tiny_params(probe={"l2_min": 1.0, "l2_max": 0.1})
    assert "l2_min" in str(err.value) and "\n" not in str(err.value)
    for key, value in (("l2_min", 0.0), ("l2_max", -1.0), ("l2_per_decade", 0), ("tolerance", 0.0)):
        with pytest.raises(ValidationError, match=key):
            ProbeParams(**{key: value})
    with pytest.raises(ValidationError, match="epochs"):  # the old Adam probe's keys are gone
        ProbeParams(epochs=30)


def test_at_grid_edge_flags_a_selection_at_either_end(data: dict) -> None:
    # Too strong everywhere: the weakest strength is best, at the grid's end.
    weak_end = _probe(data, ProbeParams(l2_min=1.0, l2_max=10.0, l2_per_decade=1))
    assert weak_end.selected["l2"] == pytest.approx(1.0) and weak_end.selected["at_grid_edge"] is True
    assert weak_end.selected_at_edge == "weak"
    # All strengths weak enough to tie on validation: the strongest among the ties, the grid's start.
    ties = _probe(data, ProbeParams(l2_min=1e-5, l2_max=1e-4, l2_per_decade=1))
    assert len({r["val_accuracy"] for r in ties.curve}) == 1
    assert ties.selected["l2"] == pytest.approx(1e-4) and ties.selected["at_grid_edge"] is True
    assert ties.selected_at_edge == "strong"
    # The interior peak of GRID: no edge.
    inside = _probe(data)
    assert GRID.grid()[0] > inside.selected["l2"] > GRID.grid()[-1] and inside.selected_at_edge is None
    # One strength: no edge to widen.
    single = _probe(data, ProbeParams(l2_min=0.3, l2_max=0.3))
    assert single.selected["at_grid_edge"] is False and len(single.curve) == 1
    assert single.selected_at_edge is None


def test_the_curve_has_one_row_per_strength(data: dict) -> None:
    params = ProbeParams(l2_min=1e-2, l2_max=1.0, l2_per_decade=1)
    result = _probe(data, params)
    assert [r["grid_index"] for r in result.curve] == [0, 1, 2]
    assert [r["l2"] for r in result.curve] == params.grid()
    for row in result.curve:
        assert {"iterations", "train_objective", "val_accuracy", "test_accuracy"} <= set(row)
        assert row["iterations"] > 0 and row["train_objective"] > 0
    objectives = [r["train_objective"] for r in result.curve]
    assert objectives == sorted(objectives, reverse=True)  # a weaker penalty fits the training set better


def test_scoring_validation_only_reports_no_test_numbers(data: dict) -> None:
    """What the per-epoch monitor (kind probe) asks for: validation only, nothing test-selected."""
    params = ProbeParams(l2_min=1e-2, l2_max=1.0, l2_per_decade=1)
    both = _probe(data, params)
    val_only = linear_probe(
        {"train": data["train"][0], "val": data["val"][0]},
        {"train": data["train"][1], "val": data["val"][1]},
        {"train": None, "val": None},
        Classification(CLASSES),
        params,
        scored=("val",),
    )
    assert val_only.test == {} and val_only.official is None
    assert (val_only.selected, val_only.val) == (both.selected, both.val)
    assert not any(k.startswith("test_") for row in val_only.curve for k in row)


def test_patience_stops_the_walk_and_keeps_the_whole_grids_choice(data: dict) -> None:
    """probe.patience: the walk stops after that many weaker strengths without a better validation value;
    on this interior peak it selects what the whole grid selects, having fitted fewer strengths."""
    whole = _probe(data)
    patient = _probe(data, GRID.model_copy(update={"patience": 2}))
    assert patient.selected["l2"] == whole.selected["l2"] and patient.test == whole.test
    assert patient.curve == whole.curve[: len(patient.curve)]  # the same fits, in the same order
    best = [row["l2"] for row in patient.curve].index(patient.selected["l2"])
    assert len(patient.curve) == best + 1 + 2 < len(whole.curve)  # exactly 2 fits after the best, then stop


def test_logits_of_scores_in_eval_mode_and_restores_the_training_flag() -> None:
    """A head with dropout in training mode: logits_of gives its eval-mode output (dropout off, the same
    twice) and leaves it training, as the monitor and the probe stage's ce head need."""
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(8, 3))
    features = torch.randn(20, 8)
    head.train()
    first, second = logits_of(head, features, batch_size=7), logits_of(head, features, batch_size=7)
    assert head.training
    expected = head[1](features).detach()  # dropout is the identity in eval mode
    assert torch.equal(first, second) and torch.allclose(first, expected)
    head.eval()
    logits_of(head, features)
    assert not head.training
