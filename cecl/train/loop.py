"""The one pretraining loop, for every method and dataset.

Each epoch: shuffle, make the method's augmented views in batch, step the optimiser on the method's
loss, then fit a fresh linear probe on frozen features of the training split and score it on the
validation split (the convergence curve), and save a checkpoint. All randomness of epoch ``e``
comes from generators seeded by (seed, e), so a run resumed from the checkpoint of epoch e-1 is
identical to an uninterrupted one.

Under ``pretrain.protocol: joint`` (BiasCon) the method is wrapped in :class:`JointMethod` (CE on a
linear head + ``joint_weight`` x the method's loss) and, instead of an online probe, each epoch scores
the jointly trained classifier on the validation split with the evaluator (its primary metric fills the
same ``online_probe_val_accuracy`` column). The encoder and classifier state of the best validation
epoch (the first among ties) is kept, in the checkpoint too, and returned on the method as
``best_state`` / ``best_epoch``; :func:`model_payload` turns it into the stage's encoder.pt.

Under torchrun (``cecl.distributed``) the same loop runs in every process: each process draws
the same global batch and the same augmentations, keeps its contiguous shard, and runs the method in
``DistributedDataParallel``. Every method computes its loss on the global batch (features or
per-sample losses are gathered with gradient), so P processes train exactly like one process on the
global batch, BatchNorm aside: BatchNorm layers become SyncBatchNorm on CUDA; on CPU (gloo) their
statistics stay per process. Only rank 0 runs the online probe, logs and writes checkpoints.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from cecl import distributed
from cecl.data.augment import BatchAugment, make_views
from cecl.datasets import TensorSplit
from cecl.methods import Method, build_method
from cecl.methods.cross_entropy import CrossEntropyMethod
from cecl.methods.joint import JointMethod
from cecl.pipeline import RunSetup, classifier_metrics
from cecl.train.checkpoint import load_checkpoint, save_checkpoint
from cecl.train.probe import extract_features, fit_linear_probe, logits_of
from cecl.train.schedule import learning_rate


@dataclass(frozen=True)
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float
    online_probe_val_accuracy: float  # the evaluator's primary metric on the validation split
    lr: float
    seconds: float  # wall clock of the whole epoch: logged to MLflow, never written to a DVC-cached file
    probe_seconds: float = 0.0  # of which the online probe (or the joint classifier's scoring)

    def history_row(self) -> dict[str, float]:
        """The deterministic part, as history.csv stores it (so equal runs give equal bytes)."""
        return {k: v for k, v in asdict(self).items() if k not in ("seconds", "probe_seconds")}


EpochCallback = Callable[[EpochRecord], None]


def _epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch)


def online_probe_accuracy(
    method: Method, setup: RunSetup, train: TensorSplit, val: TensorSplit, seed: int
) -> float:
    """The evaluator's primary metric on validation of a linear probe fitted on frozen training features.

    ``online_probe.train_size`` fits it on a fixed seeded subset of the training split (the same in
    every epoch), which bounds the per-epoch cost on large datasets.
    """
    opts = setup.recipe.pretrain.online_probe
    evaluator = setup.spec.evaluator()
    if opts.train_size is not None and opts.train_size < len(train):
        keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(setup.key.seed))
        train = train.subset(keep[: opts.train_size].sort().values.to(train.targets.device))
    probe = fit_linear_probe(
        extract_features(method.encoder, train.images),
        train.targets,
        n_classes=setup.spec.n_classes,
        epochs=opts.epochs,
        lr=opts.lr,
        batch_size=opts.batch_size,
        seed=seed,
    )
    metrics = evaluator(logits_of(probe, extract_features(method.encoder, val.images)), val.targets, val.bias)
    return metrics[evaluator.primary]


def joint_val_accuracy(method: JointMethod, setup: RunSetup, val: TensorSplit) -> float:
    """Protocol joint: the evaluator's primary metric of the jointly trained classifier on validation."""
    evaluator = setup.spec.evaluator()
    return classifier_metrics(method.encoder, method.classifier, val, evaluator)[evaluator.primary]


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
    payload = method.encoder.payload()
    if isinstance(method, JointMethod):
        if method.best_state is None:
            raise ValueError("joint training kept no best epoch (no epoch was scored on validation)")
        payload["state_dict"] = method.best_state["encoder"]
        payload["classifier"] = {"state_dict": method.best_state["classifier"], "epoch": method.best_epoch}
    elif isinstance(method, CrossEntropyMethod):
        payload["classifier"] = {"state_dict": _cpu_state(method.classifier), "epoch": history[-1].epoch}
    return payload


