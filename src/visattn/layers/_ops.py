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
