"""SwAV: the loss (cecl.losses.swav) against lightly 1.6.0 (values and gradients, float64) and a slow loop
reference written from the paper's Algorithm 1; properties (batch permutation, view symmetry, codes,
equipartition, degenerate batches, bad inputs, autocast); the method (cecl.methods.swav): prototypes,
training. The two-process exactness check of SwAV is with the others in tests/test_distributed.py."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cecl import distributed as dist_utils
from cecl.losses.swav import SwaVLoss, sinkhorn_codes
from cecl.methods.swav import SwAV
from cecl.models import Encoder, ProjectionHead, build_backbone
from tests.helpers import bn_free_encoder

try:  # test-only dependency, installed with `pip install --no-deps lightly==1.6.0` (see requirements/dev.txt)
    from lightly import loss as lightly_loss
except ImportError:  # pragma: no cover
    lightly_loss = None
needs_lightly = pytest.mark.skipif(lightly_loss is None, reason="lightly is not installed")

RTOL, ATOL = 1e-10, 1e-12
GRAD_RTOL, GRAD_ATOL = 1e-8, 1e-11


def _scores(batch: int, n_views: int, n_prototypes: int, seed: int = 0, scale: float = 1.0) -> Tensor:
    """float64 cosine-like scores in [-scale, scale], shape [B, V, K]."""
    g = torch.Generator().manual_seed(seed)
    return scale * (2.0 * torch.rand(batch, n_views, n_prototypes, generator=g, dtype=torch.float64) - 1.0)


def _value_and_grad(fn: object, scores: Tensor) -> tuple[Tensor, Tensor]:
    x = scores.detach().clone().requires_grad_(True)
    value = fn(x)  # type: ignore[operator]
    (grad,) = torch.autograd.grad(value.sum(), x)
    return value.detach(), grad


# --------------------------------------------------------------------------- slow loop reference
# Python floats and loops, from the paper's Algorithm 1 and Eq. 1-2; shares no code with cecl.


def _ref_sinkhorn(view_scores: list[list[float]], eps: float, iterations: int) -> list[list[float]]:
    """Codes q[b][k] of one view: Algorithm 1 of the paper (K x B matrix Q, r = 1/K, c = 1/B)."""
    batch, n_prototypes = len(view_scores), len(view_scores[0])
    q = [[math.exp(view_scores[b][k] / eps) for b in range(batch)] for k in range(n_prototypes)]
    total = sum(sum(row) for row in q)
    q = [[x / total for x in row] for row in q]
    r, c = 1.0 / n_prototypes, 1.0 / batch
    for _ in range(iterations):
        u = [sum(q[k]) for k in range(n_prototypes)]
        q = [[q[k][b] * r / u[k] for b in range(batch)] for k in range(n_prototypes)]
        cols = [sum(q[k][b] for k in range(n_prototypes)) for b in range(batch)]
        q = [[q[k][b] * c / cols[b] for b in range(batch)] for k in range(n_prototypes)]
    cols = [sum(q[k][b] for k in range(n_prototypes)) for b in range(batch)]
    return [[q[k][b] / cols[b] for k in range(n_prototypes)] for b in range(batch)]


def _ref_loss(scores: Tensor, tau: float, eps: float, iterations: int) -> tuple[float, list]:
    """(loss, codes[v][b][k]): mean over ordered view pairs (t, s != t) of CE(q_t, softmax(s_s / tau))."""
    s = scores.tolist()
    batch, n_views = len(s), len(s[0])
    codes = [_ref_sinkhorn([s[b][v] for b in range(batch)], eps, iterations) for v in range(n_views)]
    total = 0.0
    for t in range(n_views):
        for v in range(n_views):
            if v == t:
                continue
            for b in range(batch):
                logits = [x / tau for x in s[b][v]]
                top = max(logits)
                log_norm = top + math.log(sum(math.exp(x - top) for x in logits))
                total -= sum(q * (x - log_norm) for q, x in zip(codes[t][b], logits, strict=True))
    return total / (batch * n_views * (n_views - 1)), codes


# --------------------------------------------------------------------------- the loss against references


@needs_lightly
@pytest.mark.parametrize(("batch", "n_views", "n_prototypes"), [(6, 2, 5), (1, 2, 4), (9, 3, 7), (16, 2, 30)])
@pytest.mark.parametrize(("tau", "iterations", "eps"), [(0.1, 3, 0.05), (0.5, 1, 0.2), (0.07, 10, 0.03)])
def test_equals_lightly_values_and_gradients(
    batch: int, n_views: int, n_prototypes: int, tau: float, iterations: int, eps: float
) -> None:
    assert lightly_loss is not None
    scores = _scores(batch, n_views, n_prototypes, seed=batch + n_views)
    ours = SwaVLoss(tau, iterations, eps)
    theirs = lightly_loss.SwaVLoss(temperature=tau, sinkhorn_iterations=iterations, sinkhorn_epsilon=eps)
    value, grad = _value_and_grad(ours, scores)
    ref_value, ref_grad = _value_and_grad(
        lambda x: theirs(
            high_resolution_outputs=[x[:, v] for v in range(n_views)], low_resolution_outputs=[]
        ),
        scores,
    )
    assert value.dim() == 0 and ref_value.shape == (1,)  # the only difference: lightly returns shape [1]
    torch.testing.assert_close(value, ref_value[0], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(grad, ref_grad, rtol=GRAD_RTOL, atol=GRAD_ATOL)


@pytest.mark.parametrize(("batch", "n_views", "n_prototypes"), [(5, 2, 4), (4, 3, 6), (1, 2, 3)])
@pytest.mark.parametrize(("tau", "iterations", "eps"), [(0.1, 3, 0.05), (0.3, 1, 0.5), (0.1, 25, 0.02)])
def test_matches_loop_reference(
    batch: int, n_views: int, n_prototypes: int, tau: float, iterations: int, eps: float
) -> None:
    scores = _scores(batch, n_views, n_prototypes, seed=7 * batch + n_views)
    loss = SwaVLoss(tau, iterations, eps)
    ref_value, ref_codes = _ref_loss(scores, tau, eps, iterations)
    codes = loss.codes(scores)
    expected = torch.tensor(ref_codes, dtype=torch.float64).permute(1, 0, 2)  # [V, B, K] -> [B, V, K]
    torch.testing.assert_close(codes, expected, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(
        loss(scores), torch.tensor(ref_value, dtype=torch.float64), rtol=RTOL, atol=ATOL
    )


def test_log_domain_sinkhorn_survives_scores_that_overflow_exp_in_float32() -> None:
    # s / eps up to 200: exp overflows float32 (> 88), the log-domain iterations do not.
    scores = _scores(6, 2, 5, seed=3, scale=10.0)
    ref_value, ref_codes = _ref_loss(scores, 0.1, 0.05, 3)
    loss = SwaVLoss()
    value = loss(scores.float())
    assert value.dtype == torch.float32 and torch.isfinite(value)
    torch.testing.assert_close(
        value.double(), torch.tensor(ref_value, dtype=torch.float64), rtol=1e-5, atol=1e-5
    )
    codes = loss.codes(scores.float())
    expected = torch.tensor(ref_codes).permute(1, 0, 2)
    torch.testing.assert_close(codes, expected, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("n_views", [2, 3])
def test_batch_permutation_invariance_and_view_symmetry(n_views: int) -> None:
    scores = _scores(7, n_views, 5, seed=11)
    loss = SwaVLoss()
    reference = loss(scores)
    permuted = scores[torch.randperm(7, generator=torch.Generator().manual_seed(0))]
    torch.testing.assert_close(loss(permuted), reference, rtol=1e-12, atol=1e-12)
    for order in itertools.permutations(range(n_views)):
        torch.testing.assert_close(loss(scores[:, list(order)]), reference, rtol=1e-12, atol=1e-12)


def test_codes_sum_to_one_per_sample_and_tend_to_equipartition() -> None:
    scores = _scores(12, 3, 4, seed=5)
    codes = SwaVLoss().codes(scores)
    assert codes.shape == scores.shape and bool((codes >= 0).all())
    torch.testing.assert_close(codes.sum(2), torch.ones(12, 3, dtype=torch.float64), rtol=0, atol=1e-12)
    # With many iterations every prototype gets a share B / K of the batch (per view).
    many = sinkhorn_codes(scores, iterations=500, epsilon=0.1)
    torch.testing.assert_close(
        many.sum(0), torch.full((3, 4), 12 / 4, dtype=torch.float64), rtol=0, atol=1e-8
    )


def test_codes_carry_no_gradient() -> None:
    scores = _scores(6, 2, 4, seed=2).requires_grad_(True)
    assert not SwaVLoss().codes(scores).requires_grad
    # The gradient is the one of a cross-entropy with constant targets: sum_k dL/ds_bvk = 0.
    (grad,) = torch.autograd.grad(SwaVLoss()(scores), scores)
    torch.testing.assert_close(grad.sum(2), torch.zeros(6, 2, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", ["identical_samples", "zero_scores", "single_image", "one_prototype"])
def test_degenerate_batches_are_finite(case: str) -> None:
    if case == "identical_samples":
        scores = _scores(1, 2, 5, seed=4).expand(8, 2, 5).clone()
    elif case == "zero_scores":
        scores = torch.zeros(6, 2, 5, dtype=torch.float64)
    elif case == "single_image":
        scores = _scores(1, 3, 5, seed=4)
    else:
        scores = _scores(6, 2, 1, seed=4)
    scores.requires_grad_(True)
    loss = SwaVLoss()
    value = loss(scores)
    (grad,) = torch.autograd.grad(value, scores)
    assert torch.isfinite(value) and bool(torch.isfinite(grad).all())
    if case in ("identical_samples", "single_image"):  # the batch cannot split: uniform codes
        torch.testing.assert_close(loss.codes(scores), torch.full_like(scores, 1 / 5), rtol=0, atol=1e-12)
    if case == "zero_scores":  # uniform codes and predictions: log K, a stationary point
        torch.testing.assert_close(value, torch.tensor(math.log(5), dtype=torch.float64))
        assert float(grad.abs().max()) < 1e-15
    if case == "one_prototype":
        assert float(value.detach()) == 0.0


@pytest.mark.parametrize(
    ("scores", "message"),
    [
        ("not a tensor", "must be a torch.Tensor"),
        (torch.zeros(4, 5), r"3-D \[B, V, K\]"),
        (torch.zeros(4, 1, 5), r"at least 2 views"),
        (torch.zeros(0, 2, 5), r"B >= 1"),
        (torch.zeros(4, 2, 0), r"K >= 1"),
        (torch.zeros(4, 2, 5, dtype=torch.long), "floating-point"),
        (torch.tensor([[[0.0, float("nan")], [0.0, 0.0]]]), "non-finite"),
        (torch.tensor([[[0.0, float("inf")], [0.0, 0.0]]]), "non-finite"),
    ],
)
def test_bad_inputs_raise(scores: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SwaVLoss()(scores)  # type: ignore[arg-type]


def test_bad_labels_raise_and_labels_are_ignored() -> None:
    scores = _scores(4, 2, 3)
    loss = SwaVLoss()
    with pytest.raises(ValueError, match="labels must have shape"):
        loss(scores, torch.zeros(5, dtype=torch.long))
    assert torch.equal(loss(scores, torch.tensor([0, 1, 0, 1])), loss(scores))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "temperature must be a positive"),
        ({"temperature": -1.0}, "temperature must be a positive"),
        ({"temperature": float("inf")}, "temperature must be a positive finite"),
        ({"temperature": "warm"}, "temperature must be a positive number"),
        ({"sinkhorn_iterations": 0}, "sinkhorn_iterations must be a positive integer"),
        ({"sinkhorn_iterations": 2.5}, "sinkhorn_iterations must be a positive integer"),
        ({"sinkhorn_iterations": True}, "sinkhorn_iterations must be a positive integer"),
        ({"sinkhorn_epsilon": 0.0}, "sinkhorn_epsilon must be a positive"),
        ({"sinkhorn_epsilon": float("nan")}, "sinkhorn_epsilon must be a positive"),
    ],
)
def test_bad_options_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SwaVLoss(**kwargs)


def test_autocast_bf16_computes_in_float32() -> None:
    scores = _scores(8, 2, 6, seed=9).to(torch.bfloat16)
    loss = SwaVLoss()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(scores)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    torch.testing.assert_close(value, loss(scores.float()), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- the method


def _tiny_encoder() -> Encoder:
    """A BatchNorm-free conv encoder (per-process BN statistics would break exactness by design)."""
    return bn_free_encoder(in_channels=3, width=4)


def _small_method(n_views: int = 2, **kwargs: float) -> SwAV:
    torch.manual_seed(0)
    encoder = build_backbone("small_cnn", 3, [0.5] * 3, [0.5] * 3, {"width": 4})
    return SwAV(
        encoder, ProjectionHead(encoder.feature_dim, 8, 16), n_prototypes=6, n_views=n_views, **kwargs
    )


def _prototype_norms(method: SwAV) -> Tensor:
    return torch.linalg.vector_norm(method.prototypes.weight.detach(), dim=1)


def test_method_scores_are_cosines_with_the_prototypes_and_use_the_gathered_loss() -> None:
    method = _small_method()
    assert isinstance(method.loss, dist_utils.GatherLoss) and isinstance(method.loss.loss, SwaVLoss)
    assert method.prototypes.bias is None and method.n_prototypes == 6 and method.n_views == 2
    torch.testing.assert_close(_prototype_norms(method), torch.ones(6), rtol=0, atol=1e-6)
    views = torch.rand(5, 2, 3, 12, 12)
    scores = method.scores(views)
    z = F.normalize(method.head(method.encoder(views.flatten(0, 1))), dim=1)
    torch.testing.assert_close(scores, (z @ method.prototypes.weight.T).view(5, 2, 6))
    assert bool((scores.abs() <= 1 + 1e-6).all())
    torch.testing.assert_close(method.training_loss(views, torch.arange(5)), method.loss.loss(scores))


@pytest.mark.parametrize("n_views", [2, 3])
def test_method_loss_falls_and_prototypes_stay_unit_norm(n_views: int) -> None:
    method = _small_method(n_views)
    g = torch.Generator().manual_seed(1)
    images = torch.rand(8, 1, 3, 12, 12, generator=g)
    views = (images + 0.05 * torch.randn(8, n_views, 3, 12, 12, generator=g)).clamp(0, 1)
    labels = torch.arange(8)
    optimiser = torch.optim.Adam(method.parameters(), lr=1e-2)
    history = []
    for _ in range(15):
        optimiser.zero_grad()
        loss = method.training_loss(views, labels)
        loss.backward()
        assert method.prototypes.weight.grad is not None
        optimiser.step()
        assert float((_prototype_norms(method) - 1).abs().max()) > 1e-4  # the step moved them off the sphere
        method.after_step()
        torch.testing.assert_close(_prototype_norms(method), torch.ones(6), rtol=0, atol=1e-6)
        history.append(float(loss.detach()))
    assert all(math.isfinite(x) for x in history)
    assert history[-1] < 0.5 * history[0], history


def test_method_under_bf16_autocast_returns_a_finite_float32_loss() -> None:
    method = _small_method()
    views = torch.rand(4, 2, 3, 12, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = method.training_loss(views, torch.arange(4))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in method.parameters() if p.grad is not None)


def test_method_float64() -> None:
    method = _small_method().double()
    loss = method.training_loss(torch.rand(4, 2, 3, 12, 12, dtype=torch.float64), torch.arange(4))
    assert loss.dtype == torch.float64 and torch.isfinite(loss)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_prototypes": 0}, "n_prototypes must be a positive integer"),
        ({"n_prototypes": 2.5}, "n_prototypes must be a positive integer"),
        ({"n_prototypes": True}, "n_prototypes must be a positive integer"),
        ({"n_views": 1}, "n_views must be an integer >= 2"),
        ({"temperature": 0.0}, "temperature must be a positive"),
        ({"sinkhorn_iterations": 0}, "sinkhorn_iterations must be a positive integer"),
        ({"sinkhorn_epsilon": -0.1}, "sinkhorn_epsilon must be a positive"),
        ({"proj_dim": 0}, "proj_dim must be a positive integer"),
    ],
)
def test_method_bad_options_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SwAV(_tiny_encoder(), ProjectionHead(4, 6, 8), **kwargs)


def test_method_rejects_the_wrong_number_of_views() -> None:
    method = _small_method(n_views=2)
    with pytest.raises(ValueError, match=r"built for 2 views"):
        method.training_loss(torch.rand(4, 3, 3, 12, 12), torch.arange(4))
    with pytest.raises(ValueError, match=r"built for 2 views"):
        method.training_loss(torch.rand(4, 3, 12, 12), torch.arange(4))
    with pytest.raises(ValueError, match=r"no nn\.Linear"):
        SwAV(_tiny_encoder(), nn.Identity())
