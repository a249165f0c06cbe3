"""Gradient caching (cecl/train/grad_cache.py, ``pretrain.micro_batch``) equals a per-chunk BatchNorm model.

The reference, written here independently of the module: forward every chunk of the batch WITH a graph
(chunks as ``Tensor.tensor_split(ceil(B / m))``), concatenate the embeddings, ``loss_from``, one backward.
Its BatchNorm normalises each chunk with that chunk's statistics, as gradient caching's does; so loss,
parameter gradients and BatchNorm running statistics must agree to float64 round-off. With the whole batch
as one chunk it must equal today's ``training_loss`` step bit for bit. Through the loop: ``model_step``,
``run_pretraining`` (BatchNorm-free encoder: then chunking must not change training at all) and two gloo
processes against one.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from cecl.methods.base import Method
from cecl.pipeline import RunSetup
from cecl.train import grad_cache, loop
from cecl.train.loop import build_training_method, run_pretraining
from tests.helpers import (
    bn_free_encoder,
    bn_free_make_encoder,
    run_bn_free_rank,
    spawn_ranks,
    synthetic_split,
    tiny_params,
    tiny_setup,
)

CPU = torch.device("cpu")
QUEUE = {"queue_size": 16}
# (method, protocol): the paper's losses, a queue method, a siamese one, SwAV (prototypes only in the
# loss), cross-entropy and the joint protocol.
CASES = (
    ("cecl", "linear_probe"),
    ("supcon", "linear_probe"),
    ("simclr", "linear_probe"),
    ("supmoco", "linear_probe"),
    ("moco_v2", "linear_probe"),
    ("byol", "linear_probe"),
    ("swav", "linear_probe"),
    ("ce", "linear_probe"),
    ("cecl", "joint"),
)
TIGHT = {"rtol": 1e-10, "atol": 1e-12}  # float64 round-off


def _method(name: str, protocol: str = "linear_probe", batch: int = 12) -> Method:
    """The loop's method for ``name`` (small_cnn width 4, with BatchNorm) in float64."""
    params = tiny_params(
        pretrain={"methods": [name], "batch_size": batch, "protocol": protocol, "joint_weight": 0.7},
        method_options={name: QUEUE} if name in ("moco_v2", "supmoco") else None,
    )
    torch.manual_seed(0)
    return build_training_method(tiny_setup(name, params)).double()


def _batch(method: Method, batch: int, seed: int = 1, size: int = 12) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    views = torch.rand(batch, method.n_views, 3, size, size, generator=g, dtype=torch.float64)
    return views, torch.randint(0, 3, (batch,), generator=g)


def _reference(method: Method, views: Tensor, labels: Tensor, micro_batch: int) -> Tensor:
    """Per-chunk forward with a graph, one loss over all embeddings, one backward; the loss."""
    chunks = math.ceil(views.shape[0] / micro_batch)
    parts = [
        method.embed(v, y)
        for v, y in zip(views.tensor_split(chunks), labels.tensor_split(chunks), strict=True)
    ]
    loss = method.loss_from(tuple(torch.cat(outputs) for outputs in zip(*parts, strict=True)), labels)
    loss.backward()
    return loss.detach()


def _grads(method: nn.Module) -> dict[str, Tensor | None]:
    return {n: None if p.grad is None else p.grad.clone() for n, p in method.named_parameters()}


