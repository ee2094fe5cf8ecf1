"""Mechanisms on unordered sets of tokens: point features (B, C, N) with no grid.

A mechanism whose registry data says ``sets=True`` (:class:`~visattn.registry.AttentionInfo`)
mixes its n positions through content only, so on a set it is permutation-equivariant:
shuffling the N points shuffles the output the same way. The one entry is
:func:`create_set_attention`; it builds the registered mechanism (with the arguments its set
form needs, ``AttentionInfo.set_kwargs``) inside :class:`SetAttention`, which runs it on the
points laid out as a (B, C, N, 1) strip.

Why a strip and not :class:`~visattn.layers.base.TokenAdapter`: point features live
channels-first, (B, C, N) as ``nn.Conv1d`` keeps them (PCT's layout), and a (B, C, N, 1) view
of them is free, while the token adapter wants (B, N, C) plus an ``hw`` that a set does not
have. On the strip each mechanism keeps its own input checks, work bounds and fast paths. The
strip is no grid: only mechanisms that ignore positions are allowed on it (a grid-only one would
read the arbitrary point order as a neighbourhood).
"""

from __future__ import annotations

import torch
from torch import nn

from visattn.registry import attention_info, create_attention, list_attention

__all__ = ["SetAttention", "create_set_attention", "set_capable"]


def set_capable() -> list[str]:
    """Names of the mechanisms that run on an unordered set (``AttentionInfo.sets``), sorted."""
    return [n for n in list_attention() if attention_info(n).sets]


class SetAttention(nn.Module):
    """A set-capable mechanism on point features: (B, C, N) -> (B, C_out, N).

    Attributes:
        mechanism: the registered module, run on the (B, C, N, 1) strip.
        name: its registry name.
    """

    def __init__(self, name: str, mechanism: nn.Module):
        super().__init__()
        self.name = name
        self.mechanism = mechanism
        self.dim = int(getattr(mechanism, "dim"))  # noqa: B009 (every mechanism has one)
        self.dim_out = int(getattr(mechanism, "dim_out"))  # noqa: B009

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, N) point features -> (B, C_out, N)."""
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"set attention {self.name!r} expects point features (B, C={self.dim}, N), got {shape}")
        return self.mechanism(x.unsqueeze(-1)).squeeze(-1)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dim={self.dim}, dim_out={self.dim_out}"


def create_set_attention(name: str, dim: int, dim_out: int | None = None, **kwargs) -> SetAttention:
    """Create set-capable mechanism ``name`` for point features (B, dim, N) -> (B, dim_out or dim, N).

    The mechanism's set arguments (``AttentionInfo.set_kwargs``) are applied; another value for one
    of them is refused. A mechanism that needs a grid is refused naming the set-capable ones.
    """
    info = attention_info(name)
    if not info.sets:
        raise ValueError(
            f"attention {name!r} needs a (B, C, H, W) grid (its mixing depends on where a position is) and "
            f"cannot run on an unordered point set; set-capable mechanisms: {', '.join(set_capable())}"
        )
    for k, v in info.set_kwargs.items():
        if k in kwargs and kwargs[k] != v:
            raise ValueError(
                f"attention {name!r} on a point set needs {k}={v!r} (AttentionInfo.set_kwargs), got {k}={kwargs[k]!r}"
            )
    return SetAttention(name, create_attention(name, dim, dim_out, **{**kwargs, **info.set_kwargs}))
