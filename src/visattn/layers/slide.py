"""Slide attention: local attention whose keys and values come from depthwise convolutions.

Pan et al., "Slide-Transformer: Hierarchical Vision Transformer with Local Self-Attention",
CVPR 2023 (arXiv 2304.04237).

Each query attends to the k x k window centred on it (softmax over the k*k neighbours).
The im2col view of keys and values, ``F.unfold(K, k, padding=k//2)``, is the same map
shifted in k*k directions, and each shift is a depthwise convolution with a one-hot
kernel (paper Sec. 3.2). *Deformed shifting* adds a parallel learnable depthwise conv of
the same shape, so neighbour i of pixel p is a learned mix of the whole k x k window:

    K_i[c, p] = sum_j (delta_ij + W[c, i, j]) K[c, p + o_j] + b[c, i]     (o_j: offset j)

(the same for V). As in the authors' code the two shift convs act on the head_dim channels
of one head and are shared by K, V and all heads; a learned offset bias (heads, k*k) is added
to the keys (the logit gains ``bias * sum(q)``); padded neighbours are zero (before the
convs) and are *not* masked out of the softmax; ``mask_padding=True`` masks them.

What is implemented beyond the paper's code: :meth:`SlideAttention.reparameterize` merges
the fixed and the learned conv into one (W = W_fixed + W_learned, b = b_fixed + b_learned;
the fixed conv has no bias here — the authors' fixed conv carries a learnable bias that is
redundant with the learned one's); a masked-padding option.

Implementations (``impl=``; all compute the same numbers):

* ``"reference"`` — the definition, computed literally as the authors do: the k*k keys and
  values are materialised by the one-hot conv plus (deformed) the learned conv. Slow (on a
  CPU the grouped conv with k*k outputs per channel is slower than im2col itself).
* ``"functional"`` — never builds the k*k copies: a shift is a view of a zero-padded map, so
  the logits are accumulated offset by offset from slices of the padded K, and with deformed
  shifting the merged kernel is applied to the *products* instead of the keys (linearity):

      logit_i = sum_j sum_c W[c, i, j] q[c] K[c, p + o_j] + sum_c b[c, i] q[c]     (GEMM over c)
      out[c]  = sum_j (sum_i W[c, i, j] a_i) V[c, p + o_j] + sum_i b[c, i] a_i     (GEMM over i)

  Out of place: autograd differentiates through it (storing a product and a slice per
  offset), and it is the path a trace, ONNX export, ``torch.compile`` or ``torch.func``
  transform can record.
* ``"inplace"`` — the same arithmetic in place over row chunks of the image, so its memory is
  bounded independently of k*k (pure shifts do not even pad: a missing neighbour has key and
  value 0, so each offset only touches the pixels whose neighbour exists). When a gradient is
  needed it runs as a custom autograd Function that saves only q, K, V and the attention
  weights and walks the offsets again in its backward. It cannot run under tracing, ONNX
  export, ``torch.compile`` or ``torch.func`` transforms (a clear error says so).

The kernels live in :mod:`visattn.layers.slide_kernels`. ``impl="auto"`` (the default) picks
``"functional"`` while a trace, export, ``torch.compile`` or ``torch.func`` transform records
the call, ``"inplace"`` otherwise; independent of grad mode and of the input size.

Re-parameterisation is state, not an implementation: every implementation runs on a merged
module and gives the same numbers. Not implemented: the paper's Metal / phone kernels,
reflection padding (the authors' ``padding_mode`` option).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visattn.layers._ops import autocast_off, is_capturing, softmax_fp32, under_functorch, upcast
from visattn.layers.base import SpatialAttention, check_divisible, check_odd, check_positive_int, check_work
from visattn.layers.local import padding_mask
from visattn.layers.slide_kernels import attend_functional, attend_inplace_qkv
from visattn.registry import register_attention

__all__ = ["SlideAttention", "one_hot_shift_kernels"]


def one_hot_shift_kernels(channels: int, kernel_size: int, dtype=None, device=None) -> torch.Tensor:
    """Depthwise one-hot kernels (channels * k*k, 1, k, k): output channel c*k*k + i copies
    input channel c shifted by offset i = (i // k - k//2, i % k - k//2).

    ``F.conv2d(x, w, padding=k//2, groups=channels)`` equals ``F.unfold(x, k, padding=k//2)``
    element for element (both orders are (channel, offset)).
    """
    kk = kernel_size * kernel_size
    eye = torch.eye(kk, dtype=dtype, device=device).view(1, kk, kernel_size, kernel_size)
    return eye.expand(channels, kk, kernel_size, kernel_size).reshape(channels * kk, 1, kernel_size, kernel_size)


def _token_layout(x: torch.Tensor) -> bool:
    """True when x (B, C, H, W) is laid out as tokens (B, H*W, C), channels last (and not also
    channels first, as with C or H*W equal to 1)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _recorded(*tensors) -> bool:
    """True when a trace, export, torch.compile or a torch.func transform records the call."""
    return is_capturing() or under_functorch(*tensors)


@register_attention(
    "slide",
    title="Slide attention",
    paper="Pan et al., Slide-Transformer: Hierarchical Vision Transformer with Local Self-Attention, "
    "CVPR 2023 (arXiv 2304.04237)",
    cost="local",
    receptive_field="local",
    window_arg="kernel_size",
    window_centred=True,
    positional="implicit (zero-padded borders, learned offset bias, learned deformed shifts)",
    export=("onnx", "compile", "torchscript"),
    impls=("reference", "functional", "inplace"),
    test_kwargs={"num_heads": 2, "kernel_size": 3},
    test_variants=({"deformed": False, "mask_padding": True},),  # the pure-shift loops, the padding mask
    bench_kwargs={"num_heads": 4, "kernel_size": 3},
    bench_variants={
        "slide-reparam": {"num_heads": 4, "kernel_size": 3, "_reparameterize": True},
        "slide-shift": {"num_heads": 4, "kernel_size": 3, "deformed": False},
        "slide-k7-shift": {"num_heads": 4, "kernel_size": 7, "deformed": False},
        "slide-k7": {"num_heads": 4, "kernel_size": 7},
    },
)
class SlideAttention(SpatialAttention):
    """k x k slide attention with optional deformed shifting (see module docstring).

    Args:
        dim: input channels C.
        dim_out: output channels (default C).
        num_heads: heads h (C must divide by h); head width d = C / h.
        kernel_size: odd window side k.
        deformed: add the learnable depthwise shift conv (deformed shifting).
        qkv_bias: bias on the q, k, v projection (``qkv``: Linear(C, 3C) per pixel).
        offset_bias: learned bias (h, k*k) added to the keys, one per head and window offset
            (called ``key_bias`` before; old state dicts load).
        mask_padding: exclude neighbours outside the image from the softmax.
        impl: "auto", "reference", "functional" or "inplace" (module docstring; auto:
            "functional" while a trace, export, compile or torch.func transform records the
            call, else "inplace").
        device, dtype: factory arguments for the parameters and buffers.

    Parameters use the layout of ``"local"`` (``qkv``, ``proj``) so weights copy across.
    Buffers: ``shift_weight`` (d*k*k, 1, k, k), the frozen one-hot kernels (not saved);
    ``shift_merged`` (deformed only), whether ``deform`` holds the merged kernel.
    Shapes: (B, C, H, W) -> (B, C_out, H, W); logits (B, h, k*k, H, W).
    """

    #: Constructor arguments renamed in the one vocabulary (old -> new); create_attention names the new one.
    renamed_args = {"key_bias": "offset_bias"}
    #: State-dict keys renamed (old -> new); old state dicts load (see _load_from_state_dict).
    renamed_keys = {"key_bias": "offset_bias"}

    shift_weight: torch.Tensor
    shift_merged: torch.Tensor

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        *,
        num_heads: int = 4,
        kernel_size: int = 3,
        deformed: bool = True,
        qkv_bias: bool = True,
        offset_bias: bool = True,
        mask_padding: bool = False,
        impl: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(dim, dim_out, impl=impl)
        check_positive_int("num_heads", num_heads)
        check_divisible("dim", dim, "num_heads", num_heads)
        check_odd("kernel_size", kernel_size)
        for name, val in (
            ("deformed", deformed),
            ("qkv_bias", qkv_bias),
            ("offset_bias", offset_bias),
            ("mask_padding", mask_padding),
        ):
            if not isinstance(val, bool):
                raise TypeError(f"{name} must be a bool, got {type(val).__name__} {val!r}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.kernel_size = kernel_size
        self.receptive_field = kernel_size
        self.deformed = deformed
        self.mask_padding = mask_padding
        self.scale = self.head_dim**-0.5
        d, kk = self.head_dim, kernel_size * kernel_size
        # the one-hot buffer and the learned shift conv hold d * (k*k)^2 numbers each
        shift_numbers = d * kk * kk * (2 if deformed else 1) + 4 * dim * dim
        check_work(
            "SlideAttention",
            f"kernel_size={kernel_size} with head width {d} (dim={dim}, num_heads={num_heads})",
            params=shift_numbers,
        )
        fk: dict[str, Any] = {"device": device, "dtype": dtype}
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **fk)
        self.proj = nn.Linear(dim, self.dim_out, **fk)
        # Fixed path: the k*k one-hot shifts of each head channel (frozen, follows .to()).
        self.register_buffer("shift_weight", one_hot_shift_kernels(d, kernel_size, **fk), persistent=False)
        # Learned path (deformed shifting): same shape, shared by K, V and all heads.
        self.deform = (
            nn.Conv2d(d, d * kk, kernel_size, padding=kernel_size // 2, groups=d, bias=True, **fk) if deformed else None
        )
        self.offset_bias = nn.Parameter(torch.zeros(num_heads, kk, **fk)) if offset_bias else None
        #: True once :meth:`reparameterize` has folded the fixed shifts into ``deform``.
        self.reparameterized = False
        # The same flag in the state dict, so merged weights load as merged (see _load_from_state_dict).
        if deformed:
            self.register_buffer("shift_merged", torch.zeros((), dtype=torch.bool, device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as the authors do: default init for the projections and the learned
        shifts, truncated normal (std 0.02) for the offset bias; rebuild the one-hot kernels
        and clear the merge."""
        self.qkv.reset_parameters()
        self.proj.reset_parameters()
        w = self.shift_weight
        self.shift_weight = one_hot_shift_kernels(self.head_dim, self.kernel_size, dtype=w.dtype, device=w.device)
        if self.deform is not None:
            self.deform.reset_parameters()
            self._set_merged(False)
        if self.offset_bias is not None:
            nn.init.trunc_normal_(self.offset_bias, std=0.02)

    # -- re-parameterisation -------------------------------------------------
    @torch.no_grad()
    def reparameterize(self) -> SlideAttention:
        """Merge the fixed and the learned shift conv into ``deform`` in place (inference).

        W = W_fixed + W_learned, b = b_fixed + b_learned (b_fixed = 0). Idempotent; a no-op
        without deformed shifting. After the merge the state dict holds the merged kernel
        (load such a checkpoint into a module on which ``reparameterize()`` was called).

        The merged kernel is frozen (``deform.weight.requires_grad`` False; un-merging, by
        ``reset_parameters()`` or loading training weights, thaws it): an optimizer leaves it
        alone, so weight decay cannot shrink the fixed shifts inside it while the rest trains on.
        Thawed by hand it trains with the un-merged module's gradients (the fixed part is a
        constant), but weight decay then also acts on the fixed shifts.
        """
        if self.deform is not None and not self.reparameterized:
            self.deform.weight.add_(self.shift_weight.to(self.deform.weight.dtype))
            self._set_merged(True)
        return self

    def _set_merged(self, merged: bool) -> None:
        if self.deform is not None and merged != self.reparameterized:
            self.deform.weight.requires_grad_(not merged)  # the merged kernel is frozen (see reparameterize)
        self.reparameterized = merged
        if self.deform is not None:
            with torch.no_grad():
                self.shift_merged.fill_(merged)

    #: State-dict keys this module loads without (visattn.load_weights does not call them missing).
    _optional_state_keys = ("shift_merged",)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        self._rename_old_keys(state_dict, prefix)  # key_bias -> offset_bias, before reading the keys below
        # ``deform.weight`` means the learned kernel alone or the merged one, as ``shift_merged`` says:
        # take the incoming meaning, so a re-parameterised checkpoint loads merged into a fresh module
        # (and a training checkpoint un-merges a re-parameterised one). A state dict without the flag
        # (written before it existed) is the training form.
        # A partial state dict (strict=False) without ``deform.weight`` leaves the weight, and so
        # its meaning, as it is.
        key = prefix + "shift_merged"
        merged = self.reparameterized
        if self.deform is not None:
            incoming = state_dict.get(key)
            if incoming is not None and (not isinstance(incoming, torch.Tensor) or incoming.numel() != 1):
                error_msgs.append(f"{key}: expected a one-element bool tensor, got {incoming!r}")
                return
            if prefix + "deform.weight" in state_dict:
                merged = bool(incoming) if incoming is not None else False
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if self.deform is not None:
            self._set_merged(merged)  # after the buffer copy, which a partial state dict may also make
            if key in missing_keys:
                missing_keys.remove(key)

    def merged_shift(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The single depthwise conv equal to both paths: (weight (d*k*k, 1, k, k), bias (d*k*k,)),
        or None without deformed shifting (the pure one-hot shifts, no bias)."""
        if self.deform is None:
            return None
        w = self.deform.weight
        if not self.reparameterized:
            w = w + self.shift_weight.to(w.dtype)
        b = self.deform.bias if self.deform.bias is not None else torch.zeros_like(w[:, 0, 0, 0])
        return w, b

    # -- implementations ---------------------------------------------------------
    def _core_tensors(self) -> list[torch.Tensor | None]:
        """The tensors the attention core differentiates: q, k, v come from ``qkv``."""
        deform = list(self.deform.parameters()) if self.deform is not None else []
        return [*self.qkv.parameters(), *deform, self.offset_bias]

    def _auto_impl(self, x: torch.Tensor) -> str:
        """ "functional" while a trace, export, compile or torch.func transform records the call,
        else "inplace" (independent of grad mode)."""
        return "functional" if _recorded(x, *self._core_tensors()) else "inplace"

    def _forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The definition, computed literally: k*k keys and values materialised by the fixed
        one-hot conv plus (deformed) the learned conv, as in the authors' code.

        x: (B, C, H, W) -> (B, C_out, H, W).
        """
        bsz, c, h, w = x.shape
        nh, d, ks = self.num_heads, self.head_dim, self.kernel_size
        kk, n = ks * ks, h * w
        q, k_, v = self._qkv(x)  # (B, C, H, W); q already scaled by d^-1/2
        dtype = q.dtype

        def shifted(t):  # K (B, C, H, W) -> K_i (B, h, d, k*k, n)
            t = t.reshape(bsz * nh, d, h, w)
            out = F.conv2d(t, self.shift_weight.to(t.dtype), padding=ks // 2, groups=d)  # one-hot: K[p + o_i]
            if self.deform is not None:
                wl, bl = self.deform.weight.to(t.dtype), self.deform.bias
                if self.reparameterized:  # deform holds the merged kernel: undo the fixed part
                    wl = wl - self.shift_weight.to(wl.dtype)
                out = out + F.conv2d(t, wl, None if bl is None else bl.to(t.dtype), padding=ks // 2, groups=d)
            return out.reshape(bsz, nh, d, kk, n)

        with autocast_off(x.device.type):  # the attention core runs in float32 for half inputs
            q, k_, v = upcast(q, k_, v)
            keys, vals = shifted(k_), shifted(v)  # K_i, V_i
            if self.offset_bias is not None:
                keys = keys + self.offset_bias.to(keys.dtype).view(1, nh, 1, kk, 1)
            logits = (q.reshape(bsz, nh, d, 1, n) * keys).sum(2)  # q . K_i: (B, h, k*k, n)
            if self.mask_padding:
                logits = logits.masked_fill(~padding_mask(h, w, ks, device=x.device), float("-inf"))
            attn = softmax_fp32(logits, 2)  # over the k*k neighbours
            o = (attn.unsqueeze(2) * vals).sum(3).reshape(bsz, c, h, w).to(dtype)  # sum_i a_i V_i
        return F.conv2d(o, self.proj.weight[:, :, None, None], self.proj.bias)

    def _forward_functional(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_core(x, "functional")

    def _forward_inplace(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_core(x, "inplace")

    def _forward_core(self, x: torch.Tensor, impl: str) -> torch.Tensor:
        qkv = self._qkv_packed(x)
        dtype = qkv.dtype  # the module's dtype, or the autocast dtype
        with autocast_off(x.device.type):  # the attention core runs in float32 for half inputs
            (qkv,) = upcast(qkv)
            o = self._attend(qkv, impl).to(dtype)  # (B, C, H, W)
        return self._project_out(o, _token_layout(x))

    def _project_out(self, o: torch.Tensor, token_layout: bool) -> torch.Tensor:
        """The output projection of o (B, C, H, W): a 1x1 conv, or, when the input came as a
        view of tokens (B, N, C) (a transformer block's ``from_tokens``), one batched GEMM whose
        output is in that layout too, returned as its (B, C_out, H, W) view: the block's
        ``to_tokens`` then reads contiguous tokens instead of a transposed map."""
        if not token_layout:
            return F.conv2d(o, self.proj.weight[:, :, None, None], self.proj.bias)
        bsz, c, h, w = o.shape
        wt = self.proj.weight.t().to(o.dtype).expand(bsz, c, self.dim_out)
        ot = o.reshape(bsz, c, h * w).transpose(1, 2)  # (B, N, C), a view
        if self.proj.bias is None:
            t = torch.bmm(ot, wt)
        else:
            t = torch.baddbmm(self.proj.bias.to(o.dtype), ot, wt)
        return t.transpose(1, 2).view(bsz, self.dim_out, h, w)

    def _qkv_packed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 3C, H, W) contiguous: q * head_dim^-1/2, k, v stacked on the
        channels; the scale is folded into the projection so it costs no pass over the map.
        One batched GEMM (3C x C) @ (C x H W) per image writes the channels-first result directly
        from either layout of x (channels-first, or a view of tokens (B, N, C), read transposed
        by the GEMM), where a 1x1 conv on the token view computes channels-last and copies it."""
        c = self.dim
        gain = torch.ones(3 * c, 1, dtype=self.qkv.weight.dtype, device=self.qkv.weight.device)
        gain[:c] = self.scale
        bsz, _, h, w = x.shape
        wt = (self.qkv.weight * gain).to(x.dtype).expand(bsz, 3 * c, c)
        xm = x.reshape(bsz, c, h * w)  # a view for both layouts
        if self.qkv.bias is None:
            out = torch.bmm(wt, xm)
        else:
            out = torch.baddbmm((self.qkv.bias * gain[:, 0]).to(x.dtype)[:, None], wt, xm)
        return out.view(bsz, 3 * c, h, w)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> q * head_dim^-1/2, k, v, each (B, C, H, W)."""
        q, k_, v = self._qkv_packed(x).chunk(3, dim=1)
        return q, k_, v

    def _attend(self, qkv: torch.Tensor, impl: str) -> torch.Tensor:
        """qkv (B, 3C, H, W) (q scaled) in the compute dtype -> attention output (B, C, H, W)."""
        bsz, c3, h, w = qkv.shape
        c = c3 // 3
        nh, d, ks = self.num_heads, self.head_dim, self.kernel_size
        kk, r, dt = ks * ks, ks // 2, qkv.dtype
        merged = self.merged_shift()
        w3: torch.Tensor | None = None
        b2: torch.Tensor | None = None
        if merged is not None:
            w3 = merged[0].to(dt).view(d, kk, kk)  # [c, i, j]: weight of shift j in neighbour i
            b2 = merged[1].to(dt).view(d, kk)  # [c, i]
        kb = self.offset_bias.to(dt) if self.offset_bias is not None else None
        valid = padding_mask(h, w, ks, device=qkv.device).view(kk, h, w) if self.mask_padding else None
        if impl == "inplace":
            if _recorded(qkv, w3, b2, kb):
                raise ValueError(
                    "SlideAttention: impl='inplace' runs an in-place loop (a custom autograd Function "
                    "under autograd), which tracing, ONNX export, torch.compile and torch.func transforms "
                    "cannot record; use impl='functional' (or 'auto', which picks it there)"
                )
            o = attend_inplace_qkv(qkv, nh, ks, w3, b2, kb, valid)
        else:
            q, k_, v = qkv.chunk(3, dim=1)
            q5 = q.reshape(bsz, nh, d, h, w)
            kp = F.pad(k_, (r, r, r, r)).view(bsz, nh, d, h + 2 * r, w + 2 * r)
            vp = F.pad(v, (r, r, r, r)).view(bsz, nh, d, h + 2 * r, w + 2 * r)
            o = attend_functional(q5, kp, vp, ks, w3, b2, kb, valid)
        return o.reshape(bsz, c, h, w)

    # -- cost --------------------------------------------------------------------
    def peak_intermediate_bytes(self, height: int, width: int, batch: int = 1, itemsize: int = 4) -> int:
        """Largest of: the padded keys (B, C, H+2r, W+2r), the attention weights (B, h, k*k, H, W)
        (kept for the backward in training), both in the compute dtype (float32 for half input);
        with ``impl="reference"`` the materialised keys (B, C, k*k, H, W)."""
        r, kk = self.kernel_size // 2, self.kernel_size**2
        size = max(itemsize, 4)  # half input runs the core in float32
        if self.impl == "reference":
            return batch * self.dim * kk * height * width * size
        return batch * max(self.dim * (height + 2 * r) * (width + 2 * r), self.num_heads * kk * height * width) * size

    def flop_breakdown(self, height: int, width: int, batch: int = 1) -> dict[str, int]:
        n, c, kk = height * width, self.dim, self.kernel_size**2
        counted = 2 * n * c * 3 * c + 2 * n * c * self.dim_out  # qkv, proj (1x1 convs)
        uncounted = 2 * 2 * n * c * kk  # q * K_j and a * V_j, elementwise
        if self.deform is not None:
            # merged shift applied through GEMMs: (k*k x k*k) per channel for logits and output,
            # plus the shift-bias terms (k*k per channel each)
            counted += 2 * 2 * n * c * (kk * kk + kk)
        if self.offset_bias is not None:
            uncounted += 2 * n * self.num_heads * kk + 2 * n * c  # bias * sum(q); sum(q)
        return {"counted": batch * counted, "uncounted": batch * uncounted}

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, "
            f"deformed={self.deformed}, offset_bias={self.offset_bias is not None}, "
            f"mask_padding={self.mask_padding}, reparameterized={self.reparameterized}"
        )
