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
* ``"shifts"`` — never builds the k*k copies: a shift is a view of a zero-padded map, so the
  logits are accumulated offset by offset from slices of the padded K, and with deformed
  shifting the merged kernel is applied to the *products* instead of the keys (linearity):

      logit_i = sum_j sum_c W[c, i, j] q[c] K[c, p + o_j] + sum_c b[c, i] q[c]     (GEMM over c)
      out[c]  = sum_j (sum_i W[c, i, j] a_i) V[c, p + o_j] + sum_i b[c, i] a_i     (GEMM over i)

  When no autograd graph, trace, export, ``torch.compile`` or ``torch.func`` transform records
  the call, the loop runs in place over row chunks of the image, so its memory is bounded
  independently of k*k (pure shifts do not even pad: a missing neighbour has key and value 0,
  so each offset only touches the pixels whose neighbour exists); otherwise the same
  arithmetic runs out of place, which autograd differentiates through (storing a product and a
  slice per offset).
* ``"autograd"`` — the training path: the in-place loop as a custom autograd Function that
  saves only q, K, V and the attention weights and walks the offsets again in its backward.
  It cannot run under tracing, ONNX export, ``torch.compile`` or ``torch.func`` transforms
  (a clear error says so).

``impl="auto"`` (the default) picks ``"autograd"`` when a gradient is needed (grad mode on and
the input or a parameter of qkv / the shift conv / the offset bias requires grad) and no
trace, export, compile or ``torch.func`` transform is running; ``"shifts"`` otherwise.

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
from visattn.registry import register_attention

__all__ = ["SlideAttention", "one_hot_shift_kernels"]

#: Elements per row chunk of the in-place path (4 MiB of float32 per buffer): smaller chunks
#: pay Python overhead per offset, larger ones leave the cache (measured on a 2-core CPU).
_CHUNK_ELEMS = 1 << 20
#: The same for the backward of the training path, which holds more per-chunk buffers (the
#: chunk's padded K, V and their gradients); smaller chunks keep its peak memory low.
_BWD_CHUNK_ELEMS = 1 << 17
#: ... and at least this many chunks per map (the chunk's ~10 buffers stay small next to q, k, v).
_BWD_CHUNKS_MIN = 4


