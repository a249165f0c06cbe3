"""The ``compute:`` speed options (ComputeParams) and the loop's step: validated, fingerprinted, applied.

bf16 autocast, torch.compile and fused optimisers must change how a step runs, not what it computes
(within their round-off); threads must hold while a run trains; the non-finite-loss check must still
fail with its one-line error when it reads the device flag only every N steps; feature extraction for
the probes stays batched and bounded.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from cecl import distributed
from cecl.config import ComputeParams, ConfigError, OptimizerParams
from cecl.eval import features as probe
from cecl.eval.monitor import Monitor
from cecl.pipeline import RunSetup
from cecl.train import loop
from tests.helpers import synthetic_split, tiny_params, tiny_setup

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parent.parent
NEW_KEYS = {
    "autocast": None,
    "compile": False,
    "fused_optimizer": False,
    "threads": None,
    "deterministic": False,
}


def _setup(method: str = "cecl", pretrain: dict | None = None, **compute: Any) -> RunSetup:
    """The tiny setup of ``method`` with ``compute`` options replaced (the rest of params as is)."""
    setup = tiny_setup(method, tiny_params(pretrain={"batch_size": 16, **(pretrain or {})}))
    return dataclasses.replace(setup, compute=setup.compute.model_copy(update=compute))


def _one_step(setup: RunSetup, steps: int = 1) -> tuple[loop.Training, list[torch.Tensor]]:
    """``steps`` loop steps of epoch 0 on a fixed synthetic split; the training objects and the losses."""
    training = loop.build_training(setup, CPU)
    train = synthetic_split(64, 0)
    epoch = loop.start_epoch(training, train, 0, setup.recipe.pretrain.epochs)
    return training, [loop.train_step(training, epoch, s) for s in range(steps)]


# --------------------------------------------------------------------------- parameters


def test_defaults_are_off_and_every_profile_lists_every_key() -> None:
    assert ComputeParams().model_dump() == {"channels_last": True, **NEW_KEYS}
    names = ["params.yaml", *sorted(f"profiles/{p.name}" for p in (ROOT / "profiles").glob("*.yaml"))]
    sections = {name: yaml.safe_load((ROOT / name).read_text())["compute"] for name in names}
    for name, section in sections.items():
        assert set(section) == set(ComputeParams.model_fields), name  # every key written out
        if name in ("params.yaml", "profiles/cpu.yaml"):
            assert {k: section[k] for k in NEW_KEYS} == NEW_KEYS, name  # off: the CPU default unchanged
        else:  # the GPU profiles: bf16 and fused kernels, eager, nondeterministic (the fast settings)
            gpu = {**NEW_KEYS, "autocast": "bf16", "fused_optimizer": True}
            assert {k: section[k] for k in NEW_KEYS} == gpu, name


@pytest.mark.parametrize(
    ("compute", "message"),
    [
        ({"autocast": "fp16"}, "compute.autocast: autocast must be null (float32) or bf16, got 'fp16'"),
        ({"threads": 0}, "compute.threads: threads must be null (torch's default) or an integer >= 1, got 0"),
        ({"threads": True}, "compute.threads: threads must be null"),
        ({"threads": "4"}, "compute.threads: threads must be null"),
        ({"compile": "maybe"}, "compute.compile: Input should be a valid boolean"),
        ({"fused_optimizer": 3}, "compute.fused_optimizer: Input should be a valid boolean"),
        ({"fused": True}, "compute.fused: unknown key"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_key(compute: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        tiny_params(compute=compute)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"params.yaml: {message}")


def test_good_values_parse() -> None:
    params = tiny_params(compute={"autocast": "bf16", "compile": True, "fused_optimizer": True, "threads": 2})
    assert params.compute == ComputeParams(autocast="bf16", compile=True, fused_optimizer=True, threads=2)


def test_every_option_enters_the_fingerprint(monkeypatch: pytest.MonkeyPatch) -> None:
    setup = tiny_setup("cecl")
    manifest = {"splits": {"train": {"sha256": "0" * 64}}}
    monkeypatch.setattr(type(setup.spec), "read_manifest", lambda self, folder: manifest)
    variants = [
        {},
        {"channels_last": False},
        {"autocast": "bf16"},
        {"compile": True},
        {"fused_optimizer": True},
        {"threads": 1},
        {"threads": 2},
    ]
    prints = [
        dataclasses.replace(setup, compute=setup.compute.model_copy(update=v)).fingerprint(Path("x"))
        for v in variants
    ]
    assert len(set(prints)) == len(variants)  # a run never resumes across settings


# --------------------------------------------------------------------------- autocast, compile, fused


@pytest.mark.parametrize("method", ["cecl", "supcon", "simclr", "ce"])
def test_bf16_step_gives_a_finite_float32_loss_close_to_float32(method: str) -> None:
    _, (reference,) = _one_step(_setup(method))
    training, (loss,) = _one_step(_setup(method, autocast="bf16"))
    assert training.autocast is torch.bfloat16
    # The losses switch autocast off and compute their log-sum-exps in float32 (cecl.losses), so the
    # loss is float32; its inputs went through bf16 convs (8-bit mantissa): close, not equal.
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-2)
    assert loss.item() != reference.item()  # autocast did run


@pytest.mark.slow
def test_compiled_step_equals_eager_step() -> None:
    """One compiled step (torch.compile of the training module) against eager: loss and gradients.

    The gradients, not the updated weights, are compared: Adam's first update is ~lr * sign(g), which
    turns a round-off difference in a near-zero gradient into a full 2 * lr step.
    """
    eager, (eager_loss,) = _one_step(_setup("cecl"))
    compiled, (compiled_loss,) = _one_step(_setup("cecl", compile=True))
    assert compiled_loss.item() == pytest.approx(eager_loss.item(), rel=1e-5)
    grads = dict(compiled.method.named_parameters())
    for name, p in eager.method.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[name].grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    # state-dict keys are unchanged (checkpoints and encoder.pt read the same names)
    assert list(compiled.method.state_dict()) == list(eager.method.state_dict())


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_fused_optimizer_is_used_on_cpu_and_steps_like_the_default(name: str) -> None:
    """torch 2.15 has fused Adam and SGD kernels for CPU: no fallback, same update within round-off."""
    opt = OptimizerParams(name=name, lr=0.1, cosine=False)
    torch.manual_seed(0)
    default_params = [nn.Parameter(torch.randn(5, 3)), nn.Parameter(torch.randn(3))]
    fused_params = [nn.Parameter(p.detach().clone()) for p in default_params]
    default = loop.make_optimizer(default_params, opt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning on CPU
        fused = loop.make_optimizer(fused_params, opt, fused=True)
    assert fused.defaults["fused"] is True and not default.defaults.get("fused")
    for _ in range(3):
        for params, optimizer in ((default_params, default), (fused_params, fused)):
            for p in params:
                p.grad = torch.sin(3 * p.detach()) + 0.1  # the same deterministic gradient for both
            optimizer.step()
    for a, b in zip(default_params, fused_params, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


def test_fused_optimizer_falls_back_with_a_one_line_warning_where_torch_has_no_kernel() -> None:
    """Parameters on a device without fused kernels (``meta`` here): a warning, then the default."""
    params = [nn.Parameter(torch.empty(4, device="meta"))]
    with pytest.warns(RuntimeWarning) as caught:
        optimizer = loop.make_optimizer(params, OptimizerParams(name="adam"), fused=True)
    (warning,) = caught
    assert str(warning.message) == (
        "compute.fused_optimizer: torch has no fused adam for meta torch.float32; "
        "using the default implementation"
    )
    assert not optimizer.defaults.get("fused")


def test_fused_training_trains_like_default() -> None:
    _, reference = _one_step(_setup("cecl"), steps=2)
    training, losses = _one_step(_setup("cecl", fused_optimizer=True), steps=2)
    assert training.optimizer.defaults["fused"] is True
    torch.testing.assert_close(torch.stack(losses), torch.stack(reference), rtol=1e-5, atol=0)


# --------------------------------------------------------------------------- threads


def test_threads_hold_while_a_run_trains_and_are_restored() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen: list[int] = []
        original = loop.train_step

        def spy(*args: Any) -> torch.Tensor:
            seen.append(torch.get_num_threads())
            return original(*args)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(loop, "train_step", spy)
            setup = _setup("simclr", pretrain={"epochs": 1}, threads=1)
            loop.run_pretraining(
                setup, synthetic_split(64, 0), synthetic_split(32, 1), CPU, "x", progress=False
            )
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2  # restored after the run
        with loop.compute_threads(ComputeParams()):  # null: torch's default, untouched
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- non-finite losses


def _poison(monkeypatch: pytest.MonkeyPatch, calls: set[int], value: float = float("nan")) -> None:
    """Make the training module's loss ``value`` at the given 1-based forward calls."""
    original = distributed.TrainingLoss.forward
    count = [0]

    def forward(self: nn.Module, views: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        count[0] += 1
        loss = original(self, views, labels)
        return loss * value if count[0] in calls else loss

    monkeypatch.setattr(distributed.TrainingLoss, "forward", forward)


def _pretrain(epochs: int = 2) -> tuple[Any, list[loop.EpochRecord]]:
    # 128 images at batch 32: 4 steps per epoch
    setup = tiny_setup("cecl", tiny_params(pretrain={"epochs": epochs}))
    return loop.run_pretraining(
        setup, synthetic_split(128, 0), synthetic_split(64, 1), CPU, "x", progress=False
    )


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_loss_on_cpu_is_the_one_line_error_of_its_step(
    monkeypatch: pytest.MonkeyPatch, value: float
) -> None:
    _poison(monkeypatch, {6}, value)  # epoch 2, step 2
    with pytest.raises(FloatingPointError) as err:
        _pretrain()
    assert str(err.value) == "cecl: non-finite loss at epoch 2, step 2"


def test_deferred_check_names_the_first_bad_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read every 3 steps (as CUDA every 100): the error still names the first non-finite step.

    A NaN loss at step 2 is backpropagated before the read, so the weights turn NaN and step 3's loss
    rejects its NaN features with a ValueError; that error is reported as what caused it.
    """
    monkeypatch.setitem(loop.FINITE_CHECK_STEPS, "cpu", 3)
    _poison(monkeypatch, {2})
    with pytest.raises(FloatingPointError) as err:
        _pretrain()
    assert str(err.value) == "cecl: non-finite loss at epoch 1, step 2"
    assert isinstance(err.value.__cause__, ValueError)  # the loss's own check on NaN features


def test_deferred_check_reads_at_the_end_of_the_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-finite last step of an epoch fails before the monitor, the history and the checkpoint."""
    monkeypatch.setitem(loop.FINITE_CHECK_STEPS, "cpu", 100)
    _poison(monkeypatch, {8})  # epoch 2, step 4: the epoch's last
    epochs: list[int] = []
    monkeypatch.setattr(Monitor, "__call__", lambda *a, **k: epochs.append(1) or 0.5)
    with pytest.raises(FloatingPointError, match=r"^cecl: non-finite loss at epoch 2, step 4$"):
        _pretrain()
    assert len(epochs) == 1  # epoch 1 was monitored, epoch 2 was not


def test_deferred_check_leaves_the_numbers_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    _, reference = _pretrain(epochs=1)
    monkeypatch.setitem(loop.FINITE_CHECK_STEPS, "cpu", 3)
    _, deferred = _pretrain(epochs=1)
    assert [r.history_row() for r in deferred] == [r.history_row() for r in reference]


# --------------------------------------------------------------------------- feature extraction


class _Recorder(nn.Module):
    """Mean colour per image, recording each forward's batch size and grad mode."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.batches: list[int] = []
        self.grad_enabled: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(x))
        self.grad_enabled.append(torch.is_grad_enabled())
        return self.scale * x.mean(dim=(2, 3))


def test_extract_features_batches_under_no_grad_in_eval_mode() -> None:
    encoder = _Recorder().train()
    images = synthetic_split(2500, 0).images  # 3 x 28 x 28: far below the element bound
    features = probe.extract_features(encoder, images)
    assert encoder.batches == [1024, 1024, 452]  # as before the bound
    assert encoder.grad_enabled == [False] * 3 and not features.requires_grad
    assert encoder.training  # restored
    torch.testing.assert_close(features, images.float().div(255.0).mean(dim=(2, 3)), rtol=0, atol=0)


def test_extract_features_bounds_the_input_of_one_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large images: the batch shrinks so one forward holds at most EXTRACT_ELEMENTS input elements."""
    per_image = 3 * 28 * 28
    monkeypatch.setattr(probe, "EXTRACT_ELEMENTS", 100 * per_image + 5)
    encoder = _Recorder()
    images = synthetic_split(250, 0).images
    features = probe.extract_features(encoder, images)
    assert encoder.batches == [100, 100, 50]
    torch.testing.assert_close(features, images.float().div(255.0).mean(dim=(2, 3)), rtol=0, atol=0)
    # ImageNet-sized images with the real bound: 111 per forward
    monkeypatch.setattr(probe, "EXTRACT_ELEMENTS", 2**24)
    assert 2**24 // (3 * 224 * 224) == 111
