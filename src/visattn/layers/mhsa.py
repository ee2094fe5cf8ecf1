"""Global multi-head dot-product self-attention over the H*W positions (baseline).

Vaswani et al., "Attention Is All You Need" (arXiv 1706.03762), applied to the n = H*W
positions of a feature map as in ViT. Content-only (no positional term). Two
implementations (``impl=``): ``"reference"`` writes out softmax_keys(Q K^T / sqrt(d)) V
with the (B, h, n, n) attention matrix; ``"sdpa"`` (what ``"auto"`` always picks) is
``torch.nn.functional.scaled_dot_product_attention``, whose fused CPU and GPU kernels keep
memory O(n d). Cost O(n^2 d) time either way. A long call on the CPU runs over blocks of query
rows (:func:`visattn.layers._ops.sdpa_in_chunks`, the same result), so Ctrl-C stops it promptly.
"""

from __future__ import annotations

import torch
from torch import nn

from visattn.layers._ops import sdpa_in_chunks, softmax_fp32
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
    impls=("reference", "sdpa"),
    test_kwargs={"num_heads": 2},
    bench_kwargs={"num_heads": 4},
    sets=True,
)
class MultiHeadSelfAttention(SpatialAttention):
    """Global multi-head self-attention.

    Args:
        dim: input channels C.
        dim_out: output channels (default C).
        num_heads: heads h; C must divide by h (per-head width d = C / h).
        qkv_bias: bias on the q, k, v projection.
        impl: "auto" (always "sdpa"), "reference" (explicit softmax, (B, h, n, n) in memory)
            or "sdpa" (``scaled_dot_product_attention``).
        device, dtype: factory arguments for the parameters.

    Shapes: (B, C, H, W) -> (B, C_out, H, W); n = H*W.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        *,
        num_heads: int = 4,
        qkv_bias: bool = True,
        impl: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__(dim, dim_out, impl=impl)
        check_positive_int("num_heads", num_heads)
        check_divisible("dim", dim, "num_heads", num_heads)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, device=device, dtype=dtype)
        self.proj = nn.Linear(dim, self.dim_out, device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        """Both projections as ``nn.Linear`` initialises them."""
        self.qkv.reset_parameters()
        self.proj.reset_parameters()

    def _auto_impl(self, x: torch.Tensor) -> str:
        return "sdpa"

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, _, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # (B, n, C)
        qkv = self.qkv(t).reshape(b, h * w, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, h, n, d)
        return q, k, v

    def _output(self, o: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """o: (B, h, n, d) -> heads concatenated, output projection -> (B, C_out, H, W)."""
        b = o.shape[0]
        o = o.transpose(1, 2).reshape(b, height * width, self.dim)
        return self.proj(o).transpose(1, 2).reshape(b, self.dim_out, height, width)

    def _forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x)
        logits = torch.einsum("bhqd,bhkd->bhqk", q, k) / self.head_dim**0.5  # (B, h, n, n)
        a = softmax_fp32(logits, dim=-1)  # over the keys
        o = torch.einsum("bhqk,bhkd->bhqd", a, v)
        return self._output(o, x.shape[2], x.shape[3])

    def _forward_sdpa(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x)
        o = sdpa_in_chunks(q, k, v)  # softmax_keys(q k^T / sqrt(d)) v; long CPU calls in chunks of query rows
        return self._output(o, x.shape[2], x.shape[3])

    def peak_intermediate_bytes(self, height: int, width: int, batch: int = 1, itemsize: int = 4) -> int:
        """The reference's (B, h, n, n) attention matrix; SDPA's fused kernels hold O(n d)."""
        if self.impl != "reference":
            return 0
        n = height * width
        return batch * self.num_heads * n * n * itemsize

    def flop_breakdown(self, height: int, width: int, batch: int = 1) -> dict[str, int]:
        n, c = height * width, self.dim
        proj = 2 * n * c * 3 * c + 2 * n * c * self.dim_out
        attn = 2 * 2 * n * n * c  # q k^T and A v, all heads
        return {"counted": batch * (proj + attn), "uncounted": 0}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_heads={self.num_heads}"
