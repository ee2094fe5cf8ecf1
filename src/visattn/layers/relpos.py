"""Multi-head self-attention with 2-D relative positional logits, and convolution as attention.

Cordonnier, Loukas and Jaggi, "On the Relationship between Self-Attention and
Convolutional Layers" (ICLR 2020, arXiv 1911.03584).

For a query at pixel q and a key at pixel k, with offset delta = k - q = (dy, dx)
(rows, columns), head h scores

    logit_h(q, k) = [content] q_q^T k_k / sqrt(d)  +  p_h(delta)

and attends with softmax over the keys. Three positional terms p_h are implemented:

* ``"quadratic"`` (paper, section 3): p_h(delta) = -alpha_h ||delta - Delta_h||^2 with a
  learnable centre Delta_h (2,) and sharpness alpha_h per head. The paper writes it as
  v_h^T r_delta with r_delta = (||delta||^2, dy, dx) and v_h = -alpha_h (1, -2 Delta_y, -2 Delta_x);
  the two differ by the constant alpha_h ||Delta_h||^2, which cancels in the softmax. We
  evaluate the centred form (largest logit near 0, better conditioned at large alpha).
* ``"gaussian"`` (authors' code): p_h(delta) = -1/2 (delta - mu_h)^T Sigma_h^{-1} (delta - mu_h),
  with Sigma_h^{-1} = L_h L_h^T and L_h lower triangular with a positive (exp) diagonal, so
  the precision is positive definite by construction. L_h plays the role of the authors'
  "attention spread" (inverse standard deviation): an isotropic spread s (L = s I) gives
  p = -(s^2 / 2) ||delta - mu||^2, i.e. the quadratic form with alpha = s^2 / 2.
* ``"learned"`` (paper, section 4; authors' code): separate row and column embedding
  tables r^row, r^col in R^{(2 M + 1) x D_p} over offsets -M..M (M = ``max_offset``) and
  per-head key vectors u_h^row, u_h^col in R^{D_p}: p_h(delta) = u_h^row . r^row_{dy} +
  u_h^col . r^col_{dx}. Inputs with H - 1 > M or W - 1 > M raise ``ValueError``.

Values and output projection are those of ordinary multi-head attention
(``value_proj=True``: V = W_val x per head, outputs concatenated, W_out). With
``value_proj=False`` every head averages the input itself and the output projection
W_out in R^{C_out x h C} holds the products W_val^(h) W_out^(h) of the paper's theorem
(this is also the authors' code, and what :func:`attention_from_conv` builds).

Offsets come from the input size at every call: nothing is tied to a grid fixed at
construction. The positional logits do not depend on x, so they are computed once per
forward as separable tables (rows, columns) combined by broadcasting. Under half precision
the softmax and the attention core run in float32.

Implementations (``impl=``; :meth:`RelativePositionAttention.supported_impls` says which a
configuration has):

* ``"reference"``: softmax_k(q k^T / sqrt(d) + P) V written out, the (B, h, n, n) logits in
  memory (any configuration);
* ``"mask"`` (content): ``scaled_dot_product_attention`` with P as additive mask;
* ``"folded"`` (content, quadratic / gaussian): P folded into extra query/key dimensions
  (:meth:`~RelativePositionAttention.positional_features`), so the fused SDPA kernel runs
  without any (h, n, n) table;
* ``"shared"`` (position only): one (h, n, n) probability table softmax(P) shared by the
  batch, applied as one (n, n) @ (n, B d_v) product per head;
* ``"auto"``: with content, ``"folded"`` for quadratic / gaussian encodings and ``"mask"``
  for "learned" or while tracing / scripting / compiling / exporting (exports keep the
  additive-mask graph); without content, ``"shared"``. Independent of grad mode and of
  the input size.

Not implemented: the paper's "blur" trick for Gaussian heads, attention-head pruning,
the absolute position encodings of the authors' BERT code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from visattn.layers._ops import is_capturing, upcast
from visattn.layers.base import SpatialAttention, check_choice, check_divisible, check_positive_int
from visattn.registry import register_attention

__all__ = ["RelativePositionAttention", "ConvAsAttention", "attention_from_conv", "relative_offsets"]

ENCODINGS = ("quadratic", "learned", "gaussian")


def relative_offsets(size: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(size, size) table D with D[q, k] = k - q: the offset from query to key along one axis."""
    r = torch.arange(size, device=device, dtype=dtype)
    return r[None, :] - r[:, None]


