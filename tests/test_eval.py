"""Evaluators against independent references: slow per-sample / per-group Python loops, hand-computed
numbers and (when installed) sklearn.metrics."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from cecl.eval import Classification, Evaluator, GroupBias, group_bias_metrics

HAS_SKLEARN = importlib.util.find_spec("sklearn") is not None
needs_sklearn = pytest.mark.skipif(
    not HAS_SKLEARN, reason="sklearn is not installed (an optional cross-check)"
)


def _logits(
    n: int, k: int, seed: int, targets: torch.Tensor | None = None, signal: float = 1.5
) -> torch.Tensor:
    """Random logits, nudged towards ``targets`` so accuracies are neither 0 nor 1 (no ties)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64)
    if targets is not None:
        logits[torch.arange(n), targets] += signal
    return logits


def _targets(n: int, k: int, seed: int) -> torch.Tensor:
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- slow references


def slow_classification(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    rows, ys = logits.tolist(), targets.tolist()
    top1, top5 = [], []
    for row, y in zip(rows, ys, strict=True):
        ranked = sorted(range(len(row)), key=lambda c: -row[c])
        top1.append(ranked[0] == y)
        top5.append(y in ranked[:5])
    per_class = {}
    for c in sorted(set(ys)):
        hits = [top1[i] for i in range(len(ys)) if ys[i] == c]
        per_class[c] = sum(hits) / len(hits)
    return {
        "accuracy": sum(top1) / len(top1),
        "top5_accuracy": sum(top5) / len(top5),
        "mean_per_class_accuracy": sum(per_class.values()) / len(per_class),
    }


def slow_group_bias(preds, targets, bias, aligned) -> dict[str, float]:
    groups: dict[tuple[int, int], list[bool]] = {}
    for p, t, b in zip(list(preds), list(targets), list(bias), strict=True):
        groups.setdefault((int(t), int(b)), []).append(int(p) == int(t))
    acc = {g: sum(v) / len(v) for g, v in groups.items()}

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    return {
        "accuracy": sum(int(p) == int(t) for p, t in zip(preds, targets, strict=True)) / len(preds),
        "unbiased_accuracy": mean(list(acc.values())),
        "aligned_accuracy": mean([a for (t, b), a in acc.items() if aligned[t][b]]),
        "conflicting_accuracy": mean([a for (t, b), a in acc.items() if not aligned[t][b]]),
    }


def _assert_same(actual: dict[str, float], expected: dict[str, float]) -> None:
    assert set(actual) == set(expected)
    for key, value in expected.items():
        assert type(actual[key]) is float, key
        if math.isnan(value):
            assert math.isnan(actual[key]), key
        else:
            assert actual[key] == pytest.approx(value, abs=1e-12), key


# ----------------------------------------------------------------------------- classification


@pytest.mark.parametrize(("k", "n", "seed"), [(10, 500, 0), (37, 300, 1), (6, 200, 2)])
def test_classification_matches_a_slow_loop(k: int, n: int, seed: int) -> None:
    targets = _targets(n, k, seed)
    logits = _logits(n, k, seed + 100, targets)
    metrics = Classification(k)(logits, targets)
    _assert_same(metrics, slow_classification(logits, targets))
    assert 0.0 < metrics["accuracy"] < metrics["top5_accuracy"] < 1.0  # a real test, not a trivial one


def test_mean_per_class_weighs_every_present_class_equally() -> None:
    # Class 0: 8 samples, all right; class 1: 2 samples, none right; class 2: absent (left out).
    targets = torch.tensor([0] * 8 + [1] * 2)
    logits = torch.zeros(10, 3)
    logits[:8, 0] = 1.0
    logits[8:, 2] = 1.0
    metrics = Classification(3)(logits, targets)
    assert metrics["accuracy"] == pytest.approx(0.8)
    assert metrics["mean_per_class_accuracy"] == pytest.approx(0.5)  # (1 + 0) / 2, not (1 + 0 + 0) / 3
    assert "top5_accuracy" not in metrics


def test_classification_with_absent_classes_matches_a_slow_loop() -> None:
    targets = _targets(400, 10, 5)
    targets[targets == 3] = 4  # classes 3 and 9 absent
    targets[targets == 9] = 0
    logits = _logits(400, 10, 6, targets, signal=1.0)
    _assert_same(Classification(10)(logits, targets), slow_classification(logits, targets))


@needs_sklearn
def test_classification_matches_sklearn() -> None:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, top_k_accuracy_score

    targets = _targets(600, 12, 7)
    logits = _logits(600, 12, 8, targets)
    metrics = Classification(12)(logits, targets)
    y, scores = targets.numpy(), logits.numpy()
    preds = scores.argmax(axis=1)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y, preds), abs=1e-12)
    assert metrics["top5_accuracy"] == pytest.approx(
        top_k_accuracy_score(y, scores, k=5, labels=np.arange(12)), abs=1e-12
    )
    assert metrics["mean_per_class_accuracy"] == pytest.approx(balanced_accuracy_score(y, preds), abs=1e-12)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_no_top5_with_five_classes_or_fewer(k: int) -> None:
    targets = _targets(50, k, 0)
    metrics = Classification(k)(_logits(50, k, 1, targets), targets)
    assert set(metrics) == {"accuracy", "mean_per_class_accuracy"}


