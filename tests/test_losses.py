"""cecl.losses: CECL, SupCon and SimCLR against a slow loop reference, pytorch-metric-learning, closed
forms, degenerate batches, bad inputs, autocast and the hinge variant."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from torch import Tensor, nn

from cecl import losses
from cecl.losses import CECLLoss, SupConLoss, available, build
from cecl.losses import registry as loss_registry
from cecl.losses._common import masked_logsumexp

TAU, TAU_BASE = 0.1, 0.07


def _batch(
    batch: int,
    n_views: int,
    dim: int = 6,
    classes: int = 3,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor]:
    """Unnormalised random features [B, V, D] (requires grad) and labels with at least two classes."""
    g = torch.Generator().manual_seed(seed)
    features = (3.0 * torch.randn(batch, n_views, dim, generator=g, dtype=torch.float64)).to(dtype)
    labels = torch.randint(0, classes, (batch,), generator=g)
    labels[:2] = torch.tensor([0, 1])[:batch]
    return features.requires_grad_(True), labels


# --------------------------------------------------------------------------- slow reference
# Written from the definitions in paper.md, anchor by anchor, with Python loops and float64 scalars; it
# shares no code with cecl.losses.


def _ref_similarities(features: Tensor, tau: float) -> list[list[Tensor]]:
    batch, n_views, _ = features.shape
    x = features.to(torch.float64)
    anchors = []
    for v in range(n_views):  # view-major: all first views, then all second views, ...
        for b in range(batch):
            vec = x[b, v]
            anchors.append(vec / torch.sqrt(torch.sum(vec * vec)))
    n = len(anchors)
    return [[torch.dot(anchors[i], anchors[j]) / tau for j in range(n)] for i in range(n)]


def _ref_lse(values: list[Tensor]) -> Tensor:
    top = max(float(v.detach()) for v in values)
    return top + torch.log(sum(torch.exp(v - top) for v in values))


def _ref_cecl_parts(features: Tensor, labels: Tensor, tau: float, variant: str) -> tuple[list, list]:
    batch, n_views, _ = features.shape
    n = batch * n_views
    s = _ref_similarities(features, tau)
    label = [int(labels[i % batch]) for i in range(n)]
    source = [i % batch for i in range(n)]
    l_a, l_b = [], []
    for i in range(n):
        negatives = [k for k in range(n) if label[k] != label[i]]
        if negatives:
            lse_neg = _ref_lse([s[i][k] for k in negatives])
            positives = [p for p in range(n) if p != i and label[p] == label[i]]
            terms = [s[i][p] - lse_neg for p in positives]
            if variant == "hinge":
                terms = [torch.clamp(t, max=0.0) for t in terms]
            l_a.append(-sum(terms) / len(positives))
        else:
            l_a.append(torch.zeros((), dtype=torch.float64))
        lse_all = _ref_lse([s[i][k] for k in range(n) if k != i])
        self_positives = [p for p in range(n) if p != i and source[p] == source[i]]
        l_b.append(-sum(s[i][p] - lse_all for p in self_positives) / len(self_positives))
    return l_a, l_b


def ref_cecl(features: Tensor, labels: Tensor, tau: float, tau_base: float, w: float, variant: str) -> Tensor:
    l_a, l_b = _ref_cecl_parts(features, labels, tau, variant)
    total = sum(w * a + (1.0 - w) * b for a, b in zip(l_a, l_b, strict=True))
    return (tau / tau_base) * total / len(l_a)


def ref_supcon(features: Tensor, labels: Tensor | None, tau: float, tau_base: float) -> Tensor:
    batch, n_views, _ = features.shape
    n = batch * n_views
    s = _ref_similarities(features, tau)
    key = [int(labels[i % batch]) if labels is not None else i % batch for i in range(n)]
    total = torch.zeros((), dtype=torch.float64)
    for i in range(n):
        lse_all = _ref_lse([s[i][k] for k in range(n) if k != i])
        positives = [p for p in range(n) if p != i and key[p] == key[i]]
        total = total - sum(s[i][p] - lse_all for p in positives) / len(positives)
    return (tau / tau_base) * total / n


def _value_and_grad(fn, features: Tensor, *args: object) -> tuple[Tensor, Tensor]:
    value = fn(features, *args)
    (grad,) = torch.autograd.grad(value, features)
    return value.detach(), grad


def _assert_matches(ours: tuple[Tensor, Tensor], ref: tuple[Tensor, Tensor]) -> None:
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours[1], ref[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n_views", [2, 3, 4])
@pytest.mark.parametrize("weight", [0.0, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("variant", ["official", "hinge"])
def test_cecl_matches_loop_reference(n_views: int, weight: float, variant: str) -> None:
    features, labels = _batch(5, n_views, seed=n_views)
    ref = _value_and_grad(lambda x, y: ref_cecl(x, y, TAU, TAU_BASE, weight, variant), features, labels)
    for block_rows in (None, 4):  # 4 rows per block: several blocks and a ragged last one
        loss = CECLLoss(TAU, TAU_BASE, weight, variant, block_rows=block_rows)
        _assert_matches(_value_and_grad(loss, features, labels), ref)


@pytest.mark.parametrize("n_views", [2, 3])
@pytest.mark.parametrize("supervised", [True, False])
def test_supcon_and_simclr_match_loop_reference(n_views: int, supervised: bool) -> None:
    features, labels = _batch(6, n_views, seed=10 + n_views)
    key = labels if supervised else None
    ref = _value_and_grad(lambda x, y: ref_supcon(x, y, TAU, TAU_BASE), features, key)
    _assert_matches(_value_and_grad(SupConLoss(TAU, TAU_BASE, block_rows=5), features, key), ref)
    if not supervised:  # the registry's "simclr" ignores labels even when given
        simclr = build("simclr", temperature=TAU, base_temperature=TAU_BASE)
        _assert_matches(_value_and_grad(simclr, features, labels), ref)


def test_other_temperatures_match_reference() -> None:
    features, labels = _batch(4, 3, seed=3)
    for tau, tau_base, w in [(0.5, 0.5, 0.3), (0.07, 1.0, 0.8)]:
        ref = _value_and_grad(lambda x, y: ref_cecl(x, y, tau, tau_base, w, "official"), features, labels)  # noqa: B023
        _assert_matches(_value_and_grad(CECLLoss(tau, tau_base, w), features, labels), ref)


def test_components_match_reference_per_anchor() -> None:
    features, labels = _batch(5, 2, seed=4)
    for variant in ("official", "hinge"):
        l_a, l_b = CECLLoss(variant=variant).components(features, labels)
        ref_a, ref_b = _ref_cecl_parts(features, labels, TAU, variant)
        torch.testing.assert_close(l_a, torch.stack(ref_a).detach(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(l_b, torch.stack(ref_b).detach(), rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- pytorch-metric-learning
# pml's losses take flat embeddings [N, D] and labels [N]; they L2-normalise (CosineSimilarity), do not
# apply tau / tau_base, and reduce with AvgNonZeroReducer (mean over the losses that are > 0).
# - pml SupConLoss returns one loss per anchor, -mean_{p in P(i)} [s_ip - log sum_{k != i} exp(s_ik)],
#   i.e. exactly our per-anchor SupCon term, averaged over anchors (all are > 0 here). Hence, for ANY
#   batch (unequal positive counts included):  ours = (tau / tau_base) * pml_SupCon.
#   With labels = source-image index instead of class labels, pml's SupCon is SimCLR for any V.
# - pml NTXentLoss returns one loss per positive PAIR (a, p): -log(e^{s_ap} / (e^{s_ap} + sum_{n:
#   label_n != label_a} e^{s_an})), averaged over pairs. With labels = source index and V = 2 every anchor
#   has exactly one positive, so pairs = anchors and the denominator is all k != a:
#   ours_SimCLR = (tau / tau_base) * pml_NTXent, for V = 2 only. For V > 2 they differ (pml leaves a's
#   other positives out of the denominator), which the last test checks too.


def _flat(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    batch, n_views, dim = features.shape
    embeddings = features.transpose(0, 1).reshape(n_views * batch, dim)
    return embeddings, labels.repeat(n_views), torch.arange(batch).repeat(n_views)


@pytest.mark.parametrize("n_views", [2, 3])
def test_supcon_equals_scaled_pml_supcon(n_views: int) -> None:
    features, labels = _batch(9, n_views, classes=4, seed=20 + n_views)  # unequal class sizes
    embeddings, flat_labels, sources = _flat(features, labels)
    scale = TAU / TAU_BASE
    pml = pml_losses.SupConLoss(temperature=TAU)
    ours, ours_grad = _value_and_grad(SupConLoss(TAU, TAU_BASE), features, labels)
    theirs, theirs_grad = _value_and_grad(
        lambda x, y: scale * pml(_flat(x, y)[0], flat_labels), features, labels
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours_grad, theirs_grad, rtol=1e-8, atol=1e-12)
    simclr = SupConLoss(TAU, TAU_BASE)(features, None)
    torch.testing.assert_close(simclr, scale * pml(embeddings, sources), rtol=1e-10, atol=1e-12)


def test_simclr_equals_scaled_pml_ntxent_for_two_views() -> None:
    features, labels = _batch(8, 2, seed=30)
    embeddings, _, sources = _flat(features, labels)
    ntxent = pml_losses.NTXentLoss(temperature=TAU)
    ours = SupConLoss(TAU, TAU_BASE)(features, None)
    torch.testing.assert_close(ours, (TAU / TAU_BASE) * ntxent(embeddings, sources), rtol=1e-10, atol=1e-12)
    cecl_self_only = CECLLoss(TAU, TAU_BASE, weight=0.0)(features, labels)
    torch.testing.assert_close(
        cecl_self_only, (TAU / TAU_BASE) * ntxent(embeddings, sources), rtol=1e-10, atol=0
    )

    three = _batch(8, 3, seed=31)[0].detach()
    embeddings3, _, sources3 = _flat(three, labels)
    assert not math.isclose(
        float(SupConLoss(TAU, TAU_BASE)(three, None)), float((TAU / TAU_BASE) * ntxent(embeddings3, sources3))
    )


# --------------------------------------------------------------------------- closed forms, invariances


def test_weight_zero_is_simclr_exactly() -> None:
    features, labels = _batch(7, 3, seed=40)
    for dtype in (torch.float64, torch.float32):
        x = features.detach().to(dtype)
        assert torch.equal(CECLLoss(weight=0.0)(x, labels), SupConLoss()(x, None))


def test_distinct_labels_identities() -> None:
    """All labels distinct: P_a = P_b and N_a = D_b minus i's other views.

    Then SupCon == SimCLR, and for V = 2 (one positive p, x = s_ip - LSE_{N_a}(i)):
    L_a = -x and L_b = -(s_ip - log(e^{s_ip} + e^{LSE_{N_a}})) = log(1 + e^{-x}) = softplus(L_a)."""
    features, _ = _batch(6, 2, seed=41)
    labels = torch.arange(6) * 7
    torch.testing.assert_close(
        SupConLoss()(features, labels), SupConLoss()(features, None), rtol=1e-12, atol=0
    )
    l_a, l_b = CECLLoss().components(features, labels)
    torch.testing.assert_close(l_b, nn.functional.softplus(l_a), rtol=1e-12, atol=1e-14)
    assert bool((l_b > l_a).all())
    w = 0.3
    expected = (TAU / TAU_BASE) * (w * l_a + (1 - w) * nn.functional.softplus(l_a)).mean()
    torch.testing.assert_close(CECLLoss(weight=w)(features, labels), expected, rtol=1e-12, atol=0)


def test_invariances() -> None:
    features, labels = _batch(8, 3, seed=42)
    for loss in (CECLLoss(weight=0.4), CECLLoss(variant="hinge"), SupConLoss()):
        base = loss(features, labels)
        perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(loss(features[perm], labels[perm]), base, rtol=1e-12, atol=0)
        torch.testing.assert_close(loss(features[:, [2, 0, 1]], labels), base, rtol=1e-12, atol=0)
        # The loss normalises the features itself: positive rescaling of any vector changes nothing.
        scales = torch.rand(8, 3, 1, dtype=torch.float64) * 10 + 0.1
        torch.testing.assert_close(loss(features * scales, labels), base, rtol=1e-12, atol=0)
        torch.testing.assert_close(loss(features, labels + 100), base, rtol=1e-12, atol=0)


def test_block_size_does_not_change_the_result() -> None:
    features, labels = _batch(13, 2, dim=5, classes=4, seed=43)
    ref = _value_and_grad(CECLLoss(variant="hinge"), features, labels)
    for rows in (1, 3, 7, 26, 1000):
        got = _value_and_grad(CECLLoss(variant="hinge", block_rows=rows), features, labels)
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- degenerate batches


@pytest.mark.parametrize("variant", ["official", "hinge"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_single_class_batch_is_finite_and_only_self_part(variant: str, dtype: torch.dtype) -> None:
    features, _ = _batch(5, 3, dtype=dtype, seed=50)
    labels = torch.full((5,), 3)
    simclr = SupConLoss()(features, None)
    for w in (0.0, 0.5, 1.0):
        value, grad = _value_and_grad(CECLLoss(weight=w, variant=variant, block_rows=4), features, labels)
        assert torch.isfinite(value) and bool(torch.isfinite(grad).all())
        torch.testing.assert_close(value, (1 - w) * simclr.detach())
        if w == 1.0:
            assert float(value) == 0.0 and bool((grad == 0).all())
    l_a, _ = CECLLoss().components(features, labels)
    assert bool((l_a == 0).all())
    if dtype == torch.float64:
        ref = _value_and_grad(lambda x, y: ref_cecl(x, y, TAU, TAU_BASE, 0.5, variant), features, labels)
        _assert_matches(_value_and_grad(CECLLoss(variant=variant), features, labels), ref)


def test_duplicate_features_are_finite() -> None:
    one = torch.randn(1, 1, 8, dtype=torch.float64)
    for labels in (torch.tensor([0, 1, 0, 1]), torch.zeros(4, dtype=torch.long)):
        features = one.expand(4, 2, 8).clone().requires_grad_(True)
        for loss in (CECLLoss(), CECLLoss(variant="hinge"), SupConLoss()):
            value, grad = _value_and_grad(loss, features, labels)
            assert torch.isfinite(value) and bool(torch.isfinite(grad).all())
    features, labels = _batch(4, 2, seed=51)
    duplicated = torch.cat([features, features]).detach().requires_grad_(True)
    value, grad = _value_and_grad(CECLLoss(), duplicated, torch.cat([labels, labels]))
    assert torch.isfinite(value) and bool(torch.isfinite(grad).all())


def test_smallest_batch() -> None:
    features, _ = _batch(1, 2, seed=52)
    value, grad = _value_and_grad(CECLLoss(), features, torch.tensor([4]))
    assert torch.isfinite(value) and bool(torch.isfinite(grad).all())


def _clustered(case: str) -> tuple[Tensor, Tensor, float]:
    """Features, labels and a tiny tau. 'tight': every class a tight cluster, negatives ~exp(-170) below the
    positives at tau = 0.005, so the shared per-row shift underflows the negatives' sum (forward redo path)
    and every backward row needs the exact path (rescaling would overflow). 'mixed' (tau = 0.01): one tight
    class, the others spread, so a block holds both rescaled and exact rows."""
    if case == "tight":
        g = torch.Generator().manual_seed(53)
        labels = torch.tensor([0, 1, 2, 0, 1, 2])
        centres = torch.eye(4, dtype=torch.float64)[:3] - 0.4 * torch.eye(4, dtype=torch.float64)[3]
        features = centres[labels].unsqueeze(1) + 0.01 * torch.randn(
            6, 2, 4, generator=g, dtype=torch.float64
        )
        tau = 0.005
    else:
        g = torch.Generator().manual_seed(0)
        labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
        base = torch.randn(8, 1, 5, generator=g, dtype=torch.float64)
        base[labels == 0] = torch.tensor([1.0, 0, 0, 0, 0], dtype=torch.float64)
        features = base + 0.02 * torch.randn(8, 2, 5, generator=g, dtype=torch.float64)
        tau = 0.01
    return features.requires_grad_(True), labels, tau


@pytest.mark.parametrize("case", ["tight", "mixed"])
@pytest.mark.parametrize("variant", ["official", "hinge"])
def test_tiny_temperature_float32_stays_accurate(case: str, variant: str) -> None:
    features, labels, tau = _clustered(case)
    ref = _value_and_grad(lambda x, y: ref_cecl(x, y, tau, TAU_BASE, 0.5, variant), features, labels)
    x32 = features.detach().float().requires_grad_(True)
    value, grad = _value_and_grad(CECLLoss(tau, TAU_BASE, 0.5, variant, block_rows=5), x32, labels)
    assert torch.isfinite(value) and bool(torch.isfinite(grad).all())
    torch.testing.assert_close(value.double(), ref[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad.double(), ref[1], rtol=1e-3, atol=1e-4)
    _assert_matches(_value_and_grad(CECLLoss(tau, TAU_BASE, 0.5, variant), features, labels), ref)


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("features", "labels", "message"),
    [
        (torch.randn(4, 8), torch.zeros(4, dtype=torch.long), "3-D"),
        (torch.randn(4, 1, 8), torch.zeros(4, dtype=torch.long), "V >= 2"),
        (torch.randn(0, 2, 8), torch.zeros(0, dtype=torch.long), "B >= 1"),
        (torch.randn(4, 2, 8), torch.zeros(3, dtype=torch.long), "labels must have shape [B] = [4]"),
        (torch.randn(4, 2, 8), torch.zeros(4, 1, dtype=torch.long), "labels must have shape"),
        (torch.randn(4, 2, 8), None, "labels are required"),
        (torch.randn(4, 2, 8), torch.zeros(4), "labels must be an integer tensor"),
        (torch.randint(0, 3, (4, 2, 8)), torch.zeros(4, dtype=torch.long), "floating-point"),
        (torch.full((4, 2, 8), float("nan")), torch.zeros(4, dtype=torch.long), "non-finite"),
        (torch.zeros(4, 2, 8), torch.zeros(4, dtype=torch.long), "zero-norm"),
        ([[1.0]], torch.zeros(4, dtype=torch.long), "torch.Tensor"),
    ],
)
def test_bad_inputs_raise(features: Tensor, labels: Tensor | None, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        CECLLoss()(features, labels)


def test_bad_inputs_raise_for_supcon() -> None:
    with pytest.raises(ValueError, match="V >= 2"):
        SupConLoss()(torch.randn(4, 1, 8), None)
    with pytest.raises(ValueError, match="labels must have shape"):
        SupConLoss()(torch.randn(4, 2, 8), torch.zeros(5, dtype=torch.long))
    features = torch.randn(4, 2, 8)
    features[2, 1] = 0.0
    with pytest.raises(ValueError, match="zero-norm"):
        SupConLoss()(features, None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"base_temperature": 0.0}, "base_temperature"),
        ({"weight": -0.1}, "weight must be in"),
        ({"weight": 1.5}, "weight must be in"),
        ({"variant": "soft"}, "unknown variant 'soft'"),
        ({"block_rows": 0}, "block_rows"),
    ],
)
def test_bad_options_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CECLLoss(**kwargs)
    if set(kwargs) <= {"temperature", "base_temperature"}:
        with pytest.raises(ValueError, match=message):
            SupConLoss(**kwargs)


# --------------------------------------------------------------------------- registry


def test_registry() -> None:
    assert set(available()) >= {"cecl", "supcon", "simclr"}
    assert isinstance(build("cecl", temperature=0.2, weight=0.3, variant="hinge"), CECLLoss)
    assert type(build("supcon")) is SupConLoss
    with pytest.raises(ValueError, match=r"unknown loss 'moco'; known: .*cecl.*simclr.*supcon"):
        build("moco")


def test_registry_is_extensible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loss_registry, "_REGISTRY", dict(loss_registry._REGISTRY))

    @losses.register("scaled_simclr")
    def _scaled(factor: float = 2.0) -> nn.Module:
        inner = SupConLoss()
        return nn.Sequential() if factor == 0 else _Scaled(inner, factor)

    assert "scaled_simclr" in available()
    features, _ = _batch(4, 2, seed=60)
    torch.testing.assert_close(build("scaled_simclr", factor=3.0)(features), 3.0 * SupConLoss()(features))
    with pytest.raises(ValueError, match="already registered"):
        losses.register("cecl")(CECLLoss)


class _Scaled(nn.Module):
    def __init__(self, inner: nn.Module, factor: float) -> None:
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.factor * self.inner(features, labels)


# --------------------------------------------------------------------------- dtypes, autocast, devices


def test_autocast_bf16_matches_float32() -> None:
    torch.manual_seed(70)
    layer = nn.Linear(16, 8)
    inputs = torch.randn(12, 2, 16)
    labels = torch.randint(0, 3, (12,))
    for loss in (CECLLoss(), CECLLoss(variant="hinge"), SupConLoss()):
        reference = loss(layer(inputs), labels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            projected = layer(inputs)
            assert projected.dtype == torch.bfloat16
            value = loss(projected, labels)
        assert value.dtype == torch.float32 and torch.isfinite(value)
        torch.testing.assert_close(value, reference, rtol=1e-2, atol=0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            value.backward()
        assert layer.weight.grad is not None and bool(torch.isfinite(layer.weight.grad).all())
        layer.zero_grad()


def test_half_precision_input_computes_in_float32() -> None:
    features, labels = _batch(6, 2, seed=71, dtype=torch.float32)
    ref = CECLLoss()(features, labels)
    value = CECLLoss()(features.detach().to(torch.bfloat16), labels)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, ref, rtol=1e-2, atol=0)


def test_masked_logsumexp_empty_rows_have_finite_gradients() -> None:
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    keep = torch.tensor([[True, False, True, False], [False] * 4, [True] * 4])
    out = masked_logsumexp(x, keep, dim=1)
    assert float(out[1].detach()) == float("-inf")
    torch.testing.assert_close(out[0], torch.logsumexp(x[0, [0, 2]], 0))
    (grad,) = torch.autograd.grad(torch.where(torch.isfinite(out), out, 0.0).sum(), x)
    assert bool(torch.isfinite(grad).all()) and bool((grad[1] == 0).all())


def test_int32_labels_and_no_parameters() -> None:
    features, labels = _batch(6, 2, seed=72)
    loss = CECLLoss()
    torch.testing.assert_close(loss(features, labels.int()), loss(features, labels), rtol=0, atol=0)
    assert list(loss.parameters()) == []
    assert "weight=0.5" in repr(loss)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    features, labels = _batch(64, 2, dim=16, classes=5, seed=73, dtype=torch.float32)
    for loss in (CECLLoss(), CECLLoss(variant="hinge", weight=0.7), SupConLoss()):
        cpu = _value_and_grad(loss, features, labels)
        x = features.detach().cuda().requires_grad_(True)
        gpu = _value_and_grad(loss, x, labels.cuda())
        torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gpu[1].cpu(), cpu[1], rtol=1e-4, atol=1e-6)
        with torch.autocast("cuda", dtype=torch.float16):
            value = loss(x.half(), labels.cuda())
        assert value.dtype == torch.float32
        torch.testing.assert_close(value.cpu(), cpu[0], rtol=1e-2, atol=0)


# --------------------------------------------------------------------------- hinge variant


def test_hinge_label_part_is_bounded_and_dominates_official() -> None:
    """Hinge: each L_a term min(0, x) <= x, so per anchor L_a^hinge = -mean min(0, x) >= 0 and
    L_a^hinge >= L_a^official = -mean x (the official L_a is unbounded below); L_b is unchanged."""
    features, labels = _batch(10, 3, classes=3, seed=80)
    # Pull same-label features together so that many official L_a terms are negative.
    features = (features + 8.0 * nn.functional.one_hot(labels, 6).double()[:, None, :]).detach()
    hinge_a, hinge_b = CECLLoss(variant="hinge").components(features, labels)
    official_a, official_b = CECLLoss().components(features, labels)
    assert bool((hinge_a >= 0).all())
    assert bool((hinge_a >= official_a - 1e-12).all())
    assert bool((official_a < 0).any()) and bool((hinge_a > 0).any()) and bool((hinge_a > official_a).any())
    torch.testing.assert_close(hinge_b, official_b, rtol=0, atol=0)
