"""Backbones (encoders, a registry by params.yaml name) and projection heads."""

from cecl.models.backbones import (
    Encoder,
    available_backbones,
    backbone_options_schema,
    build_backbone,
    count_macs,
    encoder_from_payload,
    register_backbone,
)
from cecl.models.heads import ProjectionHead, head_output_dim, mlp_head

__all__ = [
    "Encoder",
    "ProjectionHead",
    "available_backbones",
    "backbone_options_schema",
    "build_backbone",
    "count_macs",
    "encoder_from_payload",
    "head_output_dim",
    "mlp_head",
    "register_backbone",
]
