"""Identities of "efficient" (Shen et al., arXiv 1812.01243), SPEC.md section 5.

* scaling normalisation (rho_q = rho_k = Y / sqrt(n)) equals dot-product attention with
  rho(Y) = Y / n, i.e. (Q K^T / n) V per head with the same weights (float64, <= 1e-10);
* softmax normalisation with constant values returns that constant through the context
  (checked on the input of the reprojection, float64, <= 1e-12);
* permutation-equivariant over positions (both normalisations);
* the authors' per-head loop (softmax keys over n, softmax queries over channels,
  context, concatenation, reprojection, + input) equals the batched contraction with
  ``residual=True``; ``residual=True`` adds exactly the input;
* bf16 autocast (both forms) and fp16 autocast (softmax form) with inputs ~1e3 at
  n = 1024 stay finite and within 5% (relative L2) of float32: the normalisers and the
  context sums over n run in float32.
"""

from __future__ import annotations

import pytest
import torch

import visattn

TOL64 = 1e-10


def _conv1x1(conv, x):
    return torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], x) + conv.bias[:, None, None]


def reference_dot_product_scaling(m, x):
    """Dot-product attention D = (Q K^T / n) V per head, then the reprojection."""
    b, _, h, w = x.shape
    n, nh = h * w, m.num_heads
    q = _conv1x1(m.queries, x).flatten(2).transpose(1, 2)  # (B, n, d_k)
    k = _conv1x1(m.keys, x).flatten(2).transpose(1, 2)
    v = _conv1x1(m.values, x).flatten(2).transpose(1, 2)  # (B, n, d_v)
    dk, dv = m.key_dim, m.value_dim  # per head
    heads = []
    for i in range(nh):
        qi, ki, vi = q[..., i * dk : (i + 1) * dk], k[..., i * dk : (i + 1) * dk], v[..., i * dv : (i + 1) * dv]
        heads.append((qi @ ki.transpose(1, 2) / n) @ vi)  # (B, n, d_v/h)
    o = torch.cat(heads, -1).transpose(1, 2).reshape(b, nh * dv, h, w)
    return _conv1x1(m.proj, o)


def reference_authors_loop(m, x):
    """The authors' module structure: a loop over heads, then concat, reprojection, + input."""
    b, _, h, w = x.shape
    n, nh = h * w, m.num_heads
    hk, hv = m.key_dim, m.value_dim  # per head
    keys = _conv1x1(m.keys, x).reshape(b, nh * hk, n)
    queries = _conv1x1(m.queries, x).reshape(b, nh * hk, n)
    values = _conv1x1(m.values, x).reshape(b, nh * hv, n)
    attended = []
    for i in range(nh):
        key = torch.softmax(keys[:, i * hk : (i + 1) * hk, :], dim=2)  # over positions
        query = torch.softmax(queries[:, i * hk : (i + 1) * hk, :], dim=1)  # over channels
        value = values[:, i * hv : (i + 1) * hv, :]
        context = key @ value.transpose(1, 2)  # (B, hk, hv)
        attended.append((context.transpose(1, 2) @ query).reshape(b, hv, h, w))
    return _conv1x1(m.proj, torch.cat(attended, 1)) + x


@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (7, 4)])
@pytest.mark.parametrize("num_heads,key_dim,value_dim", [(1, 8, 8), (2, 2, 6), (4, 4, 2)])
def test_scaling_equals_dot_product_attention(hw, num_heads, key_dim, value_dim):
    m = visattn.create_attention(
        "efficient", 8, 6, num_heads=num_heads, key_dim=key_dim, value_dim=value_dim, normalization="scaling"
    ).double()
    x = torch.randn(2, 8, *hw, dtype=torch.float64)
    torch.testing.assert_close(m(x), reference_dot_product_scaling(m, x), atol=TOL64, rtol=0)


@pytest.mark.parametrize("num_heads", [1, 2, 4])
def test_softmax_form_returns_constant_values(num_heads):
    m = visattn.create_attention("efficient", 8, num_heads=num_heads).double()
    const = torch.randn(8, dtype=torch.float64)
    with torch.no_grad():
        m.values.weight.zero_()
        m.values.bias.copy_(const)
    seen = {}
    m.proj.register_forward_pre_hook(lambda mod, args: seen.setdefault("o", args[0]))
    x = torch.randn(2, 8, 5, 3, dtype=torch.float64)
    y = m(x)
    torch.testing.assert_close(seen["o"], const[None, :, None, None].expand(2, 8, 5, 3), atol=1e-12, rtol=0)
    torch.testing.assert_close(y, _conv1x1(m.proj, seen["o"]), atol=1e-12, rtol=0)


