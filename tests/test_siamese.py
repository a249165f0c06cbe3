"""SimSiam, BYOL (cecl.methods.siamese), NNCLR (cecl.methods.nnclr) and the momentum-target machinery
(cecl.methods.momentum): losses against lightly 1.6.0 (test-only dependency) written as lightly's examples
write them, values and gradients in float64; the momentum formula; NNCLR's support set (FIFO of the last K
projections, true nearest neighbour, multi-step agreement with lightly's NNMemoryBankModule); training;
bad options; autocast. The two-process exactness test of these methods is in tests/test_distributed.py."""

from __future__ import annotations

import math
from collections import deque

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cecl.losses.negative_cosine import negative_cosine_similarity
from cecl.methods.momentum import check_momentum, momentum_copy, momentum_update
from cecl.methods.nnclr import NNCLR, nearest_neighbours, nnclr_loss
from cecl.methods.queue import MoCoV2, SupMoCo
from cecl.methods.siamese import BYOL, SimSiam, byol_loss, simsiam_loss
from cecl.models import Encoder, ProjectionHead
from tests.helpers import adam_steps, bn_free_encoder

try:  # test-only dependency, installed with `pip install --no-deps lightly==1.6.0` (see requirements/dev.txt)
    from lightly.loss import NegativeCosineSimilarity, NTXentLoss
    from lightly.models.modules import NNMemoryBankModule
except ImportError:  # pragma: no cover
    NegativeCosineSimilarity = None
needs_lightly = pytest.mark.skipif(NegativeCosineSimilarity is None, reason="lightly is not installed")

METHODS = (SimSiam, BYOL, NNCLR)
SMALL = {
    SimSiam: {"proj_dim": 8, "pred_hidden": 4},
    BYOL: {"proj_dim": 8, "proj_hidden": 16, "pred_hidden": 16},
    NNCLR: {"proj_dim": 8, "proj_hidden": 16, "pred_hidden": 16, "queue_size": 12},
}
RTOL, ATOL = 1e-10, 1e-12


def _tiny_encoder() -> Encoder:
    """BatchNorm-free conv encoder: 4 features."""
    return bn_free_encoder(in_channels=3, width=4)


def _method(cls: type, seed: int = 0, **kw: object) -> nn.Module:
    torch.manual_seed(seed)
    return cls(_tiny_encoder(), **{**SMALL[cls], **kw})


