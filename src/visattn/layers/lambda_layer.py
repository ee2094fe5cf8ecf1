"""Lambda layer: content and position lambdas applied to multi-query heads.

Bello, "LambdaNetworks: Modeling Long-Range Interactions Without Attention", ICLR 2021
(arXiv 2102.08602). Implemented (paper notation, code names in brackets):

* queries Q = BN(W_Q x) in R^{n x k x h} [``q``], keys K = W_K x in R^{m x k x u} [``k``],
  values V = BN(W_V x) in R^{m x v x u} [``v``], v = d_out / h; 1x1 projections without bias,
  BatchNorm on queries and values only; the context is the input itself (m = n);
* keys normalised by a softmax over the m positions;
* content lambda lambda_c = sum_u softmax_m(K_u)^T V_u in R^{k x v} [``lam_c``];
* position lambdas lambda_p[n] = sum_u E[n]_u^T V_u with E[n, m] = R[pos_m - pos_n]
  [``lam``, after lambda_c is folded in], either by a *lambda convolution* over an r x r
  window with zero padding (``local_scope=r``) or from a *global* table R over every offset
  up to ``max_size`` (``local_scope=None``);
* y[n, head] = (lambda_c + lambda_p[n])^T q[n, head], heads concatenated: no softmax on
  queries, no scaling, no output projection, no residual;
* ``stride=2``: 3x3 average pooling (stride 2, padding 1) after the layer, as the paper's
  LambdaResNets down-sample.

Implementations (``impl=``):

* ``"reference"``: the paper's equations as written, with einsums over the n x m relative
  embeddings E[n, m] = R[pos_m - pos_n] gathered from the table (zero outside the r x r
  window). It builds n^2 k u values (9.9 GB at 112 x 112, k=16): for reading and testing.
* ``"direct"``: both position forms as one operation, a lambda convolution — the global
  form's kernel is the (2H-1) x (2W-1) slice of the table centred on offset 0, so no n x m
  tensor is built. It runs as ``conv3d`` over (v, H, W) with a (1, r, r) kernel.
* ``"fft"``: the same lambda convolution through real FFTs (chunked over key channels).
* ``"auto"`` picks ``"fft"`` when the kernel, cropped to the offsets an H x W map has
  (``min(r, 2H-1) x min(r, 2W-1)``, area A), and n = H*W satisfy
  ``n >= 400 and n * A >= 150000``, else ``"direct"`` (measured on CPU with torch 2.14,
  forward+backward with an input requiring grad, batch 4, C=64, 1 thread (issue 19): conv3d
  wins up to n A ~ 1e5 — r=7 up to ~44 x 44, r=11 up to ~28 x 28, r=23 on 14 x 14 — and the
  FFT from n A ~ 1.5e5: 0.79x conv3d for r=7 at 56 x 56, 0.54x for r=23 at 28 x 28). The rule
  does not depend on grad mode or device; while exporting to ONNX it
  picks ``"direct"`` (the FFT path does not export: ``impl="fft"`` raises ``ValueError`` there).

In "direct" and "fft" the per-position product with the queries runs as k fused
multiply-adds over (B, h, v, n) instead of n tiny matrix products (with a hand-written
backward of the same form when gradients are needed: same forward, less memory).

Not implemented: masked contexts (paper appendix B.2), the multi-head (non multi-query)
variant (B.3), contexts other than the input itself, the extra dimension of B.4.

BatchNorm with one value per channel (batch 1 and a 1x1 map) in training mode: torch's
BatchNorm refuses it (a variance of one value is undefined). The layer then normalises
with the running statistics, as in eval mode, and leaves them unchanged for that call.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from visattn.layers._ops import _HALF, is_capturing, under_functorch
from visattn.layers.base import SpatialAttention, check_choice, check_divisible, check_odd, check_positive_int
from visattn.registry import register_attention

__all__ = ["LambdaLayer", "lambda_conv", "query_contract"]


# ---------------------------------------------------------------------------
# y[b, h, v, n] = sum_k q[b, h, k, n] lam[b, k, v, n]  (per-position product with the queries)
# ---------------------------------------------------------------------------


def _contract_fwd(q: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    k = q.shape[2]
    y = q[:, :, 0, None, :] * lam[:, None, 0]  # (B, h, v, n)
    for i in range(1, k):  # k multiply-adds over (B, h, v, n): no (B, h, k, v, n) temporary
        y.addcmul_(q[:, :, i, None, :], lam[:, None, i])
    return y


class _QueryContract(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, lam):
        ctx.save_for_backward(q, lam)
        return _contract_fwd(q, lam)

    @staticmethod
    def backward(ctx, gy):
        q, lam = ctx.saved_tensors
        gq = glam = None
        if ctx.needs_input_grad[0]:
            # gq[b, h, k, n] = sum_v gy[b, h, v, n] lam[b, k, v, n]
            gq = gy[:, :, 0, None, :] * lam[:, None, :, 0, :]
            for j in range(1, lam.shape[2]):
                gq.addcmul_(gy[:, :, j, None, :], lam[:, None, :, j, :])
        if ctx.needs_input_grad[1]:
            # glam[b, k, v, n] = sum_h q[b, h, k, n] gy[b, h, v, n]
            glam = q[:, 0, :, None, :] * gy[:, 0, None, :, :]
            for i in range(1, q.shape[1]):
                glam.addcmul_(q[:, i, :, None, :], gy[:, i, None, :, :])
        return gq, glam


def query_contract(q: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Apply per-position lambdas to multi-query heads.

    q: (B, h, k, n), lam: (B, k, v, n) -> (B, h, v, n) with y = sum_k q * lam.
    """
    if under_functorch(q, lam):  # torch.func: plain ops (no Function without a vmap rule, no in-place loop)
        return torch.einsum("bhkn,bkvn->bhvn", q, lam)
    if torch.is_grad_enabled() and (q.requires_grad or lam.requires_grad):
        return _QueryContract.apply(q, lam)
    return _contract_fwd(q, lam)


