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
One implementation (``impl="reference"``): the batched contraction below is already the
paper's E = rho_q(Q) (rho_k(K)^T V), per head.

Vocabulary (docs/contract.md): ``key_dim`` and ``value_dim`` are per head (d_k / h and
d_v / h in the paper's totals), the output projection (the authors' "reprojection") is
``proj``; state dicts saved with ``reprojection.*`` keys still load.
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
    test_kwargs={"num_heads": 2},
    bench_kwargs={"num_heads": 4},
    sets=True,
)
class EfficientAttention(SpatialAttention):
    """Efficient attention (multi-head).

    Args:
        dim: input channels C.
        dim_out: output channels (default C).
        key_dim: key/query channels per head (default C / h; the paper's d_k is h * key_dim).
        value_dim: value channels per head (default C / h; d_v = h * value_dim).
        num_heads: heads h.
        normalization: "softmax" (paper default) or "scaling".
        residual: add the input to the output, as the authors' module does (needs dim_out == dim).
        impl: "auto" or "reference" (the one path).
        device, dtype: factory arguments for the parameters.

    Shapes: (B, C, H, W) -> (B, C_out, H, W); per head the context is (key_dim, value_dim).
    """

    renamed_keys = {"reprojection": "proj"}

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
        impl: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__(dim, dim_out, impl=impl)
        check_positive_int("num_heads", num_heads)
        if key_dim is None or value_dim is None:
            check_divisible("dim", dim, "num_heads", num_heads)
        key_dim = dim // num_heads if key_dim is None else key_dim
        value_dim = dim // num_heads if value_dim is None else value_dim
        check_positive_int("key_dim", key_dim)
        check_positive_int("value_dim", value_dim)
        check_choice("normalization", normalization, ("softmax", "scaling"))
        if residual and self.dim_out != dim:
            raise ValueError(f"residual=True needs dim_out == dim, got dim={dim}, dim_out={self.dim_out}")
        self.key_dim, self.value_dim, self.num_heads = key_dim, value_dim, num_heads
        self.normalization = normalization
        self.residual = residual
        dk, dv = num_heads * key_dim, num_heads * value_dim  # the paper's totals d_k, d_v
        fk = {"device": device, "dtype": dtype}
        # 1x1 convolutions with bias, as in the authors' module.
        self.queries = nn.Conv2d(dim, dk, 1, **fk)
        self.keys = nn.Conv2d(dim, dk, 1, **fk)
        self.values = nn.Conv2d(dim, dv, 1, **fk)
        self.proj = nn.Conv2d(dv, self.dim_out, 1, **fk)

    def reset_parameters(self) -> None:
        """The four 1x1 convolutions as ``nn.Conv2d`` initialises them."""
        for conv in (self.queries, self.keys, self.values, self.proj):
            conv.reset_parameters()

    def _forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        n, nh = h * w, self.num_heads
        q = self.queries(x).reshape(b, nh, self.key_dim, n)  # Q per head: (B, h, d_k/h, n)
        k = self.keys(x).reshape(b, nh, self.key_dim, n)
        v = self.values(x).reshape(b, nh, self.value_dim, n)
        dtype = v.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            q, k, v = upcast(q, k, v)
            if self.normalization == "softmax":
                q = q.softmax(dim=2)  # rho_q: over each query's d_k channels
                k = k.softmax(dim=3)  # rho_k: over the n positions
            else:
                s = n**-0.5
                q, k = q * s, k * s  # rho_q = rho_k = Y / sqrt(n)
            context = k @ v.transpose(2, 3)  # (B, h, d_k, d_v): rho_k(K)^T V
            o = context.transpose(2, 3) @ q  # (B, h, d_v, n): rho_q(Q) (rho_k(K)^T V)
        o = o.to(dtype).reshape(b, nh * self.value_dim, h, w)
        y = self.proj(o)
        return y + x if self.residual else y

    def flop_breakdown(self, height: int, width: int, batch: int = 1) -> dict[str, int]:
        n, c = height * width, self.dim
        dk, dv = self.num_heads * self.key_dim, self.num_heads * self.value_dim
        proj = 2 * n * c * (2 * dk + dv) + 2 * n * dv * self.dim_out
        core = 2 * 2 * n * dk * dv // self.num_heads  # context and output, summed over heads
        return {"counted": batch * (proj + core), "uncounted": 0}

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, key_dim={self.key_dim}, value_dim={self.value_dim}, "
            f"num_heads={self.num_heads}, normalization={self.normalization!r}, residual={self.residual}"
        )
