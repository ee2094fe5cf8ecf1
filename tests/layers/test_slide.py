"""Slide attention (Pan et al., arXiv 2304.04237) against its identities (SPEC.md section 4).

* the one-hot depthwise conv is F.unfold, bit for bit;
* with the learnable path and the key bias at zero, slide attention == "local" (im2col);
* reparameterize() is exact (float32 rounding) and idempotent;
* one output pixel sees exactly its k x k window;
* shift semantics out[y, x] = x[y + i//k - k//2, x + i%k - k//2];
* the fast paths ("inplace", "functional") == the literal definition (materialised keys
  from two convs) in float64.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from _contract_checks import (
    assert_factory_dtype,
    assert_impls_match_reference,
    assert_low_precision_matches_reference,
    assert_meta_build_equals_normal_build,
    assert_old_state_dict_loads,
    with_impl,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import visattn
from visattn.layers.local import LocalAttention
from visattn.layers.slide import SlideAttention, one_hot_shift_kernels


def _reference(m: SlideAttention, x: torch.Tensor) -> torch.Tensor:
    """m(x) through impl="reference" (the literal definition), leaving m.impl as it was."""
    impl = m.impl
    m.impl = "reference"
    try:
        return m(x)
    finally:
        m.impl = impl


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
        slide.offset_bias.zero_()
        if deformed:
            slide.deform.weight.zero_()
            slide.deform.bias.zero_()
    for hw in [(1, 1), (2, 2), (7, 5), (10, 11)]:
        x = torch.randn(2, 16, *hw, dtype=torch.float64)
        ref = local(x)
        assert _rel(slide(x), ref) < 1e-12  # "inplace" through its autograd Function
        with torch.no_grad():
            assert _rel(slide(x), ref) < 1e-12  # "inplace" without a gradient
        assert _rel(_reference(slide, x), ref) < 1e-12


def test_equals_local_in_float32_too():
    local = LocalAttention(32, num_heads=4, kernel_size=3).eval()
    slide = SlideAttention(32, num_heads=4, kernel_size=3, deformed=False, offset_bias=False).eval()
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
        m.offset_bias.normal_()
    for hw in [(1, 1), (2, 3), (4, 9), (11, 6)]:
        x = torch.randn(2, 8, *hw, dtype=torch.float64)
        ref = _reference(m, x)
        assert (m(x) - ref).abs().max().item() < 1e-12
        with torch.no_grad():
            assert (m(x) - ref).abs().max().item() < 1e-12


@pytest.mark.parametrize("impl", ["inplace", "functional"])
def test_token_layout_input_same_numbers_and_token_layout_output(impl):
    # A transformer block hands the mixer a view of its tokens (B, N, C) as (B, C, H, W), channels
    # last; the projections then run as batched GEMMs in that layout. Numbers and gradients equal
    # the channels-first call's (float64, 1e-12), and the output is the view of contiguous tokens.
    torch.manual_seed(0)
    m = SlideAttention(8, 6, num_heads=2, kernel_size=3, impl=impl).double()
    with torch.no_grad():
        m.offset_bias.normal_()
    tokens = torch.randn(2, 5 * 7, 8, dtype=torch.float64, requires_grad=True)
    x = tokens.transpose(1, 2).reshape(2, 8, 5, 7)  # visattn.layers.base.from_tokens
    xc = x.detach().contiguous().requires_grad_(True)
    out, ref = m(x), m(xc)
    assert out.shape == ref.shape == (2, 6, 5, 7)
    assert (out - ref).abs().max().item() < 1e-12
    assert out.flatten(2).transpose(1, 2).is_contiguous() and ref.is_contiguous()
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, [tokens, *m.parameters()], g)
    grads_ref = torch.autograd.grad(ref, [xc, *m.parameters()], g)
    assert (grads[0].transpose(1, 2).reshape(2, 8, 5, 7) - grads_ref[0]).abs().max().item() < 1e-12
    for a, b in zip(grads[1:], grads_ref[1:]):
        assert (a - b).abs().max().item() < 1e-12


@pytest.mark.parametrize("deformed", [False, True])
@pytest.mark.parametrize("k", [3, 5])
def test_in_place_path_chunks_rows(monkeypatch, deformed, k):
    # Force one row per chunk: the chunked loops must give the same answer.
    import visattn.layers.slide_kernels as slide_mod

    m = SlideAttention(8, num_heads=2, kernel_size=k, deformed=deformed, mask_padding=True).double().eval()
    x = torch.randn(2, 8, 7, 5, dtype=torch.float64)
    ref = _reference(m, x)
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
        ref_def = _reference(m, x)
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
        assert _rel(_reference(m, x), ref_def) < 1e-6
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
    two = F.conv2d(t, m.shift_weight, padding=1, groups=4) + F.conv2d(
        t, m.deform.weight, m.deform.bias, padding=1, groups=4
    )
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
        expect[max(0, y - r) : y + r + 1, max(0, xx - r) : xx + r + 1] = True
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


@pytest.mark.parametrize("deformed", [False, True])
def test_flop_counter_sees_the_in_place_path(deformed):
    # The benchmark counts under no_grad (in-place path): it must see the same GEMMs.
    from visattn.flops import count_flops

    m = SlideAttention(16, num_heads=4, kernel_size=3, deformed=deformed, mask_padding=True).eval()
    x = torch.randn(2, 16, 9, 7)
    with torch.no_grad():
        assert count_flops(m, x) == m.flop_breakdown(9, 7, 2)["counted"]


# -- training path: the custom autograd Function (issue 12) ---------------------------------


def _randomise(m: SlideAttention) -> None:
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()


@pytest.mark.parametrize("deformed", [False, True])
@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("offset_bias", [False, True])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_training_path_and_gradients_equal_definition_float64(deformed, mask, offset_bias, k):
    # Output and every gradient (input and all parameters) of the custom Function equal autograd
    # through the literal definition, at any H, W (1x1, smaller than the kernel, non-square).
    m = (
        SlideAttention(8, 6, num_heads=2, kernel_size=k, deformed=deformed, mask_padding=mask, offset_bias=offset_bias)
        .double()
        .train()
    )
    _randomise(m)
    params = list(m.parameters())
    for hw in [(1, 1), (2, 3), (5, 4), (9, 7)]:
        x = torch.randn(2, 8, *hw, dtype=torch.float64, requires_grad=True)
        y = m(x)
        assert y.grad_fn is not None
        g = torch.randn_like(y)
        got = torch.autograd.grad(y, [x, *params], g)
        ref_y = _reference(m, x)
        ref = torch.autograd.grad(ref_y, [x, *params], g)
        assert (y - ref_y).abs().max().item() < 1e-10
        for a, b in zip(got, ref):
            assert (a - b).abs().max().item() < 1e-10 * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("deformed", [False, True])
def test_training_path_chunks_rows(monkeypatch, deformed):
    import visattn.layers.slide_kernels as slide_mod

    m = SlideAttention(8, num_heads=2, kernel_size=3, deformed=deformed, mask_padding=True).double()
    _randomise(m)
    x = torch.randn(2, 8, 7, 5, dtype=torch.float64, requires_grad=True)
    params = [x, *m.parameters()]
    ref = torch.autograd.grad(_reference(m, x).square().sum(), params)
    monkeypatch.setattr(slide_mod, "_CHUNK_ELEMS", 1)  # one row per chunk in the forward
    monkeypatch.setattr(slide_mod, "_BWD_CHUNK_ELEMS", 1)  # ... and in the backward (border rows, middle rows)
    got = torch.autograd.grad(m(x).square().sum(), params)
    for a, b in zip(got, ref):
        assert (a - b).abs().max().item() < 1e-9 * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("deformed", [False, True])
def test_attention_function_gradcheck(deformed):
    from visattn.layers.slide_kernels import SlideAttend

    d, nh, ks = 3, 2, 3
    t = dict(dtype=torch.float64, requires_grad=True)
    qkv = torch.randn(1, 3 * nh * d, 3, 4, **t)  # packed q, k, v
    kb = torch.randn(nh, 9, **t)
    valid = torch.rand(9, 3, 4) > 0.3
    valid[4] = True  # the centre always exists
    if deformed:
        w3, b2 = torch.randn(d, 9, 9, **t), torch.randn(d, 9, **t)
        assert torch.autograd.gradcheck(lambda *a: SlideAttend.apply(*a, valid, ks, nh), (qkv, w3, b2, kb))
    else:
        assert torch.autograd.gradcheck(
            lambda qkv, kb: SlideAttend.apply(qkv, None, None, kb, valid, ks, nh), (qkv, kb)
        )


def _saved_bytes(module, x):
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x).sum()
    return total


def test_training_memory_at_most_a_third_of_im2col():
    # What a training forward keeps for the backward (C=64, k=3, deformed): q, K, V and the
    # (B, h, k*k, H, W) weights, not k*k shifted copies.
    slide = SlideAttention(64, num_heads=4, kernel_size=3).train()
    local = LocalAttention(64, num_heads=4, kernel_size=3).train()
    x = torch.randn(2, 64, 28, 28, requires_grad=True)
    assert _saved_bytes(slide, x) <= _saved_bytes(local, x) / 3


def test_training_under_bf16_autocast():
    m = SlideAttention(16, num_heads=2, kernel_size=3).train()
    x = torch.randn(2, 16, 6, 7, requires_grad=True)
    m(x).square().sum().backward()
    ref = x.grad.clone()
    x.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    assert _rel(x.grad, ref) < 0.05


# -- reliability (issue 10) ------------------------------------------------------------------


def _merged_copy():
    m = SlideAttention(8, num_heads=2, kernel_size=3).eval()
    _randomise(m)
    x = torch.randn(1, 8, 6, 5)
    with torch.no_grad():
        ref = m(x)
    return m.reparameterize(), x, ref


def test_reparameterized_state_dict_loads_merged_into_a_fresh_module():
    m, x, ref = _merged_copy()
    assert m.state_dict()["shift_merged"].item() is True
    fresh = SlideAttention(8, num_heads=2, kernel_size=3).eval()
    result = fresh.load_state_dict(m.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    assert fresh.reparameterized
    with torch.no_grad():
        assert torch.allclose(fresh(x), ref, atol=1e-5, rtol=0)


def test_reparameterized_weights_file_loads_merged(tmp_path):
    m, x, ref = _merged_copy()
    path = tmp_path / "slide.safetensors"
    visattn.save_weights(m, path)
    fresh = SlideAttention(8, num_heads=2, kernel_size=3).eval()
    assert visattn.load_weights(fresh, path) == ([], [])
    with torch.no_grad():
        assert torch.allclose(fresh(x), ref, atol=1e-5, rtol=0)


def test_training_state_dict_unmerges_and_old_state_dicts_load():
    m, x, ref = _merged_copy()
    train_form = SlideAttention(8, num_heads=2, kernel_size=3)
    _randomise(train_form)
    m.load_state_dict(train_form.state_dict())  # a training checkpoint into a merged module
    assert not m.reparameterized
    with torch.no_grad():
        assert torch.equal(m.eval()(x), train_form.eval()(x))
    old = {k: v for k, v in train_form.state_dict().items() if k != "shift_merged"}  # written before the flag
    fresh = SlideAttention(8, num_heads=2, kernel_size=3).reparameterize()
    assert fresh.load_state_dict(old).missing_keys == []
    assert not fresh.reparameterized


def test_huge_kernel_refused_at_construction():
    with pytest.raises(
        ValueError,
        match=r"SlideAttention: kernel_size=99 with head width 2 \(dim=8, num_heads=4\) "
        r"builds 3.84e\+08 parameters, above the bound of 1e\+08",
    ):
        SlideAttention(8, kernel_size=99)
    with visattn.work_limit(max_params=500):
        with pytest.raises(ValueError, match=r"builds 580 parameters, above the bound of 500"):
            SlideAttention(8, num_heads=4, kernel_size=3)


def test_peak_intermediate_bytes_refuses_early():
    m = SlideAttention(8, num_heads=2, kernel_size=3)
    # padded keys (1, 8, 18, 18) float32 = 10368 bytes > attention weights (1, 2, 9, 16, 16) = 18432
    assert m.peak_intermediate_bytes(16, 16) == 18432
    with visattn.work_limit(max_bytes=10_000):
        with pytest.raises(ValueError, match=r"needs an estimated 18.0 KiB for one intermediate"):
            m(torch.randn(1, 8, 16, 16))


def test_training_peak_memory_at_most_a_third_of_im2col():
    # Peak allocation of one training forward + backward (profiler allocation curve), k=3 deformed.
    from visattn.bench.measure import peak_memory_bytes

    slide = SlideAttention(64, num_heads=4, kernel_size=3).train()
    local = LocalAttention(64, num_heads=4, kernel_size=3).train()
    x = torch.randn(2, 64, 28, 28)
    g = torch.randn(2, 64, 28, 28)
    ours = peak_memory_bytes(lambda: slide(x).backward(g))
    theirs = peak_memory_bytes(lambda: local(x).backward(g))
    assert ours <= theirs / 3


# -- review fixes ------------------------------------------------------------------------------


@pytest.mark.parametrize("deformed", [False, True])
def test_frozen_projections_still_train_shifts_and_offset_bias(deformed):
    # qkv frozen and an input without a gradient: offset_bias and the learned shift conv must still
    # get their gradients (the in-place no-grad path used to run and dropped them silently).
    m = SlideAttention(8, num_heads=2, kernel_size=3, deformed=deformed, offset_bias=True).double().train()
    _randomise(m)
    m.qkv.requires_grad_(False)
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    params = [p for p in m.parameters() if p.requires_grad]
    y = m(x)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, params, g, allow_unused=True)
    ref = torch.autograd.grad(_reference(m, x), params, g)
    for a, b in zip(got, ref):
        assert a is not None
        assert (a - b).abs().max().item() < 1e-10 * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("deformed", [False, True])
def test_double_backward_matches_the_definition(deformed):
    # create_graph=True (gradient penalty): worked through autograd of the loop before the custom
    # Function, which must keep supporting it with the same second-order gradients.
    m = SlideAttention(8, num_heads=2, kernel_size=3, deformed=deformed, offset_bias=True, mask_padding=True).double()
    _randomise(m)
    params = list(m.parameters())
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64, requires_grad=True)

    def penalty_grads(f):
        (gx,) = torch.autograd.grad(f(x).square().sum(), x, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), [x, *params])

    for a, b in zip(penalty_grads(m), penalty_grads(lambda t: _reference(m, t))):
        assert (a - b).abs().max().item() < 1e-9 * max(1.0, b.abs().max().item())


def test_partial_state_dict_keeps_the_merge():
    # load_state_dict(strict=False) of a few keys into a merged module must not flip its flag
    # (deform.weight still holds the merged kernel)
    m, x, ref = _merged_copy()
    m.load_state_dict({"qkv.weight": m.qkv.weight.detach().clone()}, strict=False)
    assert m.reparameterized and m.shift_merged.item()
    with torch.no_grad():
        assert torch.allclose(m(x), ref, atol=1e-5, rtol=0)


def test_weights_file_written_before_the_flag_loads_strict(tmp_path):
    # a safetensors file without shift_merged (older visattn) is the training form: strict
    # load_weights accepts it, also nested in a model
    from safetensors.torch import save_file

    m = nn.Sequential(nn.Identity(), SlideAttention(8, num_heads=2, kernel_size=3)).eval()
    _randomise(m[1])
    x = torch.randn(1, 8, 6, 5)
    with torch.no_grad():
        ref = m(x)
    path = tmp_path / "old.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items() if not k.endswith("shift_merged")}, str(path))
    fresh = nn.Sequential(nn.Identity(), SlideAttention(8, num_heads=2, kernel_size=3).reparameterize()).eval()
    assert visattn.load_weights(fresh, path) == ([], [])
    assert not fresh[1].reparameterized
    with torch.no_grad():
        assert torch.equal(fresh(x), ref)


@pytest.mark.parametrize("deformed", [False, True])
def test_torch_func_per_sample_gradients(deformed):
    # torch.func transforms (vmap(grad(...)): per-sample gradients) worked through the plain ops
    # before the custom Function; they must still work and equal the definition's
    from torch.func import functional_call, grad, vmap

    m = SlideAttention(8, num_heads=2, kernel_size=3, deformed=deformed, offset_bias=True).double()
    _randomise(m)
    params = {k: v.detach() for k, v in m.named_parameters()}
    x = torch.randn(3, 8, 4, 5, dtype=torch.float64)
    got = vmap(grad(lambda p, xi: functional_call(m, p, (xi[None],)).square().sum()), in_dims=(None, 0))(params, x)
    for i in range(3):
        ref = torch.autograd.grad(_reference(m, x[i : i + 1]).square().sum(), list(m.parameters()))
        for (name, _), b in zip(m.named_parameters(), ref):
            assert (got[name][i] - b).abs().max().item() < 1e-10 * max(1.0, b.abs().max().item())
    with torch.no_grad():
        y = vmap(lambda xi: m(xi[None])[0])(x)
        assert (y - _reference(m, x)).abs().max().item() < 1e-10


# -- the mechanism contract (issue 11): implementations, auto rule, factory args, renames ----------


def test_impls_are_registry_data():
    assert visattn.attention_info("slide").impls == ("reference", "functional", "inplace")
    assert SlideAttention.impls == ("reference", "functional", "inplace")
    assert visattn.attention_info("slide").window_centred is True
    with pytest.raises(
        ValueError, match=r"impl must be one of \('auto', 'reference', 'functional', 'inplace'\), got 'fast'"
    ):
        SlideAttention(8, num_heads=2, impl="fast")


@settings(max_examples=12, deadline=None)
@given(
    batch=st.integers(1, 2),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    k=st.sampled_from([1, 3, 5]),
    deformed=st.booleans(),
    offset_bias=st.booleans(),
    mask=st.booleans(),
    merged=st.booleans(),
    train=st.booleans(),
    grad=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_every_impl_equals_reference(batch, h, w, k, deformed, offset_bias, mask, merged, train, grad, seed):
    # float64, any H, W (1, smaller than the kernel, non-square), re-parameterised or not: the
    # re-parameterisation is state that every implementation honours
    torch.manual_seed(seed)
    m = SlideAttention(
        8,
        6,
        num_heads=2,
        kernel_size=k,
        deformed=deformed,
        offset_bias=offset_bias,
        mask_padding=mask,
        dtype=torch.float64,
    )
    _randomise(m)
    if merged:
        m.reparameterize()
    x = torch.randn(batch, 8, h, w, dtype=torch.float64)
    assert_impls_match_reference(m, x, train=train, grad=grad)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("impl", ["reference", "functional", "inplace"])
def test_every_impl_in_low_precision_against_float64_reference(dtype, tol, impl):
    torch.manual_seed(0)
    m64 = SlideAttention(8, num_heads=2, kernel_size=3, dtype=torch.float64).eval()
    with torch.no_grad():
        m64.offset_bias.normal_()
        m64.deform.weight.normal_(0, 0.2)
    m = SlideAttention(8, num_heads=2, kernel_size=3, impl=impl, dtype=dtype).eval()
    assert_low_precision_matches_reference(m64, m, torch.randn(2, 8, 5, 7, dtype=torch.float64), tol)


def _frozen(m):
    for p in m.parameters():
        p.requires_grad_(False)
    return m


@pytest.mark.parametrize("deformed", [False, True])
def test_auto_rule(deformed):
    # "inplace" unless a trace, export, compile or torch.func transform records the call:
    # grad mode, eval mode and what requires grad do not matter
    m = SlideAttention(8, num_heads=2, kernel_size=3, deformed=deformed)
    x = torch.randn(1, 8, 4, 5)
    assert m.select_impl(x) == "inplace"
    with torch.no_grad():
        assert m.select_impl(x) == "inplace"
    with torch.inference_mode():
        assert m.select_impl(x) == "inplace"
    m.eval()
    assert m.select_impl(x) == "inplace"
    _frozen(m)
    assert m.select_impl(x) == "inplace"
    assert m.select_impl(x.requires_grad_()) == "inplace"
    m.impl = "reference"
    assert m.select_impl(x) == "reference"  # an explicit choice is what runs


def test_auto_picks_functional_under_torch_func_and_tracing():
    from torch.func import functional_call, grad, vmap

    m = SlideAttention(8, num_heads=2, kernel_size=3).double()
    x = torch.randn(2, 8, 4, 3, dtype=torch.float64)
    seen = []
    orig = m.select_impl

    def spy(t):
        seen.append(orig(t))
        return seen[-1]

    m.select_impl = spy
    params = {k: v.detach() for k, v in m.named_parameters()}
    vmap(grad(lambda p, xi: functional_call(m, p, (xi[None],)).sum()), in_dims=(None, 0))(params, x)
    torch.jit.trace(m, (x,), check_trace=False)
    assert seen == ["functional"] * 2
    m.impl = "inplace"
    with pytest.raises(ValueError, match=r"impl='inplace' runs an in-place loop .* use impl='functional'"):
        vmap(lambda xi: m(xi[None]))(x)


def test_auto_runs_the_same_code_as_the_named_impl():
    # auto is only a choice: bit-identical to the implementation it picks, grad on and off
    m = SlideAttention(8, num_heads=2, kernel_size=3)
    _randomise(m)
    x = torch.randn(2, 8, 6, 5)
    assert torch.equal(m(x), with_impl(m, "inplace", x))
    with torch.no_grad():
        assert torch.equal(m(x), with_impl(m, "inplace", x))


@pytest.mark.parametrize("deformed", [False, True])
@pytest.mark.parametrize("offset_bias", [False, True])
def test_meta_build_to_empty_reset_equals_normal_build(deformed, offset_bias):
    def factory(**fk):
        return SlideAttention(8, 6, num_heads=2, kernel_size=3, deformed=deformed, offset_bias=offset_bias, **fk)

    assert_meta_build_equals_normal_build(factory, torch.randn(1, 8, 5, 4))


def test_reset_parameters_rebuilds_buffers_and_clears_the_merge():
    m = SlideAttention(8, num_heads=2, kernel_size=3).reparameterize()
    with torch.no_grad():
        m.shift_weight.zero_()
    m.reset_parameters()
    assert torch.equal(m.shift_weight, one_hot_shift_kernels(4, 3))
    assert not m.reparameterized and not m.shift_merged.item()


@pytest.mark.parametrize("deformed", [False, True])
def test_factory_dtype(deformed):
    m = SlideAttention(8, num_heads=2, kernel_size=3, deformed=deformed, dtype=torch.float64)
    assert m.shift_weight.dtype == torch.float64
    assert_factory_dtype(lambda **fk: SlideAttention(8, num_heads=2, deformed=deformed, **fk), torch.randn(1, 8, 3, 4))


@pytest.mark.parametrize("merged", [False, True])
def test_old_state_dict_with_key_bias_loads_exactly(merged):
    m = SlideAttention(8, num_heads=2, kernel_size=3)
    _randomise(m)
    if merged:
        m.reparameterize()
    fresh = SlideAttention(8, num_heads=2, kernel_size=3)
    assert_old_state_dict_loads(m, {"key_bias": "offset_bias"}, fresh)
    assert fresh.reparameterized == merged
    x = torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), m.eval()(x))


def test_old_state_dict_nested_in_a_model_loads():
    net = nn.Sequential(nn.Identity(), SlideAttention(8, num_heads=2, kernel_size=3))
    _randomise(net[1])
    old = {k.replace("1.offset_bias", "1.key_bias"): v for k, v in net.state_dict().items()}
    assert "1.key_bias" in old
    fresh = nn.Sequential(nn.Identity(), SlideAttention(8, num_heads=2, kernel_size=3))
    fresh.load_state_dict(old)
    assert torch.equal(fresh[1].offset_bias, net[1].offset_bias)


def test_renamed_argument():
    assert SlideAttention.renamed_args == {"key_bias": "offset_bias"}
    with pytest.raises(
        TypeError, match=r"argument 'key_bias' was renamed to 'offset_bias'; pass offset_bias=\.\.\. instead"
    ):
        visattn.create_attention("slide", 8, num_heads=2, key_bias=False)


def test_reference_reports_its_materialised_keys():
    m = SlideAttention(8, num_heads=2, kernel_size=3, impl="reference")
    assert m.peak_intermediate_bytes(16, 16) == 8 * 9 * 16 * 16 * 4  # (1, C, k*k, H, W) float32
    m.impl = "inplace"
    assert m.peak_intermediate_bytes(16, 16) == 18432  # the attention weights, as for auto


@pytest.mark.parametrize("deformed", [False, True])
def test_each_impl_runs_its_own_kernels(monkeypatch, deformed):
    # No path is chosen by grad mode: "inplace" runs the in-place kernels (through the custom
    # Function when a gradient is needed, whose forward is the same kernel), "functional" the
    # out-of-place form, and auto sends traces and torch.func transforms to "functional".
    import visattn.layers.slide as slide_mod
    import visattn.layers.slide_kernels as kern

    ran = []
    for mod, name in ((kern, "_shifts_inplace"), (kern, "_deformed_inplace"), (slide_mod, "attend_functional")):
        orig = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _o=orig, _n=name, **k: (ran.append(_n), _o(*a, **k))[1])
    orig_apply = kern.SlideAttend.apply
    monkeypatch.setattr(kern.SlideAttend, "apply", lambda *a: (ran.append("SlideAttend"), orig_apply(*a))[1])
    inplace_kernel = "_deformed_inplace" if deformed else "_shifts_inplace"

    def kernel(f):
        ran.clear()
        f()
        return list(ran)

    m = SlideAttention(8, num_heads=2, kernel_size=3, deformed=deformed).double()
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        assert kernel(lambda: m(x)) == [inplace_kernel]
    assert kernel(lambda: m(x)) == ["SlideAttend", inplace_kernel]
    assert kernel(lambda: m.eval()(x)) == ["SlideAttend", inplace_kernel]
    from torch.func import vmap

    assert kernel(lambda: vmap(lambda xi: m(xi[None]))(x)) == ["attend_functional"]
    assert kernel(lambda: torch.jit.trace(m, (x,), check_trace=False)) == ["attend_functional"]
    m.impl = "functional"
    assert kernel(lambda: m(x)) == ["attend_functional"]
    with torch.no_grad():
        assert kernel(lambda: m(x)) == ["attend_functional"]
    _frozen(m)
    m.impl = "auto"
    assert kernel(lambda: m(x)) == [inplace_kernel]
    assert kernel(lambda: m(x.requires_grad_())) == ["SlideAttend", inplace_kernel]
