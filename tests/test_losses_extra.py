"""The extra contrastive / self-supervised losses (dcl, dclw, hcl, supcon_in, eps_supinfonce, triplet, npair,
barlow_twins, vicreg, negative_cosine) against independent implementations: lightly (test-only dependency),
pytorch-metric-learning, and slow float64 per-anchor loop references written from the papers' formulas;
plus invariances, training, degenerate batches, bad inputs and autocast."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from torch import Tensor, nn

from cecl.losses import build
from cecl.losses.barlow_twins import BarlowTwinsLoss
from cecl.losses.dcl import DCLLoss, DCLWLoss
from cecl.losses.eps_supinfonce import EpsSupInfoNCELoss
from cecl.losses.hcl import HCLLoss
from cecl.losses.negative_cosine import NegativeCosineSimilarity, negative_cosine_similarity
from cecl.losses.npair import NPairLoss
from cecl.losses.supcon_in import SupConInLoss
from cecl.losses.triplet import BatchHardTripletLoss
from cecl.losses.vicreg import VICRegLoss

try:  # test-only dependency, installed with `pip install --no-deps lightly==1.6.0` (see requirements/dev.txt)
    from lightly import loss as lightly_loss
except ImportError:  # pragma: no cover
    lightly_loss = None
needs_lightly = pytest.mark.skipif(lightly_loss is None, reason="lightly is not installed")

# Losses that follow the [B, V, D] API (negative_cosine does not).
VIEW_LOSSES = (
    "dcl",
    "dclw",
    "hcl",
    "supcon_in",
    "eps_supinfonce",
    "triplet",
    "npair",
    "barlow_twins",
    "vicreg",
)
# Those that L2-normalise (zero vectors are an error); Barlow Twins / VICReg standardise over the batch.
NORMALISING = ("dcl", "dclw", "hcl", "supcon_in", "eps_supinfonce", "triplet", "npair")
RTOL, ATOL = 1e-10, 1e-12
GRAD_RTOL, GRAD_ATOL = 1e-8, 1e-11


def _batch(batch: int, n_views: int, dim: int = 6, classes: int = 3, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Unnormalised float64 features [B, V, D] (requires grad) and labels with at least two classes."""
    g = torch.Generator().manual_seed(seed)
    features = 3.0 * torch.randn(batch, n_views, dim, generator=g, dtype=torch.float64)
    labels = torch.randint(0, classes, (batch,), generator=g)
    labels[:2] = torch.tensor([0, 1])
    return features.requires_grad_(True), labels


def _views(features: Tensor) -> list[Tensor]:
    return [features[:, v] for v in range(features.shape[1])]


