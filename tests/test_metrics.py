"""Bias metrics against numbers computed by hand (group-mean vs sample-mean, missing groups, bad input)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cecl.metrics import accuracy, bias_metrics


def _hand_made() -> tuple[list[int], list[int], list[int]]:
    """3 classes, 4 non-empty (digit, colour) groups of unequal size (digit == colour is aligned).

    group (0,0) aligned      4 samples, 3 correct -> 0.75
    group (1,1) aligned      1 sample,  0 correct -> 0.0
    group (0,1) conflicting  2 samples, 2 correct -> 1.0
    group (2,0) conflicting  3 samples, 1 correct -> 1/3
    plain accuracy 6/10 = 0.6; group mean (0.75 + 0 + 1 + 1/3) / 4 = 0.5208333...
    """
    labels = [0, 0, 0, 0, 1, 0, 0, 2, 2, 2]
    colours = [0, 0, 0, 0, 1, 1, 1, 0, 0, 0]
    preds = [0, 0, 0, 1, 0, 0, 0, 2, 0, 1]
    return preds, labels, colours


def test_hand_computed_groups() -> None:
    preds, labels, colours = _hand_made()
    m = bias_metrics(preds, labels, colours, n_classes=3)
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["unbiased_accuracy"] == pytest.approx((0.75 + 0.0 + 1.0 + 1 / 3) / 4)
    assert m["unbiased_accuracy"] != pytest.approx(m["accuracy"])  # group mean, not sample mean
    assert m["aligned_accuracy"] == pytest.approx(0.375)
    assert m["conflicting_accuracy"] == pytest.approx((1.0 + 1 / 3) / 2)
    assert (m["n_groups"], m["n_aligned"], m["n_conflicting"]) == (4, 5, 5)
    assert all(type(v) in (float, int) for v in m.values())


def test_torch_and_numpy_inputs_agree() -> None:
    preds, labels, colours = _hand_made()
    from_lists = bias_metrics(preds, labels, colours, n_classes=3)
    from_torch = bias_metrics(torch.tensor(preds), torch.tensor(labels), torch.tensor(colours), n_classes=3)
    from_numpy = bias_metrics(
        np.array(preds), np.array(labels, dtype=np.int32), np.array(colours), n_classes=3
    )
    assert from_lists == from_torch == from_numpy
    assert accuracy(torch.tensor(preds), np.array(labels)) == pytest.approx(0.6)


def test_all_correct_and_all_wrong_on_full_grid() -> None:
    labels = np.repeat(np.arange(10), 20)
    colours = np.tile(np.arange(10), 20)
    right = bias_metrics(labels, labels, colours)
    assert right["n_groups"] == 100 and right["n_aligned"] == 20 and right["n_conflicting"] == 180
    for key in ("accuracy", "unbiased_accuracy", "aligned_accuracy", "conflicting_accuracy"):
        assert right[key] == 1.0
    wrong = bias_metrics((labels + 1) % 10, labels, colours)
    for key in ("accuracy", "unbiased_accuracy", "aligned_accuracy", "conflicting_accuracy"):
        assert wrong[key] == 0.0


def test_missing_groups_are_excluded() -> None:
    # Only conflicting groups (1,0) (1 sample, right) and (2,0) (3 samples, wrong): mean of 1.0 and 0.0.
    m = bias_metrics([1, 0, 0, 0], [1, 2, 2, 2], [0, 0, 0, 0])
    assert m["n_groups"] == 2
    assert m["unbiased_accuracy"] == pytest.approx(0.5)
    assert m["accuracy"] == pytest.approx(0.25)
    assert m["conflicting_accuracy"] == pytest.approx(0.5)
    assert math.isnan(m["aligned_accuracy"]) and m["n_aligned"] == 0


@pytest.mark.parametrize(
    ("preds", "labels", "colours", "message"),
    [
        ([0, 1], [0, 1, 2], [0, 1, 2], "same length"),
        ([0, 1, 2], [0, 1, 2], [0, 1], "colours must have the same length"),
        ([[0, 1]], [[0, 1]], [[0, 1]], "must be 1-D"),
        ([], [], [], "empty"),
        ([0.0, 1.0], [0, 1], [0, 1], "integer"),
        ([0, 1], [0, 10], [0, 1], "labels must lie in"),
        ([0, 1], [0, 1], [-1, 1], "colours must lie in"),
    ],
)
def test_bad_inputs_raise_clear_errors(preds, labels, colours, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bias_metrics(preds, labels, colours)


def test_accuracy_checks_shapes() -> None:
    assert accuracy([1, 2, 3, 4], [1, 2, 0, 0]) == 0.5
    with pytest.raises(ValueError, match="same length"):
        accuracy([1, 2], [1])
