"""How many encoder passes one source image costs a method, counted on the real method.

Every method is built with a tiny encoder and takes one training forward on 4 source images; forward
hooks on each ``Encoder`` inside it count the images that went through with autograd on (trained: a
forward plus a backward of about twice its cost) and with it off (momentum targets, key encoders). So
the plan never keeps its own list of which method has a target network or how many views it trains:
it reads it off the method, as the training loop will run it (the joint protocol's extra CE view too).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch

from cecl.methods import build_method, options_schemas
from cecl.methods.joint import JointMethod
from cecl.methods.registry import MethodContext
from cecl.models import Encoder, build_backbone

BACKWARD_COST = 2.0  # a backward pass costs about twice its forward (weights' and inputs' gradients)


@dataclass(frozen=True)
class MethodPasses:
    """Per source image of a training step."""

    trained: float  # encoder forwards with autograd on (each also back-propagated)
    frozen: float  # encoder forwards without autograd (momentum targets, key encoders)
    encoders: int  # encoder copies the method holds (parameters and their memory)

    def forward_units(self, grad_cache: bool) -> float:
        """Encoder-forward equivalents per source image; gradient caching adds one forward per trained
        image (the first, graph-free pass)."""
        return self.trained * (1 + BACKWARD_COST + (1 if grad_cache else 0)) + self.frozen


@cache
def method_passes(method: str, options_json: str, views: int, joint: bool, n_classes: int) -> MethodPasses:
    """Count the encoder passes of ``method`` (options as JSON) on one step of 4 images."""
    schema = options_schemas()[method]
    options = schema.model_validate_json(options_json)

    def tiny() -> Encoder:
        return build_backbone("small_cnn", 1, (0.5,), (0.5,), {"width": 2})

    torch.manual_seed(0)
    ctx = MethodContext(make_encoder=tiny, proj_dim=8, proj_hidden=None, n_classes=n_classes, views=views)
    model = build_method(method, ctx, options)
    if joint:
        model = JointMethod(model, n_classes, 1.0)
    model.train()
    counts = {True: 0, False: 0}
    encoders = [m for m in model.modules() if isinstance(m, Encoder)]

    def count(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        counts[torch.is_grad_enabled()] += inputs[0].shape[0]

    handles = [m.register_forward_hook(count) for m in encoders]
    batch = 4
    labels = torch.arange(batch) % min(2, n_classes)
    views_in = torch.rand(batch, max(1, model.n_views), 1, 8, 8, generator=torch.Generator().manual_seed(0))
    try:
        model.training_loss(views_in, labels)
    finally:
        for handle in handles:
            handle.remove()
    return MethodPasses(trained=counts[True] / batch, frozen=counts[False] / batch, encoders=len(encoders))
