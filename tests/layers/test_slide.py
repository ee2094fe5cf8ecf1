"""Slide attention (Pan et al., arXiv 2304.04237) against its identities (SPEC.md section 4).

* the one-hot depthwise conv is F.unfold, bit for bit;
* with the learnable path and the key bias at zero, slide attention == "local" (im2col);
* reparameterize() is exact (float32 rounding) and idempotent;
* one output pixel sees exactly its k x k window;
* shift semantics out[y, x] = x[y + i//k - k//2, x + i%k - k//2];
* the fast paths (in place under no_grad; out of place with autograd) == the literal
  definition (materialised keys from two convs) in float64.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import visattn
from visattn.layers.local import LocalAttention
from visattn.layers.slide import SlideAttention, one_hot_shift_kernels


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (6, 5), (9, 12)])
def test_one_hot_depthwise_conv_is_unfold_bit_for_bit(k, hw):
    c = 6
    x = torch.randn(2, c, *hw)
    conv = F.conv2d(x, one_hot_shift_kernels(c, k), padding=k // 2, groups=c)  # (B, c*k*k, H, W)
    unf = F.unfold(x, k, padding=k // 2)  # (B, c*k*k, H*W)
    assert torch.equal(conv.flatten(2), unf)


@pytest.mark.parametrize("k", [3, 5])
def test_shift_semantics(k):
    h, w = 5, 7
    x = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w) + 1
    out = F.conv2d(x, one_hot_shift_kernels(1, k), padding=k // 2)[0]  # (k*k, H, W)
    r = k // 2
    for i in range(k * k):
        for y in range(h):
            for xx in range(w):
                sy, sx = y + i // k - r, xx + i % k - r
                expect = x[0, 0, sy, sx] if 0 <= sy < h and 0 <= sx < w else 0.0
                assert out[i, y, xx] == expect


def _copy_local_weights(slide: SlideAttention, local: LocalAttention) -> None:
    slide.qkv.load_state_dict(local.qkv.state_dict())
    slide.proj.load_state_dict(local.proj.state_dict())


@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("deformed", [False, True])
def test_equals_local_with_learned_parts_zero(mask, k, deformed):
    torch.manual_seed(1)
    local = LocalAttention(16, 12, num_heads=4, kernel_size=k, mask_padding=mask).double().eval()
    slide = SlideAttention(16, 12, num_heads=4, kernel_size=k, deformed=deformed, mask_padding=mask).double().eval()
    _copy_local_weights(slide, local)
    with torch.no_grad():
        slide.key_bias.zero_()
        if deformed:
            slide.deform.weight.zero_()
            slide.deform.bias.zero_()
    for hw in [(1, 1), (2, 2), (7, 5), (10, 11)]:
        x = torch.randn(2, 16, *hw, dtype=torch.float64)
        ref = local(x)
        assert _rel(slide(x), ref) < 1e-12  # autograd path
        with torch.no_grad():
            assert _rel(slide(x), ref) < 1e-12  # in-place path
        assert _rel(slide.forward_reference(x), ref) < 1e-12


def test_equals_local_in_float32_too():
    local = LocalAttention(32, num_heads=4, kernel_size=3).eval()
    slide = SlideAttention(32, num_heads=4, kernel_size=3, deformed=False, key_bias=False).eval()
    _copy_local_weights(slide, local)
    x = torch.randn(3, 32, 13, 9)
    with torch.no_grad():
        assert _rel(slide(x), local(x)) < 1e-6


@pytest.mark.parametrize("deformed", [False, True])
@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_fast_paths_equal_definition_float64(deformed, mask, k):
    torch.manual_seed(k)
    m = SlideAttention(8, 6, num_heads=2, kernel_size=k, deformed=deformed, mask_padding=mask).double().eval()
    with torch.no_grad():  # non-trivial key bias so its term is exercised
        m.key_bias.normal_()
    for hw in [(1, 1), (2, 3), (4, 9), (11, 6)]:
        x = torch.randn(2, 8, *hw, dtype=torch.float64)
        ref = m.forward_reference(x)
        assert (m(x) - ref).abs().max().item() < 1e-12
        with torch.no_grad():
            assert (m(x) - ref).abs().max().item() < 1e-12


def test_in_place_path_chunks_rows(monkeypatch):
    # Force one row per chunk: the chunked loop must give the same answer.
    import visattn.layers.slide as slide_mod

    m = SlideAttention(8, num_heads=2, kernel_size=3, mask_padding=True).double().eval()
    x = torch.randn(2, 8, 7, 5, dtype=torch.float64)
    ref = m.forward_reference(x)
    monkeypatch.setattr(slide_mod, "_CHUNK_ELEMS", 1)
    with torch.no_grad():
        assert (m(x) - ref).abs().max().item() < 1e-12


@pytest.mark.parametrize("k", [3, 5])
def test_reparameterize_exact_and_idempotent(k):
    m = SlideAttention(16, num_heads=4, kernel_size=k).eval()
    with torch.no_grad():
        m.deform.weight.normal_(0, 0.3)
        m.deform.bias.normal_(0, 0.3)
    x = torch.randn(2, 16, 9, 11)
    with torch.no_grad():
        before = m(x)
        ref_def = m.forward_reference(x)
    w_fixed = m.shift_weight.clone()
    w_learned = m.deform.weight.detach().clone()
    b_learned = m.deform.bias.detach().clone()
    visattn.reparameterize(m)
    assert m.reparameterized
    assert torch.equal(m.deform.weight, w_fixed + w_learned)  # W = W_fixed + W_learned
    assert torch.equal(m.deform.bias, b_learned)  # b = b_fixed (0) + b_learned
    with torch.no_grad():
        after = m(x)
        assert _rel(after, before) < 1e-6
        assert _rel(m.forward_reference(x), ref_def) < 1e-6
    merged = m.deform.weight.detach().clone()
    m.reparameterize()
    visattn.reparameterize(m)
    assert torch.equal(m.deform.weight, merged)  # idempotent
    with torch.no_grad():
        assert torch.equal(m(x), after)


def test_reparameterize_is_a_single_conv():
    # The merged conv alone produces the keys of both paths.
    m = SlideAttention(8, num_heads=2, kernel_size=3).double()
    t = torch.randn(3, 4, 6, 5, dtype=torch.float64)  # (B*h, d, H, W)
    two = (F.conv2d(t, m.shift_weight, padding=1, groups=4)
           + F.conv2d(t, m.deform.weight, m.deform.bias, padding=1, groups=4))
    m.reparameterize()
    one = F.conv2d(t, m.deform.weight, m.deform.bias, padding=1, groups=4)
    assert (one - two).abs().max().item() < 1e-13


def test_reparameterize_no_op_without_deformed():
    m = SlideAttention(8, num_heads=2, kernel_size=3, deformed=False)
    sd = copy.deepcopy(m.state_dict())
    visattn.reparameterize(m)
    assert all(torch.equal(sd[key], val) for key, val in m.state_dict().items())
    assert m.merged_shift() is None


@pytest.mark.parametrize("deformed", [False, True])
@pytest.mark.parametrize("k", [3, 5])
def test_receptive_field_is_exactly_the_window(deformed, k):
    m = SlideAttention(8, num_heads=2, kernel_size=k, deformed=deformed).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    h, w = 11, 10
    r = k // 2
    for y, xx in [(5, 4), (0, 0), (10, 9), (1, 8)]:
        x = torch.randn(1, 8, h, w, dtype=torch.float64, requires_grad=True)
        m(x)[0, :, y, xx].sum().backward()
        support = x.grad[0].abs().sum(0) != 0  # (H, W)
        expect = torch.zeros(h, w, dtype=torch.bool)
        expect[max(0, y - r):y + r + 1, max(0, xx - r):xx + r + 1] = True
        assert torch.equal(support, expect)


def test_half_precision_softmax_in_float32():
    m = SlideAttention(16, num_heads=2, kernel_size=3).eval()
    x = 300 * torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        ref = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x)
    assert y.dtype == torch.bfloat16
    assert torch.isfinite(y.float()).all()  # logits ~1e4: a bf16 softmax normaliser would overflow
    assert _rel(y.float(), ref) < 0.15  # bf16 rounding of q, k (4e-3) moves logits of ~1e4 by units


def test_buffers_follow_to_and_are_not_saved():
    m = SlideAttention(8, num_heads=2, kernel_size=3).to(torch.float64)
    assert m.shift_weight.dtype == torch.float64
    assert "shift_weight" not in m.state_dict()
    assert not any(p is m.shift_weight for p in m.parameters())


def test_flop_breakdown_counts_the_merged_conv():
    # k^4 multiply-adds per channel and pixel for logits and for the output (deformed path).
    m = SlideAttention(16, num_heads=4, kernel_size=3)
    s = SlideAttention(16, num_heads=4, kernel_size=3, deformed=False)
    n = 5 * 6
    diff = m.flop_breakdown(5, 6)["counted"] - s.flop_breakdown(5, 6)["counted"]
    assert diff == 2 * 2 * n * 16 * (81 + 9)


def test_bad_config_messages():
    with pytest.raises(TypeError, match=r"deformed must be a bool, got int 1"):
        SlideAttention(8, num_heads=2, deformed=1)
    with pytest.raises(ValueError, match=r"kernel_size must be odd"):
        SlideAttention(8, num_heads=2, kernel_size=2)
    with pytest.raises(ValueError, match=r"dim=8 must be divisible by num_heads=3"):
        SlideAttention(8, num_heads=3)


def test_bench_variants_declared():
    info = visattn.attention_info("slide")
    assert info.bench_variants["slide-reparam"]["_reparameterize"] is True
    assert info.bench_variants["slide-shift"]["deformed"] is False
    assert info.bench_variants["slide-k7-shift"]["kernel_size"] == 7
