"""Methods by name: ``@register_method(name)`` on a builder, ``build_method(name, ctx, options)``.

The built-in methods' options schemas are declared in cecl/plugin_options.py (torch-free, so that reading
a params file loads no method code) and taken from there when the method registers; a method module added
later passes its own schema (docs/extend-method.md), and the config then consults this registry.
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
_OWN_HEADS: set[str] = set()  # added methods whose projector widths are their own options


def register_method(
    name: str, options: type[Strict] | None = None, *, own_heads: bool = False
) -> Callable[[B], B]:
    """Register ``builder(ctx, options) -> Method`` under ``name``.

    A built-in method passes no ``options``: its schema is cecl/plugin_options.py's (``OWN_HEADS`` there).
    An added method passes its schema (and ``own_heads``: the builder sizes its projector from its own
    options and never reads ``ctx.proj_hidden``, so the config refuses a ``model.proj_hidden``).
    """
    if (options is None) != (name in METHOD_OPTIONS):
        where = "declares no options" if options is None else "is declared in cecl/plugin_options.py"
        raise ValueError(f"method {name!r}: its options schema {where}; a schema is declared once")

    def wrap(builder: B) -> B:
        if name in _BUILDERS:
            raise ValueError(f"method {name!r} is already registered")
        _BUILDERS[name] = builder
        _OPTIONS[name] = METHOD_OPTIONS[name] if options is None else options
        if own_heads:
            _OWN_HEADS.add(name)
        return builder

    return wrap


def available() -> tuple[str, ...]:
    """Registered method names, in registration order (the order tables list them in)."""
    return tuple(_BUILDERS)


def builds_own_heads(name: str) -> bool:
    """Whether method ``name`` ignores ``model.proj_hidden`` (see ``register_method``)."""
    return name in OWN_HEADS or name in _OWN_HEADS


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
