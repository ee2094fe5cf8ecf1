"""The attention contract shared by every mechanism in visattn.

Every mechanism is an ``nn.Module`` that maps a feature map ``(B, C, H, W)`` to
``(B, C_out, H, W)`` for any ``H, W >= 1``. :class:`SpatialAttention` validates the
input once (rank, channel count, layout) and hands a well-formed tensor to the
subclass's ``_forward``. :class:`TokenAdapter` serves token input ``(B, N, C)`` with an
explicit ``(H, W)``.

Each mechanism also reports its cost analytically through :meth:`SpatialAttention.flop_breakdown`
so benchmarks can check ``torch.utils.flop_counter`` against the paper's formula.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

__all__ = [
    "SpatialAttention",
    "TokenAdapter",
    "check_positive_int",
    "check_divisible",
    "check_odd",
    "check_choice",
    "to_tokens",
    "from_tokens",
]


# ---------------------------------------------------------------------------
# Configuration checks: raise at construction with what was expected and given.
# ---------------------------------------------------------------------------


def check_positive_int(name: str, value, *, allow_none: bool = False) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``value`` is an int >= 1."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 1, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value}")


def check_divisible(name: str, value: int, by_name: str, by: int) -> None:
    """Raise ``ValueError`` unless ``value`` is divisible by ``by``."""
    if value % by != 0:
        raise ValueError(f"{name}={value} must be divisible by {by_name}={by}")


def check_odd(name: str, value: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an odd int >= 1 (a centred window)."""
    check_positive_int(name, value)
    if value % 2 == 0:
        raise ValueError(f"{name} must be odd so the window is centred on the query, got {value}")


def check_choice(name: str, value, choices: Iterable) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


# ---------------------------------------------------------------------------
# Layout helpers.
# ---------------------------------------------------------------------------


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C) with N = H*W in row-major order."""
    return x.flatten(2).transpose(1, 2)


def from_tokens(t: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B, N, C) -> (B, C, H, W)."""
    b, n, c = t.shape
    return t.transpose(1, 2).reshape(b, c, hw[0], hw[1])


class SpatialAttention(nn.Module):
    """Base class of every mechanism: (B, C, H, W) -> (B, C_out, H, W).

    Subclasses implement ``_forward(x)`` on a validated input and
    ``flop_breakdown(height, width, batch)``.

    Attributes:
        dim: input channels C.
        dim_out: output channels C_out.
    """

    #: Registry name, filled in by :func:`visattn.registry.register_attention`.
    registry_name: str = ""

    def __init__(self, dim: int, dim_out: int | None = None):
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("dim_out", dim_out, allow_none=True)
        self.dim = dim
        self.dim_out = dim if dim_out is None else dim_out

    # -- input validation --------------------------------------------------
    def _check_input(self, x) -> None:
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} expects a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
        if x.dim() == 3:
            raise ValueError(
                f"{name} expects a 4-D feature map (B, C={self.dim}, H, W), got a 3-D tensor of shape "
                f"{tuple(x.shape)}; for token input (B, N, C) wrap the module in "
                f"visattn.TokenAdapter and pass hw=(H, W)"
            )
        if x.dim() != 4:
            raise ValueError(
                f"{name} expects a 4-D feature map (B, C={self.dim}, H, W), got a {x.dim()}-D tensor of "
                f"shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.dim:
            hint = ""
            if x.shape[-1] == self.dim:
                hint = " (this looks like a channels-last (B, H, W, C) tensor; permute it to (B, C, H, W))"
            raise ValueError(
                f"{name} expects (B, C={self.dim}, H, W), got shape {tuple(x.shape)} with "
                f"{x.shape[1]} channels in dim 1{hint}"
            )
        if x.shape[0] < 1 or x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f"{name} expects B, H, W >= 1, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} expects a floating-point tensor, got dtype {x.dtype}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C_out, H, W)."""
        self._check_input(x)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- cost ----------------------------------------------------------------
    def flop_breakdown(self, height: int, width: int, batch: int = 1) -> dict[str, int]:
        """Analytic forward FLOPs (2 x multiply-adds) for one call on (batch, C, height, width).

        Returns ``{"counted": ..., "uncounted": ...}``: ``counted`` is the part done by
        matmul / convolution / SDPA kernels, which ``torch.utils.flop_counter`` sees (with
        visattn's formulas registered); ``uncounted`` is multiply-adds done as elementwise
        products and sums, which no operator-level counter can see.
        """
        raise NotImplementedError

    def analytic_flops(self, height: int, width: int, batch: int = 1) -> int:
        """Total analytic forward FLOPs (2 x multiply-adds), counted + uncounted."""
        f = self.flop_breakdown(height, width, batch)
        return int(f["counted"] + f["uncounted"])

    def extra_repr(self) -> str:
        return f"dim={self.dim}, dim_out={self.dim_out}"


class TokenAdapter(nn.Module):
    """Runs a (B, C, H, W) mechanism on tokens (B, N, C) with an explicit ``hw=(H, W)``.

    Example::

        attn = TokenAdapter(visattn.create_attention("external", 64))
        y = attn(tokens, hw=(14, 14))   # tokens (B, 196, 64) -> (B, 196, 64)
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        if not isinstance(module, SpatialAttention):
            raise TypeError(f"TokenAdapter wraps a visattn mechanism (SpatialAttention), got {type(module).__name__}")
        self.module = module

    def forward(self, tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """tokens: (B, N, C) with N = H*W -> (B, N, C_out)."""
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3:
            shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"TokenAdapter expects tokens of shape (B, N, C), got {shape}")
        if not (isinstance(hw, (tuple, list)) and len(hw) == 2 and all(isinstance(v, int) and v >= 1 for v in hw)):
            raise ValueError(f"TokenAdapter expects hw=(H, W) with positive ints, got {hw!r}")
        h, w = hw
        if tokens.shape[1] != h * w:
            raise ValueError(
                f"TokenAdapter got N={tokens.shape[1]} tokens but hw=({h}, {w}) needs N=H*W={h * w}"
            )
        y = self.module(from_tokens(tokens, (h, w)))
        return to_tokens(y)