def _state(method: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


def _assert_close(got: dict, want: dict, exact: bool = False, **tol: float) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        if value is None or got[key] is None:
            assert value is None and got[key] is None, key
        elif exact:
            assert torch.equal(got[key], value), key
        else:
            torch.testing.assert_close(got[key], value, **(tol or TIGHT), msg=key)


@pytest.mark.parametrize(("name", "protocol"), CASES)
@pytest.mark.parametrize("micro_batch", [4, 5])  # 10 images: chunks 4+3+3, and 5+5
def test_cached_step_equals_per_chunk_batchnorm_reference(name: str, protocol: str, micro_batch: int) -> None:
    cached = _method(name, protocol)
    reference = copy.deepcopy(cached)
    views, labels = _batch(cached, 10)
    chunks = grad_cache.chunk_count(10, micro_batch, CPU)
    assert chunks == math.ceil(10 / micro_batch)

    loss = grad_cache.backward(cached, views, labels, chunks)
    want = _reference(reference, views, labels, micro_batch)
    torch.testing.assert_close(loss, want, **TIGHT)
    grads = _grads(cached)
    _assert_close(grads, _grads(reference))
    assert any(g is not None and g.abs().sum() > 0 for g in grads.values())
    if name == "swav":  # a parameter only the loss uses: its gradient comes from pass 1's backward
        assert grads["prototypes.weight"] is not None and grads["prototypes.weight"].abs().sum() > 0
    # BatchNorm running statistics (and every other buffer) after the step: the reference's.
    assert any("running_mean" in k for k in _state(cached))
    _assert_close(_state(cached), _state(reference))
    # One optimiser step and after_step on both: queues got the step's keys once (pointer, contents).
    for method in (cached, reference):
        torch.optim.SGD(method.parameters(), lr=0.5).step()
        method.after_step()
    _assert_close(_state(cached), _state(reference))


def test_chunks_normalise_separately_so_the_gradient_differs_from_the_whole_batch() -> None:
    """The reference is not vacuous: with BatchNorm, chunking changes the gradient."""
    cached = _method("cecl")
    whole = copy.deepcopy(cached)
    views, labels = _batch(cached, 10)
    grad_cache.backward(cached, views, labels, 2)
    whole.training_loss(views, labels).backward()
    diff = max(
        float((a.grad - b.grad).abs().max())
        for a, b in zip(cached.parameters(), whole.parameters(), strict=True)
    )
    assert diff > 1e-6


@pytest.mark.parametrize(
    ("name", "protocol"), [*CASES, ("simsiam", "linear_probe"), ("nnclr", "linear_probe")]
)
def test_one_chunk_equals_todays_training_loss_step_bit_for_bit(name: str, protocol: str) -> None:
    cached = _method(name, protocol)
    today = copy.deepcopy(cached)
    views, labels = _batch(cached, 8)
    loss = grad_cache.backward(cached, views, labels, 1)
    want = today.training_loss(views, labels)
    want.backward()
    assert torch.equal(loss, want.detach())
    _assert_close(_grads(cached), _grads(today), exact=True)
    _assert_close(_state(cached), _state(today), exact=True)


@pytest.mark.parametrize("name", ["cecl", "swav"])
def test_both_passes_run_under_the_steps_autocast(name: str) -> None:
    """bf16 autocast around every chunk's forward and the loss, as the plain step has it around its forward.

    The reference opens one autocast region per chunk: inside one region autocast caches the bf16 copy
    of each weight, and the gradients of the chunks would then be summed in bf16 (0.5% apart here).
    """
    cached = build_training_method(tiny_setup(name))
    reference = copy.deepcopy(cached)
    g = torch.Generator().manual_seed(1)
    views, labels = torch.rand(12, 2, 3, 12, 12, generator=g), torch.randint(0, 3, (12,), generator=g)
    loss = grad_cache.backward(cached, views, labels, 3, autocast=torch.bfloat16)
    parts = []
    for v, y in zip(views.tensor_split(3), labels.tensor_split(3), strict=True):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            parts.append(reference.embed(v, y))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = reference.loss_from(tuple(torch.cat(outputs) for outputs in zip(*parts, strict=True)), labels)
    want.backward()
    assert parts[0][0].dtype == (torch.float32 if name == "swav" else torch.bfloat16)  # swav: compute dtype
    torch.testing.assert_close(loss, want.detach(), rtol=1e-6, atol=1e-6)
    _assert_close(_grads(cached), _grads(reference), rtol=1e-5, atol=1e-6)


class _DropoutMethod(Method):
    """BatchNorm-free encoder -> Linear -> Dropout: pass 2 must draw pass 1's dropout masks."""

    def __init__(self) -> None:
        super().__init__(bn_free_encoder(width=4))
        self.head = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5))

    def embed(self, views: Tensor, labels: Tensor) -> tuple[Tensor, ...]:
        batch, n_views = views.shape[:2]
        return (self.head(self.encoder(views.flatten(0, 1))).view(batch, n_views, -1),)

    def loss_from(self, embeddings: tuple[Tensor, ...], labels: Tensor) -> Tensor:
        z = embeddings[0].flatten(0, 1)
        torch.rand(3)  # the loss draws too: after the step the RNG is where the plain step leaves it
        return torch.logsumexp(z @ z.T, dim=1).mean()


def test_both_passes_see_the_same_randomness_and_the_rng_ends_where_the_plain_step_leaves_it() -> None:
    torch.manual_seed(0)
    cached = _DropoutMethod().double()
    reference = copy.deepcopy(cached)
    views, labels = _batch(cached, 9, size=6)
    torch.manual_seed(7)
    loss = grad_cache.backward(cached, views, labels, 3)
    after_cached = torch.get_rng_state()
    torch.manual_seed(7)
    want = _reference(reference, views, labels, 3)
    torch.testing.assert_close(loss, want, **TIGHT)
    _assert_close(_grads(cached), _grads(reference))
    assert torch.equal(after_cached, torch.get_rng_state())


def test_a_chunk_too_small_for_batchnorm_is_a_one_line_error() -> None:
    method = _method("byol")  # BatchNorm1d in the heads, each view in its own call
    views, labels = _batch(method, 5)
    with pytest.raises(ValueError, match=r"pretrain\.micro_batch: chunks of \[1, 2\] images") as err:
        grad_cache.backward(method, views, labels, grad_cache.chunk_count(5, 2, CPU))
    assert "\n" not in str(err.value)


