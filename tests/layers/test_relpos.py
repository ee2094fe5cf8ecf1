"""Relative positional self-attention (Cordonnier et al., arXiv 1911.03584) against the maths.

References are written out explicitly here (per-pair loops or plain softmax(QK^T/sqrt(d) + P) V)
and compared in float64. The conv construction is held to the paper's bound: the error
falls like e^{-alpha}.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import visattn
from visattn.flops import count_flops
from visattn.layers.relpos import ConvAsAttention, RelativePositionAttention

ENCODINGS = ("quadratic", "learned", "gaussian")


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def make(enc, dim=6, dim_out=None, **kw):
    kw.setdefault("num_heads", 3)
    return RelativePositionAttention(dim, dim_out, encoding=enc, **kw).double()


def randomise(m: RelativePositionAttention):
    """Non-trivial positional parameters (the defaults are symmetric)."""
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name in ("centres",):
                p.normal_(0, 1.5)
            elif name == "alpha":
                p.uniform_(0.2, 1.5)
            elif name in ("log_diag", "off_diag"):
                p.normal_(0, 0.4)
            elif name in ("row_embed", "col_embed"):
                p.normal_(0, 0.5)
    return m


def offsets(h, w):
    """(n, n, 2) offsets key - query as (dy, dx), row-major positions."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([ys.reshape(-1), xs.reshape(-1)], -1).double()
    return pos[None, :, :] - pos[:, None, :]


def reference_positional_logits(m: RelativePositionAttention, h, w):
    """(heads, n, n) positional logits written pair by pair from the paper / authors' formulas."""
    d = offsets(h, w)  # (n, n, 2)
    out = []
    for i in range(m.num_heads):
        if m.encoding == "quadratic":
            # paper: v^T r_delta, r = (||d||^2, d1, d2), v = -alpha (1, -2 D1, -2 D2)
            r = torch.stack([d.square().sum(-1), d[..., 0], d[..., 1]], -1)
            a, c = m.alpha[i].double(), m.centres[i].double()
            v = -a * torch.stack([torch.ones((), dtype=torch.float64), -2 * c[0], -2 * c[1]])
            out.append(r @ v)
        elif m.encoding == "gaussian":
            sigma = torch.linalg.inv(m.precision()[i].double())
            e = d - m.centres[i].double()
            out.append(-0.5 * torch.einsum("qki,ij,qkj->qk", e, torch.linalg.inv(sigma), e))
        else:
            mo = m.max_offset
            dy, dx = d[..., 0].long() + mo, d[..., 1].long() + mo
            out.append(
                m.row_embed.double()[dy] @ m.row_keys[i].double() + m.col_embed.double()[dx] @ m.col_keys[i].double()
            )
    return torch.stack(out)


def reference_forward(m: RelativePositionAttention, x):
    """Plain multi-head attention: softmax(q k^T / sqrt(d) + P) V, heads concatenated, W_out."""
    b, c, h, w = x.shape
    t = x.flatten(2).transpose(1, 2).double()  # (B, n, C)
    p = reference_positional_logits(m, h, w)
    outs = []
    for i in range(m.num_heads):
        logits = p[i].expand(b, -1, -1)
        if m.content:
            wq = m.qk.weight.double()[i * m.key_dim : (i + 1) * m.key_dim]
            bq = m.qk.bias.double()[i * m.key_dim : (i + 1) * m.key_dim]
            off = m.num_heads * m.key_dim
            wk = m.qk.weight.double()[off + i * m.key_dim : off + (i + 1) * m.key_dim]
            bk = m.qk.bias.double()[off + i * m.key_dim : off + (i + 1) * m.key_dim]
            q, k = t @ wq.T + bq, t @ wk.T + bk
            logits = logits + q @ k.transpose(1, 2) / math.sqrt(m.key_dim)
        if m.value_proj:
            sl = slice(i * m.value_dim, (i + 1) * m.value_dim)
            v = t @ m.v.weight.double()[sl].T + m.v.bias.double()[sl]
        else:
            v = t
        outs.append(torch.softmax(logits, -1) @ v)
    o = torch.cat(outs, -1) @ m.proj.weight.double().T + m.proj.bias.double()
    return o.transpose(1, 2).reshape(b, -1, h, w)


