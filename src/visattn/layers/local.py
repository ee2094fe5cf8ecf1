"""k x k local (neighbourhood) self-attention built with im2col (``F.unfold``): the reference.

Each query attends to the k x k window centred on it. Keys and values are gathered with
``F.unfold(x, k, padding=k//2)``: neighbours outside the image are zero vectors and take
part in the softmax (logit 0 against the zero key; they add nothing to the output), which
is the behaviour of the Slide-Transformer code (Pan et al., arXiv 2304.04237) and the
reference slide attention is proven equal to. ``mask_padding=True`` excludes them.

One implementation (``impl="reference"``): this im2col form is both the definition and the
baseline the benchmarks time, so it has no faster path of its own (slide's shift loop is the
fast form of the same arithmetic).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visattn.layers._ops import softmax_fp32
from visattn.layers.base import SpatialAttention, check_divisible, check_odd, check_positive_int
from visattn.registry import register_attention

__all__ = ["LocalAttention", "padding_mask"]


def padding_mask(height: int, width: int, kernel_size: int, device=None) -> torch.Tensor:
    """(k*k, H*W) bool: True where neighbour i of position p lies inside the image."""
    ones = torch.ones(1, 1, height, width, device=device)
    return F.unfold(ones, kernel_size, padding=kernel_size // 2)[0] > 0


@register_attention(
    "local",
    title="Local attention (im2col)",
    paper="Ramachandran et al., Stand-Alone Self-Attention (arXiv 1906.05909); im2col form as in Pan et al. (arXiv 2304.04237)",
    cost="local",
    receptive_field="local",
    window_arg="kernel_size",
    window_centred=True,
    positional="implicit (zero-padded borders)",
    export=("onnx", "compile", "torchscript"),
    test_kwargs={"num_heads": 2, "kernel_size": 3},
    bench_kwargs={"num_heads": 4, "kernel_size": 3},
    bench_variants={"local-k7": {"num_heads": 4, "kernel_size": 7}},
)
class LocalAttention(SpatialAttention):
    """k x k local multi-head attention by im2col.

    Args:
        dim: input channels C.
        dim_out: output channels (default C).
        num_heads: heads h (C must divide by h).
        kernel_size: odd window side k.
        qkv_bias: bias on the q, k, v projection (``qkv``: Linear(C, 3C) applied per pixel).
        mask_padding: exclude neighbours outside the image from the softmax.
        impl: "auto" or "reference" (the one implementation).
        device, dtype: factory arguments for the parameters.

    Shapes: (B, C, H, W) -> (B, C_out, H, W). Logits (B, h, k*k, n).
    """

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        *,
        num_heads: int = 4,
        kernel_size: int = 3,
        qkv_bias: bool = True,
        mask_padding: bool = False,
        impl: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(dim, dim_out, impl=impl)
        check_positive_int("num_heads", num_heads)
        check_divisible("dim", dim, "num_heads", num_heads)
        check_odd("kernel_size", kernel_size)
        for name, val in (("qkv_bias", qkv_bias), ("mask_padding", mask_padding)):
            if not isinstance(val, bool):
                raise TypeError(f"{name} must be a bool, got {type(val).__name__} {val!r}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.kernel_size = kernel_size
        self.receptive_field = kernel_size
        self.mask_padding = mask_padding
        self.scale = self.head_dim**-0.5
        fk: dict[str, Any] = {"device": device, "dtype": dtype}
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **fk)
        self.proj = nn.Linear(dim, self.dim_out, **fk)

    def reset_parameters(self) -> None:
        """Default nn.Linear init of ``qkv`` and ``proj``, as at construction."""
        self.qkv.reset_parameters()
        self.proj.reset_parameters()

    def _forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """softmax_i(q . K[p + o_i] / sqrt(d)) V[p + o_i] with the neighbours gathered by im2col."""
        b, c, h, w = x.shape
        n, nh, d, k = h * w, self.num_heads, self.head_dim, self.kernel_size
        qkv = F.conv2d(x, self.qkv.weight[:, :, None, None], self.qkv.bias)  # (B, 3C, H, W)
        q, kk_, v = qkv.chunk(3, dim=1)
        q = (q * self.scale).reshape(b, nh, d, 1, n)
        keys = F.unfold(kk_, k, padding=k // 2).view(b, nh, d, k * k, n)
        vals = F.unfold(v, k, padding=k // 2).view(b, nh, d, k * k, n)
        logits = (q * keys).sum(2)  # (B, h, k*k, n)
        if self.mask_padding:
            valid = padding_mask(h, w, k, device=x.device)
            logits = logits.masked_fill(~valid, float("-inf"))
        attn = softmax_fp32(logits, 2)
        o = (attn.unsqueeze(2) * vals).sum(3).reshape(b, c, h, w)  # (B, C, H, W)
        return F.conv2d(o, self.proj.weight[:, :, None, None], self.proj.bias)

    def flop_breakdown(self, height: int, width: int, batch: int = 1) -> dict[str, int]:
        n, c, kk = height * width, self.dim, self.kernel_size**2
        counted = 2 * n * c * 3 * c + 2 * n * c * self.dim_out
        uncounted = 2 * 2 * n * c * kk  # q.k over k*k neighbours, A.v
        return {"counted": batch * counted, "uncounted": batch * uncounted}

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, "
            f"mask_padding={self.mask_padding}"
        )
