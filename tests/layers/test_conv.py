"""Identities of "conv" (the k x k convolution baseline), SPEC.md section 0.

* equals ``F.conv2d`` with the module's weights and "same" zero padding k // 2, for
  k = 1, 3, 5, grouped and depthwise, with and without bias, on maps smaller than the
  kernel (float64, max abs error <= 1e-12);
* groups that do not divide the channels fail at construction with the stated message.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import visattn


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
@pytest.mark.parametrize("groups,dim_out", [(1, 12), (2, 8), (4, 12), (8, 8)])
@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (6, 5)])
def test_equals_functional_conv2d(kernel_size, groups, dim_out, hw):
    m = visattn.create_attention("conv", 8, dim_out, kernel_size=kernel_size, groups=groups).double()
    x = torch.randn(2, 8, *hw, dtype=torch.float64)
    expected = F.conv2d(x, m.conv.weight, m.conv.bias, padding=kernel_size // 2, groups=groups)
    torch.testing.assert_close(m(x), expected, atol=1e-12, rtol=0)
    assert m.conv.weight.shape == (dim_out, 8 // groups, kernel_size, kernel_size)


def test_without_bias():
    m = visattn.create_attention("conv", 8, kernel_size=3, bias=False).double()
    assert m.conv.bias is None
    assert sum(p.numel() for p in m.parameters()) == 8 * 8 * 9
    x = torch.randn(1, 8, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(m(x), F.conv2d(x, m.conv.weight, padding=1), atol=1e-12, rtol=0)


def test_groups_must_divide_channels():
    with pytest.raises(ValueError, match=r"dim=8 and dim_out=6 must be divisible by groups=4"):
        visattn.create_attention("conv", 8, 6, groups=4)