# ---------------------------------------------------------------------------
# The three encodings against their formulas, with and without content.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("enc", ENCODINGS)
@pytest.mark.parametrize("content", [False, True])
@pytest.mark.parametrize("value_proj", [True, False])
def test_forward_equals_plain_reference(enc, content, value_proj):
    m = randomise(make(enc, 6, 5, content=content, value_proj=value_proj, max_offset=8)).eval()
    x = torch.randn(2, 6, 4, 7, dtype=torch.float64)
    assert rel_err(m(x), reference_forward(m, x)) < 1e-12
    p_ref = reference_positional_logits(m, 4, 7)
    if enc == "quadratic":  # the layer drops the constant alpha ||Delta||^2 (it cancels in the softmax)
        p_ref = p_ref - (m.alpha * m.centres.square().sum(-1)).double()[:, None, None]
    assert rel_err(m.positional_logits(4, 7), p_ref) < 1e-12


@pytest.mark.parametrize("enc", ENCODINGS)
def test_attention_maps_are_the_probabilities_used(enc):
    m = randomise(make(enc, content=True)).eval()
    x = torch.randn(2, 6, 3, 5, dtype=torch.float64)
    a = m.attention_maps(x)  # (B, h, n, n)
    assert a.shape == (2, 3, 15, 15)
    assert torch.allclose(a.sum(-1), torch.ones(2, 3, 15, dtype=torch.float64), atol=1e-12)
    t = x.flatten(2).transpose(1, 2)
    v = m.v(t).reshape(2, 15, 3, m.value_dim).transpose(1, 2)
    o = (a @ v).transpose(1, 2).reshape(2, 15, -1)
    y = m.proj(o).transpose(1, 2).reshape(2, 6, 3, 5)
    assert rel_err(y, m(x)) < 1e-12


@pytest.mark.parametrize("enc", ENCODINGS)
def test_position_only_maps_do_not_depend_on_input(enc):
    m = randomise(make(enc, content=False)).eval()
    x1 = torch.randn(1, 6, 5, 6, dtype=torch.float64)
    x2 = 10 * torch.randn(3, 6, 5, 6, dtype=torch.float64) + 3
    a1, a2 = m.attention_maps(x1), m.attention_maps(x2)
    assert torch.equal(a1[0], a2[0]) and torch.equal(a2[0], a2[2])
    # and they are not trivial (not uniform)
    assert a1.max() > 2.0 / 30


def test_isotropic_gaussian_with_spread_s_equals_quadratic_with_alpha_s2_over_2():
    # Authors' parameterisation: the spread s is the inverse standard deviation, Sigma^{-1} = s^2 I,
    # so -1/2 (d - mu)^T Sigma^{-1} (d - mu) = -(s^2 / 2) ||d - mu||^2: alpha = s^2 / 2.
    spreads = torch.tensor([0.5, 1.0, 1.7], dtype=torch.float64)
    g = make("gaussian", content=True)
    q = make("quadratic", content=True)
    with torch.no_grad():
        g.log_diag.copy_(spreads.log()[:, None].expand(3, 2))
        g.off_diag.zero_()
        q.alpha.copy_(spreads**2 / 2)
        g.centres.normal_(0, 2)
        q.centres.copy_(g.centres)
        for name in ("qk", "v", "proj"):
            getattr(q, name).load_state_dict(getattr(g, name).state_dict())
    assert torch.allclose(g.precision(), spreads[:, None, None] ** 2 * torch.eye(2, dtype=torch.float64))
    x = torch.randn(2, 6, 5, 4, dtype=torch.float64)
    assert rel_err(g.attention_maps(x), q.attention_maps(x)) < 1e-13
    assert rel_err(g(x), q(x)) < 1e-13
    # The default initialisations agree too: spread sqrt(2 * init_alpha).
    g0, q0 = make("gaussian"), make("quadratic")
    assert torch.allclose(g0.precision()[:, 0, 0], 2 * q0.alpha)


def test_gaussian_precision_is_positive_definite():
    m = make("gaussian", 16, num_heads=16)
    with torch.no_grad():
        m.log_diag.normal_(0, 2)
        m.off_diag.normal_(0, 5)
    eig = torch.linalg.eigvalsh(m.precision())
    assert (eig > 0).all()