def _flat(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """View-major [V*B, D] embeddings and labels repeated per view (pml's input)."""
    return torch.cat(_views(features), 0), labels.repeat(features.shape[1])


def _value_and_grad(fn: Callable[[Tensor], Tensor], features: Tensor) -> tuple[Tensor, Tensor]:
    x = features.detach().clone().requires_grad_(True)
    value = fn(x)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


def _assert_same(
    ours: Callable[[Tensor], Tensor], theirs: Callable[[Tensor], Tensor], features: Tensor
) -> None:
    value, grad = _value_and_grad(ours, features)
    ref_value, ref_grad = _value_and_grad(theirs, features)
    torch.testing.assert_close(value, ref_value, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(grad, ref_grad, rtol=GRAD_RTOL, atol=GRAD_ATOL)


# --------------------------------------------------------------------------- slow float64 references
# Anchor by anchor with Python loops over float64 scalars, from the formulas in the module docstrings;
# they share no code with cecl.losses.


def _ref_setup(features: Tensor, labels: Tensor | None, tau: float) -> tuple[list[list[Tensor]], list[int]]:
    batch, n_views, _ = features.shape
    anchors = []
    for v in range(n_views):
        for b in range(batch):
            vec = features[b, v].to(torch.float64)
            anchors.append(vec / torch.sqrt(torch.sum(vec * vec)))
    n = len(anchors)
    s = [[torch.dot(anchors[i], anchors[j]) / tau for j in range(n)] for i in range(n)]
    groups = [int(labels[i % batch]) if labels is not None else i % batch for i in range(n)]
    return s, groups


def _ref_hcl(features: Tensor, tau: float, beta: float, tau_plus: float) -> Tensor:
    s, source = _ref_setup(features, None, tau)
    n = len(s)
    total = torch.zeros((), dtype=torch.float64)
    for i in range(n):
        negatives = [k for k in range(n) if source[k] != source[i]]
        positives = [p for p in range(n) if p != i and source[p] == source[i]]
        m = len(negatives)
        hard = sum(torch.exp((1 + beta) * s[i][k]) for k in negatives)
        weight = sum(torch.exp(beta * s[i][k]) for k in negatives) / m
        anchor = torch.zeros((), dtype=torch.float64)
        for p in positives:
            pos = torch.exp(s[i][p])
            ng = (hard / weight - tau_plus * m * pos) / (1 - tau_plus)
            ng = torch.clamp(ng, min=m * math.exp(-1 / tau))
            anchor = anchor - torch.log(pos / (pos + ng))
        total = total + anchor / len(positives)
    return total / n


def _ref_supcon_in(features: Tensor, labels: Tensor | None, tau: float, tau_base: float) -> Tensor:
    s, groups = _ref_setup(features, labels, tau)
    n = len(s)
    total = torch.zeros((), dtype=torch.float64)
    for i in range(n):
        positives = [p for p in range(n) if p != i and groups[p] == groups[i]]
        denominator = sum(torch.exp(s[i][k]) for k in range(n) if k != i)
        inside = sum(torch.exp(s[i][p]) / denominator for p in positives) / len(positives)
        total = total - torch.log(inside)
    return (tau / tau_base) * total / n


def _ref_eps_supinfonce(
    features: Tensor, labels: Tensor | None, tau: float, tau_base: float, eps: float
) -> Tensor:
    s, groups = _ref_setup(features, labels, tau)
    n = len(s)
    total = torch.zeros((), dtype=torch.float64)
    for i in range(n):
        positives = [p for p in range(n) if p != i and groups[p] == groups[i]]
        negatives = [k for k in range(n) if groups[k] != groups[i]]
        negative_mass = sum(torch.exp(s[i][k]) for k in negatives) if negatives else 0.0
        anchor = sum(
            -torch.log(torch.exp(s[i][p]) / (torch.exp(s[i][p] - eps) + negative_mass)) for p in positives
        )
        total = total + anchor / len(positives)
    return (tau / tau_base) * total / n


# --------------------------------------------------------------------------- DCL / DCLW


@needs_lightly
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_dcl_and_dclw_equal_lightly(tau: float) -> None:
    # lightly takes (out0, out1) [B, D] and averages the view-0 and view-1 anchor directions: for V = 2 that
    # is our mean over all N anchors. Its DCLW weight is computed from detached inputs, like ours.
    features, _ = _batch(7, 2, seed=1)
    pairs = [(DCLLoss(tau), lightly_loss.DCLLoss(temperature=tau))]
    pairs.append((DCLWLoss(tau), lightly_loss.DCLWLoss(temperature=tau, sigma=0.5)))
    pairs.append((DCLLoss(tau, weighted=True, sigma=0.3), lightly_loss.DCLWLoss(temperature=tau, sigma=0.3)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # lightly's torch.tensor(tensor) copy warning
        for ours, theirs in pairs:
            _assert_same(ours, lambda x, theirs=theirs: theirs(x[:, 0], x[:, 1]), features)


@pytest.mark.parametrize("n_views", [2, 3])
def test_dcl_relation_to_pml_ntxent(n_views: int) -> None:
    # NT-Xent's pair term -s_ip + log(exp(s_ip) + sum_neg exp(s_in)) = DCL's + softplus(s_ip - LSE_neg).
    # pml's NTXentLoss averages over (anchor, positive) pairs; every anchor has V - 1 of them.
    features, labels = _batch(6, n_views, seed=2)
    tau = 0.2
    sources = torch.arange(6)
    ntxent = pml_losses.NTXentLoss(temperature=tau)

    def ntxent_minus_softplus(x: Tensor) -> Tensor:
        embeddings, flat_sources = _flat(x, sources)
        z = nn.functional.normalize(embeddings, dim=1)
        s = z @ z.T / tau
        same = flat_sources[:, None] == flat_sources[None, :]
        lse_neg = torch.logsumexp(s.masked_fill(same, -math.inf), 1, keepdim=True)
        positive = same & ~torch.eye(len(z), dtype=torch.bool)
        correction = nn.functional.softplus(s - lse_neg)[positive].mean()
        return ntxent(embeddings, flat_sources) - correction

    _assert_same(DCLLoss(tau), ntxent_minus_softplus, features)
    torch.testing.assert_close(DCLLoss(tau)(features, labels), DCLLoss(tau)(features, None))  # labels ignored


def test_dclw_weights_average_to_one_and_carry_no_gradient() -> None:
    features, _ = _batch(5, 3, seed=3)
    z = nn.functional.normalize(features.detach(), dim=2)
    # Independent DCLW for V = 3 with constant weights: w = 2 - exp(c/sigma) / mean over ordered pairs.
    pairs = [(v, w) for v, w in itertools.permutations(range(3), 2)]
    c = {(v, w): (z[:, v] * z[:, w]).sum(1) for v, w in pairs}
    mean_exp = torch.stack([torch.exp(c[p] / 0.5) for p in pairs]).mean()
    weights = {p: 2 - torch.exp(c[p] / 0.5) / mean_exp for p in pairs}
    assert abs(float(torch.stack(list(weights.values())).mean()) - 1.0) < 1e-12

    def reference(x: Tensor) -> Tensor:
        zz = nn.functional.normalize(x, dim=2)
        flat = torch.cat(_views(zz), 0)
        s = flat @ flat.T / 0.1
        source = torch.arange(5).repeat(3)
        lse_neg = torch.logsumexp(s.masked_fill(source[:, None] == source[None, :], -math.inf), 1)
        pos = torch.zeros(15, dtype=torch.float64)
        for v, w in pairs:
            pos[v * 5 : (v + 1) * 5] += weights[(v, w)] * (zz[:, v] * zz[:, w]).sum(1) / 0.1
        return (lse_neg - pos / 2).mean()

    _assert_same(DCLWLoss(), reference, features)


# --------------------------------------------------------------------------- HCL


@pytest.mark.parametrize(
    ("n_views", "tau", "beta", "tau_plus"),
    [(2, 0.5, 1.0, 0.1), (3, 0.5, 0.5, 0.1), (2, 0.2, 1.0, 0.0), (2, 0.5, 2.0, 0.9), (3, 0.1, 1.0, 0.5)],
)
def test_hcl_matches_loop_reference(n_views: int, tau: float, beta: float, tau_plus: float) -> None:
    features, _ = _batch(5, n_views, seed=10 + n_views)
    loss = HCLLoss(tau, beta=beta, tau_plus=tau_plus)
    _assert_same(loss, lambda x: _ref_hcl(x, tau, beta, tau_plus), features)


def test_hcl_clamp_is_exercised() -> None:
    # With tau_plus = 0.9 the debiased estimate falls below the floor M exp(-1/tau) for some pairs.
    features, _ = _batch(5, 2, seed=12)
    z = nn.functional.normalize(features.detach(), dim=2)
    s_pos = (z[:, 0] * z[:, 1]).sum(1) / 0.5
    assert bool((s_pos > 0.5).any())  # some well-aligned pairs, whose debiased term is clamped
    torch.testing.assert_close(
        HCLLoss(0.5, 2.0, 0.9)(features), _ref_hcl(features, 0.5, 2.0, 0.9), rtol=RTOL, atol=ATOL
    )


@pytest.mark.parametrize("n_views", [2, 3])
def test_hcl_without_hardness_or_debiasing_is_pml_ntxent(n_views: int) -> None:
    features, _ = _batch(6, n_views, seed=13)
    sources = torch.arange(6)
    ntxent = pml_losses.NTXentLoss(temperature=0.5)
    _assert_same(HCLLoss(0.5, beta=0.0, tau_plus=0.0), lambda x: ntxent(*_flat(x, sources)), features)


# --------------------------------------------------------------------------- SupCon L_in


@pytest.mark.parametrize(("n_views", "supervised"), [(2, True), (3, True), (2, False), (3, False)])
def test_supcon_in_matches_loop_reference(n_views: int, supervised: bool) -> None:
    features, labels = _batch(6, n_views, seed=20 + n_views)
    lab = labels if supervised else None
    _assert_same(
        lambda x: SupConInLoss(0.1, 0.07)(x, lab), lambda x: _ref_supcon_in(x, lab, 0.1, 0.07), features
    )


def test_supcon_in_relations_to_pml_supcon() -> None:
    # pml's SupConLoss is L_out without the tau / tau_base factor. With one positive per anchor (V = 2, all
    # labels distinct) L_in = L_out; otherwise L_in <= L_out (Jensen), strictly for this batch.
    features, labels = _batch(7, 2, seed=24)
    distinct = torch.arange(7)
    pml = pml_losses.SupConLoss(temperature=0.1)
    _assert_same(lambda x: SupConInLoss(0.1, 0.1)(x, distinct), lambda x: pml(*_flat(x, distinct)), features)
    three_views, _ = _batch(7, 3, seed=25)
    for x, lab in ((features, labels), (three_views, labels), (three_views, None)):
        reference = pml(*_flat(x, labels if lab is not None else distinct))
        assert float(SupConInLoss(0.1, 0.1)(x, lab).detach()) < float(reference.detach()) - 1e-6


# --------------------------------------------------------------------------- eps-SupInfoNCE


@pytest.mark.parametrize(
    ("n_views", "supervised", "eps"), [(2, True, 0.1), (3, True, 0.5), (2, False, 0.1), (3, False, 0.0)]
)
def test_eps_supinfonce_matches_loop_reference(n_views: int, supervised: bool, eps: float) -> None:
    features, labels = _batch(6, n_views, seed=30 + n_views)
    lab = labels if supervised else None
    loss = EpsSupInfoNCELoss(0.1, 0.07, epsilon=eps)
    _assert_same(lambda x: loss(x, lab), lambda x: _ref_eps_supinfonce(x, lab, 0.1, 0.07, eps), features)


def test_eps_zero_self_supervised_two_views_is_pml_ntxent() -> None:
    features, _ = _batch(6, 2, seed=34)
    ntxent = pml_losses.NTXentLoss(temperature=0.1)
    sources = torch.arange(6)
    _assert_same(
        lambda x: EpsSupInfoNCELoss(0.1, 0.1, epsilon=0.0)(x), lambda x: ntxent(*_flat(x, sources)), features
    )


def test_eps_supinfonce_single_class_gives_minus_eps() -> None:
    features, _ = _batch(5, 2, seed=35)
    value = EpsSupInfoNCELoss(0.1, 0.1, epsilon=0.25)(features, torch.zeros(5, dtype=torch.long))
    torch.testing.assert_close(value, torch.tensor(-0.25, dtype=torch.float64))


# --------------------------------------------------------------------------- triplet


@pytest.mark.parametrize(("n_views", "supervised"), [(2, True), (3, True), (2, False)])
@pytest.mark.parametrize("clustered", [False, True])
def test_triplet_equals_pml_batch_hard(n_views: int, supervised: bool, clustered: bool) -> None:
    # pml: TripletMarginLoss (LpDistance on normalised embeddings, AvgNonZeroReducer) on BatchHardMiner's
    # triplets = our reduction="mean_nonzero"; our default "mean" = that * #nonzero / #valid anchors.
    # Clustered features make some anchors satisfy the margin (zero loss), so the two reductions differ.
    margin = 0.2
    features, _ = _batch(10, n_views, seed=40 + n_views)
    labels = torch.arange(10) % 3 if supervised else torch.arange(10)
    if clustered:
        g = torch.Generator().manual_seed(46)
        centres = torch.randn(10, 6, generator=g, dtype=torch.float64)
        noise = torch.randn(10, n_views, 6, generator=g, dtype=torch.float64)
        features = (2 * centres[labels][:, None, :] + noise).requires_grad_(True)
    pml_loss, miner = pml_losses.TripletMarginLoss(margin=margin), pml_miners.BatchHardMiner()

    def pml(x: Tensor) -> Tensor:
        embeddings, flat = _flat(x, labels)
        return pml_loss(embeddings, flat, miner(embeddings, flat))

    ours = BatchHardTripletLoss(margin, reduction="mean_nonzero")
    _assert_same(lambda x: ours(x, labels if supervised else None), pml, features)
    per_anchor, valid = BatchHardTripletLoss(margin).per_anchor(features, labels)
    n_nonzero = int((per_anchor > 0).sum())
    assert bool(valid.all()) and (0 < n_nonzero < len(per_anchor) if clustered else n_nonzero > 0)
    _assert_same(
        lambda x: BatchHardTripletLoss(margin)(x, labels),
        lambda x: pml(x) * n_nonzero / len(per_anchor),
        features,
    )


def test_triplet_single_class_is_zero_with_zero_gradient() -> None:
    features, _ = _batch(5, 2, seed=45)
    value, grad = _value_and_grad(
        lambda x: BatchHardTripletLoss()(x, torch.zeros(5, dtype=torch.long)), features
    )
    assert float(value) == 0.0 and bool((grad == 0).all())


# --------------------------------------------------------------------------- N-pair


def test_npair_equals_pml_npairs() -> None:
    # pml's NPairsLoss (DotProductSimilarity on normalised embeddings, cross-entropy, mean) with one pair per
    # label: anchor = view 0, positive = view 1 -> our symmetric=False; the symmetric form averages both.
    features, _ = _batch(7, 2, seed=50)
    ids = torch.arange(7)
    pml = pml_losses.NPairsLoss()
    forward = lambda x: pml(*_flat(x, ids))  # noqa: E731
    backward = lambda x: pml(*_flat(x.flip(1), ids))  # noqa: E731
    _assert_same(lambda x: NPairLoss(symmetric=False)(x), forward, features)
    _assert_same(lambda x: NPairLoss()(x, ids), lambda x: 0.5 * (forward(x) + backward(x)), features)


def test_npair_labels_remove_same_class_negatives() -> None:
    features, labels = _batch(8, 2, classes=3, seed=51)
    z = nn.functional.normalize(features.detach(), dim=2)
    expected = []
    for a, p in ((0, 1), (1, 0)):
        for b in range(8):
            keep = [j for j in range(8) if j == b or labels[j] != labels[b]]
            logits = torch.stack([torch.dot(z[b, a], z[j, p]) / 0.5 for j in keep])
            expected.append(torch.logsumexp(logits, 0) - torch.dot(z[b, a], z[b, p]) / 0.5)
    value = NPairLoss(temperature=0.5)(features, labels)
    torch.testing.assert_close(value, torch.stack(expected).mean(), rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------- Barlow Twins, VICReg, cosine


@needs_lightly
@pytest.mark.parametrize("lambda_param", [5e-3, 0.1])
def test_barlow_twins_equals_lightly(lambda_param: float) -> None:
    features, _ = _batch(9, 2, dim=5, seed=60)
    theirs = lightly_loss.BarlowTwinsLoss(lambda_param=lambda_param)
    _assert_same(BarlowTwinsLoss(lambda_param), lambda x: theirs(x[:, 0], x[:, 1]), features)
    three, _ = _batch(9, 3, dim=5, seed=61)
    pairs = lambda x: sum(theirs(x[:, v], x[:, w]) for v, w in ((0, 1), (0, 2), (1, 2))) / 3  # noqa: E731
    _assert_same(BarlowTwinsLoss(lambda_param), pairs, three)


@needs_lightly
@pytest.mark.parametrize("coefficients", [(25.0, 25.0, 1.0), (1.0, 2.0, 3.0)])
def test_vicreg_equals_lightly(coefficients: tuple[float, float, float]) -> None:
    # Inputs scaled to straddle std = 1 so the variance hinge is active for some dimensions only.
    features = (_batch(9, 2, dim=5, seed=62)[0].detach() * torch.linspace(0.1, 0.8, 5)).requires_grad_(True)
    theirs = lightly_loss.VICRegLoss(*coefficients, eps=1e-4)
    _assert_same(VICRegLoss(*coefficients), lambda x: theirs(x[:, 0], x[:, 1]), features)
    three = torch.cat([features, features[:, :1] * 0.5], 1).detach()
    pairs = lambda x: sum(theirs(x[:, v], x[:, w]) for v, w in ((0, 1), (0, 2), (1, 2))) / 3  # noqa: E731
    _assert_same(VICRegLoss(*coefficients), pairs, three)


@needs_lightly
def test_negative_cosine_equals_lightly_and_stops_gradient() -> None:
    g = torch.Generator().manual_seed(63)
    p = torch.randn(6, 5, dtype=torch.float64, generator=g, requires_grad=True)
    z = torch.randn(6, 5, dtype=torch.float64, generator=g, requires_grad=True)
    theirs = lightly_loss.NegativeCosineSimilarity()
    ours = negative_cosine_similarity(p, z)
    torch.testing.assert_close(ours, theirs(p, z), rtol=RTOL, atol=ATOL)
    (grad_p,) = torch.autograd.grad(ours, p)
    (ref_p, ref_z) = torch.autograd.grad(theirs(p, z), (p, z))
    torch.testing.assert_close(grad_p, ref_p, rtol=GRAD_RTOL, atol=GRAD_ATOL)
    negative_cosine_similarity(p, z).backward()
    assert z.grad is None and p.grad is not None  # stop-gradient on the target
    (_, grad_z2) = torch.autograd.grad(negative_cosine_similarity(p, z, stop_gradient=False), (p, z))
    torch.testing.assert_close(grad_z2, ref_z, rtol=GRAD_RTOL, atol=GRAD_ATOL)
    torch.testing.assert_close(NegativeCosineSimilarity()(p, z), ours)
    assert isinstance(build("negative_cosine"), NegativeCosineSimilarity)
    with pytest.raises(ValueError, match="zero-norm"):
        negative_cosine_similarity(torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="same shape"):
        negative_cosine_similarity(torch.ones(2, 3), torch.ones(3, 3))


# --------------------------------------------------------------------------- properties, [B, V, D] losses


@pytest.mark.parametrize("name", VIEW_LOSSES)
def test_batch_permutation_and_view_symmetry(name: str) -> None:
    loss = build(name)
    features, labels = _batch(8, 3, seed=70)
    value = loss(features, labels)
    order = torch.randperm(8, generator=torch.Generator().manual_seed(71))
    torch.testing.assert_close(loss(features[order], labels[order]), value, rtol=1e-12, atol=1e-12)
    for views in ([1, 0, 2], [2, 0, 1]):
        torch.testing.assert_close(loss(features[:, views], labels), value, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", VIEW_LOSSES)
def test_loss_falls_when_training_a_linear_model(name: str) -> None:
    torch.manual_seed(72)
    labels = torch.arange(16) % 4
    centres = torch.randn(4, 10)
    inputs = centres[labels][:, None, :] + 0.7 * torch.randn(16, 2, 10)
    model = nn.Linear(10, 8)
    loss = build(name)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.02)
    with torch.no_grad():
        start = float(loss(model(inputs), labels))
    for _ in range(25):
        optimiser.zero_grad()
        value = loss(model(inputs), labels)
        value.backward()
        optimiser.step()
    with torch.no_grad():
        end = float(loss(model(inputs), labels))
    assert end < start - 1e-3 * max(1.0, abs(start)), (start, end)


@pytest.mark.parametrize("name", VIEW_LOSSES)
@pytest.mark.parametrize("case", ["one_class", "duplicates", "identical_views"])
def test_degenerate_batches_are_finite(name: str, case: str) -> None:
    features, labels = _batch(6, 2, seed=73)
    x = features.detach()
    if case == "one_class":
        labels = torch.zeros(6, dtype=torch.long)
    elif case == "duplicates":
        x = x[:1].expand(6, 2, 6).clone()
    else:
        x = x[:, :1].expand(6, 2, 6).clone()
    value, grad = _value_and_grad(lambda y: build(name)(y, labels), x)
    assert bool(torch.isfinite(value)) and bool(torch.isfinite(grad).all()), (value, grad)


@pytest.mark.parametrize("name", VIEW_LOSSES)
def test_bad_inputs_raise(name: str) -> None:
    loss = build(name)
    features, labels = _batch(4, 2, seed=74)
    x = features.detach().clone()
    x[1, 0] = 0.0
    if name in NORMALISING:
        with pytest.raises(ValueError, match="zero-norm"):
            loss(x, labels)
    else:
        assert bool(torch.isfinite(loss(x, labels)))  # no normalisation: a zero vector is a valid input
    with pytest.raises(ValueError, match="at least 2 views"):
        loss(features[:, :1], labels)
    with pytest.raises(ValueError, match="3-D"):
        loss(features[:, 0], labels)
    with pytest.raises(ValueError, match="shape"):
        loss(features, labels[:3])
    with pytest.raises(ValueError, match="non-finite"):
        loss(torch.full((4, 2, 3), math.nan), labels)


@pytest.mark.parametrize("name", ["dcl", "dclw", "hcl", "barlow_twins", "vicreg"])
def test_single_image_batch_raises(name: str) -> None:
    with pytest.raises(ValueError, match="B >= 2"):
        build(name)(torch.randn(1, 2, 4))


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("dcl", {"temperature": 0.0}, "temperature"),
        ("dcl", {"weighted": 1}, "weighted"),
        ("dclw", {"sigma": -1.0}, "sigma"),
        ("hcl", {"tau_plus": 1.0}, "tau_plus"),
        ("hcl", {"beta": -0.5}, "beta"),
        ("supcon_in", {"base_temperature": math.inf}, "base_temperature"),
        ("eps_supinfonce", {"epsilon": -0.1}, "epsilon"),
        ("triplet", {"margin": "x"}, "margin"),
        ("triplet", {"reduction": "sum"}, "reduction"),
        ("npair", {"symmetric": "yes"}, "symmetric"),
        ("barlow_twins", {"lambda_param": -1.0}, "lambda_param"),
        ("vicreg", {"nu_param": math.nan}, "nu_param"),
    ],
)
def test_bad_options_raise(name: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build(name, **kwargs)


@pytest.mark.parametrize("name", VIEW_LOSSES)
def test_autocast_bf16_computes_in_float32(name: str) -> None:
    torch.manual_seed(75)
    layer = nn.Linear(16, 8)
    inputs = torch.randn(12, 2, 16)
    labels = torch.randint(0, 3, (12,))
    loss = build(name)
    reference = loss(layer(inputs), labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        projected = layer(inputs)
        assert projected.dtype == torch.bfloat16
        value = loss(projected, labels)
    assert value.dtype == torch.float32 and bool(torch.isfinite(value))
    # Same bf16 values, computed without autocast in float32: identical up to float32 rounding.
    torch.testing.assert_close(value, loss(projected.float(), labels), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(value, reference, rtol=5e-2, atol=5e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value.backward()
    assert layer.weight.grad is not None and bool(torch.isfinite(layer.weight.grad).all())


def test_registry_names() -> None:
    expected = {
        "dcl": DCLLoss,
        "dclw": DCLWLoss,
        "hcl": HCLLoss,
        "supcon_in": SupConInLoss,
        "eps_supinfonce": EpsSupInfoNCELoss,
        "triplet": BatchHardTripletLoss,
        "npair": NPairLoss,
        "barlow_twins": BarlowTwinsLoss,
        "vicreg": VICRegLoss,
    }
    for name, cls in expected.items():
        assert type(build(name)) is cls
    assert build("dclw").weighted and not build("dcl").weighted
    assert build("hcl").beta == 1.0 and build("hcl").tau_plus == 0.1
