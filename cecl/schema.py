"""The base of every parameter schema: unknown keys are errors, values are frozen, floats are finite.

Plug-ins (datasets, backbones, methods) declare their option schemas on this base beside their code,
and cecl/config.py assembles the full params.yaml schema from the registries, so nothing is listed
twice and a plug-in never imports the config module.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Unknown keys are errors; NaN and infinities are rejected wherever a float is expected."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