def test_learned_max_offset_error_and_limit():
    m = make("learned", max_offset=4)
    m(torch.randn(1, 6, 5, 5, dtype=torch.float64))  # offsets up to 4: fine
    m(torch.randn(1, 6, 1, 5, dtype=torch.float64))
    with pytest.raises(
        ValueError,
        match=r"max_offset=4 \(inputs up to 5 x 5\), got an input of 6 x 3 "
        r"needing offsets up to 5",
    ):
        m(torch.randn(1, 6, 6, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"max_offset=4"):
        m.attention_maps(torch.randn(1, 6, 2, 7, dtype=torch.float64))


@pytest.mark.parametrize("enc", ENCODINGS)
@pytest.mark.parametrize("content", [False, True])
def test_any_size_gradients_flops_and_bf16(enc, content):
    # The conformance suite runs "relpos" with test_kwargs (gaussian + content); this covers the rest.
    m = make(enc, 8, 4, num_heads=2, content=content, max_offset=10).float()
    for hw in [(1, 1), (3, 11), (6, 5)]:
        y = m(torch.randn(2, 8, *hw))
        assert y.shape == (2, 4, *hw) and torch.isfinite(y).all()
    x = torch.randn(2, 8, 5, 7)
    assert count_flops(m, x) == m.flop_breakdown(5, 7, 2)["counted"]
    ref = m(100 * x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(100 * x)
    assert rel_err(y.float(), ref) < 0.1
    md = make(enc, 4, num_heads=1, content=content, max_offset=3).train()
    xd = torch.randn(1, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(md, (xd,), eps=1e-6, atol=1e-5, rtol=1e-3)


def test_config_errors():
    with pytest.raises(
        ValueError, match=r"encoding must be one of \('quadratic', 'learned', 'gaussian'\), got 'sinusoid'"
    ):
        RelativePositionAttention(8, encoding="sinusoid")
    with pytest.raises(ValueError, match=r"value_dim is only used with value_proj=True"):
        RelativePositionAttention(8, value_proj=False, value_dim=4)
    with pytest.raises(ValueError, match=r"max_offset must be an int >= 1, got 0"):
        RelativePositionAttention(8, encoding="learned", max_offset=0)
    # an explicit key_dim lifts the divisibility requirement (as in the paper's model: 9 heads of 400)
    m = RelativePositionAttention(8, num_heads=3, key_dim=8, content=True)
    assert m(torch.randn(1, 8, 2, 3)).shape == (1, 8, 2, 3)


# ---------------------------------------------------------------------------
# Theorem 1: attention_from_conv reproduces the convolution.
# ---------------------------------------------------------------------------


def conv_error(conv, x, alpha):
    return rel_err(visattn.attention_from_conv(conv, alpha)(x), conv(x))


@pytest.mark.parametrize(
    "k, c_in, c_out, hw", [(1, 3, 5, (4, 7)), (3, 4, 4, (7, 5)), (3, 1, 2, (2, 9)), (5, 2, 3, (6, 8))]
)
def test_conv_reproduction_error_falls_like_exp_minus_alpha(k, c_in, c_out, hw):
    conv = nn.Conv2d(c_in, c_out, k, padding=k // 2).double()
    x = torch.randn(2, c_in, *hw, dtype=torch.float64)
    alphas = [2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0]
    errs = [conv_error(conv, x, a) for a in alphas]
    assert all(e2 < e1 for e1, e2 in zip(errs, errs[1:])), errs  # monotone decrease
    # Off-target mass per head ~ 4 e^{-alpha}: log-error slope in alpha close to -1.
    slope = (math.log(errs[-1]) - math.log(errs[3])) / (alphas[-1] - alphas[3])
    assert -1.25 < slope < -0.8, (slope, errs)
    assert errs[-1] < 20 * math.exp(-16.0)
    assert conv_error(conv, x, 30.0) < 1e-6


def test_conv_reproduction_non_square_kernel_no_bias_and_same_padding():
    conv = nn.Conv2d(3, 2, (3, 5), padding="same", bias=False).double()
    x = torch.randn(1, 3, 6, 4, dtype=torch.float64)
    m = visattn.attention_from_conv(conv, 30.0)
    assert isinstance(m, ConvAsAttention) and m.attention.num_heads == 15
    assert rel_err(m(x), conv(x)) < 1e-6
    # the heads' centres are the kernel grid, in kernel order
    assert m.attention.centres[0].tolist() == [-1, -2] and m.attention.centres[-1].tolist() == [1, 2]


def test_conv_reproduction_float32_and_gradients_flow():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    m = visattn.attention_from_conv(conv, 20.0)
    y = m(x)
    assert rel_err(y, conv(x)) < 1e-5
    y.sum().backward()
    assert m.attention.alpha.grad is not None and m.attention.proj.weight.grad is not None


@pytest.mark.parametrize(
    "conv, msg",
    [
        (nn.Conv2d(2, 2, 3, stride=2, padding=1), r"supports stride 1, got stride=\(2, 2\)"),
        (nn.Conv2d(2, 2, 3, dilation=2, padding=2), r"supports dilation 1, got dilation=\(2, 2\)"),
        (nn.Conv2d(2, 2, 3, groups=2, padding=1), r"supports groups=1, got groups=2"),
        (nn.Conv2d(2, 2, 4, padding=2), r"odd kernel sizes .*got kernel_size=\(4, 4\)"),
        (nn.Conv2d(2, 2, 3, padding=0), r"zero 'same' padding \(K//2\) = \(1, 1\) .*got padding=\(0, 0\)"),
        (nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), r"padding_mode='zeros', got 'reflect'"),
    ],
)
def test_conv_unsupported_errors(conv, msg):
    with pytest.raises(ValueError, match=msg):
        visattn.attention_from_conv(conv, 10.0)


def test_conv_bad_arguments():
    with pytest.raises(TypeError, match=r"expects a torch.nn.Conv2d, got Linear"):
        visattn.attention_from_conv(nn.Linear(2, 2), 10.0)
    with pytest.raises(ValueError, match=r"alpha must be a finite number > 0, got -1"):
        visattn.attention_from_conv(nn.Conv2d(2, 2, 3, padding=1), -1)


def test_quadratic_table_refused_before_allocation():
    # issue 10: a 1024 x 1024 map asked the allocator for terabytes. On a device without a FLOP
    # bound (meta here) the byte estimate alone must refuse it before anything is allocated.
    m = visattn.create_attention("relpos", 16, num_heads=4).to("meta")
    with pytest.raises(
        ValueError,
        match=r"RelativePositionAttention: a \(1, 16, 1024, 1024\) input needs an "
        r"estimated 16.0 TiB for one intermediate, above the bound of 16.0 GiB",
    ):
        m(torch.empty(1, 16, 1024, 1024, device="meta"))
    c = visattn.create_attention("relpos", 16, num_heads=4, content=True, encoding="learned")
    assert c.peak_intermediate_bytes(8, 8, batch=3) == 3 * 4 * 64 * 64 * 4  # (B, h, n, n) under autograd
    with torch.no_grad():
        assert c.eval().peak_intermediate_bytes(8, 8, batch=3) == 4 * 64 * 64 * 4  # the (h, n, n) mask only
    # quadratic with content: positions folded into (B, h, n, D) queries/keys, D = 4 + 3 -> 8
    f = visattn.create_attention("relpos", 16, num_heads=4, content=True)
    assert f.peak_intermediate_bytes(8, 8, batch=3) == 3 * 4 * 64 * 8 * 4


@pytest.mark.parametrize("encoding", ["quadratic", "gaussian"])
@pytest.mark.parametrize("value_proj", [True, False])
def test_folded_positions_equal_the_additive_mask_float64(encoding, value_proj):
    # issue 12: with content, the positions are extra query/key dimensions (fused SDPA, no (h, n, n)
    # table); outputs and all gradients equal the additive-mask form to float64 rounding.
    m = RelativePositionAttention(8, num_heads=2, encoding=encoding, content=True, value_proj=value_proj).double()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    params = list(m.parameters())
    for hw in [(1, 1), (3, 5), (6, 6)]:
        x = torch.randn(2, 8, *hw, dtype=torch.float64, requires_grad=True)
        assert m.select_impl(x) == "folded"
        y = m(x)
        g = torch.randn_like(y)
        got = torch.autograd.grad(y, [x, *params], g)
        m.impl = "mask"  # the additive-mask path (used for exports and "learned")
        ref_y = m(x)
        ref = torch.autograd.grad(ref_y, [x, *params], g)
        m.impl = "auto"
        assert (y - ref_y).abs().max().item() < 1e-10
        for a, b in zip(got, ref):
            assert (a - b).abs().max().item() < 1e-10 * max(1.0, b.abs().max().item())


def test_auto_rule_and_supported_impls():
    # auto: content -> "folded" (quadratic / gaussian) or "mask" ("learned"); no content -> "shared".
    x = torch.randn(1, 8, 3, 4)
    cases = [
        ({"encoding": "quadratic", "content": True}, "folded", ("reference", "mask", "folded")),
        ({"encoding": "gaussian", "content": True}, "folded", ("reference", "mask", "folded")),
        ({"encoding": "learned", "content": True}, "mask", ("reference", "mask")),
        ({"encoding": "quadratic", "content": False}, "shared", ("reference", "shared")),
        ({"encoding": "learned", "content": False}, "shared", ("reference", "shared")),
    ]
    for kw, auto, supported in cases:
        m = RelativePositionAttention(8, num_heads=2, **kw)
        assert m.supported_impls() == supported
        assert m.select_impl(x) == auto
        with torch.no_grad():
            assert m.select_impl(x) == auto  # not grad mode
    with pytest.raises(
        ValueError,
        match=r"impl='folded' does not apply to this configuration \(encoding='learned', "
        r"content=True\); it runs one of \('reference', 'mask'\)",
    ):
        RelativePositionAttention(8, num_heads=2, encoding="learned", content=True, impl="folded")
    m = RelativePositionAttention(8, num_heads=2)
    with pytest.raises(ValueError, match=r"impl='mask' does not apply"):
        m.impl = "mask"
    with pytest.raises(TypeError, match=r"argument 'head_dim' was renamed to 'key_dim'"):
        visattn.create_attention("relpos", 8, head_dim=4)


@pytest.mark.parametrize("encoding", ["quadratic", "gaussian"])
def test_positional_features_reproduce_the_logits_up_to_a_per_query_constant(encoding):
    m = RelativePositionAttention(8, num_heads=2, encoding=encoding, content=True).double()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    qf, kf = m.positional_features(4, 5)
    assert qf.shape == (2, 20, 3 if encoding == "quadratic" else 5) and kf.shape == (20, qf.shape[-1])
    diff = qf @ kf.t() - m.positional_logits(4, 5)  # (h, n, n): constant along the keys
    assert (diff - diff[..., :1]).abs().max().item() < 1e-10


def test_folded_positions_with_attention_dropout_count_the_attention_matrix():
    # SDPA with dropout runs its math path on the CPU (a (B, h, n, n) matrix): the folded
    # estimate (B, h, n, D) must not be used then, or a huge map is not refused
    m = RelativePositionAttention(16, num_heads=4, content=True, attn_drop=0.1).train()
    assert m.peak_intermediate_bytes(8, 8, batch=3) == 3 * 4 * 64 * 64 * 4
    assert m.eval().peak_intermediate_bytes(8, 8, batch=3) == 3 * 4 * 64 * 8 * 4


@pytest.mark.parametrize("encoding", ["quadratic", "gaussian"])
def test_auto_picks_mask_while_tracing_and_folded_otherwise(encoding):
    # The auto rule's other side: tracing / exporting keeps the additive-mask graph.
    m = RelativePositionAttention(8, num_heads=2, encoding=encoding, content=True).eval()
    x = torch.randn(1, 8, 3, 4)
    picked: list[str] = []
    select = m.select_impl
    m.select_impl = lambda t: picked.append(select(t)) or picked[-1]  # type: ignore[method-assign]
    with torch.no_grad():
        traced = torch.jit.trace(m, (x,), check_trace=False)
        assert picked == ["mask"]
        picked.clear()
        y = m(x)
        assert picked == ["folded"]
        assert (traced(x) - y).abs().max().item() < 1e-5


@pytest.mark.parametrize("encoding", ["quadratic", "gaussian"])
@pytest.mark.parametrize(("key_dim", "value_dim"), [(4, None), (4, 2), (4, 12), (5, 8)])
def test_folded_path_equals_the_reference_float64(encoding, key_dim, value_dim):
    # issue 19: the folded path zero-pads the values to the query/key width D (SDPA's CPU backward
    # is ~3.7x slower when v's width differs from q's and k's) and slices the output back; outputs
    # and all gradients equal the reference (the (B, h, n, n) logits written out) in float64,
    # values narrower than D, equal to it and wider than key_dim + the positional dimensions.
    torch.manual_seed(key_dim * 10 + (value_dim or 0))
    m = RelativePositionAttention(
        8, num_heads=2, encoding=encoding, content=True, key_dim=key_dim, value_dim=value_dim
    ).double()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
    params = list(m.parameters())
    x = torch.randn(2, 8, 5, 4, dtype=torch.float64, requires_grad=True)
    assert m.select_impl(x) == "folded"
    y = m(x)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, *params], g)
    m.impl = "reference"
    ref_y = m(x)
    ref = torch.autograd.grad(ref_y, [x, *params], g)
    assert (y - ref_y).abs().max().item() < 1e-10
    for a, b in zip(got, ref):
        assert (a - b).abs().max().item() < 1e-10 * max(1.0, b.abs().max().item())
