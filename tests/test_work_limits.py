"""Work bounds: quadratic blow-ups are refused early with the estimate, and a keyword lifts them."""

from __future__ import annotations

import re

import pytest
import torch

import visattn
from visattn.layers.base import DEFAULT_MAX_FLOPS, check_work


@pytest.mark.parametrize("name,kwargs", [("mhsa", {"num_heads": 2}), ("sra", {"num_heads": 2, "sr_ratio": 2})])
def test_quadratic_mechanisms_refuse_a_1024_map_before_computing(name, kwargs):
    attn = visattn.create_attention(name, 32, **kwargs)
    # An expanded (stride-0) tensor: the full 1024x1024 map costs no memory here.
    x = torch.zeros(1, 32, 1, 1).expand(1, 32, 1024, 1024)
    flops = attn.analytic_flops(1024, 1024, 1)
    assert flops > DEFAULT_MAX_FLOPS
    with pytest.raises(
        ValueError,
        match=r"a \(1, 32, 1024, 1024\) input needs an estimated "
        + re.escape(f"{flops:.3g}")
        + r" FLOPs on the CPU, above the bound of 2e\+13.*visattn.work_limit",
    ):
        attn(x)


def test_work_limit_lifts_and_restores_the_bound():
    attn = visattn.create_attention("mhsa", 8, num_heads=2)
    x = torch.randn(1, 8, 12, 12)
    flops = attn.analytic_flops(12, 12, 1)
    with visattn.work_limit(max_flops=flops - 1):
        with pytest.raises(ValueError, match="FLOPs on the CPU"):
            attn(x)
        with visattn.work_limit(max_flops=None):
            assert attn(x).shape == (1, 8, 12, 12)
        with pytest.raises(ValueError, match="FLOPs on the CPU"):
            attn(x)
    assert attn(x).shape == (1, 8, 12, 12)


def test_check_work_messages_and_bad_bounds():
    with pytest.raises(
        ValueError,
        match=r"owner: a thing needs an estimated 2.0 GiB for one intermediate, "
        r"above the bound of 1.0 GiB",
    ):
        with visattn.work_limit(max_bytes=2**30):
            check_work("owner", "a thing", nbytes=2 * 2**30)
    with pytest.raises(ValueError, match=r"owner: k=99 builds 3.84e\+08 parameters, above the bound of 1e\+08"):
        check_work("owner", "k=99", params=3.84e8)
    # FLOPs are bounded on the CPU only.
    check_work("owner", "gpu work", flops=10 * DEFAULT_MAX_FLOPS, device="meta")
    with pytest.raises(ValueError, match="work_limit: max_bytes must be a positive number or None, got -1"):
        with visattn.work_limit(max_bytes=-1):
            pass


def test_models_reject_negative_class_counts():
    with pytest.raises(
        ValueError,
        match=r"num_classes must be >= 0 \(0: a feature extractor with no classifier\) "
        r"or None \(the model's own default\), got -1",
    ):
        visattn.create_model("resnet_tiny", num_classes=-1)
    with pytest.raises(TypeError, match="num_classes must be an int >= 0 .* got float 3.5"):
        visattn.create_model("resnet_tiny", num_classes=3.5)


def test_work_limit_infinite_and_nan_bounds():
    # inf lifts a bound like None (it raised OverflowError); NaN is refused with the message
    attn = visattn.create_attention("mhsa", 8, num_heads=2)
    x = torch.randn(1, 8, 12, 12)
    with visattn.work_limit(max_flops=1):
        with visattn.work_limit(max_flops=float("inf"), max_bytes=float("inf")):
            assert attn(x).shape == (1, 8, 12, 12)
    with pytest.raises(ValueError, match="work_limit: max_params must be a positive number or None, got nan"):
        with visattn.work_limit(max_params=float("nan")):
            pass