def test_chunk_bounds_cover_the_batch_in_near_equal_contiguous_chunks() -> None:
    assert grad_cache.chunk_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert grad_cache.chunk_count(10, None, CPU) == 1
    assert grad_cache.chunk_count(10, 10, CPU) == 1
    assert grad_cache.chunk_count(10, 16, CPU) == 1
    assert grad_cache.chunk_count(10, 3, CPU) == 4


# --------------------------------------------------------------------------- through the loop


def _training(name: str, micro_batch: int | None, batch: int = 12) -> loop.Training:
    params = tiny_params(pretrain={"methods": [name], "batch_size": batch, "micro_batch": micro_batch})
    training = loop.build_training(tiny_setup(name, params), CPU)
    training.method.double()  # in place: the optimiser keeps the same parameters
    return training


@pytest.mark.parametrize("name", ["cecl", "swav"])
def test_model_step_with_micro_batch_is_the_reference_step(name: str) -> None:
    training = _training(name, micro_batch=4)
    reference = copy.deepcopy(training.method)
    views, labels = _batch(training.method, 12)
    seen: list[Tensor] = []
    loss = loop.model_step(training, views, labels, seen.append)

    optimizer = loop.make_optimizer(reference.parameters(), training.setup.recipe.pretrain.optimizer)
    want = _reference(reference, views, labels, 4)
    optimizer.step()
    reference.after_step()
    torch.testing.assert_close(loss, want, **TIGHT)
    assert len(seen) == 1 and torch.equal(seen[0].detach(), loss)
    _assert_close(_state(training.method), _state(reference))


def test_model_step_with_the_whole_batch_as_micro_batch_is_todays_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(grad_cache, "backward", None)  # must not be reached
    whole, today = _training("cecl", micro_batch=12), _training("cecl", micro_batch=None)
    views, labels = _batch(whole.method, 12)
    assert torch.equal(loop.model_step(whole, views, labels), loop.model_step(today, views, labels))
    _assert_close(_state(whole.method), _state(today.method), exact=True)


def _pretrain(name: str, micro_batch: int | None, batch: int, checkpoint: Path | None = None) -> dict:
    params = tiny_params(
        pretrain={
            "methods": [name],
            "epochs": 2,
            "batch_size": batch,
            "micro_batch": micro_batch,
            "monitor": {"kind": "knn", "k": 20},
        },
        method_options={name: QUEUE} if name in ("moco_v2", "supmoco") else None,
    )
    method, history = run_pretraining(
        tiny_setup(name, params),
        synthetic_split(128, seed=1),
        synthetic_split(64, seed=2),
        CPU,
        fingerprint="test",
        checkpoint_path=checkpoint,
        progress=False,
    )
    return {"losses": [r.train_loss for r in history], "state": _state(method)}


def test_run_pretraining_with_micro_batch_trains_like_the_whole_batch_without_batchnorm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(RunSetup, "make_encoder", bn_free_make_encoder)
    calls: list[int] = []
    real = grad_cache.backward

    def counted(*args, **kwargs) -> Tensor:
        calls.append(args[3])
        return real(*args, **kwargs)

    monkeypatch.setattr(grad_cache, "backward", counted)
    chunked = _pretrain("cecl", micro_batch=8, batch=32)
    assert calls == [4] * 8  # 2 epochs x 4 steps, each in 4 chunks
    whole = _pretrain("cecl", micro_batch=None, batch=32)
    assert len(calls) == 8
    assert chunked["losses"] == pytest.approx(whole["losses"], rel=1e-5)
    _assert_close(chunked["state"], whole["state"], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- two processes (gloo)

WORLD = 2
DISTRIBUTED = (("cecl", 31), ("swav", 32), ("supmoco", 32), ("ce", 31))  # 31: shards 16 + 15
DISTRIBUTED_MICRO_BATCH = 5  # 16 -> 4 chunks; 15 -> 4 chunks too (n from the largest shard)


def _worker(process: int, out_dir: str, port: int) -> None:
    out = Path(out_dir)
    run_bn_free_rank(
        process,
        WORLD,
        port,
        out,
        lambda: {
            name: _pretrain(name, DISTRIBUTED_MICRO_BATCH, batch, out / f"{name}-{process}.ckpt")
            for name, batch in DISTRIBUTED
        },
    )


@pytest.mark.slow
def test_two_processes_with_micro_batch_train_like_one_process_on_the_global_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RunSetup, "make_encoder", bn_free_make_encoder)
    ranks = spawn_ranks(_worker, tmp_path, WORLD)
    torch.set_num_threads(1)
    for name, batch in DISTRIBUTED:
        reference = _pretrain(name, None, batch)
        for r, got in enumerate(ranks):
            assert got[name]["losses"] == pytest.approx(reference["losses"], rel=1e-4), (name, r)
            _assert_close(got[name]["state"], reference["state"], rtol=1e-4, atol=1e-4)
