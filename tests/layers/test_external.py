"""Identities of "external" (Guo et al., arXiv 2105.02358), SPEC.md section 2.

* the attention map (``attention_map``, (B, heads, S, n)) sums to 1 over the S memory
  units at every position, within 1e-6, with double normalisation (default) and with
  ``normalization="softmax"``;
* a per-unit bias on M_k (``memory_bias``) changes nothing under double normalisation (it cancels in the
  softmax over positions; float64, <= 1e-12), but does change the single-softmax form;
* permutation-equivariant over positions; examples in a batch are independent in eval;
* single head equals a plain implementation of the paper's equations on tokens
  (B, n, C): Linear M_k, softmax over n, L1 over S, Linear M_v (float64, <= 1e-10);
* multi-head equals a per-head loop in which every head uses the same memory_key and
  memory_value (float64, <= 1e-10).
"""

from __future__ import annotations

import pytest
import torch
from _contract_checks import (
    assert_factory_dtype,
    assert_impls_match_reference,
    assert_low_precision_matches_reference,
    assert_meta_build_equals_normal_build,
    assert_old_state_dict_loads,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import visattn
from visattn.layers.external import ExternalAttention

TOL64 = 1e-10


def reference_paper_tokens(mk: torch.Tensor, mv: torch.Tensor, tokens: torch.Tensor, eps: float) -> torch.Tensor:
    """Paper's equations on tokens F (B, n, d): A = DoubleNorm(F M_k^T), out = A M_v.

    mk, mv: (S, d) memories, used as the weights of Linear(d, S) and Linear(S, d).
    """
    logits = tokens @ mk.T  # (B, n, S)
    a = torch.softmax(logits, dim=1)  # over the n positions
    a = a / (eps + a.sum(dim=2, keepdim=True))  # L1 over S
    return a @ mv  # (B, n, d)


def reference_multi_head(m, x: torch.Tensor) -> torch.Tensor:
    """Loop over heads, each with the module's single shared (memory_key, memory_value)."""
    b, _, h, w = x.shape
    f = torch.einsum("oc,bchw->bohw", m.in_proj.weight[:, :, 0, 0], x) + m.in_proj.bias[:, None, None]
    f = f.flatten(2).transpose(1, 2)  # (B, n, C * expansion)
    d = m.head_dim
    heads = [
        reference_paper_tokens(m.memory_key, m.memory_value, f[..., i * d : (i + 1) * d], m.eps)
        for i in range(m.num_heads)
    ]
    o = torch.cat(heads, -1).transpose(1, 2).reshape(b, -1, h, w)
    return torch.einsum("oc,bchw->bohw", m.proj.weight[:, :, 0, 0], o) + m.proj.bias[:, None, None]


@pytest.mark.parametrize("normalization", ["double", "softmax"])
@pytest.mark.parametrize("kw", [{}, {"num_heads": 4, "expansion": 2}])
@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (9, 7)])
def test_attention_map_sums_to_one_over_memory_units(normalization, kw, hw):
    # Unit-scale input: with the authors' eps (1e-9) in the L1 step, a position that every
    # memory unit ignores (sum over S of the softmax-over-n weights ~1e-5, reachable with
    # logits ~10x larger) has a row sum of r / (eps + r) < 1, as in the authors' code.
    m = visattn.create_attention("external", 8, memory_size=16, normalization=normalization, **kw)
    x = torch.randn(2, 8, *hw)
    a = m.attention_map(x)
    assert a.shape == (2, m.num_heads, 16, hw[0] * hw[1])
    assert (a >= 0).all()
    torch.testing.assert_close(a.sum(dim=2), torch.ones(2, m.num_heads, hw[0] * hw[1]), atol=1e-6, rtol=0)


def test_memory_bias_cancels_under_double_normalization():
    m = visattn.create_attention("external", 8, memory_size=16, memory_bias=True).double()
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        m.memory_bias.normal_(0, 3)
    y_bias = m(x)
    with torch.no_grad():
        m.memory_bias.zero_()
    torch.testing.assert_close(y_bias, m(x), atol=1e-12, rtol=0)