def _views(batch: int = 6, seed: int = 1, dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.rand(batch, 2, 3, 5, 5, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _tensors(*shape: int, count: int, seed: int) -> list[Tensor]:
    """``count`` float64 leaf tensors of ``shape`` (unnormalised, requiring gradients)."""
    g = torch.Generator().manual_seed(seed)
    return [
        (2.0 * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_() for _ in range(count)
    ]


def _grads(loss: Tensor, inputs: list[Tensor]) -> list[Tensor]:
    grads = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads, strict=True)]


def _assert_close(a: Tensor, b: Tensor, rtol: float = RTOL, atol: float = ATOL) -> None:
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- SimSiam / BYOL losses


@needs_lightly
def test_simsiam_loss_matches_lightly_values_and_gradients() -> None:
    p1, p2, z1, z2 = inputs = _tensors(7, 5, count=4, seed=0)
    ours = simsiam_loss(p1, p2, z1, z2).mean()
    criterion = NegativeCosineSimilarity()  # lightly's SimSiam example: z = z.detach() in forward
    theirs = 0.5 * (criterion(z1.detach(), p2) + criterion(z2.detach(), p1))
    _assert_close(ours, theirs)
    for a, b in zip(_grads(ours, inputs), _grads(theirs, inputs), strict=True):
        _assert_close(a, b)
    cecl_form = 0.5 * (negative_cosine_similarity(p1, z2) + negative_cosine_similarity(p2, z1))
    _assert_close(ours, cecl_form)
    assert all(float(g.abs().max()) == 0 for g in _grads(ours, inputs)[2:])  # stop-gradient on z


@needs_lightly
def test_byol_loss_is_the_summed_two_minus_two_cos_and_four_plus_four_times_lightly() -> None:
    p1, p2, t1, t2 = inputs = _tensors(7, 5, count=4, seed=1)
    ours = byol_loss(p1, p2, t1, t2).mean()
    criterion = NegativeCosineSimilarity()  # lightly's BYOL example: targets computed under no_grad
    lightly = 0.5 * (criterion(p1, t2.detach()) + criterion(p2, t1.detach()))
    _assert_close(ours, 4.0 + 4.0 * lightly)
    for a, b in zip(_grads(ours, inputs), _grads(lightly, inputs), strict=True):
        _assert_close(a, 4.0 * b)
    # Paper, Eq. 2: ||p/|p| - z/|z|||^2 = 2 - 2 cos, summed over both directions, mean over the batch.
    unit = lambda x: x / x.norm(dim=1, keepdim=True)  # noqa: E731
    paper = ((unit(p1) - unit(t2)) ** 2).sum(1) + ((unit(p2) - unit(t1)) ** 2).sum(1)
    _assert_close(ours, paper.mean())


@needs_lightly
@pytest.mark.parametrize("cls", [SimSiam, BYOL])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_siamese_method_loss_equals_lightly_formula_on_its_own_networks(cls: type, batch_norm: bool) -> None:
    method = _method(cls, batch_norm=batch_norm).double()
    with torch.no_grad():  # make the BYOL target differ from the online networks
        for p in method.parameters():
            p.add_(0.1 * torch.randn_like(p))
    views = _views()
    params = [p for p in method.parameters() if p.requires_grad]
    ours = method.training_loss(views, torch.zeros(6, dtype=torch.long))
    x1, x2 = views[:, 0], views[:, 1]
    criterion = NegativeCosineSimilarity()
    z1, z2 = method.projector(method.encoder(x1)), method.projector(method.encoder(x2))
    p1, p2 = method.predictor(z1), method.predictor(z2)
    if cls is SimSiam:
        reference = 0.5 * (criterion(p1, z2.detach()) + criterion(p2, z1.detach()))
    else:
        with torch.no_grad():
            t1 = method.target_projector(method.target_encoder(x1))
            t2 = method.target_projector(method.target_encoder(x2))
        assert not torch.allclose(t1, z1)
        reference = 4.0 + 4.0 * 0.5 * (criterion(p1, t2) + criterion(p2, t1))
    _assert_close(ours, reference)
    for a, b in zip(_grads(ours, params), _grads(reference, params), strict=True):
        _assert_close(a, b, rtol=1e-9, atol=1e-11)


# --------------------------------------------------------------------------- momentum targets


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.99, 1.0])
def test_momentum_module_formula_and_frozen_copies(momentum: float) -> None:
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()
    target = momentum_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in online.parameters())
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
        target[1].running_mean.fill_(3.0)
    before_q = [p.clone() for p in online.parameters()]
    before_k = [p.clone() for p in target.parameters()]
    momentum_update(online, target, momentum)
    for q, k, new in zip(before_q, before_k, target.parameters(), strict=True):
        _assert_close(new, momentum * k + (1 - momentum) * q, rtol=0, atol=1e-14)
    assert torch.equal(
        target[1].running_mean, torch.full((4,), 3.0, dtype=torch.float64)
    )  # buffers untouched
    assert all(torch.equal(a, b) for a, b in zip(before_q, online.parameters(), strict=True))


@pytest.mark.parametrize("momentum", [0.9, 0.99])
def test_byol_after_step_is_the_ema_of_encoder_and_projector(momentum: float) -> None:
    method = _method(BYOL, momentum=momentum).double()
    with torch.no_grad():
        for p in method.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    online = [p.clone() for p in (*method.encoder.parameters(), *method.projector.parameters())]
    target = [p.clone() for p in (*method.target_encoder.parameters(), *method.target_projector.parameters())]
    predictor = [p.clone() for p in method.predictor.parameters()]
    method.after_step()
    updated = [*method.target_encoder.parameters(), *method.target_projector.parameters()]
    for q, k, new in zip(online, target, updated, strict=True):
        _assert_close(new, momentum * k + (1 - momentum) * q, rtol=0, atol=1e-14)
        assert not new.requires_grad
    assert all(torch.equal(a, b) for a, b in zip(predictor, method.predictor.parameters(), strict=True))


def test_byol_target_gets_no_gradient_and_the_optimiser_leaves_it_alone() -> None:
    method = _method(BYOL)
    target = [p.clone() for p in method.target_encoder.parameters()]
    optimizer = torch.optim.Adam(method.parameters(), lr=0.1)
    method.training_loss(_views(dtype=torch.float32), torch.zeros(6, dtype=torch.long)).backward()
    assert all(
        p.grad is None for p in (*method.target_encoder.parameters(), *method.target_projector.parameters())
    )
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(target, method.target_encoder.parameters(), strict=True))


