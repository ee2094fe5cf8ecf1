"""Efficient attention: linear-complexity attention by building the global context first.

Shen et al., "Efficient Attention: Attention with Linear Complexities", WACV 2021
(arXiv 1812.01243). E = rho_q(Q) (rho_k(K)^T V): the d_k x d_v context per head is formed
first, so memory is O(n d + d^2) and time O(n d_k d_v) instead of O(n^2).

Implemented: both normalisations of the paper — "softmax" (default; rho_q = softmax over
each query's d_k channels per head, rho_k = softmax over the n positions per key
channel) and "scaling" (rho_q = rho_k = Y / sqrt(n), exactly equal to dot-product
attention with rho(Y) = Y / n). The authors' module adds the input back (a residual);
here that is ``residual=True`` (off by default so every mechanism is a pure mixer).
Under half-precision autocast the normalisers and the context sums run in float32.
"""

from __future__ import annotations

import torch
from torch import nn

from visattn.layers._ops import upcast
from visattn.layers.base import SpatialAttention, check_choice, check_divisible, check_positive_int
from visattn.registry import register_attention

__all__ = ["EfficientAttention"]


@register_attention(
    "efficient",
    title="Efficient attention",
    paper="Shen et al., Efficient Attention: Attention with Linear Complexities, WACV 2021 (arXiv 1812.01243)",
    cost="linear",
    receptive_field="global",
    positional="none (content only)",
    export=("onnx", "compile", "torchscript"),
    test_kwargs={"num_heads": 2, "key_dim": 8, "value_dim": 8},
    bench_kwargs={"num_heads": 4},
)
class EfficientAttention(SpatialAttention):
    """Efficient attention (multi-head).

    Args:
        dim: input channels C.
        dim_out: output channels (default C).
        key_dim: total key/query channels d_k (default C); divisible by num_heads.
        value_dim: total value channels d_v (default C); divisible by num_heads.
        num_heads: heads h.
        normalization: "softmax" (paper default) or "scaling".
        residual: add the input to the output, as the authors' module does (needs dim_out == dim).

    Shapes: (B, C, H, W) -> (B, C_out, H, W); per head the context is (d_k/h, d_v/h).
    """

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        *,
        key_dim: int | None = None,
        value_dim: int | None = None,
        num_heads: int = 4,
        normalization: str = "softmax",
        residual: bool = False,
    ):
        super().__init__(dim, dim_out)
        key_dim = dim if key_dim is None else key_dim
        value_dim = dim if value_dim is None else value_dim
        check_positive_int("key_dim", key_dim)
        check_positive_int("value_dim", value_dim)
        check_positive_int("num_heads", num_heads)
        check_divisible("key_dim", key_dim, "num_heads", num_heads)
        check_divisible("value_dim", value_dim, "num_heads", num_heads)
        check_choice("normalization", normalization, ("softmax", "scaling"))
        if residual and self.dim_out != dim:
            raise ValueError(f"residual=True needs dim_out == dim, got dim={dim}, dim_out={self.dim_out}")
        self.key_dim, self.value_dim, self.num_heads = key_dim, value_dim, num_heads
        self.normalization = normalization
        self.residual = residual
        # 1x1 convolutions with bias, as in the authors' module.
        self.queries = nn.Conv2d(dim, key_dim, 1)
        self.keys = nn.Conv2d(dim, key_dim, 1)
        self.values = nn.Conv2d(dim, value_dim, 1)
        self.reprojection = nn.Conv2d(value_dim, self.dim_out, 1)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        n, nh = h * w, self.num_heads
        q = self.queries(x).reshape(b, nh, self.key_dim // nh, n)
        k = self.keys(x).reshape(b, nh, self.key_dim // nh, n)
        v = self.values(x).reshape(b, nh, self.value_dim // nh, n)
        dtype = v.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            q, k, v = upcast(q, k, v)
            if self.normalization == "softmax":
                q = q.softmax(dim=2)  # over each query's d_k channels
                k = k.softmax(dim=3)  # over the n positions
            else:
                s = n**-0.5
                q, k = q * s, k * s
            context = k @ v.transpose(2, 3)  # (B, h, d_k, d_v): rho_k(K)^T V
            o = context.transpose(2, 3) @ q  # (B, h, d_v, n)
        o = o.to(dtype).reshape(b, self.value_dim, h, w)
        y = self.reprojection(o)
        return y + x if self.residual else y

    def flop_breakdown(self, height: int, width: int, batch: int = 1) -> dict[str, int]:
        n, c, dk, dv = height * width, self.dim, self.key_dim, self.value_dim
        proj = 2 * n * c * (2 * dk + dv) + 2 * n * dv * self.dim_out
        core = 2 * 2 * n * dk * dv // self.num_heads  # context and output, summed over heads
        return {"counted": batch * (proj + core), "uncounted": 0}

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, key_dim={self.key_dim}, value_dim={self.value_dim}, "
            f"num_heads={self.num_heads}, normalization={self.normalization!r}, residual={self.residual}"
        )
