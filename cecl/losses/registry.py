"""Losses by name: ``build("cecl", temperature=0.1, ...)``, ``available()``.

Add a loss with the ``register`` decorator on a class or factory that accepts keyword options::

    @register("mine")
    class MyLoss(nn.Module): ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from cecl.losses.barlow_twins import BarlowTwinsLoss
from cecl.losses.cecl import CECLLoss
from cecl.losses.dcl import DCLLoss, DCLWLoss
from cecl.losses.eps_supinfonce import EpsSupInfoNCELoss
from cecl.losses.hcl import HCLLoss
from cecl.losses.negative_cosine import NegativeCosineSimilarity
from cecl.losses.npair import NPairLoss
from cecl.losses.supcon import SimCLRLoss, SupConLoss
from cecl.losses.supcon_in import SupConInLoss
from cecl.losses.triplet import BatchHardTripletLoss
from cecl.losses.vicreg import VICRegLoss

Factory = Callable[..., nn.Module]
F = TypeVar("F", bound=Factory)

_REGISTRY: dict[str, Factory] = {}


def register(name: str) -> Callable[[F], F]:
    """Decorator registering a loss class or factory under ``name`` (a duplicate name is an error)."""

    def wrap(factory: F) -> F:
        if name in _REGISTRY:
            raise ValueError(f"loss {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return wrap


def build(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate the loss registered as ``name`` with keyword options ``kwargs``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**kwargs)


def available() -> tuple[str, ...]:
    """Registered loss names, sorted."""
    return tuple(sorted(_REGISTRY))


register("cecl")(CECLLoss)
register("supcon")(SupConLoss)
register("simclr")(SimCLRLoss)
register("dcl")(DCLLoss)
register("dclw")(DCLWLoss)
register("hcl")(HCLLoss)
register("supcon_in")(SupConInLoss)
register("eps_supinfonce")(EpsSupInfoNCELoss)
register("triplet")(BatchHardTripletLoss)
register("npair")(NPairLoss)
register("barlow_twins")(BarlowTwinsLoss)
register("vicreg")(VICRegLoss)
# Not a [B, V, D] loss: forward(p [..., D], z [..., D]), a building block for SimSiam / BYOL.
register("negative_cosine")(NegativeCosineSimilarity)