def test_memory_bias_does_not_cancel_in_softmax_over_units():
    # The cancellation above is a property of the softmax over positions, not of the test.
    m = visattn.create_attention("external", 8, memory_size=16, memory_bias=True, normalization="softmax").double()
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        m.memory_bias.normal_(0, 3)
    y_bias = m(x)
    with torch.no_grad():
        m.memory_bias.zero_()
    assert (y_bias - m(x)).abs().max() > 1e-3


@pytest.mark.parametrize("kw", [{}, {"num_heads": 2, "expansion": 4}])
def test_permutation_equivariance_over_positions(kw):
    m = visattn.create_attention("external", 8, memory_size=16, **kw).double()
    b, c, h, w = 2, 8, 5, 6
    x = torch.randn(b, c, h, w, dtype=torch.float64)
    perm = torch.randperm(h * w)
    y = m(x).flatten(2)
    y_perm = m(x.flatten(2)[:, :, perm].reshape(b, c, h, w)).flatten(2)
    torch.testing.assert_close(y_perm, y[:, :, perm], atol=TOL64, rtol=0)
    assert (y[:, :, perm] - y).abs().max() > 1e-4


@pytest.mark.parametrize("kw", [{}, {"num_heads": 2, "expansion": 2}])
def test_batch_examples_independent_in_eval(kw):
    m = visattn.create_attention("external", 8, memory_size=16, **kw).double().eval()
    x = torch.randn(4, 8, 3, 6, dtype=torch.float64)
    y = m(x)
    for i in range(4):
        torch.testing.assert_close(m(x[i : i + 1]), y[i : i + 1], atol=TOL64, rtol=0)
    # Changing one example leaves the others untouched.
    x2 = x.clone()
    x2[0] = torch.randn(8, 3, 6, dtype=torch.float64)
    torch.testing.assert_close(m(x2)[1:], y[1:], atol=TOL64, rtol=0)


@pytest.mark.parametrize("hw", [(1, 1), (4, 7)])
def test_single_head_equals_paper_equations(hw):
    m = visattn.create_attention("external", 8, memory_size=16).double()
    x = torch.randn(2, 8, *hw, dtype=torch.float64)
    tokens = x.flatten(2).transpose(1, 2)  # (B, n, C)
    ref = reference_paper_tokens(m.memory_key, m.memory_value, tokens, m.eps)
    torch.testing.assert_close(m(x).flatten(2).transpose(1, 2), ref, atol=TOL64, rtol=0)
    assert m.in_proj is None and m.proj is None  # the basic form has no projections


