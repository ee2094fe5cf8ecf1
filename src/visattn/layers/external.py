"""External attention: two small shared memories instead of self-attention.

Guo et al., "Beyond Self-attention: External Attention using Two Linear Layers for Visual
Tasks" (arXiv 2105.02358). A = Norm(F M_k^T) in R^{n x S}; out = A M_v, with learnable
memories M_k, M_v in R^{S x d}. Double normalisation (default): softmax over the n
positions for each memory unit, then L1 over the S units for each position, so every row
of A sums to 1 over S. Multi-head: F is projected (widened by ``expansion``), split into
heads that all use the SAME M_k, M_v, concatenated and projected back (as in EAMLP).

``normalization="softmax"`` is the single-normalisation ablation: an ordinary softmax over
the S units per position. Cost and memory are linear in n. Under half-precision autocast
the normalisations run in float32 (a sum over n positions overflows float16).

Implementations (``impl=``; the same numbers):

* ``"reference"`` — the paper's equations as einsums over named axes (b, h, d, s, n).
* ``"bmm"`` — F M_k^T and A M_v as batched GEMMs against the shared memory expanded over
  the B*heads batch without a copy; the L1 step runs in place when no autograd graph needs
  the softmax output (bit-identical to the out-of-place product).

``impl="auto"`` always picks ``"bmm"``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from visattn.layers._ops import _HALF
from visattn.layers.base import SpatialAttention, check_choice, check_divisible, check_positive_int
from visattn.registry import register_attention

__all__ = ["ExternalAttention"]


@register_attention(
    "external",
    title="External attention",
    paper="Guo et al., Beyond Self-attention: External Attention using Two Linear Layers (arXiv 2105.02358)",
    cost="linear",
    receptive_field="global",
    positional="none (content only)",
    export=("onnx", "compile", "torchscript"),
    impls=("reference", "bmm"),
    test_kwargs={"memory_size": 8},
    bench_kwargs={"memory_size": 64},
    bench_variants={"external-mh": {"memory_size": 64, "num_heads": 16, "expansion": 4}},
    sets=True,
)
class ExternalAttention(SpatialAttention):
    """External attention with shared memories (single- or multi-head).

    Args:
        dim: input channels C.
        dim_out: output channels (default C); a 1x1 projection is added when it differs
            from C in the single-head form.
        memory_size: memory units S (default 64).
        num_heads: EA heads; all share M_k and M_v. With num_heads == 1 and expansion == 1
            the layer is the paper's basic form (no projections).
        expansion: width factor of the input projection in the multi-head form
            (the EAMLP code uses 4); C * expansion must divide by num_heads.
        normalization: "double" (paper) or "softmax" (softmax over S only).
        memory_bias: give M_k a per-memory-unit bias on the logits F M_k^T (it cancels in the
            softmax over positions; kept for loading checkpoints that have one). Called
            ``key_bias`` before; old state dicts load.
        tie_memories: one parameter serves as M_k and M_v (the EANet / EAMLP authors' code
            initialises M_v with M_k's storage). Only ``memory_key`` is registered, so the tie
            survives ``.to()``, meta-device builds + ``to_empty()`` and parameter conversion;
            ``memory_value`` reads it.
        eps: L1 normaliser epsilon.
        impl: "auto" (always "bmm"), "reference" or "bmm" (module docstring).
        device, dtype: factory arguments for the parameters.

    The output projection (multi-head form, or C_out != C) is ``proj`` (called ``out_proj``
    before; old state dicts load). Shapes: (B, C, H, W) -> (B, C_out, H, W); attention map (B, heads, S, n).
    """

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        *,
        memory_size: int = 64,
        num_heads: int = 1,
        expansion: int = 1,
        normalization: str = "double",
        memory_bias: bool = False,
        tie_memories: bool = False,
        eps: float = 1e-9,
        impl: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(dim, dim_out, impl=impl)
        check_positive_int("memory_size", memory_size)
        check_positive_int("num_heads", num_heads)
        check_positive_int("expansion", expansion)
        check_choice("normalization", normalization, ("double", "softmax"))
        inner = dim * expansion
        check_divisible("dim * expansion", inner, "num_heads", num_heads)
        self.memory_size, self.num_heads, self.expansion = memory_size, num_heads, expansion
        if not isinstance(tie_memories, bool):
            raise TypeError(f"tie_memories must be a bool, got {type(tie_memories).__name__} {tie_memories!r}")
        self.normalization, self.eps = normalization, eps
        self.tie_memories = tie_memories
        self.inner_dim = inner
        self.head_dim = inner // num_heads
        self.multi_head = num_heads > 1 or expansion > 1
        fk: dict[str, Any] = {"device": device, "dtype": dtype}
        self.in_proj = nn.Conv2d(dim, inner, 1, **fk) if self.multi_head else None
        # M_k: (S, d) applied as F M_k^T; M_v: (S, d) applied as A M_v.
        self.memory_key = nn.Parameter(torch.empty(memory_size, self.head_dim, **fk))
        if not tie_memories:
            self.register_parameter("memory_value", nn.Parameter(torch.empty(memory_size, self.head_dim, **fk)))
        self.memory_bias = nn.Parameter(torch.zeros(memory_size, **fk)) if memory_bias else None
        need_out = self.multi_head or self.dim_out != dim
        self.proj = nn.Conv2d(inner, self.dim_out, 1, **fk) if need_out else None
        self._reset_memories()  # the projections initialised themselves above

    # Read through a property so a tied layer (one registered parameter) answers M_v = M_k;
    # the untied M_v is registered with register_parameter.
    @property
    def memory_value(self) -> nn.Parameter:
        """M_v: (S, d); the ``memory_key`` parameter itself when ``tie_memories``."""
        p = self._parameters.get("memory_key" if self.__dict__.get("tie_memories") else "memory_value")
        if p is None:  # during __init__, before registration (nn.Module.register_parameter asks hasattr)
            raise AttributeError("memory_value")
        return p

    #: Constructor arguments renamed in the one vocabulary (old -> new); create_attention names the new one.
    renamed_args = {"key_bias": "memory_bias"}
    #: State-dict keys renamed (old -> new); old state dicts load (see _load_from_state_dict).
    renamed_keys = {"key_bias": "memory_bias", "out_proj": "proj"}

    def reset_parameters(self) -> None:
        """Re-initialise as construction does: default conv init for the projections, the
        memories uniform like nn.Linear's default (fan-in d for M_k, S for M_v), bias zero."""
        if self.in_proj is not None:
            self.in_proj.reset_parameters()
        self._reset_memories()
        if self.memory_bias is not None:
            nn.init.zeros_(self.memory_bias)
        if self.proj is not None:
            self.proj.reset_parameters()

    def _reset_memories(self) -> None:
        # Like nn.Linear's default for the two memories (fan-in d and S).
        nn.init.uniform_(self.memory_key, -1 / math.sqrt(self.head_dim), 1 / math.sqrt(self.head_dim))
        if not self.tie_memories:
            nn.init.uniform_(self.memory_value, -1 / math.sqrt(self.memory_size), 1 / math.sqrt(self.memory_size))

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # A checkpoint of a tied layer written before the tie was structural carries M_v as a
        # second key: accept it when it equals M_k, refuse a different one. An untied layer
        # loading a tied checkpoint (M_k only) starts with M_v = M_k, as the authors' code does.
        self._rename_old_keys(state_dict, prefix)  # key_bias, out_proj (old names), before reading the keys below
        mv_key, mk_key = prefix + "memory_value", prefix + "memory_key"
        if not self.tie_memories and mv_key not in state_dict and mk_key in state_dict:
            state_dict[mv_key] = state_dict[mk_key]
        if self.tie_memories and mv_key in state_dict:
            mv = state_dict.pop(mv_key)
            mk = state_dict.get(mk_key)
            if mk is not None and (mk.shape != mv.shape or not torch.equal(mk, mv)):
                error_msgs.append(
                    f"{mv_key}: this layer ties M_v to M_k (tie_memories=True) but the checkpoint "
                    f"holds a different {mv_key}; build the layer with tie_memories=False to load it"
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised attention A: (B, heads, S, n), in float32 for half input.

        ``x`` is (B, C, H, W); it is validated like a forward input.
        """
        self._check_input(x)
        b, _, h, w = x.shape
        return self._attention(self._features(x))[0].reshape(b, self.num_heads, self.memory_size, h * w)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        f = self.in_proj(x) if self.in_proj is not None else x
        return f.reshape(b * self.num_heads, self.head_dim, h * w)  # (B*heads, d, n)

    def _attention(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.dtype]:
        # F M_k^T as one batched GEMM against the shared memory, expanded without a copy
        # (a broadcasting ``memory_key @ f`` makes torch.matmul copy f transposed).
        bh = f.shape[0]
        logits = torch.bmm(self.memory_key.expand(bh, -1, -1), f)  # (B*heads, S, n)
        if self.memory_bias is not None:
            logits = logits + self.memory_bias[:, None]
        dtype = logits.dtype
        # Normalise in float32 for half input (a sum over n overflows float16). No autocast
        # guard is needed: autocast leaves softmax, sum and mul of float32 tensors in float32.
        if dtype in _HALF:
            logits = logits.float()
        if self.normalization == "double":
            a = logits.softmax(dim=2)  # over the n positions, per memory unit
            del logits  # free the (B*heads, S, n) logits before the next map is made
            # L1 over the S units, per position (a multiply by the reciprocal is cheaper
            # than a divide); in place when no graph needs the softmax output.
            r = a.sum(dim=1, keepdim=True).add_(self.eps).reciprocal_()  # (B*heads, 1, n)
            a = a * r if a.requires_grad else a.mul_(r)
        else:
            a = logits.softmax(dim=1)  # over the S units
        return a, dtype

    def _forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The paper's equations: A = Norm(F M_k^T), out = A M_v, per head with shared memories.

        x: (B, C, H, W) -> (B, C_out, H, W).
        """
        b, _, h, w = x.shape
        nh, d, n = self.num_heads, self.head_dim, h * w
        f = self.in_proj(x) if self.in_proj is not None else x  # F: (B, heads*d, H, W)
        f = f.reshape(b, nh, d, n)
        logits = torch.einsum("bhdn,sd->bhsn", f, self.memory_key)  # F M_k^T
        if self.memory_bias is not None:
            logits = logits + self.memory_bias[:, None]  # + bias per memory unit s
        dtype = logits.dtype
        if dtype in _HALF:  # normalise in float32 (a sum over n overflows float16)
            logits = logits.float()
        if self.normalization == "double":
            a = torch.softmax(logits, dim=3)  # softmax over the n positions, per unit s
            a = a / (self.eps + a.sum(dim=2, keepdim=True))  # L1 over the S units, per position
        else:
            a = torch.softmax(logits, dim=2)  # softmax over the S units
        o = torch.einsum("bhsn,sd->bhdn", a.to(dtype), self.memory_value.to(dtype))  # A M_v
        o = o.reshape(b, self.inner_dim, h, w)  # heads concatenated
        return self.proj(o) if self.proj is not None else o

    def _forward_bmm(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        a, dtype = self._attention(self._features(x))  # (B*heads, S, n)
        mv_t = self.memory_value.transpose(0, 1).expand(a.shape[0], -1, -1)  # (B*heads, d, S)
        if a.dtype != dtype:  # half input: A was normalised in float32
            a, mv_t = a.to(dtype), mv_t.to(dtype)
        o = torch.bmm(mv_t, a)  # A M_v: (B*heads, d, n)
        o = o.reshape(b, self.inner_dim, h, w)
        return self.proj(o) if self.proj is not None else o

    def flop_breakdown(self, height: int, width: int, batch: int = 1) -> dict[str, int]:
        n, s = height * width, self.memory_size
        core = 2 * 2 * n * s * self.inner_dim  # F M_k^T and A M_v over all heads
        proj = 0
        if self.in_proj is not None:
            proj += 2 * n * self.dim * self.inner_dim
        if self.proj is not None:
            proj += 2 * n * self.inner_dim * self.dim_out
        return {"counted": batch * (core + proj), "uncounted": 0}

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, memory_size={self.memory_size}, num_heads={self.num_heads}, "
            f"expansion={self.expansion}, normalization={self.normalization!r}"
            + (", tie_memories=True" if self.tie_memories else "")
        )
