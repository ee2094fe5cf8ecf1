"""Attention mechanisms: one file per mechanism, all registered by name.

Importing this package registers every mechanism (see :mod:`visattn.registry`).
"""

from visattn.layers.base import SpatialAttention, TokenAdapter
from visattn.layers.conv import ConvMixer
from visattn.layers.efficient import EfficientAttention
from visattn.layers.external import ExternalAttention
from visattn.layers.lambda_layer import LambdaLayer
from visattn.layers.local import LocalAttention
from visattn.layers.mhsa import MultiHeadSelfAttention
from visattn.layers.relpos import RelativePositionAttention
from visattn.layers.slide import SlideAttention
from visattn.layers.sra import SpatialReductionAttention
from visattn.layers.swin import WindowAttention

__all__ = [
    "SpatialAttention",
    "TokenAdapter",
    "ConvMixer",
    "EfficientAttention",
    "ExternalAttention",
    "LambdaLayer",
    "LocalAttention",
    "MultiHeadSelfAttention",
    "RelativePositionAttention",
    "SlideAttention",
    "SpatialReductionAttention",
    "WindowAttention",
]
