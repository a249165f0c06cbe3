"""A temperature is validated by one definition and has one default per loss (issue 34).

params.yaml (each method's options schema, cecl/plugin_options.py) and the losses' and methods'
constructors must accept exactly the same temperatures, and a constructor called without one must use
its schema's default: checked here on the built objects, for every method whose schema has one.
"""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from cecl import losses
from cecl.losses._common import check_positive
from cecl.methods import MethodContext, build_method
from cecl.methods.queue import MoCoV2, SupMoCo
from cecl.models import Encoder, ProjectionHead, build_backbone
from cecl.plugin_options import METHOD_OPTIONS, MoCoOptions, SupMoCoOptions

TEMPERATURE_METHODS = [
    name for name, schema in METHOD_OPTIONS.items() if "temperature" in schema.model_fields
]
# (value, accepted): the boundary cases of "> 0 and finite"
VALUES = [
    (0.07, True),
    (1e-6, True),
    (3, True),
    (0.0, False),
    (-0.1, False),
    (math.inf, False),
    (math.nan, False),
]


def test_the_methods_with_a_temperature_are_the_expected_ones() -> None:
    assert set(TEMPERATURE_METHODS) >= {"simclr", "supcon", "cecl", "moco_v2", "supmoco", "nnclr", "swav"}


@pytest.mark.parametrize("name", TEMPERATURE_METHODS)
@pytest.mark.parametrize(("value", "accepted"), VALUES)
def test_the_schema_and_the_constructor_accept_the_same_temperatures(
    name: str, value: float, accepted: bool
) -> None:
    schema = METHOD_OPTIONS[name]
    try:
        schema.model_validate({"temperature": value})
        schema_accepts = True
    except ValidationError:
        schema_accepts = False
    try:
        check_positive("temperature", value)
        check_accepts = True
    except ValueError:
        check_accepts = False
    assert (schema_accepts, check_accepts) == (accepted, accepted)


def _encoder() -> Encoder:
    return build_backbone("small_cnn", 1, (0.5,), (0.5,), {"width": 2})


def _context() -> MethodContext:
    return MethodContext(_encoder, proj_dim=8, proj_hidden=None, n_classes=3, views=2)


def _temperatures(module: object) -> set[float]:
    """The temperatures held by a built method: its own and its loss's."""
    found = {float(v) for k, v in vars(module).items() if k == "temperature"}
    for child in module.modules() if hasattr(module, "modules") else ():
        if child is not module and hasattr(child, "temperature"):
            found.add(float(child.temperature))
    return found


@pytest.mark.parametrize("name", TEMPERATURE_METHODS)
def test_a_method_built_with_defaults_uses_its_schemas_temperature(name: str) -> None:
    method = build_method(name, _context())
    assert _temperatures(method) == {METHOD_OPTIONS[name]().temperature}


@pytest.mark.parametrize(
    ("loss", "schema_of"),
    [("supcon", "supcon"), ("simclr", "simclr"), ("cecl", "cecl"), ("dcl", "dcl"), ("hcl", "hcl"),
     ("npair", "npair"), ("eps_supinfonce", "eps_supinfonce"), ("supcon_in", "supcon_in")],
)  # fmt: skip
def test_a_loss_built_without_arguments_takes_its_schemas_default(loss: str, schema_of: str) -> None:
    built = losses.build(loss)
    assert built.temperature == METHOD_OPTIONS[schema_of]().temperature


def test_the_queue_methods_default_and_check_through_their_schema() -> None:
    encoder = _encoder()
    head = ProjectionHead(encoder.feature_dim, 8, None)
    assert MoCoV2(encoder, head).temperature == MoCoOptions().temperature
    assert SupMoCo(_encoder(), head).temperature == SupMoCoOptions().temperature
    with pytest.raises(ValueError, match="temperature must be a positive finite number"):
        MoCoV2(_encoder(), head, temperature=math.inf)
