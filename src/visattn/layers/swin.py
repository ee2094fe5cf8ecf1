"""(Shifted-)window multi-head self-attention with relative position bias (Swin Transformer).

Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows",
ICCV 2021 (arXiv 2103.14030), Sec. 3.2. The map is cut into non-overlapping M x M windows;
attention runs inside each window with a learned bias B[dy, dx] per head for every relative
offset (a (2M-1)^2 x h table). With ``shift_size`` s > 0 the map is cyclically rolled by
(-s, -s) first and the attention is masked so that tokens from different regions of the
rolled map do not see each other (SW-MSA), then rolled back.

As in the Swin and Slide-Swin code, a map no larger than the window along an axis is one
window along it (the window shrinks to the map and that axis is not shifted); this makes
Slide-Swin's stages 3-4 (window = whole 14x14 / 7x7 map) global attention with relative
position bias. Any H, W >= 1: sides that are not multiples of M are zero-padded at the
bottom/right and the padded keys are masked out of the softmax (the Swin detection code pads
but does not mask). Logits and softmax run in float32 for half inputs.

One implementation (``impl="reference"``): the explicit softmax(Q K^T / sqrt(d) + B) V per
window, batched over windows and heads (the form the benchmarks time).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visattn.layers._ops import autocast_off, upcast
from visattn.layers.base import SpatialAttention, check_divisible, check_positive_int
from visattn.registry import register_attention

__all__ = ["WindowAttention"]

_MASKED = -1e30  # additive mask in float32 (finite, so an all-masked padded query stays finite)


@register_attention(
    "swin",
    title="(Shifted-)window attention with relative position bias (Swin)",
    paper="Liu et al., Swin Transformer, ICCV 2021 (arXiv 2103.14030)",
    cost="local",
    receptive_field="local",
    window_arg="window_size",
    window_centred=False,
    positional="relative position bias table per window offset",
    export=("onnx", "compile", "torchscript"),
    test_kwargs={"num_heads": 2, "window_size": 3, "shift_size": 1},
    bench_kwargs={"num_heads": 4, "window_size": 7},
    bench_variants={"swin-shifted": {"num_heads": 4, "window_size": 7, "shift_size": 3}},
)
class WindowAttention(SpatialAttention):
    """Window attention (W-MSA), or shifted-window attention (SW-MSA) with ``shift_size > 0``.

    Args:
        dim: input channels C.
        dim_out: output channels (default C).
        num_heads: heads h (C must divide by h).
        window_size: window side M (the table covers offsets up to M - 1).
        shift_size: cyclic shift s, 0 <= s < M.
        qkv_bias: bias on the q, k, v projection.
        impl: "auto" or "reference" (the one implementation).
        device, dtype: factory arguments for the parameters.

    Shapes: (B, C, H, W) -> (B, C_out, H, W); per window logits (B*nW, h, M*M, M*M).
    """

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        *,
        num_heads: int = 4,
        window_size: int = 7,
        shift_size: int = 0,
        qkv_bias: bool = True,
        impl: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(dim, dim_out, impl=impl)
        check_positive_int("num_heads", num_heads)
        check_divisible("dim", dim, "num_heads", num_heads)
        check_positive_int("window_size", window_size)
        if isinstance(shift_size, bool) or not isinstance(shift_size, int) or not 0 <= shift_size < window_size:
            raise ValueError(
                f"shift_size must be an int with 0 <= shift_size < window_size={window_size}, got {shift_size!r}"
            )
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = window_size
        self.receptive_field = window_size
        self.shift_size = shift_size
        self.scale = self.head_dim**-0.5
        fk: dict[str, Any] = {"device": device, "dtype": dtype}
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **fk)
        self.proj = nn.Linear(dim, self.dim_out, **fk)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads, **fk))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def reset_parameters(self) -> None:
        """As at construction: default nn.Linear init, truncated normal (std 0.02) for the table."""
        self.qkv.reset_parameters()
        self.proj.reset_parameters()
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def _bias(self, wh: int, ww: int, device) -> torch.Tensor:
        """(h, wh*ww, wh*ww) relative position bias for a wh x ww window."""
        m = self.window_size
        yy, xx = torch.meshgrid(torch.arange(wh, device=device), torch.arange(ww, device=device), indexing="ij")
        yy, xx = yy.flatten(), xx.flatten()
        idx = (yy[:, None] - yy[None, :] + m - 1) * (2 * m - 1) + (xx[:, None] - xx[None, :] + m - 1)
        return self.relative_position_bias_table[idx.flatten()].view(wh * ww, wh * ww, -1).permute(2, 0, 1)

    def _forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        nh, d, m = self.num_heads, self.head_dim, self.window_size
        wh, ww = min(m, h), min(m, w)
        sh = self.shift_size if h > m else 0
        sw = self.shift_size if w > m else 0
        hp, wp = (h + wh - 1) // wh * wh, (w + ww - 1) // ww * ww  # ceil (no negative floor-div: ONNX truncates)
        t = F.pad(x, (0, wp - w, 0, hp - h)).permute(0, 2, 3, 1)  # (B, Hp, Wp, C)
        if sh or sw:
            t = torch.roll(t, shifts=(-sh, -sw), dims=(1, 2))
        nwy, nwx, n_tok = hp // wh, wp // ww, wh * ww
        win = t.reshape(b, nwy, wh, nwx, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, n_tok, c)
        qkv = self.qkv(win).reshape(-1, n_tok, 3, nh, d).permute(2, 0, 3, 1, 4)  # 3 x (B*nW, h, N, d)
        dtype = qkv.dtype
        mask = self._mask(h, w, hp, wp, wh, ww, sh, sw, x.device)  # (nW, N, N) or None
        with autocast_off(x.device.type):
            q, k, v = upcast(qkv[0], qkv[1], qkv[2])
            logits = (q * self.scale) @ k.transpose(-2, -1)  # (B*nW, h, N, N)
            logits = logits + self._bias(wh, ww, x.device).to(logits.dtype)
            if mask is not None:
                logits = (logits.view(b, nwy * nwx, nh, n_tok, n_tok) + mask[:, None]).view(-1, nh, n_tok, n_tok)
            o = (torch.softmax(logits, -1) @ v).to(dtype)  # (B*nW, h, N, d)
        o = o.transpose(1, 2).reshape(b, nwy, nwx, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        if sh or sw:
            o = torch.roll(o, shifts=(sh, sw), dims=(1, 2))
        o = self.proj(o[:, :h, :w])  # (B, H, W, C_out)
        return o.permute(0, 3, 1, 2)

    def _mask(self, h, w, hp, wp, wh, ww, sh, sw, device):
        if not (sh or sw or hp != h or wp != w):
            return None
        ys, xs = torch.arange(hp, device=device), torch.arange(wp, device=device)
        # Swin's three bands per shifted axis, labelled in the rolled frame
        by = ((ys >= hp - wh).long() + (ys >= hp - sh).long()) if sh else torch.zeros_like(ys)
        bx = ((xs >= wp - ww).long() + (xs >= wp - sw).long()) if sw else torch.zeros_like(xs)
        region = by[:, None] * 3 + bx[None, :]  # (Hp, Wp)
        pad = ((ys >= h)[:, None] | (xs >= w)[None, :]).long()  # padded positions, unrolled frame
        if sh or sw:
            pad = torch.roll(pad, shifts=(-sh, -sw), dims=(0, 1))

        def windows(t):  # (Hp, Wp) -> (nW, N)
            return t.reshape(hp // wh, wh, wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)

        rw, pw = windows(region), windows(pad)
        blocked = (rw[:, :, None] != rw[:, None, :]) | (pw[:, None, :] > 0)
        return torch.zeros(blocked.shape, device=device).masked_fill(blocked, _MASKED)

    def flop_breakdown(self, height: int, width: int, batch: int = 1) -> dict[str, int]:
        m, c = self.window_size, self.dim
        wh, ww = min(m, height), min(m, width)
        hp, wp = -(-height // wh) * wh, -(-width // ww) * ww
        n, npad, n_tok = height * width, hp * wp, wh * ww
        counted = 2 * npad * c * 3 * c + 2 * n * c * self.dim_out + 2 * 2 * npad * n_tok * c
        return {"counted": batch * counted, "uncounted": 0}

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_heads={self.num_heads}, window_size={self.window_size}, "
            f"shift_size={self.shift_size}"
        )
