"""The mechanism contract (issue 11) for "swin" (window attention, Liu et al., arXiv 2103.14030).

The identities (dense masked reference, a window covering the map is global attention) are in
tests/models/test_hierarchical.py. Here: one implementation that auto runs, the windows are
not centred on the query (registry data ``window_centred=False``, checked by gradients), a
meta-device build + ``to_empty`` + ``reset_parameters`` equals a normal build, ``dtype=``.
"""

from __future__ import annotations

import pytest
import torch
from _contract_checks import (
    assert_factory_dtype,
    assert_meta_build_equals_normal_build,
    gradient_support,
    is_centred,
)

import visattn
from visattn.layers.swin import WindowAttention


def test_one_implementation_and_auto_runs_it():
    info = visattn.attention_info("swin")
    assert info.impls == ("reference",) and info.window_centred is False
    m = WindowAttention(8, num_heads=2, window_size=3)
    assert m.select_impl(torch.randn(1, 8, 4, 4)) == "reference"


@pytest.mark.parametrize("shift", [0, 1])
def test_meta_build_to_empty_reset_equals_normal_build(shift):
    assert_meta_build_equals_normal_build(
        lambda **fk: WindowAttention(8, 6, num_heads=2, window_size=3, shift_size=shift, **fk),
        torch.randn(1, 8, 7, 5),
    )


def test_reset_parameters_reinitialises_the_table():
    m = WindowAttention(8, num_heads=2, window_size=7)
    with torch.no_grad():
        m.relative_position_bias_table.fill_(5.0)
    m.reset_parameters()
    t = m.relative_position_bias_table.detach()  # 169 x 2 draws of N(0, 0.02^2)
    assert t.abs().max().item() < 0.1 and 0.015 < t.std().item() < 0.025


def test_factory_dtype():
    assert_factory_dtype(lambda **fk: WindowAttention(8, num_heads=2, window_size=3, **fk), torch.randn(1, 8, 5, 4))


def test_windows_are_not_centred_on_the_query():
    # 9x9 map, 3x3 windows: pixel (3, 3) is the top-left corner of its window and sees rows and
    # columns 3..5 only; the window's centre pixel (4, 4) happens to be centred
    m = WindowAttention(8, num_heads=2, window_size=3).double()
    x = torch.randn(1, 8, 9, 9, dtype=torch.float64)
    s = gradient_support(m, x, 3, 3)
    expect = torch.zeros(9, 9, dtype=torch.bool)
    expect[3:6, 3:6] = True
    assert torch.equal(s, expect)
    assert not is_centred(s, 3, 3)
    assert is_centred(gradient_support(m, x, 4, 4), 4, 4)
