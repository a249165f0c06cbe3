"""The saved model, encoder.pt: written by the pretrain stage, read by the probe and transfer stages (and
the benchmarks), its format spelled here only.

It holds the encoder's payload (``cecl.models``: backbone name, options, state), ``machine`` (where it was
trained, cecl/machine.py) and, under ``pretrain.protocol: joint`` and for cross-entropy always, a
``classifier`` head ``{state_dict, epoch}`` (the method's export, ``cecl.train.loop.model_payload``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cecl.config import ComputeParams
from cecl.models import Encoder, encoder_from_payload


def save_model(path: Path, payload: Mapping[str, Any], machine: Mapping[str, str]) -> None:
    """Write encoder.pt: the method's exported payload plus the machine that trained it."""
    torch.save({**payload, "machine": machine}, path)


@dataclass(frozen=True)
class SavedModel:
    """What a pretrain stage's encoder.pt holds: the encoder and, when one was saved, its classifier head.

    encoder.pt holds a head under protocol ``joint`` (the jointly trained head of the validation-selected
    epoch) and for cross-entropy always (its own head); ``classifier_epoch`` is the pretraining epoch.
    """

    path: Path
    encoder: Encoder
    classifier: torch.nn.Linear | None
    classifier_epoch: int | None
    machine: dict[str, str] | None = None  # where it was trained (cecl/machine.py); None in older files

    def head(self) -> tuple[torch.nn.Linear, int]:
        if self.classifier is None or self.classifier_epoch is None:
            raise ValueError(
                f"{self.path} holds no classifier head (saved under pretrain.protocol joint and for ce "
                "only): re-run the matching pretrain stage"
            )
        return self.classifier, self.classifier_epoch


def load_saved_model(path: Path, device: torch.device, compute: ComputeParams | None = None) -> SavedModel:
    """Read encoder.pt once; a missing, corrupt, truncated or foreign file is a one-line error.

    ``weights_only=True`` always: a file that needs more is foreign, and no message suggests otherwise.
    """
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the matching pretrain stage first")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises many types for a truncated or foreign file
        raise ValueError(f"{path}: not a readable encoder file ({type(err).__name__})") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: not an encoder file (holds a {type(payload).__name__})")
    try:
        encoder = encoder_from_payload(payload).to(device)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    encoder.use_channels_last((compute or ComputeParams()).channels_last)
    machine = payload.get("machine") if isinstance(payload.get("machine"), dict) else None
    saved = payload.get("classifier")
    if saved is None:
        return SavedModel(path, encoder, None, None, machine)
    classifier, epoch = _classifier_of(path, saved)
    return SavedModel(path, encoder, classifier.to(device).eval(), epoch, machine)


def _classifier_of(path: Path, saved: Any) -> tuple[torch.nn.Linear, int]:
    state = saved.get("state_dict") if isinstance(saved, dict) else None
    weight = state.get("weight") if isinstance(state, dict) else None
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or set(state) != {"weight", "bias"}:
        raise ValueError(f"{path}: its classifier is not a linear layer's state_dict (weight, bias)")
    classifier = torch.nn.Linear(weight.shape[1], weight.shape[0])
    try:
        classifier.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path}: bad classifier state_dict ({str(err).splitlines()[0]})") from None
    return classifier, int(saved["epoch"])