def one_hot_shift_kernels(channels: int, kernel_size: int, dtype=None, device=None) -> torch.Tensor:
    """Depthwise one-hot kernels (channels * k*k, 1, k, k): output channel c*k*k + i copies
    input channel c shifted by offset i = (i // k - k//2, i % k - k//2).

    ``F.conv2d(x, w, padding=k//2, groups=channels)`` equals ``F.unfold(x, k, padding=k//2)``
    element for element (both orders are (channel, offset)).
    """
    kk = kernel_size * kernel_size
    eye = torch.eye(kk, dtype=dtype, device=device).view(1, kk, kernel_size, kernel_size)
    return eye.expand(channels, kk, kernel_size, kernel_size).reshape(channels * kk, 1, kernel_size, kernel_size)


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
    impls=("reference", "shifts", "autograd"),
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
        impl: "auto", "reference", "shifts" or "autograd" (module docstring; auto: "autograd"
            when a gradient is needed outside trace/export/compile/torch.func, else "shifts").
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
        """ "autograd" when the core needs a gradient and nothing records the call, else "shifts"."""
        if not torch.is_grad_enabled():
            return "shifts"
        tensors = [x, *self._core_tensors()]
        if not any(t is not None and t.requires_grad for t in tensors):
            return "shifts"
        return "shifts" if _recorded(*tensors) else "autograd"

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

    def _forward_shifts(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_core(x, "shifts")

    def _forward_autograd(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_core(x, "autograd")

    def _forward_core(self, x: torch.Tensor, impl: str) -> torch.Tensor:
        q, k_, v = self._qkv(x)
        dtype = q.dtype  # the module's dtype, or the autocast dtype
        with autocast_off(x.device.type):  # the attention core runs in float32 for half inputs
            q, k_, v = upcast(q, k_, v)
            o = self._attend(q, k_, v, impl).to(dtype)  # (B, C, H, W)
        return F.conv2d(o, self.proj.weight[:, :, None, None], self.proj.bias)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> q * head_dim^-1/2, k, v, each (B, C, H, W); the scale is folded into
        the projection so it costs no pass over the map."""
        c = self.dim
        gain = torch.ones(3 * c, 1, dtype=self.qkv.weight.dtype, device=self.qkv.weight.device)
        gain[:c] = self.scale
        wt = (self.qkv.weight * gain)[:, :, None, None]
        bias = self.qkv.bias * gain[:, 0] if self.qkv.bias is not None else None
        qkv = F.conv2d(x, wt, bias).contiguous()  # (B, 3C, H, W)
        q, k_, v = qkv.chunk(3, dim=1)
        return q, k_, v

    def _attend(self, q: torch.Tensor, k_: torch.Tensor, v: torch.Tensor, impl: str) -> torch.Tensor:
        """q (scaled), k, v: (B, C, H, W) in the compute dtype -> attention output (B, C, H, W)."""
        bsz, c, h, w = q.shape
        nh, d, ks = self.num_heads, self.head_dim, self.kernel_size
        kk, r, dt = ks * ks, ks // 2, q.dtype
        q5, k5, v5 = q.view(bsz, nh, d, h, w), k_.view(bsz, nh, d, h, w), v.view(bsz, nh, d, h, w)
        merged = self.merged_shift()
        w3: torch.Tensor | None = None
        b2: torch.Tensor | None = None
        if merged is not None:
            w3 = merged[0].to(dt).view(d, kk, kk)  # [c, i, j]: weight of shift j in neighbour i
            b2 = merged[1].to(dt).view(d, kk)  # [c, i]
        kb = self.offset_bias.to(dt) if self.offset_bias is not None else None
        valid = padding_mask(h, w, ks, device=q.device).view(kk, h, w) if self.mask_padding else None
        recorded = _recorded(q, k_, v, w3, b2, kb)
        if impl == "autograd":
            if recorded:
                raise ValueError(
                    "SlideAttention: impl='autograd' runs a custom autograd Function with an in-place "
                    "forward, which tracing, ONNX export, torch.compile and torch.func transforms cannot "
                    "record; use impl='shifts' (or 'auto', which picks it there)"
                )
            o = _SlideAttend.apply(q5, k5, v5, w3, b2, kb, valid, ks)
        elif recorded or (
            torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k_, v, w3, b2, kb))
        ):
            # out of place: what autograd, a trace or a transform can record
            kp = F.pad(k_, (r, r, r, r)).view(bsz, nh, d, h + 2 * r, w + 2 * r)
            vp = F.pad(v, (r, r, r, r)).view(bsz, nh, d, h + 2 * r, w + 2 * r)
            o = _attend_functional(q5, kp, vp, ks, w3, b2, kb, valid)
        elif w3 is None:
            # pure shifts: slices of the unpadded maps, restricted to where the neighbour exists
            o = _attend_shifts_inplace(q5, k5, v5, ks, kb, valid)
        else:
            o = _attend_inplace(q5, k5, v5, ks, w3, b2, kb, valid)
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


# ---------------------------------------------------------------------------
# The two evaluations of the same arithmetic.
# q: (B, h, d, H, W) scaled queries; kp, vp: (B, h, d, H+2r, W+2r) zero-padded keys/values;
# w3: (d, k*k, k*k) merged shift kernels [c, i, j] or None (pure shifts); b2: (d, k*k);
# kb: (h, k*k) key bias or None; valid: (k*k, H, W) bool or None.
# ---------------------------------------------------------------------------


def _attend_functional(q, kp, vp, ks, w3, b2, kb, valid):
    bsz, nh, d, h, w = q.shape
    kk = ks * ks
    shifts = [(j // ks, j % ks) for j in range(kk)]
    if w3 is None:
        logits = torch.stack([(q * kp[..., dy : dy + h, dx : dx + w]).sum(2) for dy, dx in shifts], 2)
    else:
        qm = q.reshape(bsz, nh, d, h * w)
        logits = torch.matmul(b2.t(), qm)  # (B, h, k*k, n): sum_c b[c, i] q[c]
        for j, (dy, dx) in enumerate(shifts):
            prod = (q * kp[..., dy : dy + h, dx : dx + w]).reshape(bsz, nh, d, h * w)
            logits = logits + torch.matmul(w3[:, :, j].t(), prod)
        logits = logits.view(bsz, nh, kk, h, w)
    if kb is not None:
        logits = logits + kb.view(1, nh, kk, 1, 1) * q.sum(2, keepdim=True)
    if valid is not None:
        logits = logits.masked_fill(~valid, float("-inf"))
    attn = torch.softmax(logits, 2)  # (B, h, k*k, H, W)
    if w3 is None:
        out = attn[:, :, 0:1] * vp[..., 0:h, 0:w]
        for j in range(1, kk):
            dy, dx = shifts[j]
            out = out + attn[:, :, j : j + 1] * vp[..., dy : dy + h, dx : dx + w]
        return out
    am = attn.reshape(bsz, nh, kk, h * w)
    out = torch.matmul(b2, am).view(bsz, nh, d, h, w)  # sum_i b[c, i] a_i
    for j, (dy, dx) in enumerate(shifts):
        g = torch.matmul(w3[:, :, j], am).view(bsz, nh, d, h, w)  # sum_i W[c, i, j] a_i
        out = out + g * vp[..., dy : dy + h, dx : dx + w]
    return out


def _batched_kernels(w3, b2, bh):
    """Per-offset views of the merged kernel for bmm over B*h: W[:, :, j]^T (k*k, d) and
    W[:, :, j] (d, k*k) for each j, and b^T (k*k, d), b (d, k*k), expanded over the batch."""
    d, kk = b2.shape
    wl = [w3[:, :, j].t().contiguous().expand(bh, kk, d) for j in range(kk)]
    wo = [w3[:, :, j].contiguous().expand(bh, d, kk) for j in range(kk)]
    return wl, wo, b2.t().contiguous().expand(bh, kk, d), b2.contiguous().expand(bh, d, kk)


def _padded_rows(t, y0, y1, r):
    """Rows y0 - r .. y1 + r of t (B, h, d, H, W), zero-padded by r columns each side and by
    zero rows where they fall outside the map: (B, h, d, y1 - y0 + 2r, W + 2r)."""
    a0, a1 = max(y0 - r, 0), min(y1 + r, t.shape[3])
    return F.pad(t[..., a0:a1, :], (r, r, a0 - (y0 - r), y1 + r - a1))


@torch.no_grad()
def _attend_inplace(q, k, v, ks, w3, b2, kb, valid, attn_out=None):
    """The forward in place over row chunks; q, k, v unpadded (B, h, d, H, W): each chunk pads
    only its own rows (and halo) of K and V. ``attn_out`` (B, h, k*k, H, W), when given,
    receives the attention weights (for the backward of :class:`_SlideAttend`)."""
    bsz, nh, d, h, w = q.shape
    kk, r, dt, dev = ks * ks, ks // 2, q.dtype, q.device
    bh = bsz * nh
    out = torch.empty(bsz, nh, d, h, w, dtype=dt, device=dev)
    rows = max(1, min(h, _CHUNK_ELEMS // (bsz * nh * max(d, kk) * w)))
    shifts = [(j // ks, j % ks) for j in range(kk)]
    if w3 is not None:
        wl, wo, b2t, b2e = _batched_kernels(w3, b2, bh)
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        m = y1 - y0
        qc, oc = q[..., y0:y1, :], out[..., y0:y1, :]
        kp, vp = _padded_rows(k, y0, y1, r), _padded_rows(v, y0, y1, r)
        tmp = torch.empty(bsz, nh, d, m, w, dtype=dt, device=dev)
        if w3 is None:
            logits = torch.empty(bsz, nh, kk, m, w, dtype=dt, device=dev)
            for j, (dy, dx) in enumerate(shifts):
                torch.mul(qc, kp[..., dy : dy + m, dx : dx + w], out=tmp)
                torch.sum(tmp, 2, out=logits[:, :, j])
        else:
            qm = qc.reshape(bh, d, m * w)
            logits = torch.bmm(b2t, qm)  # (B*h, k*k, m*w)
            for j, (dy, dx) in enumerate(shifts):
                torch.mul(qc, kp[..., dy : dy + m, dx : dx + w], out=tmp)
                torch.baddbmm(logits, wl[j], tmp.view(bh, d, m * w), out=logits)  # (counted, unlike baddbmm_)
            logits = logits.view(bsz, nh, kk, m, w)
        if kb is not None:
            logits.addcmul_(kb.view(1, nh, kk, 1, 1), qc.sum(2, keepdim=True))
        if valid is not None:
            logits.masked_fill_(~valid[:, y0:y1], float("-inf"))
        # softmax over the k*k neighbours, in place
        logits.sub_(logits.amax(2, keepdim=True)).exp_()
        logits.div_(logits.sum(2, keepdim=True))
        if attn_out is not None:
            attn_out[..., y0:y1, :].copy_(logits)
        if w3 is None:
            dy, dx = shifts[0]
            torch.mul(logits[:, :, 0:1], vp[..., dy : dy + m, dx : dx + w], out=oc)
            for j in range(1, kk):
                dy, dx = shifts[j]
                oc.addcmul_(logits[:, :, j : j + 1], vp[..., dy : dy + m, dx : dx + w])
        else:
            am = logits.view(bh, kk, m * w)
            g = tmp.view(bh, d, m * w)
            torch.bmm(b2e, am, out=g)
            oc.copy_(tmp)
            for j, (dy, dx) in enumerate(shifts):
                torch.bmm(wo[j], am, out=g)
                oc.addcmul_(tmp, vp[..., dy : dy + m, dx : dx + w])
    return out


@torch.no_grad()
def _attend_shifts_inplace(q, k, v, ks, kb, valid):
    """Pure shifts without padding copies. q, k, v: (B, h, d, H, W) (views allowed).

    A neighbour outside the image has key 0 and value 0: its logit is the key-bias term alone
    and it adds nothing to the output, so each offset only touches the rectangle of pixels
    whose neighbour exists.
    """
    bsz, nh, d, h, w = q.shape
    kk, r, dt, dev = ks * ks, ks // 2, q.dtype, q.device
    out = torch.empty(bsz, nh, d, h, w, dtype=dt, device=dev)
    rows = max(1, min(h, _CHUNK_ELEMS // (bsz * nh * max(d, kk) * w)))
    offsets = [(j // ks - r, j % ks - r) for j in range(kk)]
    centre = kk // 2
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        m = y1 - y0
        tmp = torch.empty(bsz, nh, d, m, w, dtype=dt, device=dev)
        logits = torch.zeros(bsz, nh, kk, m, w, dtype=dt, device=dev)
        rects = []
        for j, (oy, ox) in enumerate(offsets):
            ya, yb = max(y0, -oy), min(y1, h - oy)  # output rows whose neighbour row exists
            xa, xb = max(0, -ox), min(w, w - ox)
            rects.append((ya, yb, xa, xb))
            if ya >= yb or xa >= xb:
                continue
            t = tmp[..., : yb - ya, : xb - xa]
            torch.mul(q[..., ya:yb, xa:xb], k[..., ya + oy : yb + oy, xa + ox : xb + ox], out=t)
            torch.sum(t, 2, out=logits[:, :, j, ya - y0 : yb - y0, xa:xb])
        if kb is not None:
            logits.addcmul_(kb.view(1, nh, kk, 1, 1), q[..., y0:y1, :].sum(2, keepdim=True))
        if valid is not None:
            logits.masked_fill_(~valid[:, y0:y1], float("-inf"))
        logits.sub_(logits.amax(2, keepdim=True)).exp_()
        logits.div_(logits.sum(2, keepdim=True))
        oc = out[..., y0:y1, :]
        torch.mul(logits[:, :, centre : centre + 1], v[..., y0:y1, :], out=oc)  # the centre always exists
        for j, (oy, ox) in enumerate(offsets):
            ya, yb, xa, xb = rects[j]
            if j == centre or ya >= yb or xa >= xb:
                continue
            oc[..., ya - y0 : yb - y0, xa:xb].addcmul_(
                logits[:, :, j : j + 1, ya - y0 : yb - y0, xa:xb], v[..., ya + oy : yb + oy, xa + ox : xb + ox]
            )
    return out


# ---------------------------------------------------------------------------
# Training path: the same arithmetic as a custom autograd Function. Autograd through the
# offset loop stores one (B, h, d, H, W) product and one shifted slice per offset (k*k
# copies of the keys and values); this Function saves only q, K, V (unpadded) and the
# attention weights (B, h, k*k, H, W), and its backward walks the offsets again with slices.
# ---------------------------------------------------------------------------


class _SlideAttend(torch.autograd.Function):
    """(q, k, v, w3, b2, kb, valid, ks) -> out (B, h, d, H, W); q, k, v unpadded (B, h, d, H, W),
    the rest as above. Saves q, k, v (views of the projection's output) and the weights."""

    @staticmethod
    def forward(ctx, q, k, v, w3, b2, kb, valid, ks):
        attn = torch.empty(q.shape[0], q.shape[1], ks * ks, q.shape[3], q.shape[4], dtype=q.dtype, device=q.device)
        out = _attend_inplace(q, k, v, ks, w3, b2, kb, valid, attn_out=attn)
        ctx.save_for_backward(q, k, v, w3, b2, kb, attn)
        ctx.ks, ctx.valid = ks, valid
        return out

    @staticmethod
    def backward(ctx, gout):
        q, k, v, w3, b2, kb, attn = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True (double backward: gradient penalties, meta-learning): differentiate
            # the out-of-place form with autograd, so the gradients are differentiable themselves
            return (
                *_attend_backward_differentiable(gout, q, k, v, w3, b2, kb, ctx.valid, ctx.ks, ctx.needs_input_grad),
                None,
                None,
            )
        grads = _attend_backward(gout.contiguous(), q, k, v, w3, b2, kb, attn, ctx.ks, ctx.needs_input_grad)
        return (*grads, None, None)


def _attend_backward_differentiable(gout, q, k, v, w3, b2, kb, valid, ks, needs):
    """The gradients of :class:`_SlideAttend` as a differentiable graph (autograd through
    :func:`_attend_functional`); used only when the backward itself is recorded."""
    r = ks // 2
    inputs = (q, k, v, w3, b2, kb)
    wanted = [i for i, t in enumerate(inputs) if needs[i] and t is not None]
    kp, vp = F.pad(k, (r, r, r, r)), F.pad(v, (r, r, r, r))
    out = _attend_functional(q, kp, vp, ks, w3, b2, kb, valid)
    got = torch.autograd.grad(out, [inputs[i] for i in wanted], gout, create_graph=True, allow_unused=True)
    grads = [None] * 6
    for i, g in zip(wanted, got):
        grads[i] = g
    return tuple(grads)


def _attend_backward(gout, q, k, v, w3, b2, kb, attn, ks, needs):
    """Gradients of :func:`_attend_inplace` for (q, k, v, w3, b2, kb), chunked over rows;
    q, k, v unpadded (B, h, d, H, W): each chunk pads only its own rows (and halo) of K and V.

    With a_i the attention weights, G_j = sum_i W[:, i, j] a_i (the merged kernel seen from
    the output) and dL the softmax-backward of the logits:
        dV_j += G_j * gout,   dA_i = sum_c b[c, i] gout[c] + sum_j sum_c W[c, i, j] gout[c] V_j[c]
        dq = sum_i b[:, i] dL_i + sum_j H_j * K_j + sum_i kb_i dL_i,   dK_j += H_j * q,
        H_j = sum_i W[:, i, j] dL_i;   dW[c, i, j] = sum (a_i gout[c] V_j[c] + dL_i q[c] K_j[c]).
    Pure shifts (w3 None) are the case W = identity, b = 0.
    """
    bsz, nh, d, h, w = q.shape
    kk, r, dt, dev = ks * ks, ks // 2, q.dtype, q.device
    bh = bsz * nh
    dq = torch.empty_like(q)
    dk = torch.zeros_like(k)
    dv = torch.zeros_like(v)
    # weight gradients accumulated per (B*h) batch entry by baddbmm, summed over it at the end:
    # dwb[j] (B*h, d, k*k) holds dW[:, :, j], dbb (B*h, d, k*k) holds db
    dwb = torch.zeros(kk, bsz * nh, d, kk, dtype=dt, device=dev) if w3 is not None else None
    dbb = torch.zeros(bsz * nh, d, kk, dtype=dt, device=dev) if w3 is not None else None
    dkb = torch.zeros(nh, kk, dtype=dt, device=dev) if kb is not None else None
    rows = max(1, min(h, _BWD_CHUNK_ELEMS // (bsz * nh * max(d, kk) * w), max(2, h // _BWD_CHUNKS_MIN)))
    shifts = [(j // ks, j % ks) for j in range(kk)]
    if w3 is not None:
        wl, wo, b2t, b2e = _batched_kernels(w3, b2, bh)
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        m = y1 - y0
        mw = m * w
        lo, a0, a1 = y0 - r, max(y0 - r, 0), min(y1 + r, h)  # slab rows lo..y1+r, existing a0..a1
        kp, vp = _padded_rows(k, y0, y1, r), _padded_rows(v, y0, y1, r)
        dkp, dvp = torch.zeros_like(kp), torch.zeros_like(vp)
        a = attn[..., y0:y1, :].contiguous()  # (B, h, k*k, m, W)
        go = gout[..., y0:y1, :].contiguous()  # (B, h, d, m, W)
        qc = q[..., y0:y1, :]
        tmp = torch.empty(bsz, nh, d, m, w, dtype=dt, device=dev)
        tm = tmp.view(bh, d, mw)
        am, gom = a.view(bh, kk, mw), go.view(bh, d, mw)
        # dA: gradient of the attention weights
        if w3 is None:
            da = torch.empty(bsz, nh, kk, m, w, dtype=dt, device=dev)
            for j, (dy, dx) in enumerate(shifts):
                vj = vp[..., dy : dy + m, dx : dx + w]
                torch.mul(go, vj, out=tmp)
                torch.sum(tmp, 2, out=da[:, :, j])
                dvp[..., dy : dy + m, dx : dx + w].addcmul_(a[:, :, j : j + 1], go)
        else:
            da = torch.bmm(b2t, gom)  # (B*h, k*k, m*W)
            amt = am.transpose(1, 2)
            dbb.baddbmm_(gom, amt)
            for j, (dy, dx) in enumerate(shifts):
                vj = vp[..., dy : dy + m, dx : dx + w]
                torch.mul(go, vj, out=tmp)
                torch.baddbmm(da, wl[j], tm, out=da)
                dwb[j].baddbmm_(tm, amt)
                torch.bmm(wo[j], am, out=tm)  # G_j
                dvp[..., dy : dy + m, dx : dx + w].addcmul_(tmp, go)
            da = da.view(bsz, nh, kk, m, w)
        # softmax backward: dL = a * (dA - sum_i a_i dA_i); masked neighbours have a = 0
        dl = da.sub_((a * da).sum(2, keepdim=True)).mul_(a)  # (B, h, k*k, m, W)
        dlm = dl.view(bh, kk, mw)
        dqc = dq[..., y0:y1, :]
        if w3 is None:
            torch.mul(dl[:, :, 0:1], kp[..., 0:m, 0:w], out=dqc)
            for j, (dy, dx) in enumerate(shifts):
                kj = kp[..., dy : dy + m, dx : dx + w]
                if j:
                    dqc.addcmul_(dl[:, :, j : j + 1], kj)
                dkp[..., dy : dy + m, dx : dx + w].addcmul_(dl[:, :, j : j + 1], qc)
        else:
            qm = qc.reshape(bh, d, mw)
            dlt = dlm.transpose(1, 2)
            dbb.baddbmm_(qm, dlt)
            dqm = torch.bmm(b2e, dlm)  # (B*h, d, m*W)
            dqc.copy_(dqm.view(bsz, nh, d, m, w))
            for j, (dy, dx) in enumerate(shifts):
                kj = kp[..., dy : dy + m, dx : dx + w]
                torch.mul(qc, kj, out=tmp)
                dwb[j].baddbmm_(tm, dlt)
                torch.bmm(wo[j], dlm, out=tm)  # H_j
                dqc.addcmul_(tmp, kj)
                dkp[..., dy : dy + m, dx : dx + w].addcmul_(tmp, qc)
        if kb is not None:
            # logit_i += kb_i * sum_c q[c]
            dqc.add_((dl * kb.view(1, nh, kk, 1, 1)).sum(2, keepdim=True))
            dkb += (dl * qc.sum(2, keepdim=True)).sum((0, 3, 4))
        dk[..., a0:a1, :] += dkp[..., a0 - lo : a1 - lo, r : r + w]
        dv[..., a0:a1, :] += dvp[..., a0 - lo : a1 - lo, r : r + w]
    dw3 = dwb.sum(1).permute(1, 2, 0) if w3 is not None else None  # (d, k*k [i], k*k [j])
    db2 = dbb.sum(0) if w3 is not None else None
    return (
        dq if needs[0] else None,
        dk if needs[1] else None,
        dv if needs[2] else None,
        dw3 if needs[3] else None,
        db2 if needs[4] else None,
        dkb if needs[5] else None,
    )
