"""Dense-prediction heads built from the mechanisms.

:class:`ExternalAttentionHead` is the external-attention module of EANet, the segmentation
network of Guo et al., "Beyond Self-attention: External Attention using Two Linear Layers for
Visual Tasks" (arXiv 2105.02358)::

    y = ReLU(x + BN(W_2 EA(W_1 x + b_1)))

with W_1, W_2 1x1 convolutions (W_2 without bias) and EA the single-head external attention
with double normalisation (softmax over the n positions per memory unit, then L1 over the S
units per position). Implemented: the module only (the ResNet/FCN trunk and the
classifier around it in EANet are ordinary layers). The authors' code initialises M_v with
the storage of M_k^T, which ties the two memories for the whole run; the paper describes two
memories: ``tie_memories=False`` (default) follows the paper, ``True`` the code.
"""

from __future__ import annotations

import torch
from torch import nn

from visattn.layers.base import check_positive_int
from visattn.registry import create_attention

__all__ = ["ExternalAttentionHead"]


class ExternalAttentionHead(nn.Module):
    """EANet's external-attention module: (B, C, H, W) -> (B, C, H, W) at any H, W >= 1.

    Args:
        channels: C (input = output channels).
        memory_size: memory units S (EANet: 64).
        tie_memories: use one parameter for M_k and M_v (the authors' code).
        eps: epsilon of the L1 normalisation.

    Steps: 1x1 conv (bias) -> A = DoubleNorm(M_k F) -> A^T M_v -> 1x1 conv (no bias) + BN
    -> + identity -> ReLU.
    """

    def __init__(self, channels: int, *, memory_size: int = 64, tie_memories: bool = False, eps: float = 1e-9):
        super().__init__()
        check_positive_int("channels", channels)
        check_positive_int("memory_size", memory_size)
        self.channels, self.memory_size, self.tie_memories = channels, memory_size, tie_memories
        self.conv_in = nn.Conv2d(channels, channels, 1)
        self.attention = create_attention(
            "external", channels, memory_size=memory_size, eps=eps, tie_memories=tie_memories
        )
        self.conv_out = nn.Conv2d(channels, channels, 1, bias=False)
        self.norm = nn.BatchNorm2d(channels)

    @property
    def memory_key(self) -> nn.Parameter:
        """M_k: (S, C)."""
        return self.attention.get_parameter("memory_key")

    @property
    def memory_value(self) -> nn.Parameter:
        """M_v: (S, C) (the same tensor as M_k when tied)."""
        return self.attention.memory_value  # type: ignore[return-value]  # M_k itself when tied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"ExternalAttentionHead expects (B, C={self.channels}, H, W), got {shape}")
        y = self.attention(self.conv_in(x))  # (B, C, H, W)
        return torch.relu(x + self.norm(self.conv_out(y)))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, memory_size={self.memory_size}, tie_memories={self.tie_memories}"
