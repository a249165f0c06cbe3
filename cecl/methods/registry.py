"""Methods by name: ``@register_method(name)`` on a builder, ``build_method(name, ctx, options)``.

Each method's options schema is declared in cecl/plugin_options.py (torch-free, so that reading a params
file loads no method code) and taken from there when the method registers: cecl/config.py validates
``method_options`` with the same table, so a schema is written once.
A builder receives a :class:`MethodContext` (how to make the encoder, head sizes, classes, views), never
the params file, so methods do not depend on the config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from cecl.methods.base import Method
from cecl.models import Encoder, ProjectionHead
from cecl.plugin_options import METHOD_OPTIONS, OWN_HEADS
from cecl.schema import Strict


@dataclass(frozen=True)
class MethodContext:
    """What every method builder may use: a fresh encoder, head sizes, number of classes and views."""

    make_encoder: Callable[[], Encoder]
    proj_dim: int
    proj_hidden: int | None
    n_classes: int
    views: int

    def projection_head(self, encoder: Encoder) -> ProjectionHead:
        return ProjectionHead(encoder.feature_dim, self.proj_dim, self.proj_hidden)


Builder = Callable[[MethodContext, Any], Method]
B = TypeVar("B", bound=Builder)
_BUILDERS: dict[str, Builder] = {}
_OPTIONS: dict[str, type[Strict]] = {}


def register_method(name: str) -> Callable[[B], B]:
    """Register ``builder(ctx, options) -> Method`` under ``name``; its options schema is the one
    cecl/plugin_options.py declares for ``name`` (``OWN_HEADS``: the builder sizes its projector from its
    own options and never reads ``ctx.proj_hidden``)."""
    if name not in METHOD_OPTIONS:
        raise ValueError(f"method {name!r} has no options schema in cecl/plugin_options.py METHOD_OPTIONS")

    def wrap(builder: B) -> B:
        if name in _BUILDERS:
            raise ValueError(f"method {name!r} is already registered")
        _BUILDERS[name] = builder
        _OPTIONS[name] = METHOD_OPTIONS[name]
        return builder

    return wrap


def available() -> tuple[str, ...]:
    """Registered method names, in registration order (the order tables list them in)."""
    return tuple(_BUILDERS)


def builds_own_heads(name: str) -> bool:
    """Whether method ``name`` ignores ``model.proj_hidden`` (see ``register_method``)."""
    return name in OWN_HEADS


def options_schemas() -> dict[str, type[Strict]]:
    return dict(_OPTIONS)


def resolve_options(
    name: str, options: BaseModel | Mapping[str, Any] | None, overrides: Mapping | None = None
):
    """The method's validated options, with sweep ``overrides`` applied (a bad value: one-line ValueError)."""
    if name not in _OPTIONS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(_BUILDERS)}")
    base = options.model_dump() if isinstance(options, BaseModel) else dict(options or {})
    try:
        return _OPTIONS[name].model_validate({**base, **(overrides or {})})
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"method_options.{name}.{key}: {first['msg']}") from None


def build_method(
    name: str, ctx: MethodContext, options: BaseModel | Mapping[str, Any] | None = None, overrides=None
) -> Method:
    """Build method ``name``; ``options`` (validated by its schema) default to the schema's defaults."""
    resolved = resolve_options(name, options, overrides)  # an unknown name fails here, naming the known ones
    return _BUILDERS[name](ctx, resolved)
