"""Backbones (encoders) and projection heads."""

from cecl.models.backbones import Encoder, build_encoder, count_macs, simple_conv_net, small_cnn
from cecl.models.heads import ProjectionHead, head_output_dim, mlp_head

__all__ = [
    "Encoder",
    "ProjectionHead",
    "build_encoder",
    "count_macs",
    "head_output_dim",
    "mlp_head",
    "simple_conv_net",
    "small_cnn",
]
