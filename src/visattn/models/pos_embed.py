"""Convolutional position encoding for position-blind mixers (CPVT's PEG, PVTv2's depthwise conv).

Chu et al., "Conditional Positional Encodings for Vision Transformers" (ICLR 2023, arXiv
2102.10882) add a "positional encoding generator" ``x + DWConv3x3(x)`` before attention: the
zero padding at the borders lets the convolution tell where a token is, at any input size
(Islam et al., "How Much Position Information Do Convolutional Neural Networks Encode?",
ICLR 2020). PVTv2 (Wang et al., arXiv 2106.13797) puts the same depthwise 3x3 convolution in
its feed-forward block for the same reason. Content-only mechanisms (``mhsa``, ``efficient``,
``sra``, ``external``: permutation-equivariant over positions) gain position from it.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvPosEmbed"]


class ConvPosEmbed(nn.Module):
    """``x + DWConv_kxk(x)`` (depthwise, zero "same" padding, with bias).

    Shapes: (B, C, H, W) -> (B, C, H, W), any H, W.
    """

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd int >= 1, got {kernel_size}")
        self.proj = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(x)
