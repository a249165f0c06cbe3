"""Pretraining methods behind one interface (``Method``) and a registry (``register_method``).

Every module of this package is imported here, in a fixed order for the supervised reference and the
paper's main comparison first, so a new method is one module with a ``@register_method`` builder.
"""

import importlib
import pkgutil

from cecl.methods.base import Method
from cecl.methods.registry import (
    MethodContext,
    available,
    build_method,
    builds_own_heads,
    options_schemas,
    register_method,
    resolve_options,
)

# Registration order is table order: cross-entropy, the contrastive losses (CECL and its family), then
# the queue, siamese and clustering methods; any further module after them, alphabetically.
_FIRST = ("cross_entropy", "contrastive", "queue", "siamese", "nnclr", "swav")
_HELPERS = {"base", "registry", "momentum", "joint"}  # joint: a wrapper, not a method
for _name in (*_FIRST, *sorted(m.name for m in pkgutil.iter_modules(__path__))):
    if _name not in _HELPERS:
        importlib.import_module(f"{__name__}.{_name}")

__all__ = [
    "Method",
    "MethodContext",
    "available",
    "build_method",
    "builds_own_heads",
    "options_schemas",
    "register_method",
    "resolve_options",
]
