"""The one pretraining loop, for every method and dataset.

Each epoch: shuffle, make the method's augmented views in batch, step the optimiser on the method's
loss, then score the encoder on the validation split with the run's monitor (cecl/eval/monitor.py:
kNN, or a linear probe on bias benchmarks, every ``pretrain.monitor.every`` epochs; the convergence
curve), and save a checkpoint (after every epoch by default; ``pretrain.checkpoint`` sets a cadence in
epochs or minutes, the last epoch always saved). All randomness of epoch ``e`` comes from generators
seeded by (seed, e), so a run resumed from the checkpoint of any saved epoch is identical to an
uninterrupted one.

Under ``pretrain.protocol: joint`` (BiasCon) the method is wrapped in :class:`JointMethod` (CE on a
linear head + ``joint_weight`` x the method's loss) and the monitor scores the jointly trained
classifier on the validation split with the evaluator (its primary metric fills the same
``monitor_val_accuracy`` column). The encoder and classifier state of the best validation
epoch (the first among ties) is kept, in the checkpoint too, and returned on the method as
``best_state`` / ``best_epoch``; :func:`model_payload` turns it into the stage's encoder.pt.

Under torchrun (``cecl.distributed``) the same loop runs in every process: each process draws
the same global batch and the same augmentations, keeps its contiguous shard, and runs the method in
``DistributedDataParallel``. Every method computes its loss on the global batch (features or
per-sample losses are gathered with gradient), so P processes train exactly like one process on the
global batch, BatchNorm aside: BatchNorm layers become SyncBatchNorm on CUDA; on CPU (gloo) their
statistics stay per process. Every process runs the monitor (each extracts its shard of the features);
only rank 0 logs and writes checkpoints.

One optimiser step is :func:`train_step` (learning rate, views, loss, finiteness, backward, step,
``after_step``) on the objects :func:`build_training` makes once per run; benchmarks/throughput.py times
this same function. ``compute:`` (``ComputeParams``) decides how it runs: bf16 autocast around the
forward, ``torch.compile`` of the training module, fused optimiser kernels, the CPU thread count. A
non-finite loss is recorded on the device and read back every ``FINITE_CHECK_STEPS`` steps and at the end
of each epoch, so an accelerator is not synchronised every step; a CPU reads it at once (nothing to save).
"""

from __future__ import annotations

import inspect
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from cecl import distributed
from cecl.config import OptimizerParams
from cecl.data.augment import BatchAugment
from cecl.data.streaming import BatchSource, TensorBatchSource
from cecl.datasets import TensorSplit
from cecl.eval.monitor import Monitor, score
from cecl.methods import Method, build_method
from cecl.methods.joint import JointMethod
from cecl.train import grad_cache
from cecl.train.checkpoint import checkpoint_due, load_checkpoint, save_checkpoint
from cecl.train.device import AUTOCAST_DTYPES, compute_threads, persist_inductor_cache
from cecl.train.schedule import learning_rate
from cecl.train.setup import RunSetup


@dataclass(frozen=True)
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float
    monitor_val_accuracy: float  # the monitor's evaluator primary metric on validation (NaN: not evaluated)
    lr: float
    seconds: float  # wall clock of the whole epoch: logged to MLflow, never written to a DVC-cached file
    monitor_seconds: float = 0.0  # of which the monitor (kNN, probe, or the joint classifier's scoring)

    def history_row(self) -> dict[str, float]:
        """The deterministic part, as history.csv stores it (so equal runs give equal bytes)."""
        return {k: v for k, v in asdict(self).items() if k not in ("seconds", "monitor_seconds")}


EpochCallback = Callable[[EpochRecord], None]


def build_monitor(
    setup: RunSetup, train: TensorSplit | BatchSource, val: TensorSplit | BatchSource
) -> Monitor:
    """The run's per-epoch monitor (``pretrain.monitor``, cecl/eval/monitor.py) in the training autocast."""
    compute = setup.compute
    return Monitor(
        setup.recipe.pretrain.monitor,
        train,
        val,
        setup.spec.evaluator(),
        setup.key.seed,
        autocast=AUTOCAST_DTYPES[compute.autocast] if compute.autocast else None,
    )


