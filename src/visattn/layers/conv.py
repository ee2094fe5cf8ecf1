"""Convolution baseline: the k x k convolution that attention layers replace.

Registered as ``"conv"`` so that benchmarks, comparisons and the model factory can put a
plain convolution in the same slot as any attention mechanism.
"""

from __future__ import annotations

import torch
from torch import nn

from visattn.layers.base import SpatialAttention, check_odd
from visattn.registry import register_attention

__all__ = ["ConvMixer"]


@register_attention(
    "conv",
    title="Convolution (baseline)",
    paper="LeCun et al. / He et al., ResNet (arXiv 1512.03385): the 3x3 convolution",
    cost="local",
    receptive_field="local",
    window_arg="kernel_size",
    window_centred=True,
    positional="implicit (fixed kernel offsets)",
    export=("onnx", "compile", "torchscript"),
    test_kwargs={"kernel_size": 3},
    bench_kwargs={"kernel_size": 3},
)
class ConvMixer(SpatialAttention):
    """A k x k convolution with zero "same" padding (one implementation, ``F.conv2d``).

    Args:
        dim: input channels C.
        dim_out: output channels (default C).
        kernel_size: odd window side k (centred on each position).
        groups: convolution groups (C and C_out must divide by it).
        bias: convolution bias.
        impl: "auto" or "reference" (the one path).
        device, dtype: factory arguments for the parameters.

    Shapes: (B, C, H, W) -> (B, C_out, H, W).
    """

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        *,
        kernel_size: int = 3,
        groups: int = 1,
        bias: bool = True,
        impl: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__(dim, dim_out, impl=impl)
        check_odd("kernel_size", kernel_size)
        if dim % groups or self.dim_out % groups:
            raise ValueError(f"dim={dim} and dim_out={self.dim_out} must be divisible by groups={groups}")
        self.kernel_size = kernel_size
        self.receptive_field = kernel_size
        self.conv = nn.Conv2d(
            dim,
            self.dim_out,
            kernel_size,
            padding=kernel_size // 2,
            groups=groups,
            bias=bias,
            device=device,
            dtype=dtype,
        )

    def reset_parameters(self) -> None:
        """The convolution as ``nn.Conv2d`` initialises it."""
        self.conv.reset_parameters()

    def _forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def flop_breakdown(self, height: int, width: int, batch: int = 1) -> dict[str, int]:
        k = self.kernel_size
        macs = height * width * self.dim_out * (self.dim // self.conv.groups) * k * k
        return {"counted": 2 * batch * macs, "uncounted": 0}
