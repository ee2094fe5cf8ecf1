"""Global multi-head dot-product self-attention over the H*W positions (baseline).

Vaswani et al., "Attention Is All You Need" (arXiv 1706.03762), applied to the n = H*W
positions of a feature map as in ViT. Content-only (no positional term); the core is
``torch.nn.functional.scaled_dot_product_attention``. Cost O(n^2 d) time; the fused CPU
and GPU kernels keep memory O(n d).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from visattn.layers.base import SpatialAttention, check_divisible, check_positive_int
from visattn.registry import register_attention

__all__ = ["MultiHeadSelfAttention"]


@register_attention(
    "mhsa",
    title="Global multi-head self-attention",
    paper="Vaswani et al., Attention Is All You Need (arXiv 1706.03762)",
    cost="quadratic",
    receptive_field="global",
    positional="none (content only)",
    export=("onnx", "compile", "torchscript"),
    test_kwargs={"num_heads": 2},
    bench_kwargs={"num_heads": 4},
)
class MultiHeadSelfAttention(SpatialAttention):
    """Global multi-head self-attention.

    Args:
        dim: input channels C.
        dim_out: output channels (default C).
        num_heads: heads h; C must divide by h (head width d = C / h).
        qkv_bias: bias on the q, k, v projection.

    Shapes: (B, C, H, W) -> (B, C_out, H, W); n = H*W.
    """

    def __init__(self, dim: int, dim_out: int | None = None, *, num_heads: int = 4, qkv_bias: bool = True):
        super().__init__(dim, dim_out)
        check_positive_int("num_heads", num_heads)
        check_divisible("dim", dim, "num_heads", num_heads)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, self.dim_out)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # (B, n, C)
        qkv = self.qkv(t).reshape(b, h * w, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, h, n, d)
        o = F.scaled_dot_product_attention(q, k, v)  # softmax_keys(q k^T / sqrt(d)) v
        o = o.transpose(1, 2).reshape(b, h * w, c)
        return self.proj(o).transpose(1, 2).reshape(b, self.dim_out, h, w)

    def flop_breakdown(self, height: int, width: int, batch: int = 1) -> dict[str, int]:
        n, c = height * width, self.dim
        proj = 2 * n * c * 3 * c + 2 * n * c * self.dim_out
        attn = 2 * 2 * n * n * c  # q k^T and A v, all heads
        return {"counted": batch * (proj + attn), "uncounted": 0}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_heads={self.num_heads}"
