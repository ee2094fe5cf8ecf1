"""Mechanisms on unordered point sets: the registry's ``sets`` capability and ``create_set_attention``."""

import pytest
import torch

import visattn
from visattn.layers.sets import SetAttention, create_set_attention, set_capable

SETS = set_capable()


def _kwargs(name):
    info = visattn.attention_info(name)
    return {**info.test_kwargs, **info.set_kwargs}


def test_the_set_capable_mechanisms_are_the_content_only_ones():
    assert SETS == ["efficient", "external", "lambda", "mhsa", "sra"]
    grid = sorted(set(visattn.list_attention()) - set(SETS))
    assert grid == ["conv", "local", "relpos", "slide", "swin"]
    assert visattn.attention_info("sra").set_kwargs == {"sr_ratio": 1}
    assert visattn.attention_info("lambda").set_kwargs == {"local_scope": 1}


@pytest.mark.parametrize("name", SETS)
def test_set_attention_is_permutation_equivariant(name):
    torch.manual_seed(0)
    m = create_set_attention(name, 16, **_kwargs(name)).eval()
    assert isinstance(m, SetAttention) and m.dim == 16
    x = torch.randn(2, 16, 40)
    perm = torch.randperm(40)
    with torch.no_grad():
        y, y_perm = m(x), m(x[:, :, perm])
    assert y.shape == (2, 16, 40)
    torch.testing.assert_close(y_perm, y[:, :, perm], atol=1e-5, rtol=1e-5)


def test_the_set_form_is_the_mechanism_on_a_strip():
    torch.manual_seed(0)
    m = create_set_attention("external", 8, 12, memory_size=4)
    x = torch.randn(3, 8, 10)
    torch.testing.assert_close(m(x), m.mechanism(x[..., None])[..., 0])
    assert m(x).shape == (3, 12, 10)


@pytest.mark.parametrize("name", ["slide", "local", "conv", "swin", "relpos"])
def test_a_grid_only_mechanism_is_refused_naming_the_set_capable_ones(name):
    with pytest.raises(ValueError) as e:
        create_set_attention(name, 16)
    assert str(e.value) == (
        f"attention {name!r} needs a (B, C, H, W) grid (its mixing depends on where a position is) and cannot "
        "run on an unordered point set; set-capable mechanisms: efficient, external, lambda, mhsa, sra"
    )


def test_a_set_argument_of_another_value_is_refused():
    with pytest.raises(
        ValueError,
        match=r"attention 'sra' on a point set needs sr_ratio=1 \(AttentionInfo.set_kwargs\), got sr_ratio=2",
    ):
        create_set_attention("sra", 16, sr_ratio=2)
    with pytest.raises(ValueError, match=r"expects point features \(B, C=16, N\), got \(2, 16, 4, 4\)"):
        create_set_attention("mhsa", 16)(torch.randn(2, 16, 4, 4))