def build_training_method(setup: RunSetup) -> Method:
    """The method ``setup`` trains: the registered one, wrapped in JointMethod under protocol joint."""
    method = build_method(setup.key.method, setup.method_context(), setup.options)
    cfg = setup.recipe.pretrain
    if cfg.protocol == "joint":
        method = JointMethod(method, setup.spec.n_classes, cfg.joint_weight)
    return method


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def model_payload(method: Method, history: list[EpochRecord]) -> dict[str, Any]:
    """What the pretrain stage saves as encoder.pt (``torch.load(weights_only=True)`` reads it back).

    The encoder payload (``encoder_from_payload``); under protocol joint the encoder of the best validation
    epoch plus ``classifier: {state_dict, epoch}`` (the jointly trained head of that epoch); for
    cross-entropy under linear_probe, its own head after the last epoch, so it is also scored by it.
    """
    return method.export(history[-1].epoch if history else 0)  # the method says what it saves


def make_optimizer(
    parameters: Iterable[nn.Parameter], opt: OptimizerParams, fused: bool = False
) -> torch.optim.Optimizer:
    """The recipe's optimiser (Adam, or SGD with momentum) over ``parameters``.

    ``fused`` (``compute.fused_optimizer``): torch's fused kernel (the update of every parameter in a few
    kernels instead of a few per tensor) where torch has one for the parameters' devices and dtypes;
    elsewhere a one-line RuntimeWarning, then the default implementation.
    """
    params = list(parameters)
    kind = torch.optim.SGD if opt.name == "sgd" else torch.optim.Adam

    def build(**extra: Any) -> torch.optim.Optimizer:
        if opt.name == "sgd":
            return kind(params, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay, **extra)
        return kind(params, lr=opt.lr, weight_decay=opt.weight_decay, **extra)

    if not fused:
        return build()  # torch's default implementation (foreach on CUDA), as before the option existed
    unsupported = [pair for pair in {(p.device, p.dtype) for p in params} if not _fuses(kind, *pair)]
    if unsupported:
        where = ", ".join(sorted(f"{device.type} {dtype}" for device, dtype in unsupported))
        warnings.warn(
            f"compute.fused_optimizer: torch has no fused {opt.name} for {where}; "
            "using the default implementation",
            RuntimeWarning,
            stacklevel=2,
        )
        return build()
    return build(fused=True)


