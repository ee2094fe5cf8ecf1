"""Identities of "mhsa" (global multi-head self-attention), SPEC.md section 0.

* both implementations ("reference": explicit softmax, "sdpa") equal a per-head loop
  softmax(q k^T / sqrt(d)) v with the module's own qkv / proj weights (float64, max abs
  error <= 1e-10); "auto" runs "sdpa" for every input;
* permutation-equivariant over positions (no positional term): permuting the pixels
  permutes the output the same way (float64, <= 1e-10);
* ``qkv_bias=False`` has no bias parameter on the qkv projection.
"""

from __future__ import annotations

import math

import pytest
import torch

import visattn

TOL64 = 1e-10


def reference_mhsa(m, x: torch.Tensor) -> torch.Tensor:
    """Plain multi-head attention with an explicit loop over heads. x: (B, C, H, W)."""
    b, c, h, w = x.shape
    nh, d = m.num_heads, c // m.num_heads
    t = x.flatten(2).transpose(1, 2)  # (B, n, C)
    qkv = t @ m.qkv.weight.T
    if m.qkv.bias is not None:
        qkv = qkv + m.qkv.bias
    q, k, v = qkv[..., :c], qkv[..., c : 2 * c], qkv[..., 2 * c :]  # (B, n, C) each
    heads = []
    for i in range(nh):
        sl = slice(i * d, (i + 1) * d)
        logits = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(d)  # (B, n, n)
        heads.append(torch.softmax(logits, dim=-1) @ v[..., sl])  # (B, n, d)
    o = torch.cat(heads, dim=-1) @ m.proj.weight.T + m.proj.bias  # (B, n, C_out)
    return o.transpose(1, 2).reshape(b, -1, h, w)


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (6, 4)])
@pytest.mark.parametrize("num_heads,dim_out", [(1, None), (2, 12), (4, None)])
def test_equals_plain_reference(hw, num_heads, dim_out, impl):
    m = visattn.create_attention("mhsa", 8, dim_out, num_heads=num_heads, impl=impl).double()
    x = torch.randn(2, 8, *hw, dtype=torch.float64)
    torch.testing.assert_close(m(x), reference_mhsa(m, x), atol=TOL64, rtol=0)


def test_equals_reference_without_qkv_bias():
    m = visattn.create_attention("mhsa", 8, num_heads=2, qkv_bias=False).double()
    x = torch.randn(2, 8, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(m(x), reference_mhsa(m, x), atol=TOL64, rtol=0)


def test_permutation_equivariance_over_positions():
    m = visattn.create_attention("mhsa", 8, num_heads=2).double()
    b, c, h, w = 2, 8, 5, 6
    x = torch.randn(b, c, h, w, dtype=torch.float64)
    perm = torch.randperm(h * w)
    x_perm = x.flatten(2)[:, :, perm].reshape(b, c, h, w)
    y = m(x).flatten(2)
    y_perm = m(x_perm).flatten(2)
    torch.testing.assert_close(y_perm, y[:, :, perm], atol=TOL64, rtol=0)
    # Sanity: the permutation really moves values (the identity above is not trivially true).
    assert (y[:, :, perm] - y).abs().max() > 1e-3


def test_qkv_bias_false_has_no_bias_parameter():
    m = visattn.create_attention("mhsa", 8, num_heads=2, qkv_bias=False)
    assert m.qkv.bias is None
    names = {n for n, _ in m.named_parameters()}
    assert names == {"qkv.weight", "proj.weight", "proj.bias"}
    assert sum(p.numel() for p in m.parameters()) == 3 * 8 * 8 + 8 * 8 + 8
    with_bias = visattn.create_attention("mhsa", 8, num_heads=2)
    assert sum(p.numel() for p in with_bias.parameters()) == 3 * 8 * 8 + 3 * 8 + 8 * 8 + 8


def test_auto_rule_is_sdpa():
    m = visattn.create_attention("mhsa", 8, num_heads=2)
    for shape in [(1, 8, 1, 1), (2, 8, 64, 64)]:
        assert m.select_impl(torch.empty(shape)) == "sdpa"
    with torch.no_grad():
        assert m.select_impl(torch.empty(1, 8, 3, 3)) == "sdpa"
    assert m.peak_intermediate_bytes(10, 10, 2) == 0
    m.impl = "reference"
    assert m.peak_intermediate_bytes(10, 10, 2) == 2 * 2 * 100 * 100 * 4
