"""Backbones (encoders) and projection heads."""

from cecl.models.backbones import Encoder, build_encoder, count_macs, simple_conv_net, small_cnn
from cecl.models.heads import ProjectionHead, mlp_head

__all__ = [
    "Encoder",
    "ProjectionHead",
    "build_encoder",
    "count_macs",
    "mlp_head",
    "simple_conv_net",
    "small_cnn",
]
