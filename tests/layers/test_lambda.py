"""LambdaLayer against the paper's equations (arXiv 2102.08602) and the identities of SPEC.md 1.

The reference implementation (``impl="reference"``) builds the n x m relative position
embeddings E[n, m] = R[pos_m - pos_n] explicitly and evaluates the paper's einsums; the fast
paths ("direct": conv3d, "fft") never build E. Compared in float64.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from _contract_checks import with_impl

import visattn
from visattn.flops import count_flops
from visattn.layers.lambda_layer import LambdaLayer, lambda_conv

TOL64 = 1e-10


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def randomise(m: LambdaLayer) -> LambdaLayer:
    """Non-trivial BatchNorm statistics/affine and position embeddings."""
    with torch.no_grad():
        for bn in (m.norm_q, m.norm_v):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.normal_()
            bn.bias.normal_()
        m.pos_kernel.normal_()
        if m.pos_bias is not None:
            m.pos_bias.normal_()
    return m


def reference(m: LambdaLayer, x: torch.Tensor) -> torch.Tensor:
    """The library's reference implementation (the paper's einsums over the explicit n x m
    embeddings E[n, m] = R[pos_m - pos_n]) on the same weights."""
    ref = copy.deepcopy(m)
    ref.impl = "reference"
    return ref(x)


def make(dim=6, dim_out=8, **kw):
    kw = {"num_heads": 2, "key_dim": 3, "intra_depth": 2, **kw}
    return randomise(LambdaLayer(dim, dim_out, **kw).double().eval())


@pytest.mark.parametrize("impl", ["direct", "fft"])
@pytest.mark.parametrize("hw", [(5, 7), (3, 11), (1, 1), (8, 2)])
@pytest.mark.parametrize("bias", [False, True])
def test_local_form_equals_paper_equations(impl, hw, bias):
    m = make(local_scope=5, impl=impl, lambda_conv_bias=bias)
    x = torch.randn(2, 6, *hw, dtype=torch.float64)
    assert rel_err(m(x), reference(m, x)) < TOL64


@pytest.mark.parametrize("impl", ["direct", "fft"])
@pytest.mark.parametrize("hw", [(5, 7), (6, 4), (1, 3), (6, 7)])
def test_global_form_equals_paper_equations_up_to_max_size(hw, impl):
    m = make(local_scope=None, max_size=(6, 7), impl=impl)
    x = torch.randn(2, 6, *hw, dtype=torch.float64)
    # the global reference: the explicit table slice over every offset of this input
    full = LambdaLayer(6, 8, num_heads=2, key_dim=3, intra_depth=2, local_scope=None, max_size=hw).double().eval()
    full.load_state_dict({**m.state_dict(), "pos_kernel": m.position_kernel(*hw)})
    assert rel_err(m(x), reference(full, x)) < TOL64


def test_global_form_rejects_inputs_above_max_size():
    m = LambdaLayer(8, num_heads=2, key_dim=4, local_scope=None, max_size=(6, 7))
    with pytest.raises(ValueError, match=r"inputs up to max_size=\(6, 7\), got an input of 6 x 8"):
        m(torch.randn(1, 8, 6, 8))
    with pytest.raises(ValueError, match=r"inputs up to max_size=\(6, 7\), got an input of 7 x 2"):
        m(torch.randn(1, 8, 7, 2))
    with pytest.raises(ValueError, match=r"needs max_size=S or \(H, W\).*got max_size=None"):
        LambdaLayer(8, local_scope=None)
    with pytest.raises(TypeError, match=r"max_size must be an int or a pair"):
        LambdaLayer(8, local_scope=None, max_size=(2, 3, 4))
    with pytest.raises(ValueError, match=r"local_scope must be odd"):
        LambdaLayer(8, local_scope=4)
    with pytest.raises(ValueError, match=r"dim_out=10 must be divisible by num_heads=4"):
        LambdaLayer(8, 10)


@pytest.mark.parametrize("impl", ["direct", "fft"])
@pytest.mark.parametrize("hw", [(5, 7), (9, 3), (2, 2)])
def test_identity1_lambda_conv_equals_global_form_zeroed_outside_window(impl, hw):
    """SPEC 1, identity 1: borders included (zero padding == absent keys)."""
    r, size = 3, (9, 7)
    local = make(local_scope=r, impl=impl)
    glob = make(local_scope=None, max_size=size, impl=impl)
    state = dict(local.state_dict())
    table = torch.zeros_like(glob.pos_kernel)
    mh, mw = size
    table[:, :, mh - 1 - r // 2 : mh + r // 2, mw - 1 - r // 2 : mw + r // 2] = local.pos_kernel
    state["pos_kernel"] = table
    glob.load_state_dict(state)
    x = torch.randn(2, 6, *hw, dtype=torch.float64)
    assert rel_err(glob(x), local(x)) < TOL64


@pytest.mark.parametrize("local_scope", [3, None])
def test_identity2_content_only_when_embeddings_are_zero(local_scope):
    m = make(local_scope=local_scope, max_size=6)
    with torch.no_grad():
        m.pos_kernel.zero_()
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    w = m.qkv.weight[:, :, 0, 0]
    h, k, u, vd = m.num_heads, m.key_dim, m.intra_depth, m.value_dim
    q = m.norm_q(torch.einsum("oc,bchw->bohw", w[: h * k], x)).flatten(2).reshape(2, h, k, 20)
    keys = torch.einsum("oc,bchw->bohw", w[h * k : h * k + k * u], x).flatten(2).reshape(2, u, k, 20)
    vals = m.norm_v(torch.einsum("oc,bchw->bohw", w[h * k + k * u :], x)).flatten(2).reshape(2, u, vd, 20)
    lam_c = torch.einsum("bukm,buvm->bkv", keys.softmax(-1), vals)  # softmax_m(K)^T V
    expected = torch.einsum("bhkn,bkv->bhvn", q, lam_c).reshape(2, h * vd, 4, 5)
    assert rel_err(m(x), expected) < TOL64


@pytest.mark.parametrize("local_scope", [5, None])
def test_identity3_heads_with_equal_query_weights_agree(local_scope):
    m = make(dim_out=12, num_heads=3, local_scope=local_scope, max_size=8).train()
    h, k = m.num_heads, m.key_dim
    with torch.no_grad():
        wq = m.qkv.weight[: h * k].view(h, k, -1)
        wq[1:] = wq[0]
        m.norm_q.weight.view(h, k)[1:] = m.norm_q.weight.view(h, k)[0]
        m.norm_q.bias.view(h, k)[1:] = m.norm_q.bias.view(h, k)[0]
    x = torch.randn(2, 6, 5, 6, dtype=torch.float64)
    y = m(x).view(2, h, m.value_dim, 5, 6)
    assert rel_err(y[:, 1], y[:, 0]) < TOL64 and rel_err(y[:, 2], y[:, 0]) < TOL64
    assert rel_err(y[:, 0], y[:, 0].roll(1, -1)) > 1e-3  # not trivially constant


@pytest.mark.parametrize("local_scope", [3, None])
@pytest.mark.parametrize("train", [False, True])
def test_identity4_intra_depth_is_a_sum_of_u1_lambdas(local_scope, train):
    u = 3
    big = make(local_scope=local_scope, max_size=7, intra_depth=u).train(train)
    h, k, vd = big.num_heads, big.key_dim, big.value_dim
    w = big.qkv.weight
    total = 0
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    for j in range(u):
        one = (
            LambdaLayer(6, 8, num_heads=h, key_dim=k, intra_depth=1, local_scope=local_scope, max_size=7)
            .double()
            .train(train)
        )
        with torch.no_grad():
            wk = w[h * k + j * k : h * k + (j + 1) * k]
            wv = w[h * k + k * u + j * vd : h * k + k * u + (j + 1) * vd]
            one.qkv.weight.copy_(torch.cat([w[: h * k], wk, wv]))
            one.pos_kernel.copy_(big.pos_kernel[:, j : j + 1])
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(one.norm_q, name).copy_(getattr(big.norm_q, name))
                getattr(one.norm_v, name).copy_(getattr(big.norm_v, name)[j * vd : (j + 1) * vd])
        total = total + one(x)
    assert rel_err(big(x), total) < TOL64


def test_lambda_conv_fft_equals_direct_for_every_kernel_size():
    v = torch.randn(2, 2, 3, 9, 6, dtype=torch.float64)
    for r in (1, 3, 7, 23):
        w = torch.randn(4, 2, r, r, dtype=torch.float64)
        assert rel_err(lambda_conv(v, w, "fft"), lambda_conv(v, w, "direct")) < TOL64


def test_stride2_pools_after_the_layer():
    m = make(local_scope=3, stride=2)
    x = torch.randn(2, 6, 7, 8, dtype=torch.float64)
    y = m(x)
    assert y.shape == (2, 8, 4, 4)
    m1 = make(local_scope=3)
    m1.load_state_dict(m.state_dict())
    assert rel_err(y, F.avg_pool2d(m1(x), 3, 2, 1)) < TOL64


def test_batchnorm_on_one_value_uses_running_statistics():
    m = make(local_scope=3).train()
    stats = [t.clone() for t in (m.norm_q.running_mean, m.norm_v.running_var)]
    x = torch.randn(1, 6, 1, 1, dtype=torch.float64)
    y = m(x)
    assert rel_err(y, m.eval()(x)) < TOL64
    assert torch.equal(stats[0], m.norm_q.running_mean) and torch.equal(stats[1], m.norm_v.running_var)
    m.train()(torch.randn(2, 6, 1, 1, dtype=torch.float64))  # two values: ordinary batch statistics
    assert not torch.equal(stats[0], m.norm_q.running_mean)


@pytest.mark.parametrize("kw", [{"local_scope": 23}, {"local_scope": None, "max_size": 24}])
def test_bf16_autocast_large_inputs_large_scope(kw):
    m = LambdaLayer(16, num_heads=4, key_dim=8, **kw).eval()
    x = 100 * torch.randn(2, 16, 24, 20)
    ref = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    assert rel_err(y.float(), ref) < 0.1


def test_flop_formula_on_the_fft_path():
    m = LambdaLayer(16, num_heads=4, key_dim=8, local_scope=23).eval()
    x = torch.randn(2, 16, 24, 20)
    assert count_flops(m, x) == m.flop_breakdown(24, 20, 2)["counted"]
    direct = LambdaLayer(16, num_heads=4, key_dim=8, local_scope=23, impl="direct").eval()
    # conv MACs on the direct path: k * v * u * r^2 per position
    assert (
        direct.flop_breakdown(24, 20, 2)["counted"] - m.flop_breakdown(24, 20, 2)["counted"]
        == 2 * 2 * 8 * 4 * 480 * 23 * 23
    )


def test_gradients_match_reference_float64():
    m = make(local_scope=3).train()
    x = torch.randn(1, 6, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: m(t), (x,), eps=1e-6, atol=1e-6, fast_mode=True)


def test_registered_and_created_by_name():
    m = visattn.create_attention("lambda", 64)
    assert isinstance(m, LambdaLayer) and m.local_scope == 23 and m.key_dim == 16 and m.num_heads == 4
    info = visattn.attention_info("lambda")
    assert info.bench_variants["lambda-global"]["local_scope"] is None


def test_fft_lambda_conv_gradients_float64():
    v = torch.randn(2, 2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 7, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: lambda_conv(a, b, "fft"), (v, w), eps=1e-6, atol=1e-7, fast_mode=True)
    g = torch.randn(2, 3, 3, 5, 4, dtype=torch.float64)
    ga = torch.autograd.grad(lambda_conv(v, w, "fft"), (v, w), g)
    gb = torch.autograd.grad(lambda_conv(v, w, "direct"), (v, w), g)
    assert rel_err(ga[0], gb[0]) < TOL64 and rel_err(ga[1], gb[1]) < TOL64


def test_non_finite_training_batch_leaves_running_stats_alone():
    # issue 10: one NaN pixel in train mode used to poison the BatchNorm running statistics for good.
    import warnings

    m = visattn.create_attention("lambda", 16, num_heads=2, key_dim=4, local_scope=3).train()
    m(torch.randn(2, 16, 6, 6))
    before = {k: v.clone() for k, v in m.state_dict().items() if "running" in k or "num_batches" in k}
    x = torch.randn(2, 16, 6, 6)
    x[0, 3, 2, 2] = float("nan")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m(x)
    assert any("non-finite (NaN/inf)" in str(w.message) and "not updated" in str(w.message) for w in caught)
    after = {k: v for k, v in m.state_dict().items() if k in before}
    assert all(torch.equal(before[k], after[k]) for k in before)
    m(torch.randn(2, 16, 6, 6))  # a finite batch updates them again
    assert m.norm_q.num_batches_tracked.item() == 2
    assert all(torch.isfinite(v).all() for k, v in m.state_dict().items() if "running" in k)


def test_reference_embeddings_follow_the_paper():
    # E[n, m] = R[pos_m - pos_n]: offset (dy, dx) reads the table at (dy + r//2, dx + r//2), zero outside.
    m = make(local_scope=3)
    e = m.relative_embeddings(3, 4)  # (k, u, n, m), n = y * 4 + x
    assert e.shape == (3, 2, 12, 12)
    assert torch.equal(e[:, :, 5, 5], m.pos_kernel[:, :, 1, 1])  # (1, 1) -> itself: offset 0
    assert torch.equal(e[:, :, 5, 10], m.pos_kernel[:, :, 2, 2])  # (1, 1) -> (2, 2): offset (1, 1)
    assert torch.equal(e[:, :, 5, 0], m.pos_kernel[:, :, 0, 0])  # (1, 1) -> (0, 0): offset (-1, -1)
    assert e[:, :, 0, 11].abs().sum() == 0  # (0, 0) -> (2, 3): outside the 3 x 3 window


def test_auto_rule_thresholds():
    # fft when n >= 400 and n * A >= 150000, A = cropped kernel area; else direct (issue 19 re-measure).
    def pick(r, h, w, **kw):
        m = LambdaLayer(8, num_heads=2, key_dim=2, local_scope=r, **kw)
        with torch.no_grad():
            return m.select_impl(torch.empty(1, 8, h, w))

    assert pick(7, 56, 56) == "fft" and pick(7, 55, 55) == "direct"  # n A = 153664 / 148225, A = 49
    assert pick(7, 28, 28) == "direct"  # n A = 38416: conv3d beats the FFT here (issue 19)
    assert pick(23, 20, 20) == "fft" and pick(23, 19, 21) == "direct"  # n = 400 / 399
    assert pick(23, 14, 14) == "direct"  # n A = 142884 (kernel cropped to 23 x 23), n < 400
    assert pick(11, 40, 40) == "fft" and pick(11, 35, 35) == "direct"  # n A = 193600 / 148225
    glob = LambdaLayer(8, num_heads=2, key_dim=2, local_scope=None, max_size=32)
    assert glob.select_impl(torch.empty(1, 8, 20, 20)) == "fft"  # 39 x 39 slice of the table
    assert glob.select_impl(torch.empty(1, 8, 14, 14)) == "direct"  # n = 196
    # the rule does not look at grad mode
    x = torch.empty(1, 8, 20, 20)
    m = LambdaLayer(8, num_heads=2, key_dim=2, local_scope=23)
    with torch.no_grad():
        a = m.select_impl(x)
    assert a == m.select_impl(x.requires_grad_()) == "fft"


def test_conv_impl_was_renamed_to_impl():
    with pytest.raises(TypeError, match=r"argument 'conv_impl' was renamed to 'impl'"):
        visattn.create_attention("lambda", 8, conv_impl="fft")
    m = visattn.create_attention("lambda", 8, num_heads=2, key_dim=2, local_scope=3, impl="fft")
    assert m.impl == "fft" and m.select_impl(torch.empty(1, 8, 2, 2)) == "fft"


def test_reference_flop_formula_and_memory_estimate():
    m = LambdaLayer(8, num_heads=2, key_dim=4, local_scope=3, impl="reference").eval()
    x = torch.randn(2, 8, 5, 6)
    assert count_flops(m, x) == m.flop_breakdown(5, 6, 2)["counted"]
    assert m.peak_intermediate_bytes(5, 6, 2) == 4 * 1 * 30 * 30 * 4
    m.impl = "direct"
    assert m.peak_intermediate_bytes(5, 6, 2) == 0


@pytest.mark.parametrize("impl", ["reference", "direct", "fft"])
def test_input_gradient_on_a_one_row_map_in_eval_mode(impl):
    # PyTorch's CPU BatchNorm backward mishandles a gradient with channels-last-looking strides
    # on an H = 1 map (einsum's backward makes one); the layer hands it a contiguous gradient.
    torch.manual_seed(0)
    m = visattn.create_attention("lambda", 4, num_heads=2, key_dim=4, local_scope=3, impl=impl).double().eval()
    x = torch.randn(1, 4, 1, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("impl", ["auto", "fft"])
def test_fft_path_traces(impl):
    # torch.jit.trace hands the FFT plan 0-d tensors as sizes; the FFT length search changed them in
    # place (``r //= p``) and the trace crashed. auto picks "fft" here (n = 400, A = 529).
    m = randomise(LambdaLayer(8, num_heads=2, key_dim=2, local_scope=23, impl=impl)).eval()
    x = torch.randn(1, 8, 20, 20)
    assert m.select_impl(x) == "fft"
    with torch.no_grad():
        traced = torch.jit.trace(m, (x,), check_trace=False)
        assert rel_err(traced(x), m(x)) < 1e-6


def test_onnx_export_takes_the_direct_path_and_refuses_fft():
    # auto picks "fft" on this map, whose ONNX graph gives wrong numbers: exporting picks "direct";
    # an explicit impl="fft" is refused with a message instead.
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import io

    m = randomise(LambdaLayer(8, num_heads=2, key_dim=2, local_scope=23)).eval()
    x = torch.randn(1, 8, 20, 20)
    assert m.select_impl(x) == "fft"
    buf = io.BytesIO()
    torch.onnx.export(m, (x,), buf, input_names=["x"], output_names=["y"], dynamo=False, opset_version=17)
    (y,) = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    with torch.no_grad():
        assert rel_err(torch.from_numpy(y), m(x)) < 1e-5
    m.impl = "fft"
    with pytest.raises(ValueError, match=r"impl='fft' cannot be exported to ONNX.*use impl='direct' or 'auto'"):
        torch.onnx.export(m, (x,), io.BytesIO(), dynamo=False, opset_version=17)


@pytest.mark.parametrize("kw", [{"local_scope": None, "max_size": 6}, {"local_scope": 5}])
def test_reference_reads_the_table_not_the_fast_paths_slice(monkeypatch, kw):
    # The fast paths convolve with position_kernel(H, W) (the global form's slice of R); the
    # reference must read R itself, or a wrong slice would pass the implementation sweep.
    m = randomise(LambdaLayer(8, num_heads=2, key_dim=2, **kw)).double().eval()
    x = torch.randn(1, 8, 4, 3, dtype=torch.float64)
    with torch.no_grad():
        ref = with_impl(m, "reference", x)
        assert rel_err(with_impl(m, "direct", x), ref) < TOL64
        good = LambdaLayer.position_kernel
        monkeypatch.setattr(LambdaLayer, "position_kernel", lambda self, h, w: good(self, h, w).flip(-1))
        assert rel_err(with_impl(m, "reference", x), ref) == 0  # the reference does not move
        assert rel_err(with_impl(m, "direct", x), ref) > 1e-3  # the broken fast path is caught


# -- torch.func ------------------------------------------------------------------------------


def _func_layer(impl: str, train: bool):
    torch.manual_seed(0)
    m = visattn.create_attention("lambda", 8, num_heads=2, key_dim=4, local_scope=23, impl=impl).double()
    if train:  # torch.func's documented way for BatchNorm in training mode
        torch.func.replace_all_batch_norm_modules_(m)
    return m.train(train)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("impl", ["reference", "direct", "auto"])
def test_torch_func_grad_equals_autograd(impl, train):
    m = _func_layer(impl, train)
    x = torch.randn(2, 8, 20, 20, dtype=torch.float64)
    assert m.select_impl(x) == ("fft" if impl == "auto" else impl)  # outside torch.func auto takes the FFT here

    def loss(inp):
        return m(inp).square().sum()

    g = torch.func.grad(loss)(x)
    xr = x.clone().requires_grad_()
    loss(xr).backward()
    torch.testing.assert_close(g, xr.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("impl", ["reference", "direct", "auto"])
def test_torch_func_vmap_equals_the_batched_call(impl):
    m = _func_layer(impl, False)
    x = torch.randn(3, 8, 20, 20, dtype=torch.float64)
    y = torch.func.vmap(lambda a: m(a[None])[0])(x)
    torch.testing.assert_close(y, m(x), rtol=1e-10, atol=1e-10)


def test_fft_under_torch_func_is_refused():
    m = _func_layer("fft", False)
    x = torch.randn(1, 8, 20, 20, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"impl='fft' cannot run under torch.func transforms"):
        torch.func.grad(lambda inp: m(inp).sum())(x)


def test_running_stats_check_is_on_the_statistics_not_the_batch():
    # issue 19: the non-finite check reads the updated running statistics (O(C)), not the batch.
    # Already non-finite statistics (a poisoned checkpoint) are not "restored" nor warned about.
    import warnings

    m = visattn.create_attention("lambda", 16, num_heads=2, key_dim=4, local_scope=3).train()
    m.norm_v.running_mean.fill_(float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m(torch.randn(2, 16, 6, 6))
    assert m.norm_v.num_batches_tracked.item() == 1 and m.norm_q.num_batches_tracked.item() == 1
    # a finite batch whose variance overflows to inf would poison the statistics too: undone
    m = visattn.create_attention("lambda", 16, num_heads=2, key_dim=4, local_scope=3).train()
    before = m.norm_q.running_var.clone()
    x = (torch.randn(2, 16, 6, 6) * 1e30).requires_grad_(True)
    with pytest.warns(RuntimeWarning, match=r"not updated"):
        y = m(x)
    assert torch.equal(m.norm_q.running_var, before) and m.norm_q.num_batches_tracked.item() == 0
    y.sum().backward()  # undoing the update must not break this step's backward
    assert x.grad is not None