# ---------------------------------------------------------------------------
# Lambda convolution: lam_p[b, k, v, y, x] = sum_{u, i, j} w[k, u, i, j] V[b, u, v, y+i-rh//2, x+j-rw//2]
# ---------------------------------------------------------------------------


def _crop_kernel(weight: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Drop kernel rows/columns whose offsets exceed the map (they only ever meet padding)."""
    rh, rw = weight.shape[-2:]
    eh, ew = min(rh, 2 * height - 1), min(rw, 2 * width - 1)
    if (eh, ew) == (rh, rw):
        return weight
    oh, ow = (rh - eh) // 2, (rw - ew) // 2
    return weight[..., oh : oh + eh, ow : ow + ew]


def _fast_len(n: int) -> int:
    """Smallest m >= n whose prime factors are 2, 3 and 5 (fast FFT length)."""
    m = int(n)  # a Python int: under torch.jit.trace a size is a 0-d tensor, which ``r //= p`` would change in place
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def _use_fft(kernel_hw: tuple[int, int], height: int, width: int) -> bool:
    # Measured on CPU (torch 2.14, forward+backward with an input requiring grad, batch 4, C=64,
    # 1 thread; issue 19): conv3d wins up to n * A ~ 1e5 (r=7 up to ~44 x 44, r=11 up to ~28 x 28,
    # r=23 on 14 x 14); the FFT from n * A ~ 1.5e5 (r=7: 0.79x at 56 x 56; r=11: 0.73x at 40 x 40;
    # r=23: 0.54x at 28 x 28). n >= 400 keeps small maps on conv3d whatever the kernel.
    area, n = kernel_hw[0] * kernel_hw[1], height * width
    return n >= 400 and n * area >= 150_000


def lambda_conv(v: torch.Tensor, weight: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """Lambda convolution with zero "same" padding.

    v: (B, u, v, H, W) values; weight: (k, u, rh, rw) with odd rh, rw (offset 0 at the centre)
    -> (B, k, v, H, W) with out[b, k, c, y, x] = sum_{u,i,j} weight[k, u, i, j] v[b, u, c, y+i-rh//2, x+j-rw//2]
    (zero outside the map). ``impl``: "direct" (conv3d), "fft" (real FFT), "auto" ("direct"
    while exporting to ONNX, where "fft" raises ``ValueError``: the FFT path does not export).
    """
    b, u, c, height, width = v.shape
    weight = _crop_kernel(weight, height, width)
    rh, rw = weight.shape[-2:]
    exporting = torch.onnx.is_in_onnx_export()
    functorch = under_functorch(v, weight)
    if impl == "auto":
        impl = "fft" if _use_fft((rh, rw), height, width) and not (exporting or functorch) else "direct"
    if impl == "fft" and exporting:
        raise ValueError(
            "LambdaLayer: impl='fft' cannot be exported to ONNX (the real FFTs inside its autograd "
            "Function export to a graph that computes wrong numbers); use impl='direct' or 'auto', "
            "which picks it while exporting"
        )
    if impl == "fft" and functorch:
        raise ValueError(
            "LambdaLayer: impl='fft' cannot run under torch.func transforms (grad, vmap, jacrev: its "
            "autograd Function has no vmap rule); use impl='direct' or 'auto', which picks it there"
        )
    if impl == "direct":
        return F.conv3d(v, weight.unsqueeze(2), padding=(0, rh // 2, rw // 2))
    return _FFTLambdaConv.apply(v, weight)


def _fft_plan(v: torch.Tensor, weight: torch.Tensor):
    height, width = v.shape[-2:]
    rh, rw = weight.shape[-2:]
    # Linear (not circular) correlation: pad to >= H + rh - 1 so nothing wraps around.
    size = (_fast_len(height + rh - 1), _fast_len(width + rw - 1))
    wf = torch.fft.rfft2(weight.flip(-2, -1), s=size)  # (k, u, ph, pw//2+1)
    return size, wf


def _k_chunks(k: int, per_k_bytes: int, budget: int):
    step = max(1, min(k, budget // max(per_k_bytes, 1)))
    return [(i, min(i + step, k)) for i in range(0, k, step)]


class _FFTLambdaConv(torch.autograd.Function):
    """Lambda convolution through real FFTs, processed in chunks of key channels.

    Nothing of spectral size is kept for backward (only v and the weight); forward and
    backward hold one chunk's spectra at a time, so peak memory stays near the direct path's.
    """

    @staticmethod
    def forward(ctx, v, weight):
        ctx.save_for_backward(v, weight)
        b, u, c, height, width = v.shape
        k, rh, rw = weight.shape[0], weight.shape[2], weight.shape[3]
        size, wf = _fft_plan(v, weight)
        vf = torch.fft.rfft2(v, s=size)  # (B, u, c, ph, pw//2+1)
        oh, ow = rh // 2, rw // 2
        out = v.new_empty(b, k, c, height, width)
        # chunk of key channels whose spectra take at most ~1/4 of the output's memory
        per_k, budget = b * c * size[0] * size[1] * 3 * v.element_size(), out.numel() * v.element_size() // 4
        for lo, hi in _k_chunks(k, per_k, budget):
            prod = vf[:, 0, None] * wf[None, lo:hi, 0, None]  # (B, kc, c, ph, pw//2+1)
            for j in range(1, u):
                prod += vf[:, j, None] * wf[None, lo:hi, j, None]
            full = torch.fft.irfft2(prod, s=size)
            out[:, lo:hi] = full[..., oh : oh + height, ow : ow + width]
        return out

    @staticmethod
    def backward(ctx, g):
        v, weight = ctx.saved_tensors
        b, u, c, height, width = v.shape
        k, rh, rw = weight.shape[0], weight.shape[2], weight.shape[3]
        size, wf = _fft_plan(v, weight)
        vf = torch.fft.rfft2(v, s=size)
        oh, ow = rh // 2, rw // 2
        pad = (ow, size[1] - width - ow, oh, size[0] - height - oh)
        gvf = torch.zeros_like(vf) if ctx.needs_input_grad[0] else None
        gwf = torch.empty_like(wf) if ctx.needs_input_grad[1] else None
        per_k, budget = b * c * size[0] * size[1] * 3 * v.element_size(), g.numel() * g.element_size() // 4
        for lo, hi in _k_chunks(k, per_k, budget):
            gf = torch.fft.rfft2(F.pad(g[:, lo:hi], pad))  # (B, kc, c, ph, pw//2+1): grad of the full output
            if gvf is not None:  # correlation adjoint: sum_k G_k conj(W_k)
                for j in range(u):
                    gvf[:, j] += (gf * wf[None, lo:hi, j, None].conj()).sum(1)
            if gwf is not None:  # sum_{b, c} G conj(V)
                for j in range(u):
                    gwf[lo:hi, j] = (gf * vf[:, j, None].conj()).sum((0, 2))
        gv = torch.fft.irfft2(gvf, s=size)[..., :height, :width] if gvf is not None else None
        gw = torch.fft.irfft2(gwf, s=size)[..., :rh, :rw].flip(-2, -1) if gwf is not None else None
        return gv, gw


def _as_pair(name: str, value) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        check_positive_int(name, value)
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2:
        for i in value:
            check_positive_int(name, i)
        return int(value[0]), int(value[1])
    raise TypeError(f"{name} must be an int or a pair (H, W) of ints >= 1, got {value!r}")


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands on a contiguous gradient. PyTorch's CPU BatchNorm backward
    (2.13) returns a wrong input gradient for a gradient whose strides look channels-last on a
    map with H = 1 (e.g. shape (1, 2, 1, 2), strides (2, 1, 4, 2), as einsum's backward makes);
    a contiguous gradient avoids it."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g.contiguous()


def _bn(norm: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm that falls back to running statistics when training on one value per channel,
    and that never lets a non-finite training batch into the running statistics (one NaN
    pixel would poison them for good): such a batch is normalised with its own statistics,
    the running ones are left as they were, and a warning says so. Under autograd the
    gradient reaching BatchNorm is made contiguous (see ``_ContiguousGrad``)."""
    y = _bn_forward(norm, x)
    if y.requires_grad and not is_capturing() and not under_functorch(y):
        y = _ContiguousGrad.apply(y)
    return y


def _bn_forward(norm: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    if norm.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
        return F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)
    if not (norm.training and norm.track_running_stats) or is_capturing() or under_functorch(x):
        return norm(x)  # no data-dependent check under vmap or while a trace records the call
    # Check the updated running statistics (O(C)) rather than the batch (O(B C H W)): a NaN/inf
    # in the batch makes its mean or variance non-finite, and so the running ones. A batch is
    # normalised with its own statistics either way; only the update is undone.
    mean, var = norm.running_mean, norm.running_var
    assert mean is not None and var is not None and norm.num_batches_tracked is not None
    saved = mean.clone(), var.clone(), norm.num_batches_tracked.clone()
    y = norm(x)
    if not bool(torch.isfinite(mean).all() & torch.isfinite(var).all()) and bool(
        torch.isfinite(saved[0]).all() & torch.isfinite(saved[1]).all()
    ):
        # through .data: autograd saved the running statistics as inputs of this call's batch_norm
        # node (its training-mode backward reads only the batch statistics); a tracked in-place
        # write would make that backward raise "modified by an inplace operation".
        mean.data.copy_(saved[0])
        var.data.copy_(saved[1])
        norm.num_batches_tracked.data.copy_(saved[2])
        warnings.warn(
            "LambdaLayer: a training batch has non-finite (NaN/inf) queries or values (or statistics "
            "that overflow); the BatchNorm running statistics were not updated with it",
            RuntimeWarning,
            stacklevel=4,
        )
    return y


@register_attention(
    "lambda",
    title="Lambda layer",
    paper="Bello, LambdaNetworks: Modeling Long-Range Interactions Without Attention (ICLR 2021, arXiv 2102.08602)",
    cost="local",
    receptive_field="local",
    window_arg="local_scope",
    window_centred=True,
    positional="relative (lambda convolution over an r x r window, or a global table up to max_size)",
    max_resolution_arg="max_size",
    export=("onnx", "compile", "torchscript"),
    impls=("reference", "direct", "fft"),
    test_kwargs={"num_heads": 2, "key_dim": 4, "local_scope": 3},
    test_variants=({"local_scope": None, "max_size": 9}, {"intra_depth": 2, "lambda_conv_bias": True}),
    bench_kwargs={"num_heads": 4, "key_dim": 16, "local_scope": 7},
    bench_variants={
        "lambda-r23": {"num_heads": 4, "key_dim": 16, "local_scope": 23},
        "lambda-global": {"num_heads": 4, "key_dim": 16, "local_scope": None, "max_size": 112},
    },
    sets=True,
    set_kwargs={"local_scope": 1},
)
class LambdaLayer(SpatialAttention):
    """Lambda layer with multi-query heads (Bello, arXiv 2102.08602).

    Args:
        dim: input channels C (d in the paper).
        dim_out: output channels d_out (default C); must divide by ``num_heads``; value depth
            v = d_out / h.
        num_heads: query heads h (multi-query: they share keys, values and lambdas).
        key_dim: query/key depth k.
        intra_depth: intra-depth u.
        local_scope: odd window side r of the lambda convolution; ``None`` for the global form.
        max_size: largest input (int or (H, W)) of the global form; required with
            ``local_scope=None``, ignored otherwise.
        stride: 1, or 2 for a 3x3 average pool (stride 2, padding 1) after the layer.
        lambda_conv_bias: a learned bias per key channel on the position lambdas (the
            lucidrains and timm ports have one; the paper has none).
        impl: "auto", "reference" (einsums over gathered embeddings, n^2 k u memory),
            "direct" (lambda convolution by conv3d) or "fft" (by real FFTs). (Formerly
            ``conv_impl``.) ``auto``: "fft" when the kernel cropped to the map's offsets
            (area A = min(r, 2H-1) * min(r, 2W-1)) and n = H*W satisfy
            n >= 400 and n * A >= 150000, else "direct"; "direct" while
            exporting to ONNX or under torch.func transforms (where "fft" raises ``ValueError``).
        device, dtype: factory arguments for the parameters and buffers.

    Shapes: (B, C, H, W) -> (B, d_out, H, W) (H/2, W/2 rounded up with stride 2).
    ``q``: (B, h, k, n); ``k``: (B, u, k, n); ``v``: (B, u, v, H, W); lambdas (B, k, v, n).
    """

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        *,
        num_heads: int = 4,
        key_dim: int = 16,
        intra_depth: int = 1,
        local_scope: int | None = 23,
        max_size=None,
        stride: int = 1,
        lambda_conv_bias: bool = False,
        impl: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__(dim, dim_out, impl=impl)
        check_positive_int("num_heads", num_heads)
        check_divisible("dim_out", self.dim_out, "num_heads", num_heads)
        check_positive_int("key_dim", key_dim)
        check_positive_int("intra_depth", intra_depth)
        check_choice("stride", stride, (1, 2))
        self.num_heads, self.key_dim, self.intra_depth = num_heads, key_dim, intra_depth
        self.value_dim = self.dim_out // num_heads
        self.stride = stride
        k, u, vd = key_dim, intra_depth, self.value_dim
        fk = {"device": device, "dtype": dtype}
        if local_scope is not None:
            check_odd("local_scope", local_scope)
            self.max_size = None
            self.pos_kernel = nn.Parameter(torch.empty(k, u, local_scope, local_scope, **fk))  # R over r x r offsets
        else:
            if max_size is None:
                raise ValueError(
                    "the global form (local_scope=None) needs max_size=S or (H, W), the largest "
                    "input it will see; got max_size=None"
                )
            self.max_size = _as_pair("max_size", max_size)
            mh, mw = self.max_size
            self.pos_kernel = nn.Parameter(torch.empty(k, u, 2 * mh - 1, 2 * mw - 1, **fk))  # R over every offset
        self.local_scope = local_scope
        self.receptive_field = local_scope
        # One 1x1 projection for W_Q (h*k), W_K (k*u), W_V (v*u), bias-free.
        self.qkv = nn.Conv2d(dim, num_heads * k + k * u + vd * u, 1, bias=False, **fk)
        self.norm_q = nn.BatchNorm2d(num_heads * k, **fk)
        self.norm_v = nn.BatchNorm2d(vd * u, **fk)
        self.pos_bias = nn.Parameter(torch.zeros(k, **fk)) if lambda_conv_bias else None
        self.pool = nn.AvgPool2d(3, 2, 1) if stride == 2 else nn.Identity()
        self.reset_parameters()

    renamed_args = {"conv_impl": "impl"}

    def reset_parameters(self) -> None:
        """W_Q, W_K, W_V ~ N(0, 1/C); the table R ~ truncated N(0, 0.02^2); bias 0; BatchNorms fresh."""
        nn.init.normal_(self.qkv.weight, std=self.dim**-0.5)
        nn.init.trunc_normal_(self.pos_kernel, std=0.02)
        if self.pos_bias is not None:
            nn.init.zeros_(self.pos_bias)
        self.norm_q.reset_parameters()
        self.norm_v.reset_parameters()

    def position_kernel(self, height: int, width: int) -> torch.Tensor:
        """The (k, u, rh, rw) lambda-convolution kernel for an H x W input (offset 0 at the centre).

        Local form: the r x r kernel. Global form: the (2H-1) x (2W-1) slice of the table;
        raises ``ValueError`` for inputs larger than ``max_size``.
        """
        if self.local_scope is not None:
            return self.pos_kernel
        assert self.max_size is not None  # set whenever local_scope is None
        mh, mw = self.max_size
        if height > mh or width > mw:
            raise ValueError(
                f"LambdaLayer(local_scope=None) holds relative position embeddings for inputs up to "
                f"max_size=({mh}, {mw}), got an input of {height} x {width}; build it with a larger max_size "
                f"or use the lambda convolution (local_scope=r)"
            )
        return self.pos_kernel[:, :, mh - height : mh + height - 1, mw - width : mw + width - 1]

    # -- implementations -----------------------------------------------------
    def _conv_impl(self, height: int, width: int) -> str:
        """The ``auto`` rule: "fft" or "direct" for an H x W input (see the module docstring)."""
        rh, rw = _crop_kernel(self.position_kernel(height, width), height, width).shape[-2:]
        return "fft" if _use_fft((rh, rw), height, width) else "direct"

    def _auto_impl(self, x: torch.Tensor) -> str:
        if torch.onnx.is_in_onnx_export() or under_functorch(x):  # the FFT path neither exports nor vmaps
            return "direct"
        return self._conv_impl(x.shape[2], x.shape[3])

    def _project(self, x: torch.Tensor):
        """Q = BN(W_Q x) (B, h, k, n), softmax_m(K) (B, u, k, n), V = BN(W_V x) (B, u, v, H, W),
        in the compute dtype (float32 for half-precision parameters), and the output dtype."""
        b, _, height, width = x.shape
        n, h, k, u, vd = height * width, self.num_heads, self.key_dim, self.intra_depth, self.value_dim
        pdtype = self.norm_q.weight.dtype
        dev = x.device.type
        if torch.is_autocast_enabled(dev) and torch.get_autocast_dtype(dev) in _HALF:
            # Queries and values in half precision; keys in float32: the softmax over positions
            # of large logits turns half-precision rounding of K into large weight errors.
            wq, wk, wv = self.qkv.weight.split([h * k, k * u, vd * u])
            q, v = F.conv2d(x, torch.cat([wq, wv])).split([h * k, vd * u], dim=1)
            out_dtype = q.dtype
            with torch.autocast(dev, enabled=False):
                kk = F.conv2d(x.float(), wk.float())
            q, kk, v = q.to(pdtype), kk.to(pdtype) if pdtype not in _HALF else kk, v.to(pdtype)
        else:
            qkv = self.qkv(x)  # (B, h*k + k*u + v*u, H, W)
            out_dtype = qkv.dtype
            q, kk, v = qkv.split([h * k, k * u, vd * u], dim=1)
        q, v = _bn(self.norm_q, q), _bn(self.norm_v, v)
        cdtype = torch.float32 if pdtype in _HALF else pdtype
        with torch.autocast(dev, enabled=False):
            q = q.to(cdtype).reshape(b, h, k, n)
            kk = torch.softmax(kk.to(cdtype).reshape(b, u, k, n), dim=-1)  # softmax over the m positions
            v = v.to(cdtype).reshape(b, u, vd, height, width)
        return q, kk, v, out_dtype

    def relative_embeddings(self, height: int, width: int) -> torch.Tensor:
        """E of shape (k, u, n, m) with E[:, :, n, m] = R[pos_m - pos_n] for an H x W input
        (row-major positions), zero where the offset lies outside the kernel.

        Read from the table R itself (offset 0 at its centre), not from the fast paths' slice
        of it (:meth:`position_kernel`), so the reference checks that slice too."""
        self.position_kernel(height, width)  # raises for inputs beyond max_size (global form)
        table = self.pos_kernel  # (k, u, rh, rw): R over the r x r window, or over every offset up to max_size
        rh, rw = table.shape[-2:]
        dev = table.device
        ys = torch.arange(height, device=dev).repeat_interleave(width)  # pos_n rows, (n,)
        xs = torch.arange(width, device=dev).repeat(height)
        iy = ys[None, :] - ys[:, None] + rh // 2  # (n, m): table row of offset pos_m - pos_n
        ix = xs[None, :] - xs[:, None] + rw // 2
        inside = (iy >= 0) & (iy < rh) & (ix >= 0) & (ix < rw)
        e = table[:, :, iy.clamp(0, rh - 1), ix.clamp(0, rw - 1)]  # (k, u, n, m)
        return e * inside

    def _forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        b, _, height, width = x.shape
        q, k_soft, v, out_dtype = self._project(x)
        with torch.autocast(x.device.type, enabled=False):
            v = v.flatten(3)  # (B, u, v, m)
            lam_c = torch.einsum("bukm,buvm->bkv", k_soft, v)  # lambda_c = sum_u softmax_m(K_u)^T V_u
            if self.pos_bias is not None:
                lam_c = lam_c + self.pos_bias.to(lam_c.dtype)[:, None]
            e = self.relative_embeddings(height, width).to(v.dtype)  # (k, u, n, m)
            lam_p = torch.einsum("kunm,buvm->bkvn", e, v)  # lambda_p[n] = sum_u E[n]_u^T V_u
            y = torch.einsum("bhkn,bkvn->bhvn", q, lam_c[..., None] + lam_p)  # (lambda_c + lambda_p[n])^T q_n
        y = y.reshape(b, self.num_heads * self.value_dim, height, width).to(out_dtype)
        return self.pool(y)

    def _forward_direct(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_conv(x, "direct")

    def _forward_fft(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_conv(x, "fft")

    def _forward_conv(self, x: torch.Tensor, conv_impl: str) -> torch.Tensor:
        b, _, height, width = x.shape
        n, h, k, vd = height * width, self.num_heads, self.key_dim, self.value_dim
        kernel = self.position_kernel(height, width)
        q, kk, v, out_dtype = self._project(x)
        u = self.intra_depth
        with torch.autocast(x.device.type, enabled=False):
            cdtype = q.dtype
            # content lambda (B, k, v): sum_u softmax(K_u)^T V_u
            lam_c = torch.bmm(
                kk.transpose(1, 2).reshape(b, k, u * n), v.reshape(b, u, vd, n).transpose(2, 3).reshape(b, u * n, vd)
            )
            if self.pos_bias is not None:
                lam_c = lam_c + self.pos_bias.to(cdtype)[:, None]
            lam = lambda_conv(v, kernel.to(cdtype), conv_impl)  # (B, k, v, H, W) position lambdas
            lam_c = lam_c[..., None, None]
            lam = lam.add_(lam_c) if lam.is_contiguous() else lam + lam_c  # lambda_c + lambda_p[n]
            lam = lam.reshape(b, k, vd, n)
            y = query_contract(q, lam)  # (B, h, v, n)
        y = y.reshape(b, h * vd, height, width).to(out_dtype)
        return self.pool(y)

    def peak_intermediate_bytes(self, height: int, width: int, batch: int = 1, itemsize: int = 4) -> int:
        """The reference's (k, u, n, m) embeddings and (B, k, v, n) lambdas; 0 for the
        lambda convolution (nothing beyond O(n k v))."""
        if self.impl != "reference":
            return 0
        n, size = height * width, max(itemsize, 4)
        return max(self.key_dim * self.intra_depth * n * n, batch * self.key_dim * self.value_dim * n) * size

    def flop_breakdown(self, height: int, width: int, batch: int = 1) -> dict[str, int]:
        n, h, k, u, vd = height * width, self.num_heads, self.key_dim, self.intra_depth, self.value_dim
        counted = 2 * n * self.dim * (h * k + k * u + vd * u)  # projections
        counted += 2 * k * vd * u * n  # content lambda (bmm)
        rh, rw = _crop_kernel(self.position_kernel(height, width), height, width).shape[-2:]
        impl = self._conv_impl(height, width) if self.impl == "auto" else self.impl
        if impl == "reference":  # einsums: E (n x m) against V, then the queries, all as matmuls
            counted += 2 * k * vd * n * n * u + 2 * h * k * vd * n
            return {"counted": batch * counted, "uncounted": 0}
        uncounted: float = 2 * h * k * vd * n  # queries x lambdas, elementwise
        if impl == "direct":
            counted += 2 * k * vd * n * u * rh * rw  # lambda convolution (conv3d)
        else:
            # complex products in the frequency domain (4 real multiply-adds each), plus the real
            # 2-D FFTs of V, the kernel and the output, estimated at 2.5 N log2 N flops each.
            ph, pw = _fast_len(height + rh - 1), _fast_len(width + rw - 1)
            uncounted += 2 * 4 * k * vd * u * ph * (pw // 2 + 1)
            uncounted += int(2.5 * ph * pw * math.log2(ph * pw)) * (u * vd + k * vd + (k * u) / batch)
        return {"counted": batch * counted, "uncounted": int(batch * uncounted)}

    def extra_repr(self) -> str:
        scope = f"local_scope={self.local_scope}" if self.local_scope is not None else f"max_size={self.max_size}"
        return (
            f"{super().extra_repr()}, num_heads={self.num_heads}, key_dim={self.key_dim}, "
            f"intra_depth={self.intra_depth}, {scope}, stride={self.stride}"
        )
