"""Pretraining methods behind one interface (``Method``) and a registry (``build_method``)."""

from cecl.methods.base import Method
from cecl.methods.registry import available, build_method, method_options, register

__all__ = ["Method", "available", "build_method", "method_options", "register"]