def _fuses(kind: type[torch.optim.Optimizer], device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``kind(fused=True)`` steps parameters of ``device`` and ``dtype``: one trial step on a
    scratch tensor (torch checks devices and dtypes at the first step, not at construction)."""
    try:
        scratch = torch.zeros(1, device=device, dtype=dtype, requires_grad=True)
        scratch.grad = torch.zeros_like(scratch)
        kind([scratch], lr=0.1, fused=True).step()
    except RuntimeError:  # no fused kernel for this device or dtype (or not a floating-point dtype)
        return False
    return True


def _training_module(method: Method, device: torch.device) -> nn.Module:
    """``forward(views, labels) -> loss`` of ``method``: wrapped in DDP when running under torchrun.

    ``forward_sync_buffers=False`` (torch >= 2.13's name for ``broadcast_buffers=False``, the only one older
    torch knows: :func:`no_buffer_sync` picks whichever this torch has; buffers are still
    copied from rank 0 once, at construction): DDP would otherwise copy every buffer from rank 0 before
    each forward (a collective per step; MoCo's and NNCLR's queues are 2 MB each at the default 4096 x 128,
    32 MB at ImageNet's 65536), and the buffers are equal on every rank by construction: the queues start
    from the same seeded draw and are filled with keys all-gathered in rank order (cecl/methods/queue.py,
    nnclr.py); SyncBatchNorm's running statistics come from the synchronised batch statistics; the
    momentum networks follow parameters DDP keeps equal. Only the per-process BatchNorm statistics of a
    CPU (gloo) run differ, and only rank 0's are ever used (probe, checkpoint, outputs).
    tests/test_distributed_training.py checks every rank's state, buffers included, against one process.
    """
    module = distributed.TrainingLoss(method)
    if not distributed.is_distributed():
        return module
    if device.type == "cuda":
        # In place on ``method``'s submodules; parameter and buffer names do not change.
        nn.SyncBatchNorm.convert_sync_batchnorm(method)
        return DistributedDataParallel(module, device_ids=[device.index], **no_buffer_sync())
    return DistributedDataParallel(module, **no_buffer_sync())


def no_buffer_sync() -> dict[str, bool]:
    """DDP's keyword that turns off the per-forward buffer broadcast, on this torch: ``forward_sync_buffers``
    from torch 2.13, ``broadcast_buffers`` before (the project runs on torch >= 2.11, as on lent GPU
    hosts). Feature-detected from DDP's signature rather than the version string (nightlies, backports)."""
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


# Steps between two host reads of the recorded non-finite loss, per device type. On an accelerator a read
# is a host-device sync (the host waits for every queued kernel), so CUDA reads every 100 steps and at the
# end of each epoch; on a CPU a read costs nothing, so it reads at every step, before that step's update.
FINITE_CHECK_STEPS: dict[str, int] = {"cpu": 1}
DEFAULT_FINITE_CHECK_STEPS = 100


def finite_check_steps(device: torch.device) -> int:
    """Steps between reads of the non-finite-loss record on ``device`` (see FINITE_CHECK_STEPS)."""
    return FINITE_CHECK_STEPS.get(device.type, DEFAULT_FINITE_CHECK_STEPS)


class FiniteLossGuard:
    """Non-finite losses of one epoch, noticed without a host-device sync at every step.

    ``record(loss, step)`` keeps the 1-based step of the epoch's first non-finite loss in a device tensor
    (device ops only) and reads it every ``every`` steps; ``check()`` reads it (one sync on CUDA). Either
    raises ``FloatingPointError("<method>: non-finite loss at epoch E, step S")`` naming the first bad
    step. With ``every == 1`` the loss is tested at once, so the error comes before that step's update.
    """

    def __init__(self, name: str, epoch: int, device: torch.device, every: int) -> None:
        self.name = name
        self.epoch = epoch  # 0-based
        self.every = max(1, every)
        self._first = torch.zeros((), dtype=torch.long, device=device)  # 0: none yet

    def record(self, loss: Tensor, step: int) -> None:
        """Note whether ``loss`` (of 0-based ``step``) is finite; raise if a read finds a bad step."""
        if self.every == 1:
            if not torch.isfinite(loss):
                self._fail(step + 1)
            return
        # first := step + 1 where this loss is non-finite and no earlier one was: stays on the device.
        self._first.masked_fill_(~torch.isfinite(loss.detach()) & (self._first == 0), step + 1)
        if (step + 1) % self.every == 0:
            self.check()

    def check(self, cause: BaseException | None = None) -> None:
        """Raise if a non-finite loss was recorded (``cause``: the error it led to, chained)."""
        first = int(self._first)  # the host read
        if first:
            self._fail(first, cause)

    def _fail(self, step: int, cause: BaseException | None = None) -> NoReturn:
        raise FloatingPointError(
            f"{self.name}: non-finite loss at epoch {self.epoch + 1}, step {step}"
        ) from cause


@dataclass
class Training:
    """The objects one run trains with, built once by :func:`build_training` and used by every step."""

    setup: RunSetup
    device: torch.device
    method: Method
    trainer: nn.Module  # forward(views, labels) -> loss: TrainingLoss, in DDP under torchrun, maybe compiled
    optimizer: torch.optim.Optimizer
    augment: BatchAugment
    autocast: torch.dtype | None  # compute.autocast
    finite_check_steps: int


def build_training(setup: RunSetup, device: torch.device) -> Training:
    """Seed with the run's seed, build its method on ``device``, its training module and optimiser.

    ``setup.compute`` applies here: ``compile`` compiles the training module in place
    (``nn.Module.compile``: the method's state-dict keys do not change), ``fused_optimizer`` picks the fused
    optimiser kernels, ``autocast`` is kept for :func:`model_step`.
    """
    torch.manual_seed(setup.key.seed)  # the method's initial weights
    method = build_training_method(setup).to(device)
    trainer = _training_module(method, device)
    compute = setup.compute
    if compute.compile:
        persist_inductor_cache()  # compiled kernels reused across stages (cecl/train/device.py)
        trainer.compile()
    optimizer = make_optimizer(method.parameters(), setup.recipe.pretrain.optimizer, compute.fused_optimizer)
    return Training(
        setup=setup,
        device=device,
        method=method,
        trainer=trainer,
        optimizer=optimizer,
        augment=BatchAugment(setup.recipe.augment),
        autocast=AUTOCAST_DTYPES[compute.autocast] if compute.autocast else None,
        finite_check_steps=finite_check_steps(device),
    )


@dataclass
class Epoch:
    """One epoch's batches (drawn by (seed, epoch) only: cecl/data/streaming.py), loss sum, guard."""

    index: int  # 0-based
    total: int  # the run's epochs (the learning-rate schedule's horizon)
    steps: int
    batch_size: int
    batches: Iterator[tuple[Tensor, Tensor]]  # this process's shard of each global batch, in step order
    loss_sum: Tensor  # on the device: summed without a sync, read once at the end
    guard: FiniteLossGuard
    lr: float = math.nan  # the last step's learning rate


def as_batch_source(training: Training, train: TensorSplit | BatchSource) -> BatchSource:
    """``train`` as a batch source: an in-memory split is served exactly as the loop always did."""
    if isinstance(train, TensorSplit):
        return TensorBatchSource(train, training.setup.key.seed, training.augment)
    return train


def start_epoch(training: Training, train: TensorSplit | BatchSource, index: int, total: int) -> Epoch:
    """Epoch ``index`` (0-based) of ``total`` over the training split ``train``."""
    source = as_batch_source(training, train)
    batch_size = min(training.setup.recipe.pretrain.batch_size, len(source))
    device = training.device
    method = training.method
    return Epoch(
        index=index,
        total=total,
        steps=source.steps(batch_size),  # the last incomplete batch dropped: contrastive batches stay full
        batch_size=batch_size,
        batches=iter(source.epoch_batches(index, batch_size, method.n_views, method.augments)),
        loss_sum=torch.zeros((), device=device),
        guard=FiniteLossGuard(training.setup.key.method, index, device, training.finite_check_steps),
    )


def model_step(
    training: Training, views: Tensor, labels: Tensor, on_loss: Callable[[Tensor], None] | None = None
) -> Tensor:
    """The model's part of a step on ready views: forward (under autocast if asked), ``on_loss(loss)``,
    ``zero_grad``, backward, optimiser step, ``after_step``; returns the detached loss.

    With ``pretrain.micro_batch`` below the (largest) shard, forward and backward are gradient caching's
    (cecl/train/grad_cache.py: the unwrapped method in chunks, gradients averaged under torchrun).
    """
    chunks = grad_cache.chunk_count(views.shape[0], training.setup.recipe.pretrain.micro_batch, views.device)
    if chunks > 1:
        training.optimizer.zero_grad(set_to_none=True)
        loss = grad_cache.backward(training.method, views, labels, chunks, training.autocast, on_loss)
        training.optimizer.step()
        training.method.after_step()
        return loss
    # the forward only: backward runs in the dtypes the forward chose
    with grad_cache.autocast_context(training.device, training.autocast):
        loss = training.trainer(views, labels)  # the loss of the global batch, equal in every process
    if on_loss is not None:
        on_loss(loss)
    training.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    training.optimizer.step()
    training.method.after_step()
    return loss.detach()


def train_step(training: Training, epoch: Epoch, step: int) -> Tensor:
    """One optimiser step of the loop, step ``step`` (0-based, called in order) of ``epoch``.

    Sets the scheduled learning rate, takes the epoch's next batch (this process's shard of the global
    batch's views, made by the batch source from (seed, epoch) only), runs :func:`model_step` with the
    epoch's finiteness guard, and adds the loss to ``epoch.loss_sum``; returns the detached loss.
    """
    try:
        epoch.lr = learning_rate(
            training.setup.recipe.pretrain.optimizer, epoch.index, step, epoch.steps, epoch.total
        )
        for group in training.optimizer.param_groups:
            group["lr"] = epoch.lr
        views, labels = next(epoch.batches)
        loss = model_step(training, views, labels, lambda value: epoch.guard.record(value, step))
    except Exception as err:
        # A non-finite loss recorded but not yet read (CUDA) can make a later step fail (NaN weights give
        # NaN features, which the losses reject): report the first bad step, as a per-step check would.
        epoch.guard.check(cause=err)
        raise
    epoch.loss_sum += loss
    return loss


def finish_epoch(epoch: Epoch) -> float:
    """The epoch's mean training loss, after the epoch's last finiteness read (raises if one was bad)."""
    epoch.guard.check()
    return float(epoch.loss_sum) / epoch.steps


def run_pretraining(
    setup: RunSetup,
    train: TensorSplit | BatchSource,
    val: TensorSplit,
    device: torch.device,
    fingerprint: str,
    checkpoint_path: Path | None = None,
    on_epoch: EpochCallback | None = None,
    epochs: int | None = None,
    progress: bool = True,
) -> tuple[Method, list[EpochRecord]]:
    """Pretrain ``setup``'s method on ``train`` and return the trained method and its per-epoch history.

    ``on_epoch`` is called for every epoch in order, including epochs restored from a checkpoint,
    so a resumed run logs the complete curve. ``epochs`` overrides the recipe's (the sweep).
    Under torchrun every process runs the monitor; only rank 0 checkpoints, prints and calls
    ``on_epoch``. ``compute.threads`` holds for the whole call.

    Under protocol joint the returned method is the :class:`JointMethod` after the last epoch; its
    ``best_epoch`` / ``best_state`` hold the validation-selected epoch (rank 0; None on the others).
    """
    with compute_threads(setup.compute):
        return _pretrain(setup, train, val, device, fingerprint, checkpoint_path, on_epoch, epochs, progress)


def _pretrain(
    setup: RunSetup,
    train: TensorSplit | BatchSource,
    val: TensorSplit,
    device: torch.device,
    fingerprint: str,
    checkpoint_path: Path | None,
    on_epoch: EpochCallback | None,
    epochs: int | None,
    progress: bool,
) -> tuple[Method, list[EpochRecord]]:
    """The body of :func:`run_pretraining`."""
    cfg = setup.recipe.pretrain
    total_epochs = epochs or cfg.epochs
    method_name = setup.key.method
    training = build_training(setup, device)
    monitor = build_monitor(setup, train, val)
    method, optimizer = training.method, training.optimizer
    joint = method.selects_best_epoch  # the best-epoch hook (cecl/methods/base.py)
    main_process = distributed.is_main_process()
    progress = progress and main_process
    history: list[EpochRecord] = []

    state = load_checkpoint(checkpoint_path, fingerprint)
    if state is not None:
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        history = [EpochRecord(**record) for record in state["history"]]
        if joint and "joint_best" in state:
            best = state["joint_best"]
            method.best_epoch = int(best["epoch"])
            method.best_state = {"encoder": best["encoder"], "classifier": best["classifier"]}
        if main_process:
            print(f"resumed {method_name} from {checkpoint_path} after epoch {len(history)}", flush=True)
        for record in history:
            if on_epoch is not None and main_process:
                on_epoch(record)

    last_save = time.monotonic()  # pretrain.checkpoint.every_minutes counts from here, then each save
    for epoch in range(len(history), total_epochs):
        started = time.perf_counter()
        method.train()
        current = start_epoch(training, train, epoch, total_epochs)
        bar = tqdm(
            range(current.steps),
            desc=f"{method_name} epoch {epoch + 1}/{total_epochs}",
            leave=False,
            disable=not progress,
            mininterval=2.0,
        )
        for step in bar:
            train_step(training, current, step)
        train_loss = finish_epoch(current)
        accuracy = float("nan")
        monitor_started = time.perf_counter()
        if monitor.due(epoch + 1, total_epochs):  # every process: extraction is sharded across them
            accuracy = monitor(method.encoder, method.classifier if joint else None)
        if (
            main_process and joint and accuracy > _best_so_far(method, history)
        ):  # the first among ties is kept
            method.best_epoch = epoch + 1
            method.best_state = {
                "encoder": _cpu_state(method.encoder),
                "classifier": _cpu_state(method.classifier),
            }
        record = EpochRecord(
            epoch=epoch + 1,
            train_loss=train_loss,
            monitor_val_accuracy=accuracy,
            lr=current.lr,
            seconds=time.perf_counter() - started,
            monitor_seconds=time.perf_counter() - monitor_started,
        )
        history.append(record)
        cadence = cfg.checkpoint
        due = checkpoint_due(
            epoch + 1, total_epochs, cadence.every_epochs, cadence.every_minutes, time.monotonic() - last_save
        )
        if checkpoint_path is not None and main_process and due:
            last_save = time.monotonic()
            save_checkpoint(
                checkpoint_path,
                {
                    "fingerprint": fingerprint,
                    "method": method.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "history": [asdict(r) for r in history],
                    **(
                        {"joint_best": {"epoch": method.best_epoch, **method.best_state}}
                        if joint and method.best_state is not None
                        else {}
                    ),
                },
            )
        if progress:
            scored = "joint classifier" if joint else monitor.name
            print(
                f"{method_name} epoch {record.epoch}/{total_epochs}: loss {record.train_loss:.4f}, "
                f"{scored} val acc {record.monitor_val_accuracy:.4f} "
                f"({record.seconds:.1f}s, of which {scored} {record.monitor_seconds:.1f}s)",
                flush=True,
            )
        if on_epoch is not None and main_process:
            on_epoch(record)
    return method, history


def _best_so_far(method: JointMethod, history: list[EpochRecord]) -> float:
    """The monitor value of the joint method's best epoch so far (-inf before any)."""
    return (
        -math.inf if method.best_epoch is None else score(history[method.best_epoch - 1].monitor_val_accuracy)
    )