def test_queue_methods_keep_defaults_and_state_dict_keys_after_the_momentum_refactor() -> None:
    torch.manual_seed(0)
    moco = MoCoV2(_tiny_encoder(), ProjectionHead(4, 3, 8))
    supmoco = SupMoCo(_tiny_encoder(), ProjectionHead(4, 3, 8))
    assert (moco.temperature, supmoco.temperature) == (0.2, 0.1)
    assert SupMoCo(_tiny_encoder(), ProjectionHead(4, 3, 8), temperature=0.3).temperature == 0.3
    keys = {k.split(".")[0] for k in supmoco.state_dict()}
    assert keys == {"encoder", "head", "key_encoder", "key_head", "queue", "queue_ptr", "queue_labels"}
    assert all(
        not p.requires_grad for p in (*supmoco.key_encoder.parameters(), *supmoco.key_head.parameters())
    )
    for bad in (-0.1, 1.5, float("nan"), "x"):
        with pytest.raises(ValueError, match="momentum"):
            check_momentum(bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- NNCLR


def test_nearest_neighbour_lookup_matches_a_brute_force_loop() -> None:
    g = torch.Generator().manual_seed(2)
    z = torch.randn(9, 4, generator=g, dtype=torch.float64)
    support = 3.0 * torch.randn(13, 4, generator=g, dtype=torch.float64)  # unnormalised on purpose
    got = nearest_neighbours(z, support)
    for i in range(z.shape[0]):
        best, best_cos = -1, -math.inf
        for j in range(support.shape[0]):
            dot = sum(float(z[i, d]) * float(support[j, d]) for d in range(4))
            cos = dot / (float(z[i].norm()) * float(support[j].norm()))
            if cos > best_cos:
                best, best_cos = j, cos
        assert torch.equal(got[i], support[best]), i
    assert not got.requires_grad


@needs_lightly
def test_nnclr_loss_matches_lightly_nn_memory_bank_and_ntxent() -> None:
    z1, z2, p1, p2 = _tensors(6, 5, count=4, seed=3)
    g = torch.Generator().manual_seed(4)
    support = F.normalize(torch.randn(10, 5, generator=g, dtype=torch.float64), dim=1)
    ours = nnclr_loss(nearest_neighbours(z1, support), nearest_neighbours(z2, support), p1, p2, 0.1)
    bank = NNMemoryBankModule(size=(10, 5)).double()
    bank.bank.copy_(support)
    bank.bank_ptr.zero_()
    criterion = NTXentLoss(temperature=0.1)
    nn1 = bank(z1.detach(), update=False)
    nn2 = bank(z2.detach(), update=True)
    theirs = 0.5 * (criterion(nn1, p2) + criterion(nn2, p1))
    _assert_close(ours, theirs)
    inputs = [z1, z2, p1, p2]
    for a, b in zip(_grads(ours, inputs), _grads(theirs, inputs), strict=True):
        _assert_close(a, b, rtol=1e-9, atol=1e-11)
    assert float(_grads(ours, inputs)[2].abs().max()) > 0


@needs_lightly
def test_nnclr_method_follows_lightly_over_steps_lookup_before_update_second_view_enqueued() -> None:
    """K = 12 is a multiple of the batch (4), where lightly's bank is a FIFO too; 5 steps wrap around."""
    method = _method(NNCLR, temperature=0.2).double()
    method.support_set.copy_(F.normalize(method.support_set, dim=1))  # unit norm in float64, not float32
    bank = NNMemoryBankModule(size=(12, 8)).double()
    bank.bank.copy_(method.support_set)
    bank.bank_ptr.zero_()
    criterion = NTXentLoss(temperature=0.2)
    for step in range(5):
        views = _views(batch=4, seed=10 + step)
        labels = torch.zeros(4, dtype=torch.long)
        ours = method.training_loss(views, labels)
        z1, z2 = (method.projector(method.encoder(views[:, v])) for v in (0, 1))
        p1, p2 = method.predictor(z1), method.predictor(z2)
        nn1 = bank(z1.detach(), update=False)
        nn2 = bank(z2.detach(), update=True)
        theirs = 0.5 * (criterion(nn1, p2) + criterion(nn2, p1))
        _assert_close(ours, theirs)
        method.after_step()
        _assert_close(method.support_set, F.normalize(bank.bank, dim=1))
        assert int(method.support_ptr) == int(bank.bank_ptr) == (4 * (step + 1)) % 12


def test_nnclr_support_set_is_a_fifo_of_the_last_k_projections() -> None:
    method = _method(NNCLR, queue_size=5)
    size = method.queue_size
    model: deque = deque((row.clone() for row in method.support_set), maxlen=size)
    g = torch.Generator().manual_seed(5)
    for count in (2, 3, 1, 4, 7, 5, 11, 1):
        projections = torch.randn(count, 8, generator=g)
        method.enqueue(projections)
        model.extend(F.normalize(projections, dim=1))
        ptr = int(method.support_ptr)
        oldest_first = torch.stack([method.support_set[(ptr + i) % size] for i in range(size)])
        assert torch.equal(oldest_first, torch.stack(list(model)))


def test_nnclr_enqueues_the_normalised_second_view_after_the_step_and_not_in_eval() -> None:
    method = _method(NNCLR, queue_size=8).double()
    views = _views(batch=3)
    before = method.support_set.clone()
    method.training_loss(views, torch.zeros(3, dtype=torch.long)).backward()
    assert torch.equal(method.support_set, before)  # looked up, not yet written
    method.after_step()
    with torch.no_grad():
        z2 = F.normalize(method.projector(method.encoder(views[:, 1])), dim=1)
    _assert_close(method.support_set[:3], z2)
    assert torch.equal(method.support_set[3:], before[3:]) and int(method.support_ptr) == 3
    method.eval()
    with torch.no_grad():
        method.training_loss(views, torch.zeros(3, dtype=torch.long))
    method.after_step()
    assert int(method.support_ptr) == 3
    assert {k for k in method.state_dict() if k.startswith("support")} == {"support_set", "support_ptr"}


# --------------------------------------------------------------------------- training, options, autocast


def _colour_batch(seed: int = 6, batch: int = 16) -> Tensor:
    """Coloured images, two noisy views each (a fixed tiny batch)."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(batch, 1, 3, 1, 1, generator=g)
    return (colours + 0.05 * torch.randn(batch, 2, 3, 5, 5, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("cls", METHODS)
def test_loss_falls_under_a_few_adam_steps(cls: type) -> None:
    extra = {"queue_size": 16} if cls is NNCLR else {}
    method = _method(cls, **extra)
    views, labels = _colour_batch(), torch.zeros(16, dtype=torch.long)
    if cls is NNCLR:  # fill the support set with real projections first, no optimisation
        with torch.no_grad():
            method.training_loss(views, labels)
        method.after_step()
    history = adam_steps(method, [(views, labels)] * 15, lr=0.01)
    assert all(math.isfinite(v) for v in history)
    assert sum(history[-3:]) / 3 < sum(history[:3]) / 3 - 0.05 * max(1.0, abs(history[0])), history


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (SimSiam, {"proj_dim": 0}, "proj_dim"),
        (SimSiam, {"pred_hidden": 2.5}, "pred_hidden"),
        (SimSiam, {"batch_norm": "yes"}, "batch_norm"),
        (BYOL, {"momentum": 1.5}, "momentum"),
        (BYOL, {"momentum": -0.1}, "momentum"),
        (BYOL, {"proj_hidden": True}, "proj_hidden"),
        (BYOL, {"pred_hidden": 0}, "pred_hidden"),
        (NNCLR, {"temperature": 0.0}, "temperature"),
        (NNCLR, {"queue_size": 0}, "queue_size"),
        (NNCLR, {"queue_size": True}, "queue_size"),
        (NNCLR, {"proj_dim": -1}, "proj_dim"),
    ],
)
def test_bad_options_are_one_line_value_errors(cls: type, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        _method(cls, **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("cls", METHODS)
@pytest.mark.parametrize("shape", [(4, 1, 3, 5, 5), (4, 3, 3, 5, 5), (4, 3, 5, 5)])
def test_anything_but_two_views_is_a_value_error(cls: type, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="exactly 2 views"):
        _method(cls).training_loss(torch.rand(shape), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("cls", METHODS)
def test_bf16_autocast_gives_a_finite_float32_loss(cls: type) -> None:
    method = _method(cls)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = method.training_loss(_colour_batch(batch=8), torch.zeros(8, dtype=torch.long))
    assert loss.dtype == torch.float32 and math.isfinite(float(loss.detach()))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in method.parameters() if p.grad is not None)
