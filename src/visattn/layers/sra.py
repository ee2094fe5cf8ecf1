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

Implementations (``impl=``; the same numbers): ``"reference"`` — the explicit
softmax(q k^T / sqrt(d)) v with the (n x m) weights materialised; ``"sdpa"`` —
``torch.nn.functional.scaled_dot_product_attention`` (fused kernels, memory O(n d) on the
CPU and GPU). ``impl="auto"`` always picks ``"sdpa"``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visattn.layers._ops import sdpa_in_chunks, softmax_fp32
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
    impls=("reference", "sdpa"),
    test_kwargs={"num_heads": 2, "sr_ratio": 2},
    bench_kwargs={"num_heads": 4, "sr_ratio": 4},
    bench_variants={"sra-r8": {"num_heads": 4, "sr_ratio": 8}},
    sets=True,
    set_kwargs={"sr_ratio": 1},
)
class SpatialReductionAttention(SpatialAttention):
    """Global attention over a spatially reduced key/value map.

    Args:
        dim: input channels C.
        dim_out: output channels (default C).
        num_heads: heads h (C must divide by h).
        sr_ratio: reduction R per side (1: no reduction, no SR layer).
        qkv_bias: bias on the q and kv projections.
        impl: "auto" (always "sdpa"), "reference" or "sdpa" (module docstring).
        device, dtype: factory arguments for the parameters.

    Shapes: (B, C, H, W) -> (B, C_out, H, W); keys/values (B, h, ceil(H/R)*ceil(W/R), d).
    """

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        *,
        num_heads: int = 1,
        sr_ratio: int = 1,
        qkv_bias: bool = True,
        impl: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(dim, dim_out, impl=impl)
        check_positive_int("num_heads", num_heads)
        check_divisible("dim", dim, "num_heads", num_heads)
        check_positive_int("sr_ratio", sr_ratio)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.sr_ratio = sr_ratio
        fk: dict[str, Any] = {"device": device, "dtype": dtype}
        self.q = nn.Linear(dim, dim, bias=qkv_bias, **fk)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias, **fk)
        self.proj = nn.Linear(dim, self.dim_out, **fk)
        self.sr: nn.Conv2d | None = None
        self.norm: nn.LayerNorm | None = None
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio, **fk)
            self.norm = nn.LayerNorm(dim, **fk)

    def reset_parameters(self) -> None:
        """As at construction: default init of q, kv, proj, the SR conv and its LayerNorm."""
        for mod in (self.q, self.kv, self.proj, self.sr, self.norm):
            if mod is not None:
                mod.reset_parameters()

    def _auto_impl(self, x: torch.Tensor) -> str:
        return "sdpa"

    def _forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) v over the reduced keys, the weights (B, h, n, m) explicit."""
        q, k, v = self._qkv(x)  # (B, h, n, d), (B, h, m, d), (B, h, m, d)
        logits = torch.einsum("bhnd,bhmd->bhnm", q, k) * self.head_dim**-0.5
        o = torch.einsum("bhnm,bhmd->bhnd", softmax_fp32(logits, -1), v)
        return self._out(o, x.shape[2], x.shape[3])

    def _forward_sdpa(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x)
        return self._out(sdpa_in_chunks(q, k, v), x.shape[2], x.shape[3])  # long CPU calls in chunks of rows

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (B, h, n, d) from every position; k, v (B, h, m, d) from the reduced map."""
        b, c, h, w = x.shape
        nh, d = self.num_heads, self.head_dim
        t = x.flatten(2).transpose(1, 2)  # (B, n, C)
        q = self.q(t).reshape(b, h * w, nh, d).transpose(1, 2)  # (B, h, n, d)
        if self.sr is not None and self.norm is not None:
            r = self.sr_ratio
            xr = F.pad(x, (0, (-w) % r, 0, (-h) % r))
            ctx = self.norm(self.sr(xr).flatten(2).transpose(1, 2))  # (B, m, C)
        else:
            ctx = t
        kv = self.kv(ctx).reshape(b, -1, 2, nh, d).permute(2, 0, 3, 1, 4)
        return q, kv[0], kv[1]

    def _out(self, o: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Heads (B, h, n, d) -> concatenated, projected (B, C_out, H, W)."""
        b = o.shape[0]
        o = self.proj(o.transpose(1, 2).reshape(b, h * w, self.dim))
        return o.transpose(1, 2).reshape(b, self.dim_out, h, w)

    def peak_intermediate_bytes(self, height: int, width: int, batch: int = 1, itemsize: int = 4) -> int:
        """``impl="reference"`` materialises the weights (B, h, n, m); SDPA's fused kernels do not."""
        if self.impl != "reference":
            return 0
        r = self.sr_ratio
        m = -(-height // r) * -(-width // r)
        return batch * self.num_heads * height * width * m * itemsize

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
