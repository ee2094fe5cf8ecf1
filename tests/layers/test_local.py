"""Identities of "local" (k x k im2col attention), SPEC.md section 0.

* equals a plain per-pixel loop that gathers each k x k neighbourhood of the projected
  q, k, v maps with zero padding, where zero-padded neighbours take part in the softmax
  (logit 0 against a zero key), for k = 1, 3, 5 and maps smaller than the kernel
  (float64, max abs error <= 1e-10);
* ``mask_padding=True`` equals the same loop with out-of-image neighbours excluded;
* with ``mask_padding=True`` and k >= 2*max(H, W) - 1 every pixel sees every pixel, so the
  layer equals global "mhsa" carrying the same weights;
* k = 1: each pixel attends only to itself, so the output is proj(v).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _contract_checks import (
    assert_factory_dtype,
    assert_meta_build_equals_normal_build,
    gradient_support,
    is_centred,
)

import visattn
from visattn.layers.local import LocalAttention

TOL64 = 1e-10


def reference_local(m, x: torch.Tensor, mask_padding: bool) -> torch.Tensor:
    """Per-pixel loop: explicit neighbourhood gather. x: (B, C, H, W) -> (B, C_out, H, W)."""
    b, c, h, w = x.shape
    nh, d, k = m.num_heads, c // m.num_heads, m.kernel_size
    r = k // 2
    qkv = torch.einsum("oc,bchw->bohw", m.qkv.weight, x)
    if m.qkv.bias is not None:
        qkv = qkv + m.qkv.bias[:, None, None]
    q, key, val = qkv[:, :c], qkv[:, c : 2 * c], qkv[:, 2 * c :]  # (B, C, H, W)
    out = torch.zeros(b, c, h, w, dtype=x.dtype)
    for i in range(h):
        for j in range(w):
            ks, vs = [], []
            for di in range(-r, r + 1):
                for dj in range(-r, r + 1):
                    ii, jj = i + di, j + dj
                    inside = 0 <= ii < h and 0 <= jj < w
                    if inside:
                        ks.append(key[:, :, ii, jj])
                        vs.append(val[:, :, ii, jj])
                    elif not mask_padding:  # zero padding after the projection
                        ks.append(torch.zeros(b, c, dtype=x.dtype))
                        vs.append(torch.zeros(b, c, dtype=x.dtype))
            ks, vs = torch.stack(ks, -1), torch.stack(vs, -1)  # (B, C, m)
            for hd in range(nh):
                sl = slice(hd * d, (hd + 1) * d)
                logits = torch.einsum("bc,bcm->bm", q[:, sl, i, j], ks[:, sl]) / math.sqrt(d)
                a = torch.softmax(logits, dim=-1)
                out[:, sl, i, j] = torch.einsum("bm,bcm->bc", a, vs[:, sl])
    y = torch.einsum("oc,bchw->bohw", m.proj.weight, out) + m.proj.bias[:, None, None]
    return y


CASES = [(1, (3, 4)), (3, (1, 1)), (3, (2, 3)), (3, (4, 5)), (5, (1, 2)), (5, (3, 3)), (5, (4, 6))]


@pytest.mark.parametrize("kernel_size,hw", CASES)
@pytest.mark.parametrize("mask_padding", [False, True])
def test_equals_per_pixel_reference(kernel_size, hw, mask_padding):
    m = visattn.create_attention(
        "local", 8, 12, num_heads=2, kernel_size=kernel_size, mask_padding=mask_padding
    ).double()
    x = torch.randn(2, 8, *hw, dtype=torch.float64)
    torch.testing.assert_close(m(x), reference_local(m, x, mask_padding), atol=TOL64, rtol=0)


def test_zero_padding_is_not_masked_by_default():
    # The two references differ at the border, and the module follows the unmasked one.
    m = visattn.create_attention("local", 8, num_heads=2, kernel_size=3).double()
    x = torch.randn(1, 8, 3, 3, dtype=torch.float64)
    diff = (reference_local(m, x, True) - reference_local(m, x, False)).abs().max()
    assert diff > 1e-3
    torch.testing.assert_close(m(x), reference_local(m, x, False), atol=TOL64, rtol=0)


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (4, 4)])
def test_large_masked_window_equals_global_mhsa(hw):
    k = 2 * max(hw) - 1
    local = visattn.create_attention("local", 8, num_heads=2, kernel_size=k, mask_padding=True).double()
    glob = visattn.create_attention("mhsa", 8, num_heads=2).double()
    glob.load_state_dict(local.state_dict())
    x = torch.randn(2, 8, *hw, dtype=torch.float64)
    torch.testing.assert_close(local(x), glob(x), atol=TOL64, rtol=0)


def test_kernel_one_is_projected_value():
    m = visattn.create_attention("local", 8, num_heads=4, kernel_size=1).double()
    x = torch.randn(2, 8, 3, 5, dtype=torch.float64)
    v = F.conv2d(x, m.qkv.weight[16:, :, None, None], m.qkv.bias[16:])
    expected = F.conv2d(v, m.proj.weight[:, :, None, None], m.proj.bias)
    torch.testing.assert_close(m(x), expected, atol=TOL64, rtol=0)


# -- the mechanism contract (issue 11): one implementation, factory args, centred window ---------


def test_one_implementation_and_auto_runs_it():
    info = visattn.attention_info("local")
    assert info.impls == ("reference",) and info.window_centred is True
    m = LocalAttention(8, num_heads=2)
    x = torch.randn(1, 8, 3, 4)
    assert m.select_impl(x) == "reference"
    with torch.no_grad():
        assert m.select_impl(x) == "reference"
    with pytest.raises(ValueError, match=r"impl must be one of \('auto', 'reference'\), got 'shifts'"):
        LocalAttention(8, num_heads=2, impl="shifts")


@pytest.mark.parametrize("mask", [False, True])
def test_meta_build_to_empty_reset_equals_normal_build(mask):
    assert_meta_build_equals_normal_build(
        lambda **fk: LocalAttention(8, 6, num_heads=2, kernel_size=3, mask_padding=mask, **fk), torch.randn(1, 8, 4, 5)
    )


def test_factory_dtype():
    assert_factory_dtype(lambda **fk: LocalAttention(8, num_heads=2, **fk), torch.randn(1, 8, 3, 3))


@pytest.mark.parametrize("k", [3, 5])
def test_window_is_centred_on_the_query(k):
    m = LocalAttention(8, num_heads=2, kernel_size=k).double()
    x = torch.randn(1, 8, 9, 8, dtype=torch.float64)
    r = k // 2
    for y, xx in [(4, 4), (r, r), (8 - r, 7 - r), (5, 3)]:
        s = gradient_support(m, x, y, xx)
        assert is_centred(s, y, xx) and s.sum().item() == k * k


def test_bool_options_are_checked():
    with pytest.raises(TypeError, match=r"mask_padding must be a bool, got int 1"):
        LocalAttention(8, num_heads=2, mask_padding=1)