def test_top5_from_six_classes() -> None:
    targets = _targets(300, 6, 0)
    logits = _logits(300, 6, 1)
    metrics = Classification(6)(logits, targets)
    assert metrics["top5_accuracy"] == pytest.approx(slow_classification(logits, targets)["top5_accuracy"])
    # exactly the samples whose target has the smallest logit miss the top 5
    assert metrics["top5_accuracy"] == pytest.approx(float((logits.argmin(1) != targets).double().mean()))


def test_primary_metrics_are_reported() -> None:
    targets = _targets(40, 10, 0)
    logits = _logits(40, 10, 1, targets)
    assert Classification.primary in Classification(10)(logits, targets)
    assert GroupBias.primary in GroupBias(10, np.eye(10, dtype=bool))(logits, targets, targets.clone())
    assert issubclass(Classification, Evaluator) and issubclass(GroupBias, Evaluator)


def test_works_on_float32_and_ignores_grad() -> None:
    targets = _targets(64, 10, 3)
    logits = _logits(64, 10, 4, targets).float().requires_grad_()
    expected = slow_classification(logits.detach().double(), targets)
    _assert_same(Classification(10)(logits, targets), expected)


# ----------------------------------------------------------------------------- group bias


def _biased_sample(n: int, k: int, n_bias: int, aligned: np.ndarray, seed: int):
    """Targets, bias values mostly aligned with the target (per the mask), and predictions that are
    right more often on aligned samples, so aligned and conflicting accuracies differ."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, k, n)
    bias = np.empty(n, dtype=np.int64)
    for i, t in enumerate(targets):
        pool = np.flatnonzero(aligned[t]) if rng.random() < 0.8 and aligned[t].any() else np.arange(n_bias)
        bias[i] = rng.choice(pool)
    p_right = np.where(aligned[targets, bias], 0.9, 0.3)
    right = rng.random(n) < p_right
    preds = np.where(right, targets, (targets + rng.integers(1, k, n)) % k)
    return preds, targets, bias


MASKS = {
    "diagonal 10x10 (BiasedMNIST)": np.eye(10, dtype=bool),
    # CelebA-style: target blond (0/1), bias male (0/1); the majority pairs are aligned:
    # not blond & male, not blond & female, blond & female; blond & male is the conflicting minority.
    "2x2 majority (CelebA)": np.array([[True, True], [True, False]]),
    "2x2 anti-diagonal": np.array([[False, True], [True, False]]),
    "3 classes x 2 values": np.array([[True, False], [False, True], [True, False]]),
}


@pytest.mark.parametrize("mask_name", list(MASKS))
def test_group_bias_matches_a_slow_per_group_loop(mask_name: str) -> None:
    aligned = MASKS[mask_name]
    k, n_bias = aligned.shape
    preds, targets, bias = _biased_sample(2000, k, n_bias, aligned, seed=len(mask_name))
    expected = slow_group_bias(preds, targets, bias, aligned.tolist())
    _assert_same(group_bias_metrics(preds, targets, bias, aligned), expected)
    assert expected["aligned_accuracy"] > expected["conflicting_accuracy"] + 0.3  # the mask matters
    # the same through the evaluator, from logits
    logits = torch.nn.functional.one_hot(torch.from_numpy(preds), k).double()
    metrics = GroupBias(k, aligned)(logits, torch.from_numpy(targets), torch.from_numpy(bias))
    _assert_same(metrics, expected)


def test_a_non_diagonal_mask_is_not_read_as_the_diagonal() -> None:
    aligned = MASKS["2x2 majority (CelebA)"]
    preds, targets, bias = _biased_sample(1000, 2, 2, aligned, seed=3)
    with_mask = group_bias_metrics(preds, targets, bias, aligned)
    diagonal = group_bias_metrics(preds, targets, bias, np.eye(2, dtype=bool))
    assert with_mask["aligned_accuracy"] != pytest.approx(diagonal["aligned_accuracy"])
    assert with_mask["unbiased_accuracy"] == pytest.approx(diagonal["unbiased_accuracy"])  # mask-free


def test_hand_computed_groups() -> None:
    """3 classes, diagonal mask, 4 non-empty (target, bias) groups of unequal size.

    group (0,0) aligned      4 samples, 3 right -> 0.75
    group (1,1) aligned      1 sample,  0 right -> 0.0
    group (0,1) conflicting  2 samples, 2 right -> 1.0
    group (2,0) conflicting  3 samples, 1 right -> 1/3
    accuracy 6/10; unbiased (0.75 + 0 + 1 + 1/3) / 4; aligned 0.375; conflicting (1 + 1/3) / 2.
    """
    targets = [0, 0, 0, 0, 1, 0, 0, 2, 2, 2]
    bias = [0, 0, 0, 0, 1, 1, 1, 0, 0, 0]
    preds = [0, 0, 0, 1, 0, 0, 0, 2, 0, 1]
    m = group_bias_metrics(np.array(preds), np.array(targets), np.array(bias), np.eye(3, dtype=bool))
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["unbiased_accuracy"] == pytest.approx((0.75 + 0.0 + 1.0 + 1 / 3) / 4)
    assert m["aligned_accuracy"] == pytest.approx(0.375)
    assert m["conflicting_accuracy"] == pytest.approx((1.0 + 1 / 3) / 2)


def test_empty_groups_are_left_out() -> None:
    # Only conflicting groups (1,0) (1 sample, right) and (2,0) (3 samples, wrong): mean of 1 and 0.
    m = group_bias_metrics(
        np.array([1, 0, 0, 0]), np.array([1, 2, 2, 2]), np.zeros(4, int), np.eye(3, dtype=bool)
    )
    assert m["unbiased_accuracy"] == pytest.approx(0.5)  # 98 empty groups are neither 0 nor 1
    assert m["accuracy"] == pytest.approx(0.25)
    assert m["conflicting_accuracy"] == pytest.approx(0.5)
    assert math.isnan(m["aligned_accuracy"])  # no aligned group present
    only_aligned = group_bias_metrics(
        np.array([0, 1]), np.array([0, 1]), np.array([0, 1]), np.eye(10, dtype=bool)
    )
    assert only_aligned["aligned_accuracy"] == 1.0 and math.isnan(only_aligned["conflicting_accuracy"])


def test_all_right_and_all_wrong_on_the_full_grid() -> None:
    targets = np.repeat(np.arange(10), 20)
    bias = np.tile(np.arange(10), 20)
    aligned = np.eye(10, dtype=bool)
    right = group_bias_metrics(targets, targets, bias, aligned)
    wrong = group_bias_metrics((targets + 1) % 10, targets, bias, aligned)
    for key in ("accuracy", "unbiased_accuracy", "aligned_accuracy", "conflicting_accuracy"):
        assert right[key] == 1.0 and wrong[key] == 0.0


# ----------------------------------------------------------------------------- bad input


def _message(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


BAD_CLASSIFICATION = {
    "1-D logits": (torch.zeros(4), torch.zeros(4, dtype=torch.long), r"logits must be \[N, 10\]"),
    "3-D logits": (torch.zeros(4, 10, 1), torch.zeros(4, dtype=torch.long), r"logits must be \[N, 10\]"),
    "wrong class count": (
        torch.zeros(4, 9),
        torch.zeros(4, dtype=torch.long),
        r"logits must be \[N, 10\], got \[4, 9\]",
    ),
    "short targets": (torch.zeros(4, 10), torch.zeros(3, dtype=torch.long), r"targets must be \[4\]"),
    "2-D targets": (torch.zeros(4, 10), torch.zeros(4, 1, dtype=torch.long), r"targets must be \[4\]"),
    "empty": (torch.zeros(0, 10), torch.zeros(0, dtype=torch.long), "empty"),
    "target too large": (torch.zeros(2, 10), torch.tensor([0, 10]), r"targets must lie in 0\.\.9"),
    "negative target": (torch.zeros(2, 10), torch.tensor([-1, 0]), r"targets must lie in 0\.\.9"),
}


@pytest.mark.parametrize("case", list(BAD_CLASSIFICATION))
@pytest.mark.parametrize("evaluator", ["classification", "group_bias"])
def test_bad_shapes_raise_one_line_value_errors(case: str, evaluator: str) -> None:
    logits, targets, problem = BAD_CLASSIFICATION[case]
    if evaluator == "classification":
        call = lambda: Classification(10)(logits, targets)  # noqa: E731
    else:
        call = lambda: GroupBias(10, np.eye(10, dtype=bool))(logits, targets, torch.zeros_like(targets))  # noqa: E731
    with pytest.raises(ValueError, match=problem) as info:
        call()
    _message(info)


def test_group_bias_bad_input() -> None:
    evaluator = GroupBias(3, np.eye(3, dtype=bool))
    logits, targets = torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])
    for bias, problem in (
        (None, "needs the bias attribute"),
        (torch.tensor([0, 1, 2]), "one length"),
        (torch.tensor([0, 1, 3, 0]), r"bias values must lie in 0\.\.2"),
        (torch.tensor([0, -1, 2, 0]), r"bias values must lie in 0\.\.2"),
    ):
        with pytest.raises(ValueError, match=problem) as info:
            evaluator(logits, targets, bias)
        _message(info)
    with pytest.raises(ValueError, match=r"aligned mask must be \[3, n_bias\]") as info:
        GroupBias(3, np.eye(2, dtype=bool))
    _message(info)
    with pytest.raises(ValueError, match=r"aligned mask must be \[3, n_bias\]"):
        GroupBias(3, np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="n_classes must be >= 2") as info:
        Classification(1)
    _message(info)
    with pytest.raises(ValueError, match="non-empty 1-D arrays") as info:
        group_bias_metrics(np.zeros(0, int), np.zeros(0, int), np.zeros(0, int), np.eye(2, dtype=bool))
    _message(info)