@pytest.mark.parametrize("num_heads,expansion", [(2, 1), (4, 2), (16, 4)])
def test_multi_head_shares_memories(num_heads, expansion):
    m = visattn.create_attention("external", 8, 6, memory_size=16, num_heads=num_heads, expansion=expansion).double()
    assert m.memory_key.shape == (16, 8 * expansion // num_heads)
    x = torch.randn(2, 8, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(m(x), reference_multi_head(m, x), atol=TOL64, rtol=0)


def test_softmax_normalization_is_softmax_over_units():
    m = visattn.create_attention("external", 8, memory_size=16, normalization="softmax").double()
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    logits = m.memory_key @ x.flatten(2)[:, None]  # (B, 1, S, n)
    torch.testing.assert_close(m.attention_map(x), torch.softmax(logits, dim=2), atol=1e-12, rtol=0)


def test_matches_fightingcv_external_attention_when_installed():
    # Optional cross-check against the most used public implementation (the `peers` extra).
    ea_mod = pytest.importorskip("fightingcv_attention.attention.ExternalAttention")
    peer = ea_mod.ExternalAttention(d_model=8, S=16).double()
    m = visattn.create_attention("external", 8, memory_size=16).double()
    with torch.no_grad():
        peer.mk.weight.copy_(m.memory_key)  # Linear(d, S).weight: (S, d)
        peer.mv.weight.copy_(m.memory_value.T)  # Linear(S, d).weight: (d, S)
    x = torch.randn(2, 8, 5, 4, dtype=torch.float64)
    tokens = x.flatten(2).transpose(1, 2)
    torch.testing.assert_close(m(x).flatten(2).transpose(1, 2), peer(tokens), atol=1e-9, rtol=0)


def test_attention_map_validates_its_input():
    m = visattn.create_attention("external", 8, memory_size=16)
    with pytest.raises(ValueError, match=r"expects a 4-D feature map .*got a 3-D tensor of shape \(2, 20, 8\)"):
        m.attention_map(torch.randn(2, 20, 8))


# --- tie_memories: one registered parameter, so the tie survives every move -------------------


def _tied_count(m):
    return len(list(m.parameters())), m.memory_value is m.memory_key


def test_tied_memories_survive_meta_to_empty_and_conversion():
    from visattn.models.heads import ExternalAttentionHead

    h = ExternalAttentionHead(8, memory_size=4, tie_memories=True)
    assert _tied_count(h) == (6, True)
    assert _tied_count(h.to("meta")) == (6, True)
    with torch.device("meta"):
        m = ExternalAttentionHead(8, memory_size=4, tie_memories=True)
    m = m.to_empty(device="cpu")
    assert _tied_count(m) == (6, True)
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        d = ExternalAttentionHead(8, memory_size=4, tie_memories=True).double()
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(False)
    assert _tied_count(d) == (6, True) and d.memory_key.dtype == torch.float64


def test_eamlp_tied_stem_keeps_its_parameter_count_on_meta():
    m = visattn.create_model("eamlp_7", tie_t2t_memories=True)
    n = sum(p.numel() for p in m.parameters())
    moved = m.to("meta")
    assert sum(p.numel() for p in moved.parameters()) == n == 6_078_542
    assert moved.stem.block1.ea.memory_value is moved.stem.block1.ea.memory_key


def test_tied_layer_loads_old_two_key_checkpoints_and_refuses_different_memories():
    a = ExternalAttention(8, memory_size=4, tie_memories=True)
    sd = {"memory_key": torch.randn(4, 8)}
    sd["memory_value"] = sd["memory_key"].clone()
    assert a.load_state_dict(sd) is not None and torch.equal(a.memory_value, sd["memory_key"])
    sd["memory_value"] = torch.randn(4, 8)
    with pytest.raises(RuntimeError, match="ties M_v to M_k .*tie_memories=False"):
        a.load_state_dict(sd)
    # An untied layer reading a tied checkpoint (M_k only) starts with M_v = M_k.
    b = ExternalAttention(8, memory_size=4)
    b.load_state_dict({"memory_key": sd["memory_key"]})
    assert torch.equal(b.memory_value, sd["memory_key"]) and b.memory_value is not b.memory_key
    with pytest.raises(TypeError, match="tie_memories must be a bool, got str 'yes'"):
        ExternalAttention(8, tie_memories="yes")


def test_tied_weights_file_from_before_the_structural_tie_loads_strict(tmp_path):
    # A tied layer's file from before the tie was structural (save_weights stored M_k once and
    # named M_v an alias of it): strict visattn.load_weights accepts it, as load_state_dict does.
    import json

    from safetensors.torch import save_file

    from visattn.layers.external import ExternalAttention

    tied = ExternalAttention(8, memory_size=16, tie_memories=True)
    old = tmp_path / "old.safetensors"
    save_file(
        {k: v.contiguous() for k, v in tied.state_dict().items()},
        str(old),
        metadata={"format": "pt", "visattn.aliases": json.dumps({"memory_value": "memory_key"})},
    )
    fresh = ExternalAttention(8, memory_size=16, tie_memories=True)
    assert visattn.load_weights(fresh, old) == ([], [])
    assert torch.equal(fresh.memory_key, tied.memory_key)


# -- the mechanism contract (issue 11): implementations, auto rule, factory args, renames ----------


CONFIGS = [
    {},
    {"dim_out": 6},
    {"num_heads": 2, "expansion": 2, "memory_bias": True},
    {"num_heads": 4, "expansion": 2, "normalization": "softmax", "memory_bias": True},
    {"num_heads": 2, "tie_memories": True, "dim_out": 4},
]


def _randomise(m):
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)


def test_impls_are_registry_data():
    assert visattn.attention_info("external").impls == ("reference", "bmm")
    assert ExternalAttention.impls == ("reference", "bmm")
    assert visattn.attention_info("external").window_centred is None


@settings(max_examples=15, deadline=None)
@given(
    batch=st.integers(1, 2),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    config=st.sampled_from(CONFIGS),
    train=st.booleans(),
    grad=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_every_impl_equals_reference(batch, h, w, config, train, grad, seed):
    torch.manual_seed(seed)
    kw = dict(config)
    m = ExternalAttention(8, kw.pop("dim_out", None), memory_size=5, dtype=torch.float64, **kw)
    _randomise(m)
    x = torch.randn(batch, 8, h, w, dtype=torch.float64)
    assert_impls_match_reference(m, x, train=train, grad=grad)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("impl", ["reference", "bmm"])
def test_every_impl_in_low_precision_against_float64_reference(dtype, tol, impl):
    torch.manual_seed(0)
    m64 = ExternalAttention(8, memory_size=16, num_heads=2, expansion=2, dtype=torch.float64)
    m = ExternalAttention(8, memory_size=16, num_heads=2, expansion=2, impl=impl, dtype=dtype)
    assert_low_precision_matches_reference(m64, m, torch.randn(2, 8, 5, 7, dtype=torch.float64), tol)


def test_auto_rule_is_always_bmm():
    m = ExternalAttention(8, memory_size=4)
    x = torch.randn(1, 8, 3, 3)
    assert m.select_impl(x) == "bmm"
    assert m.select_impl(x.requires_grad_()) == "bmm"
    with torch.no_grad():
        assert m.select_impl(x) == "bmm"
    m.impl = "reference"
    assert m.select_impl(x) == "reference"


def test_bmm_in_place_normalisation_is_bit_identical_to_out_of_place():
    # the only thing grad mode changes inside "bmm" is whether the L1 step runs in place
    m = ExternalAttention(8, memory_size=16, num_heads=2, expansion=2)
    x = torch.randn(2, 8, 6, 5)
    with torch.no_grad():
        y_inplace = m(x)
    assert torch.equal(m(x), y_inplace)


@pytest.mark.parametrize("config", CONFIGS)
def test_meta_build_to_empty_reset_equals_normal_build(config):
    kw = dict(config)
    dim_out = kw.pop("dim_out", None)
    assert_meta_build_equals_normal_build(
        lambda **fk: ExternalAttention(8, dim_out, memory_size=5, **kw, **fk), torch.randn(1, 8, 4, 3)
    )


def test_reset_parameters_resets_everything_it_owns():
    m = ExternalAttention(8, 6, memory_size=5, num_heads=2, memory_bias=True)
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(7.0)
    m.reset_parameters()
    assert all((p != 7.0).all() for n, p in m.named_parameters() if n != "memory_bias"), "a parameter kept 7"
    assert torch.equal(m.memory_bias, torch.zeros(5))


@pytest.mark.parametrize("config", CONFIGS)
def test_factory_dtype(config):
    kw = dict(config)
    dim_out = kw.pop("dim_out", None)
    assert_factory_dtype(lambda **fk: ExternalAttention(8, dim_out, memory_size=5, **kw, **fk), torch.randn(1, 8, 3, 2))


def test_old_state_dict_with_key_bias_and_out_proj_loads_exactly():
    m = ExternalAttention(8, 6, memory_size=5, num_heads=2, memory_bias=True)
    _randomise(m)
    fresh = ExternalAttention(8, 6, memory_size=5, num_heads=2, memory_bias=True)
    assert_old_state_dict_loads(m, {"key_bias": "memory_bias", "out_proj": "proj"}, fresh)
    x = torch.randn(1, 8, 3, 4)
    assert torch.equal(fresh(x), m(x))


def test_old_state_dict_nested_in_a_model_loads():
    net = torch.nn.Sequential(torch.nn.Identity(), ExternalAttention(8, memory_size=5, num_heads=2))
    old = {k.replace("1.proj.", "1.out_proj."): v for k, v in net.state_dict().items()}
    assert "1.out_proj.weight" in old
    fresh = torch.nn.Sequential(torch.nn.Identity(), ExternalAttention(8, memory_size=5, num_heads=2))
    fresh.load_state_dict(old)
    assert torch.equal(fresh[1].proj.weight, net[1].proj.weight)


def test_renamed_argument():
    assert ExternalAttention.renamed_args == {"key_bias": "memory_bias"}
    with pytest.raises(
        TypeError, match=r"argument 'key_bias' was renamed to 'memory_bias'; pass memory_bias=\.\.\. instead"
    ):
        visattn.create_attention("external", 8, key_bias=True)
