"""Datasets as registered plug-ins: ``@register_dataset`` on a :class:`DatasetSpec` subclass.

Every module of this package is imported when the package is (``pkgutil``), so adding a dataset
family is adding one module here plus one entry under ``params.yaml: datasets``; no other file lists
families (config builds its schema from :func:`families`).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, TypeVar

from cecl.datasets.base import BiasAttribute, DatasetOptions, DatasetSpec
from cecl.datasets.errors import DataIntegrityError, DataUnavailable
from cecl.datasets.store import Split

S = TypeVar("S", bound=type[DatasetSpec])
_FAMILIES: dict[str, type[DatasetSpec]] = {}


def register_dataset(family: str):
    """Register a DatasetSpec subclass under ``family`` (its Options must fix ``family`` to it)."""

    def wrap(cls: S) -> S:
        if family in _FAMILIES:
            raise ValueError(f"dataset family {family!r} is already registered")
        cls.family = family
        _FAMILIES[family] = cls
        return cls

    return wrap


def families() -> dict[str, type[DatasetSpec]]:
    return dict(_FAMILIES)


def spec_for(name: str, options: DatasetOptions) -> DatasetSpec:
    """The spec of dataset entry ``name`` with validated ``options`` (their ``family`` picks the class)."""
    if options.family not in _FAMILIES:
        raise ValueError(f"unknown dataset family {options.family!r}; known: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[options.family](name, options)


def __getattr__(name: str) -> Any:
    """``cecl.datasets.TensorSplit``, the split a spec serves (defined in cecl/data/splits.py with torch):
    imported on first use, so that importing the plug-ins to read their options does not load torch."""
    if name == "TensorSplit":
        from cecl.data.splits import TensorSplit

        return TensorSplit
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_SKIP = {"base", "errors", "store", "sources"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _SKIP and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "BiasAttribute",
    "DataIntegrityError",
    "DataUnavailable",
    "DatasetOptions",
    "DatasetSpec",
    "Split",
    "TensorSplit",
    "families",
    "register_dataset",
    "spec_for",
]