@register_attention(
    "relpos",
    title="Self-attention with 2-D relative positional logits (quadratic / learned / gaussian)",
    paper="Cordonnier et al., On the Relationship between Self-Attention and Convolutional Layers (arXiv 1911.03584)",
    cost="quadratic",
    receptive_field="global",
    positional="relative 2-D: quadratic (centre + sharpness), learned row/column embeddings, or full-covariance gaussian",
    max_resolution_arg="max_offset",
    export=("onnx", "compile", "torchscript"),
    impls=("reference", "mask", "folded", "shared"),
    test_kwargs={"num_heads": 2, "encoding": "gaussian", "content": True},
    test_variants=(
        {"encoding": "quadratic", "content": False, "value_proj": False},
        {"encoding": "learned", "max_offset": 8, "pos_dim": 4},
    ),
    bench_kwargs={"num_heads": 4, "encoding": "quadratic", "content": False},
    bench_variants={
        "relpos-content": {"num_heads": 4, "encoding": "quadratic", "content": True},
        "relpos-learned": {"num_heads": 4, "encoding": "learned", "content": False, "max_offset": 63},
    },
)
class RelativePositionAttention(SpatialAttention):
    """Multi-head self-attention with 2-D relative positional logits.

    Args:
        dim: input channels C.
        dim_out: output channels C_out (default C).
        num_heads: heads h.
        encoding: "quadratic", "learned" or "gaussian" (see module docstring).
        content: add the query-key term q^T k / sqrt(key_dim) to the positional logits.
        key_dim: query/key width per head (default C / h; C must then divide by h).
            (Formerly ``head_dim``.)
        value_proj: project values per head (usual MHSA). False: heads average the input
            itself (value width C) and ``proj`` maps h*C -> C_out (the paper's theorem).
        value_dim: per-head value width with ``value_proj`` (default ``key_dim``).
        max_offset: "learned" only: largest |offset| M the tables cover (inputs up to
            (M+1) x (M+1)); default 15 (16 x 16 token grids).
        pos_dim: "learned" only: embedding width D_p (default C, as in the authors' code).
        qkv_bias: bias on the query, key and value projections.
        attn_drop: dropout on the attention probabilities (training only).
        init_centre_std: std of the initial centres (quadratic, gaussian).
        init_alpha: initial sharpness alpha (quadratic); the gaussian starts at the
            matching isotropic spread s = sqrt(2 alpha).
        impl: "auto", "reference", "mask", "folded" or "shared" (module docstring;
            :meth:`supported_impls`). ``auto``: without content "shared"; with content
            "folded" (quadratic / gaussian) or "mask" ("learned", or while tracing,
            scripting, compiling or exporting).
        device, dtype: factory arguments for the parameters.

    Shapes: (B, C, H, W) -> (B, C_out, H, W); n = H*W; attention maps (B, h, n, n).
    """

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        *,
        num_heads: int = 4,
        encoding: str = "quadratic",
        content: bool = False,
        key_dim: int | None = None,
        value_proj: bool = True,
        value_dim: int | None = None,
        max_offset: int = 15,
        pos_dim: int | None = None,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        init_centre_std: float = 1.0,
        init_alpha: float = 0.5,
        impl: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__(dim, dim_out, impl=impl)
        check_positive_int("num_heads", num_heads)
        check_choice("encoding", encoding, ENCODINGS)
        if not isinstance(content, bool) or not isinstance(value_proj, bool):
            raise TypeError(f"content and value_proj must be bool, got {content!r} and {value_proj!r}")
        if key_dim is None:
            check_divisible("dim", dim, "num_heads", num_heads)
            key_dim = dim // num_heads
        check_positive_int("key_dim", key_dim)
        check_positive_int("value_dim", value_dim, allow_none=True)
        if not value_proj and value_dim is not None:
            raise ValueError(
                f"value_dim is only used with value_proj=True (values are the input, width {dim}); "
                f"got value_dim={value_dim} with value_proj=False"
            )
        if not 0.0 <= attn_drop < 1.0:
            raise ValueError(f"attn_drop must be in [0, 1), got {attn_drop}")
        self.num_heads, self.encoding, self.content = num_heads, encoding, content
        self.key_dim, self.value_proj = key_dim, value_proj
        self.value_dim = (value_dim or key_dim) if value_proj else dim
        self.attn_drop = attn_drop
        self.init_centre_std, self.init_alpha = init_centre_std, init_alpha
        fk = {"device": device, "dtype": dtype}
        self.qk = nn.Linear(dim, 2 * num_heads * key_dim, bias=qkv_bias, **fk) if content else None
        self.v = nn.Linear(dim, num_heads * self.value_dim, bias=qkv_bias, **fk) if value_proj else None
        self.proj = nn.Linear(num_heads * self.value_dim, self.dim_out, **fk)

        self.max_offset = None
        if encoding == "quadratic":
            self.centres = nn.Parameter(torch.empty(num_heads, 2, **fk))  # Delta_h = (dy, dx)
            self.alpha = nn.Parameter(torch.empty(num_heads, **fk))
        elif encoding == "gaussian":
            self.centres = nn.Parameter(torch.empty(num_heads, 2, **fk))  # mu_h = (dy, dx)
            self.log_diag = nn.Parameter(torch.empty(num_heads, 2, **fk))  # log of L_h's diagonal
            self.off_diag = nn.Parameter(torch.empty(num_heads, **fk))  # L_h[1, 0]
        else:
            check_positive_int("max_offset", max_offset)
            pos_dim = dim if pos_dim is None else pos_dim
            check_positive_int("pos_dim", pos_dim)
            self.max_offset, self.pos_dim = max_offset, pos_dim
            self.row_embed = nn.Parameter(torch.empty(2 * max_offset + 1, pos_dim, **fk))  # r^row_{dy}, dy = -M..M
            self.col_embed = nn.Parameter(torch.empty(2 * max_offset + 1, pos_dim, **fk))
            self.row_keys = nn.Parameter(torch.empty(num_heads, pos_dim, **fk))  # u_h^row
            self.col_keys = nn.Parameter(torch.empty(num_heads, pos_dim, **fk))
        self._reset_positional()  # the projections were initialised when built
        self.impl = impl  # now that the configuration is known: is the named path supported?

    renamed_args = {"head_dim": "key_dim"}

    def reset_parameters(self) -> None:
        """Projections like nn.Linear (q/k, v, proj, in construction order), then the positional
        parameters: centres ~ N(0, init_centre_std^2), alpha = init_alpha, gaussian spread
        sqrt(2 alpha) I, learned tables ~ N(0, 0.02^2), key vectors like nn.Linear."""
        for lin in (self.qk, self.v, self.proj):
            if lin is not None:
                lin.reset_parameters()
        self._reset_positional()

    def _reset_positional(self) -> None:
        if self.encoding in ("quadratic", "gaussian"):
            nn.init.normal_(self.centres, 0.0, self.init_centre_std)
        if self.encoding == "quadratic":
            nn.init.constant_(self.alpha, self.init_alpha)
        elif self.encoding == "gaussian":
            nn.init.constant_(self.log_diag, 0.5 * math.log(2 * self.init_alpha))
            nn.init.zeros_(self.off_diag)
        elif self.encoding == "learned":
            nn.init.normal_(self.row_embed, 0.0, 0.02)
            nn.init.normal_(self.col_embed, 0.0, 0.02)
            bound = 1 / math.sqrt(self.pos_dim)
            nn.init.uniform_(self.row_keys, -bound, bound)
            nn.init.uniform_(self.col_keys, -bound, bound)

    # -- positional logits -------------------------------------------------
    def precision(self) -> torch.Tensor:
        """Gaussian only: Sigma_h^{-1} = L_h L_h^T, (h, 2, 2), positive definite."""
        if self.encoding != "gaussian":
            raise ValueError(f"precision() is defined for encoding='gaussian', this layer uses {self.encoding!r}")
        log_diag, off = upcast(self.log_diag, self.off_diag)
        d = log_diag.exp()
        a = d[:, 0] ** 2
        b = d[:, 0] * off
        c = off**2 + d[:, 1] ** 2
        return torch.stack([torch.stack([a, b], -1), torch.stack([b, c], -1)], -2)

    def _check_size(self, height: int, width: int) -> None:
        m = self.max_offset
        if m is not None and max(height, width) - 1 > m:  # set for encoding="learned" only
            raise ValueError(
                f"RelativePositionAttention(encoding='learned') covers offsets up to max_offset={m} "
                f"(inputs up to {m + 1} x {m + 1}), got an input of {height} x {width} "
                f"needing offsets up to {max(height, width) - 1}; build it with a larger max_offset"
            )

    def positional_logits(self, height: int, width: int) -> torch.Tensor:
        """Positional logits P of shape (h, n, n), n = height*width, P[h, q, k] = p_h(k - q).

        Row-major positions: index q = y * width + x. Float32 for half-precision parameters
        (call it with autocast off to keep it float32 under autocast).
        """
        self._check_size(height, width)
        nh, n = self.num_heads, height * width
        if self.encoding == "learned":
            m = self.max_offset
            assert m is not None
            dy = relative_offsets(height, self.row_embed.device, torch.long) + m  # (H, H) table indices
            dx = relative_offsets(width, self.col_embed.device, torch.long) + m
            rk, re_, ck, ce = upcast(self.row_keys, self.row_embed, self.col_keys, self.col_embed)
            row = rk @ re_.t()  # (h, 2M+1): u_h^row . r^row_delta
            col = ck @ ce.t()
            ry = row[:, dy]  # (h, H, H)
            rx = col[:, dx]  # (h, W, W)
            p = ry[:, :, None, :, None] + rx[:, None, :, None, :]  # (h, H, W, H, W)
            return p.reshape(nh, n, n)
        (mu,) = upcast(self.centres)
        dev, dt = mu.device, mu.dtype
        ey = relative_offsets(height, dev, dt)[None] - mu[:, 0, None, None]  # (h, H, H): dy - mu_y
        ex = relative_offsets(width, dev, dt)[None] - mu[:, 1, None, None]  # (h, W, W)
        if self.encoding == "quadratic":
            al = upcast(self.alpha)[0][:, None, None]
            p = (-al * ey * ey)[:, :, None, :, None] + (-al * ex * ex)[:, None, :, None, :]
        else:
            prec = self.precision()
            a, b, c = prec[:, 0, 0, None, None], prec[:, 0, 1, None, None], prec[:, 1, 1, None, None]
            # -1/2 [a ey^2 + 2 b ey ex + c ex^2]
            p = (
                (-0.5 * a * ey * ey)[:, :, None, :, None]
                + (-0.5 * c * ex * ex)[:, None, :, None, :]
                - (b * ey)[:, :, None, :, None] * ex[:, None, :, None, :]
            )
        return p.reshape(nh, n, n)

    # -- attention -----------------------------------------------------------
    def _values(self, t: torch.Tensor) -> torch.Tensor:
        """t: (B, n, C) -> values (B, h, n, d_v)."""
        b, n, _ = t.shape
        if self.v is None:
            return t[:, None].expand(b, self.num_heads, n, self.dim)
        return self.v(t).reshape(b, n, self.num_heads, self.value_dim).transpose(1, 2)

    def _qk(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, _ = t.shape
        assert self.qk is not None, "queries and keys exist with content=True only"
        qk = self.qk(t).reshape(b, n, 2, self.num_heads, self.key_dim).permute(2, 0, 3, 1, 4)
        return qk[0], qk[1]  # (B, h, n, d) each

    def attention_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Attention probabilities (B, h, n, n) for x (B, C, H, W); rows (queries) sum to 1.

        Row-major positions (q = y * W + x). Float32 for half input. Position-only layers
        return the same table for every example (expanded over the batch).
        """
        self._check_input(x)
        b, _, h, w = x.shape
        if self.content:
            t = x.flatten(2).transpose(1, 2)
            q, k = self._qk(t)
        with torch.autocast(device_type=x.device.type, enabled=False):
            p = self.positional_logits(h, w)
            if self.content:
                q, k = upcast(q, k)
                logits = (q @ k.transpose(-1, -2)) / math.sqrt(self.key_dim) + p.to(q.dtype)
            else:
                logits = p[None].expand(b, -1, -1, -1)
            return torch.softmax(logits, dim=-1)

    # -- implementations -------------------------------------------------------
    def supported_impls(self) -> tuple[str, ...]:
        """ "reference" always; with content "mask" (and "folded" for quadratic / gaussian),
        without content "shared"."""
        if not self.content:
            return ("reference", "shared")
        return ("reference", "mask") if self.encoding == "learned" else ("reference", "mask", "folded")

    def _impl_config(self) -> str:
        return f"encoding={self.encoding!r}, content={self.content}"

    def _auto_rule(self) -> str:
        if not self.content:
            return "shared"
        return "mask" if self.encoding == "learned" or is_capturing() else "folded"

    def _auto_impl(self, x: torch.Tensor) -> str:
        return self._auto_rule()

    def _chosen_impl(self) -> str:
        return self._auto_rule() if self.impl == "auto" else self.impl

    def _attend(self, x: torch.Tensor, core) -> torch.Tensor:
        """Values, then ``core(t, v, height, width)`` -> (B, h, n, d_v) with autocast off (float32
        or wider), heads concatenated and the output projection: (B, C, H, W) -> (B, C_out, H, W)."""
        b, _, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # (B, n, C)
        v = self._values(t)  # (B, h, n, d_v)
        q, k = self._qk(t) if self.content else (None, None)  # (B, h, n, d), in autocast's dtype
        out_dtype = v.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            (v,) = upcast(v)
            if q is not None and k is not None:
                q, k = upcast(q, k)
            o = core(q, k, v, h, w)
        o = o.to(out_dtype).transpose(1, 2).reshape(b, h * w, self.num_heads * self.value_dim)
        o = self.proj(o)  # (B, n, C_out)
        return o.transpose(1, 2).reshape(b, self.dim_out, h, w)

    def _forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        def core(q, k, v, height, width):
            logits = self.positional_logits(height, width)[None].to(v.dtype)  # P[h, q, k] = p_h(k - q)
            if self.content:
                logits = logits + torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(self.key_dim)
            a = torch.softmax(logits, dim=-1).expand(v.shape[0], -1, -1, -1)  # (B, h, n, n), over keys
            a = F.dropout(a, self.attn_drop, self.training)
            return torch.einsum("bhqk,bhkd->bhqd", a, v)

        return self._attend(x, core)

    def _forward_mask(self, x: torch.Tensor) -> torch.Tensor:
        drop = self.attn_drop if self.training else 0.0

        def core(q, k, v, height, width):
            p = self.positional_logits(height, width)
            # A 4-D (1, h, n, n) mask keeps the fused CPU kernel (a 3-D one falls back to the
            # math path). PyTorch's fused kernels give no mask gradient: when P needs one
            # (training), SDPA itself picks its math path, (B, h, n, n) in memory.
            return F.scaled_dot_product_attention(q, k, v, attn_mask=p.to(q.dtype)[None], dropout_p=drop)

        return self._attend(x, core)

    def _forward_folded(self, x: torch.Tensor) -> torch.Tensor:
        drop = self.attn_drop if self.training else 0.0
        return self._attend(x, lambda q, k, v, height, width: self._attend_folded(q, k, v, height, width, drop))

    def _forward_shared(self, x: torch.Tensor) -> torch.Tensor:
        drop = self.attn_drop if self.training else 0.0

        def core(q, k, v, height, width):
            b, n = v.shape[0], height * width
            a = torch.softmax(self.positional_logits(height, width).to(v.dtype), dim=-1)  # (h, n, n)
            if drop:
                return F.dropout(a[None].expand(b, -1, -1, -1), drop) @ v  # per-example masks
            # Fold the batch into the columns: one (n, n) @ (n, B d_v) product per head, so the
            # (h, n, n) table is never expanded or copied over the batch. Without a value
            # projection all heads share the values: a single (h n, n) @ (n, B C).
            if self.v is None:
                vb = v[:, 0].permute(1, 0, 2).reshape(n, b * self.value_dim)
            else:
                vb = v.permute(1, 2, 0, 3).reshape(self.num_heads, n, b * self.value_dim)
            return (a @ vb).reshape(self.num_heads, n, b, self.value_dim).permute(2, 0, 1, 3)

        return self._attend(x, core)

    def peak_intermediate_bytes(self, height: int, width: int, batch: int = 1, itemsize: int = 4) -> int:
        """The positional table (h, n, n) in float32 or wider; with a per-example (B, h, n, n)
        attention matrix when one is materialised (the reference; content in training or under
        autograd; attention dropout); the (B, h, n, D) folded queries/keys on the folded path."""
        n, size = height * width, max(itemsize, 4)
        impl = self._chosen_impl()
        dropout = self.training and self.attn_drop > 0  # SDPA's CPU kernels then take the math path
        if impl == "folded" and not dropout:  # fused SDPA on (B, h, n, D) queries, keys and values
            return batch * self.num_heads * n * self._fold_width() * size
        per_example = (
            impl == "reference"
            or (self.content and (self.training or torch.is_grad_enabled()))
            or (self.training and self.attn_drop > 0)
        )
        return (batch if per_example else 1) * self.num_heads * n * n * size

    def _fold_width(self) -> int:
        """Width D of the folded queries, keys and values: key_dim + 3 (quadratic) or + 5
        (gaussian) positional dimensions, or the value width if larger, rounded up to a multiple
        of 8 (the fused CPU kernel is faster there: 24 wide costs 1.26x 16, 19 wide 1.36x)
        and all zero-padded to D."""
        width = max(self.key_dim + (3 if self.encoding == "quadratic" else 5), self.value_dim)
        return -(-width // 8) * 8

    def positional_features(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Query and key features (h, n, e) and (n, e) with p_h(k - q) = qf[h, q] . kf[k] + c_h(q).

        The constant c_h(q) does not depend on the key and cancels in the softmax. With
        ey = ky - qy - mu_y (likewise x) and positions centred on the map:
        quadratic, -alpha (ey^2 + ex^2): kf = (ky^2 + kx^2, ky, kx),
        qf = (-alpha, 2 alpha (qy + mu_y), 2 alpha (qx + mu_x));
        gaussian, -1/2 (a ey^2 + 2 b ey ex + c ex^2) with Sigma^{-1} = [[a, b], [b, c]]:
        kf = (ky^2, ky kx, kx^2, ky, kx), qf = (-a/2, -b, -c/2, a Qy + b Qx, b Qy + c Qx),
        Q = q + mu.
        """
        (mu,) = upcast(self.centres)
        dev, dt = mu.device, mu.dtype
        ys = torch.arange(height, device=dev, dtype=dt) - (height - 1) / 2
        xs = torch.arange(width, device=dev, dtype=dt) - (width - 1) / 2
        py, px = ys[:, None].expand(height, width).reshape(-1), xs[None, :].expand(height, width).reshape(-1)
        qy, qx = py[None] + mu[:, 0, None], px[None] + mu[:, 1, None]  # (h, n): Q = q + mu
        if self.encoding == "quadratic":
            al = upcast(self.alpha)[0][:, None].expand_as(qy)
            kf = torch.stack([py * py + px * px, py, px], -1)
            qf = torch.stack([-al, 2 * al * qy, 2 * al * qx], -1)
        else:
            prec = self.precision()
            a, b, c = prec[:, 0, 0, None], prec[:, 0, 1, None], prec[:, 1, 1, None]
            kf = torch.stack([py * py, py * px, px * px, py, px], -1)
            qf = torch.stack(
                [
                    (-0.5 * a).expand_as(qy),
                    (-b).expand_as(qy),
                    (-0.5 * c).expand_as(qy),
                    a * qy + b * qx,
                    b * qy + c * qx,
                ],
                -1,
            )
        return qf, kf

    def _attend_folded(self, q, k, v, height, width, drop):
        """softmax(q k^T / sqrt(d) + P) v with P folded into extra query/key dimensions, so the
        fused SDPA kernel runs (and differentiates the positions) without an (h, n, n) table.
        q, k: (B, h, n, d); v: (B, h, n, d_v) -> (B, h, n, d_v)."""
        b, nh, n, d = q.shape
        dv, width_d = v.shape[-1], self._fold_width()
        qf, kf = self.positional_features(height, width)
        qf, kf = qf.to(q.dtype), kf.to(q.dtype)
        e = qf.shape[-1]
        parts_q = [q * self.key_dim**-0.5, qf[None].expand(b, nh, n, e)]
        parts_k = [k, kf[None, None].expand(b, nh, n, e)]
        pad = width_d - d - e
        if pad:
            parts_q.append(q.new_zeros(b, nh, n, pad))
            parts_k.append(k.new_zeros(b, nh, n, pad))
        qq, kk = torch.cat(parts_q, -1), torch.cat(parts_k, -1)
        vv = F.pad(v, (0, width_d - dv)) if width_d > dv else v
        o = F.scaled_dot_product_attention(qq, kk, vv, dropout_p=drop, scale=1.0)
        return o[..., :dv] if width_d > dv else o

    def flop_breakdown(self, height: int, width: int, batch: int = 1) -> dict[str, int]:
        """Counted: projections and the attention matmuls (SDPA or P @ V). Uncounted: the
        positional logits, one multiply-add per (head, query, key) (two for "gaussian",
        whose cross term is a product), built by broadcasting separable row/column tables;
        they do not grow with the batch. "learned" also counts its (h, 2M+1) offset tables."""
        n, c, nh = height * width, self.dim, self.num_heads
        proj = 2 * n * (nh * self.value_dim) * self.dim_out
        if self.v is not None:
            proj += 2 * n * c * nh * self.value_dim
        attn = 2 * nh * n * n * self.value_dim  # A V
        if self.content:
            proj += 2 * n * c * 2 * nh * self.key_dim
            attn += 2 * nh * n * n * self.key_dim  # q k^T
        pos = 2 * nh * n * n * (2 if self.encoding == "gaussian" else 1)
        if self._chosen_impl() == "folded":  # positions are extra q/k dims: both SDPA products at width D
            attn, pos = 2 * 2 * nh * n * n * self._fold_width(), 0
        tables = 0
        if self.max_offset is not None:  # learned: u_h . r_delta for every offset, rows and columns, once per call
            tables = 2 * 2 * nh * (2 * self.max_offset + 1) * self.pos_dim
        return {"counted": batch * (proj + attn) + tables, "uncounted": pos}

    def extra_repr(self) -> str:
        s = (
            f"{super().extra_repr()}, num_heads={self.num_heads}, encoding={self.encoding!r}, "
            f"content={self.content}, key_dim={self.key_dim}, value_proj={self.value_proj}"
        )
        if self.encoding == "learned":
            s += f", max_offset={self.max_offset}, pos_dim={self.pos_dim}"
        return s


class ConvAsAttention(SpatialAttention):
    """A K_h x K_w convolution (stride 1, zero "same" padding) expressed as multi-head
    self-attention with quadratic relative encoding (Cordonnier et al., Theorem 1).

    Built by :func:`attention_from_conv`. ``forward`` pads the input with K//2 zeros,
    runs the attention layer (``self.attention``, K_h * K_w heads, no content term,
    ``value_proj=False``) on the padded map and crops back to (H, W).

    Shapes: (B, C_in, H, W) -> (B, C_out, H, W).
    """

    def __init__(self, attention: RelativePositionAttention, kernel_size: tuple[int, int]):
        super().__init__(attention.dim, attention.dim_out)
        self.attention = attention
        self.kernel_size = (int(kernel_size[0]), int(kernel_size[1]))
        self.receptive_field = max(self.kernel_size)

    def reset_parameters(self) -> None:
        """Re-initialises the wrapped attention layer (the conv's weights are then gone)."""
        self.attention.reset_parameters()

    def _forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.kernel_size[0] // 2, self.kernel_size[1] // 2
        y = self.attention(F.pad(x, (pw, pw, ph, ph)))  # zeros: the conv's padding, as real keys
        return y[:, :, ph : ph + x.shape[2], pw : pw + x.shape[3]]

    def flop_breakdown(self, height: int, width: int, batch: int = 1) -> dict[str, int]:
        ph, pw = self.kernel_size[0] // 2, self.kernel_size[1] // 2
        return self.attention.flop_breakdown(height + 2 * ph, width + 2 * pw, batch)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kernel_size={self.kernel_size}"


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def attention_from_conv(conv: nn.Conv2d, alpha: float) -> ConvAsAttention:
    """Multi-head self-attention that reproduces ``conv`` (Cordonnier et al., arXiv 1911.03584, Thm. 1).

    One head per kernel position: head (i, j) has quadratic encoding with centre
    Delta = (i - K_h//2, j - K_w//2) and sharpness ``alpha``; its value/output map is the
    kernel slice ``conv.weight[:, :, i, j]`` (C_out x C_in); the output bias is the conv's.
    The returned module takes the conv's input (B, C_in, H, W), pads it with K//2 zeros,
    attends and crops, so it matches ``conv(x)`` up to an error that falls like
    e^{-alpha} (each head puts mass ~4 e^{-alpha} off its target pixel).

    Supported: ``nn.Conv2d`` with odd kernel sides, stride 1, dilation 1, groups 1,
    zero padding K//2 (or "same"). Anything else raises ``ValueError``/``TypeError``.
    """
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"attention_from_conv expects a torch.nn.Conv2d, got {type(conv).__name__}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0 or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    kh, kw = _pair(conv.kernel_size)
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(
            f"attention_from_conv supports odd kernel sizes (a centred kernel), got kernel_size={(kh, kw)}"
        )
    if _pair(conv.stride) != (1, 1):
        raise ValueError(f"attention_from_conv supports stride 1, got stride={conv.stride}")
    if _pair(conv.dilation) != (1, 1):
        raise ValueError(f"attention_from_conv supports dilation 1, got dilation={conv.dilation}")
    if conv.groups != 1:
        raise ValueError(f"attention_from_conv supports groups=1, got groups={conv.groups}")
    if conv.padding_mode != "zeros":
        raise ValueError(f"attention_from_conv supports padding_mode='zeros', got {conv.padding_mode!r}")
    if conv.padding != "same" and _pair(conv.padding) != (kh // 2, kw // 2):
        raise ValueError(
            f"attention_from_conv supports zero 'same' padding (K//2) = {(kh // 2, kw // 2)} for "
            f"kernel_size={(kh, kw)}, got padding={conv.padding}"
        )
    c_in, c_out = conv.in_channels, conv.out_channels
    w = conv.weight.detach()
    attn = RelativePositionAttention(
        c_in,
        c_out,
        num_heads=kh * kw,
        encoding="quadratic",
        content=False,
        key_dim=1,
        value_proj=False,
        device=w.device,
        dtype=w.dtype,
    )
    ii, jj = torch.meshgrid(torch.arange(kh), torch.arange(kw), indexing="ij")
    with torch.no_grad():
        attn.centres.copy_(torch.stack([ii.reshape(-1) - kh // 2, jj.reshape(-1) - kw // 2], -1))
        attn.alpha.fill_(float(alpha))
        # proj.weight[:, h*C_in:(h+1)*C_in] = W[:, :, i, j] for head h = i * K_w + j.
        attn.proj.weight.copy_(w.permute(0, 2, 3, 1).reshape(c_out, kh * kw * c_in))
        if conv.bias is not None:
            attn.proj.bias.copy_(conv.bias.detach())
        else:
            attn.proj.bias.zero_()
    return ConvAsAttention(attn, (kh, kw))
