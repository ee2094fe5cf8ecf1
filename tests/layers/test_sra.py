"""The mechanism contract (issue 11) for "sra" (PVT's spatial-reduction attention, arXiv 2102.12122).

* ``impl="sdpa"`` (and auto) equals ``impl="reference"``, the explicit softmax(q k^T / sqrt(d)) v,
  in float64 over random shapes (H or W = 1, non-square, not divisible by R), grad on and off,
  input and parameter gradients, train and eval (max error <= 1e-10);
* bfloat16 / float32 against the float64 reference;
* auto always picks "sdpa"; meta build + ``to_empty`` + ``reset_parameters`` equals a normal build;
  ``dtype=``.

The PVT identities (padding, R = 1 is global attention) are in tests/models/test_hierarchical.py.
"""

from __future__ import annotations

import pytest
import torch
from _contract_checks import (
    assert_factory_dtype,
    assert_impls_match_reference,
    assert_low_precision_matches_reference,
    assert_meta_build_equals_normal_build,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import visattn
from visattn.layers.sra import SpatialReductionAttention


def test_impls_are_registry_data():
    info = visattn.attention_info("sra")
    assert info.impls == ("reference", "sdpa") and info.window_centred is None
    assert SpatialReductionAttention.impls == ("reference", "sdpa")


@settings(max_examples=15, deadline=None)
@given(
    batch=st.integers(1, 2),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    heads=st.sampled_from([1, 2, 4]),
    sr_ratio=st.integers(1, 3),
    train=st.booleans(),
    grad=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_every_impl_equals_reference(batch, h, w, heads, sr_ratio, train, grad, seed):
    torch.manual_seed(seed)
    m = SpatialReductionAttention(8, 6, num_heads=heads, sr_ratio=sr_ratio, dtype=torch.float64)
    x = torch.randn(batch, 8, h, w, dtype=torch.float64)
    assert_impls_match_reference(m, x, train=train, grad=grad)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_every_impl_in_low_precision_against_float64_reference(dtype, tol, impl):
    torch.manual_seed(0)
    m64 = SpatialReductionAttention(8, num_heads=2, sr_ratio=2, dtype=torch.float64)
    m = SpatialReductionAttention(8, num_heads=2, sr_ratio=2, impl=impl, dtype=dtype)
    assert_low_precision_matches_reference(m64, m, torch.randn(2, 8, 5, 7, dtype=torch.float64), tol)


def test_auto_rule_is_always_sdpa():
    m = SpatialReductionAttention(8, num_heads=2, sr_ratio=2)
    x = torch.randn(1, 8, 4, 4)
    assert m.select_impl(x) == "sdpa"
    with torch.no_grad():
        assert m.select_impl(x) == "sdpa"
    m.impl = "reference"
    assert m.select_impl(x) == "reference"


@pytest.mark.parametrize("sr_ratio", [1, 2])
def test_meta_build_to_empty_reset_equals_normal_build(sr_ratio):
    assert_meta_build_equals_normal_build(
        lambda **fk: SpatialReductionAttention(8, 6, num_heads=2, sr_ratio=sr_ratio, **fk), torch.randn(1, 8, 5, 3)
    )


@pytest.mark.parametrize("sr_ratio", [1, 2])
def test_factory_dtype(sr_ratio):
    assert_factory_dtype(
        lambda **fk: SpatialReductionAttention(8, num_heads=2, sr_ratio=sr_ratio, **fk), torch.randn(1, 8, 4, 4)
    )


def test_reference_reports_its_attention_weights():
    m = SpatialReductionAttention(8, num_heads=2, sr_ratio=2)
    assert m.peak_intermediate_bytes(6, 5) == 0  # SDPA: fused
    m.impl = "reference"
    assert m.peak_intermediate_bytes(6, 5) == 2 * 30 * 9 * 4  # (1, h, n, m) float32, m = 3 * 3
    with visattn.work_limit(max_bytes=1000):
        with pytest.raises(ValueError, match=r"needs an estimated 2.1 KiB for one intermediate"):
            m(torch.randn(1, 8, 6, 5))
