"""Losses by name: ``build("cecl", temperature=0.1, ...)``, ``available()``.

Add a loss with the ``register`` decorator on a class or factory that accepts keyword options::

    @register("mine")
    class MyLoss(nn.Module): ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from cecl.losses.cecl import CECLLoss
from cecl.losses.supcon import SimCLRLoss, SupConLoss

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
