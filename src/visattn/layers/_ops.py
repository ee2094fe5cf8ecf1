"""Small numerical helpers shared by the mechanisms."""

from __future__ import annotations

import torch

_HALF = (torch.float16, torch.bfloat16)


def softmax_fp32(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax computed in float32 for half-precision input (float64 stays float64), cast back."""
    if x.dtype in _HALF:
        return torch.softmax(x, dim, dtype=torch.float32).to(x.dtype)
    return torch.softmax(x, dim)


def upcast(*ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Half-precision tensors to float32; others unchanged."""
    return tuple(t.float() if t.dtype in _HALF else t for t in ts)


def autocast_off(device_type: str):
    """A context that disables autocast on ``device_type`` (so float32 math stays float32)."""
    return torch.autocast(device_type=device_type, enabled=False)


def is_capturing() -> bool:
    """True while a TorchScript trace or script, ``torch.compile`` or an ONNX export records the
    call: paths that need eager Python (in-place loops, data-dependent checks, custom autograd
    Functions that do not export) step aside there."""
    return bool(
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or torch.onnx.is_in_onnx_export()
    )


def under_functorch(*tensors) -> bool:
    """True inside torch.func transforms (grad, vmap, jacrev, ...): custom autograd Functions
    without a vmap rule and data-dependent checks cannot run there, so callers take a plain path."""
    if torch.compiler.is_compiling():  # dynamo cannot trace the check (and handles torch.func itself)
        return False
    return any(t is not None and torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors)


#: Work (FLOPs) of one chunk of query rows when a long attention call on the CPU is split: a
#: fraction of a second, so Ctrl-C (seen by Python between chunks) stops the call promptly.
CHUNK_FLOPS = 4 * 10**9


def sdpa_in_chunks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``scaled_dot_product_attention(q, k, v)`` for q (..., n, d), k (..., m, d), v (..., m, e).

    On the CPU, outside a trace, export or compile, a call whose work exceeds
    :data:`CHUNK_FLOPS` runs over blocks of query rows (each row's softmax is over all keys, so
    the result is the same), which keeps a long call interruptible.
    """
    import torch.nn.functional as F

    n = q.shape[-2]
    per_row = 2 * k.shape[-2] * (q.shape[-1] + v.shape[-1]) * (q.numel() // max(1, n * q.shape[-1]))
    rows = max(1, CHUNK_FLOPS // max(1, per_row))
    if rows >= n or q.device.type != "cpu" or is_capturing():
        return F.scaled_dot_product_attention(q, k, v)
    return torch.cat([F.scaled_dot_product_attention(q[..., i : i + rows, :], k, v) for i in range(0, n, rows)], -2)
