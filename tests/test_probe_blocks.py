"""The linear probe in row blocks (cecl/eval/linear_probe.py): above BLOCK_ROWS rows the fit sums its
objective over blocks and holds no float64 copy of the whole feature matrix, and reaches the same solution
as the whole-matrix fit; probe_memory_bytes counts what the plan reports."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cecl.eval import linear_probe as lp


def _problem(n: int = 600, d: int = 12, k: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, k, (n,), generator=g)
    centres = torch.randn(k, d, generator=g) * 2
    return (centres[labels] + torch.randn(n, d, generator=g)).float(), labels


class LargestFloat64(TorchDispatchMode):
    """Records the most elements of any float64 tensor an op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                self.largest = max(self.largest, t.numel())
        return out


def test_blocks_reach_the_whole_matrix_solution(monkeypatch: pytest.MonkeyPatch) -> None:
    features, labels = _problem()
    whole = lp.fit_logistic(features, labels, 4, 1e-3, max_iter=500, tolerance=1e-9)
    monkeypatch.setattr(lp, "BLOCK_ROWS", 128)  # 600 rows: 5 blocks, the last one short
    blocked = lp.fit_logistic(features, labels, 4, 1e-3, max_iter=500, tolerance=1e-9)
    assert whole.converged and blocked.converged
    torch.testing.assert_close(blocked.probe.mean, whole.probe.mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(blocked.probe.std, whole.probe.std, rtol=1e-12, atol=0)
    torch.testing.assert_close(blocked.probe.linear.weight, whole.probe.linear.weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(blocked.probe.linear.bias, whole.probe.linear.bias, rtol=0, atol=1e-6)
    assert blocked.train_loss == pytest.approx(whole.train_loss, rel=1e-10)


def test_the_blocked_gradient_is_autograds(monkeypatch: pytest.MonkeyPatch) -> None:
    features, labels = _problem(n=300)
    monkeypatch.setattr(lp, "BLOCK_ROWS", 64)
    mean, std = lp._moments(features)
    probe = lp.LinearProbe(mean, std, 4).double()
    torch.nn.init.normal_(probe.linear.weight, generator=torch.Generator().manual_seed(1))
    loss, grad_w, grad_b = lp._blocked_objective(features, labels, probe.requires_grad_(False), 0.01)
    w = probe.linear.weight.clone().requires_grad_(True)
    b = probe.linear.bias.clone().requires_grad_(True)
    z = (features.double() - mean) / std
    reference = torch.nn.functional.cross_entropy(z @ w.t() + b, labels) + 0.005 * w.pow(2).sum()
    reference.backward()
    assert float(loss) == pytest.approx(float(reference.detach()), rel=1e-12)
    torch.testing.assert_close(grad_w, w.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_b, b.grad, rtol=1e-10, atol=1e-12)


def test_no_float64_copy_of_the_whole_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    features, labels = _problem(n=1000, d=16)
    monkeypatch.setattr(lp, "BLOCK_ROWS", 100)
    with LargestFloat64() as seen:
        lp.fit_logistic(features, labels, 4, 1e-3, max_iter=5)
    assert seen.largest <= 100 * 16  # one block's standardised rows at most
    monkeypatch.setattr(lp, "BLOCK_ROWS", 10_000)
    with LargestFloat64() as seen:
        lp.fit_logistic(features, labels, 4, 1e-3, max_iter=5)
    assert seen.largest == 1000 * 16  # below BLOCK_ROWS: the whole matrix, as before


def test_probe_memory_counts_imagenet_below_80_gb_only_in_blocks() -> None:
    rows, dim, classes, held = 1_281_167, 2048, 1000, 60_000
    blocked = lp.probe_memory_bytes(rows, dim, classes, held)
    features = (rows + held) * dim * 4
    assert features < blocked < features + 8e9  # the float32 features dominate
    whole = lp.probe_memory_bytes(lp.BLOCK_ROWS, dim, classes) / lp.BLOCK_ROWS * rows
    assert whole > 80e9  # what the whole-matrix fit would have needed at ImageNet's size