@pytest.mark.parametrize("normalization", ["softmax", "scaling"])
def test_permutation_equivariance_over_positions(normalization):
    m = visattn.create_attention("efficient", 8, num_heads=2, normalization=normalization).double()
    b, c, h, w = 2, 8, 4, 6
    x = torch.randn(b, c, h, w, dtype=torch.float64)
    perm = torch.randperm(h * w)
    y = m(x).flatten(2)
    y_perm = m(x.flatten(2)[:, :, perm].reshape(b, c, h, w)).flatten(2)
    torch.testing.assert_close(y_perm, y[:, :, perm], atol=TOL64, rtol=0)
    assert (y[:, :, perm] - y).abs().max() > 1e-3


@pytest.mark.parametrize("num_heads,key_dim,value_dim", [(1, 8, 8), (2, 4, 2), (4, 3, 4)])
def test_per_head_loop_equals_batched_contraction(num_heads, key_dim, value_dim):
    m = visattn.create_attention(
        "efficient", 8, num_heads=num_heads, key_dim=key_dim, value_dim=value_dim, residual=True
    ).double()
    x = torch.randn(3, 8, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(m(x), reference_authors_loop(m, x), atol=TOL64, rtol=0)


def test_residual_adds_the_input():
    plain = visattn.create_attention("efficient", 8, num_heads=2).double()
    res = visattn.create_attention("efficient", 8, num_heads=2, residual=True).double()
    res.load_state_dict(plain.state_dict())
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(res(x) - plain(x), x, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match=r"residual=True needs dim_out == dim, got dim=8, dim_out=4"):
        visattn.create_attention("efficient", 8, 4, residual=True)


# float16 only with softmax: the scaling form's true output grows like |x|^3 (~1e8 here),
# beyond float16's range whatever the implementation does.
@pytest.mark.parametrize(
    "dtype,normalization", [(torch.bfloat16, "softmax"), (torch.bfloat16, "scaling"), (torch.float16, "softmax")]
)
def test_half_autocast_large_inputs_stay_finite(dtype, normalization):
    # n = 1024 positions of magnitude ~1e3 plus one at ~1e4; float32 reference.
    m = visattn.create_attention("efficient", 16, num_heads=2, normalization=normalization).eval()
    x = 1e3 * torch.randn(1, 16, 32, 32)
    x[:, :, 0, 0] += 1e4  # one very large position
    with torch.no_grad():
        ref = m(x)
        with torch.autocast("cpu", dtype=dtype):
            y = m(x)
    assert torch.isfinite(y.float()).all()
    err = ((y.float() - ref).norm() / ref.norm()).item()
    assert err < 0.05, err


def test_key_and_value_dims_are_per_head():
    m = visattn.create_attention("efficient", 8, num_heads=2, key_dim=3, value_dim=5)
    assert (m.queries.out_channels, m.keys.out_channels, m.values.out_channels) == (6, 6, 10)
    assert m.proj.in_channels == 10
    # defaults: C / h per head, the paper's d_k = d_v = C in total (unchanged parameter count)
    d = visattn.create_attention("efficient", 64, num_heads=4)
    assert (d.key_dim, d.value_dim, d.queries.out_channels, d.values.out_channels) == (16, 16, 64, 64)
    assert sum(p.numel() for p in d.parameters()) == 4 * (64 * 64 + 64)
    with pytest.raises(ValueError, match=r"dim=6 must be divisible by num_heads=4"):
        visattn.create_attention("efficient", 6, num_heads=4)
    assert visattn.create_attention("efficient", 6, num_heads=4, key_dim=2, value_dim=3).proj.in_channels == 12


def test_old_state_dict_with_reprojection_keys_loads_exactly():
    m = visattn.create_attention("efficient", 8, num_heads=2)
    old = {k.replace("proj.", "reprojection."): v.clone() for k, v in m.state_dict().items()}
    assert "reprojection.weight" in old and "proj.weight" not in old
    fresh = visattn.create_attention("efficient", 8, num_heads=2)
    fresh.load_state_dict(old)  # strict
    for k, v in m.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    # inside a container too (the prefix is kept)
    outer = torch.nn.Sequential(visattn.create_attention("efficient", 8, num_heads=2))
    outer.load_state_dict({"0." + k: v for k, v in old.items()})
    assert torch.equal(outer[0].proj.weight, m.proj.weight)