def _make_optimizer(method: Method, setup: RunSetup) -> torch.optim.Optimizer:
    opt = setup.recipe.pretrain.optimizer
    if opt.name == "sgd":
        return torch.optim.SGD(
            method.parameters(), lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay
        )
    return torch.optim.Adam(method.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)


def _training_module(method: Method, device: torch.device) -> nn.Module:
    """``forward(views, labels) -> loss`` of ``method``: wrapped in DDP when running under torchrun."""
    module = distributed.TrainingLoss(method)
    if not distributed.is_distributed():
        return module
    if device.type == "cuda":
        # In place on ``method``'s submodules; parameter and buffer names do not change.
        nn.SyncBatchNorm.convert_sync_batchnorm(method)
        return DistributedDataParallel(module, device_ids=[device.index])
    return DistributedDataParallel(module)


def run_pretraining(
    setup: RunSetup,
    train: TensorSplit,
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
    Under torchrun only rank 0 probes, checkpoints, prints and calls ``on_epoch``; the other ranks'
    records carry NaN as online-probe accuracy.

    Under protocol joint the returned method is the :class:`JointMethod` after the last epoch; its
    ``best_epoch`` / ``best_state`` hold the validation-selected epoch (rank 0; None on the others).
    """
    cfg = setup.recipe.pretrain
    total_epochs = epochs or cfg.epochs
    seed = setup.key.seed
    method_name = setup.key.method
    torch.manual_seed(seed)
    method = build_training_method(setup).to(device)
    joint = isinstance(method, JointMethod)
    trainer = _training_module(method, device)
    main_process = distributed.is_main_process()
    progress = progress and main_process
    optimizer = _make_optimizer(method, setup)
    augment = BatchAugment(setup.recipe.augment)
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

    batch_size = min(cfg.batch_size, len(train))
    steps = len(train) // batch_size  # drop the last incomplete batch: contrastive batches stay full
    for epoch in range(len(history), total_epochs):
        started = time.perf_counter()
        method.train()
        generator = _epoch_generator(seed, epoch, device)
        order = torch.randperm(len(train), generator=generator, device=device)
        loss_sum = torch.zeros((), device=device)
        bar = tqdm(
            range(steps),
            desc=f"{method_name} epoch {epoch + 1}/{total_epochs}",
            leave=False,
            disable=not progress,
            mininterval=2.0,
        )
        for step in bar:
            lr = learning_rate(cfg.optimizer, epoch, step, steps, total_epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = order[step * batch_size : (step + 1) * batch_size]
            views = make_views(
                train.images[idx], method.n_views, augment if method.augments else None, generator
            )
            # The whole global batch is augmented in every process (same generator), then sharded.
            views, labels = distributed.split_batch([views, train.targets[idx]])
            loss = trainer(views, labels)  # the loss of the global batch, equal in every process
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{method_name}: non-finite loss at epoch {epoch + 1}, step {step + 1}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            method.after_step()
            loss_sum += loss.detach()
        accuracy = float("nan")
        probe_started = time.perf_counter()
        if main_process and joint:
            accuracy = joint_val_accuracy(method, setup, val)
            if method.best_epoch is None or _score(accuracy) > _score(
                history[method.best_epoch - 1].online_probe_val_accuracy
            ):  # strictly better: the first epoch among ties is kept
                method.best_epoch = epoch + 1
                method.best_state = {
                    "encoder": _cpu_state(method.encoder),
                    "classifier": _cpu_state(method.classifier),
                }
        elif main_process:
            accuracy = online_probe_accuracy(method, setup, train, val, seed + epoch)
        record = EpochRecord(
            epoch=epoch + 1,
            train_loss=float(loss_sum) / steps,
            online_probe_val_accuracy=accuracy,
            lr=lr,
            seconds=time.perf_counter() - started,
            probe_seconds=time.perf_counter() - probe_started,
        )
        history.append(record)
        if checkpoint_path is not None and main_process:
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
            scored = "joint classifier" if joint else "online probe"
            print(
                f"{method_name} epoch {record.epoch}/{total_epochs}: loss {record.train_loss:.4f}, "
                f"{scored} val acc {record.online_probe_val_accuracy:.4f} "
                f"({record.seconds:.1f}s, of which {scored} {record.probe_seconds:.1f}s)",
                flush=True,
            )
        if on_epoch is not None and main_process:
            on_epoch(record)
    return method, history


def _score(value: float) -> float:
    """Validation value for selecting the best epoch: NaN (an undefined metric) is never better."""
    return -math.inf if math.isnan(value) else value
