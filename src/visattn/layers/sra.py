"""Spatial-reduction attention (SRA) of the Pyramid Vision Transformer.

Wang et al., "Pyramid Vision Transformer: A Versatile Backbone for Dense Prediction without
Convolutions", ICCV 2021 (arXiv 2102.12122), Sec. 3.3. Global multi-head attention whose keys
and values come from a map shrunk R times per side: a Conv2d(C, C, R, stride R) followed by
LayerNorm (the "SR" layer), then K, V = Linear(C, 2C). Queries Linear(C, C); q scaled by
head_dim^-1/2; output Linear(C, C_out). With R = 1 it is plain global attention (no SR
layer), as in PVT's last stage. Cost O(n^2 d / R^2).

Beyond PVT (which needs H, W divisible by R): a map whose side is not a multiple of R is
zero-padded at the bottom/right before the SR conv, so any H, W >= 1 works; at divisible
sizes the result is PVT's exactly. Not implemented: PVTv2's average-pooling "linear SRA".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from visattn.layers.base import SpatialAttention, check_divisible, check_positive_int
from visattn.registry import register_attention

__all__ = ["SpatialReductionAttention"]


@register_attention(
    "sra",
    title="Spatial-reduction attention (PVT)",
    paper="Wang et al., Pyramid Vision Transformer, ICCV 2021 (arXiv 2102.12122)",
    cost="quadratic",
    receptive_field="global",
    positional="none (content only)",
    export=("onnx", "compile", "torchscript"),
    test_kwargs={"num_heads": 2, "sr_ratio": 2},
    bench_kwargs={"num_heads": 4, "sr_ratio": 4},
    bench_variants={"sra-r8": {"num_heads": 4, "sr_ratio": 8}},
)
class SpatialReductionAttention(SpatialAttention):
    """Global attention over a spatially reduced key/value map.

    Args:
        dim: input channels C.
        dim_out: output channels (default C).
        num_heads: heads h (C must divide by h).
        sr_ratio: reduction R per side (1: no reduction, no SR layer).
        qkv_bias: bias on the q and kv projections.

    Shapes: (B, C, H, W) -> (B, C_out, H, W); keys/values (B, h, ceil(H/R)*ceil(W/R), d).
    """

    def __init__(
        self, dim: int, dim_out: int | None = None, *, num_heads: int = 1, sr_ratio: int = 1, qkv_bias: bool = True
    ):
        super().__init__(dim, dim_out)
        check_positive_int("num_heads", num_heads)
        check_divisible("dim", dim, "num_heads", num_heads)
        check_positive_int("sr_ratio", sr_ratio)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, self.dim_out)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)
        else:
            self.sr = None
            self.norm = None

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        nh, d = self.num_heads, self.head_dim
        t = x.flatten(2).transpose(1, 2)  # (B, n, C)
        q = self.q(t).reshape(b, h * w, nh, d).transpose(1, 2)  # (B, h, n, d)
        if self.sr is not None:
            r = self.sr_ratio
            xr = F.pad(x, (0, (-w) % r, 0, (-h) % r))
            ctx = self.norm(self.sr(xr).flatten(2).transpose(1, 2))  # (B, m, C)
        else:
            ctx = t
        kv = self.kv(ctx).reshape(b, -1, 2, nh, d).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, kv[0], kv[1])  # (B, h, n, d)
        o = self.proj(o.transpose(1, 2).reshape(b, h * w, c))
        return o.transpose(1, 2).reshape(b, self.dim_out, h, w)

    def flop_breakdown(self, height: int, width: int, batch: int = 1) -> dict[str, int]:
        n, c, r = height * width, self.dim, self.sr_ratio
        m = -(-height // r) * -(-width // r)
        counted = 2 * n * c * c + 2 * m * c * 2 * c + 2 * n * c * self.dim_out  # q, kv, proj
        counted += 2 * 2 * n * m * c  # q k^T, A v
        uncounted = 0
        if self.sr is not None:
            counted += 2 * m * c * c * r * r  # SR conv
        return {"counted": batch * counted, "uncounted": batch * uncounted}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_heads={self.num_heads}, sr_ratio={self.sr_ratio}"
