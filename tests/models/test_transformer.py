"""The generic token transformer and the SAN models of Cordonnier et al. (arXiv 1911.03584)."""

from __future__ import annotations

import pytest
import torch

import visattn
from visattn.layers.relpos import RelativePositionAttention
from visattn.models.transformer import TokenTransformer, TransformerConfig, build_transformer
from visattn.registry import model_entry

SAN = ["san_quadratic", "san_learned", "san_learned_content"]


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", SAN)
def test_parameter_counts_match_the_paper_within_3_percent(name):
    published = model_entry(name).published["params_m"] * 1e6  # 12.1M, 12.3M, 29.5M
    with torch.device("meta"):
        m = visattn.create_model(name, num_classes=10)
    assert abs(n_params(m) - published) / published < 0.03, (name, n_params(m))


def test_parameter_count_breakdown_is_the_authors_layout():
    # One block of san_quadratic: LN, relpos (centres 9x2, alpha 9, W_out 3600->400),
    # BERT's dense 400->400, LN, MLP 400->512->400.
    with torch.device("meta"):
        m = visattn.create_model("san_quadratic", num_classes=10)
    blk = m.blocks[0]
    assert n_params(blk.mixer) == 9 * 2 + 9 + 3600 * 400 + 400
    assert n_params(blk) == 800 + (9 * 3 + 3600 * 400 + 400) + 400 * 400 + 400 + 800 + (400 * 512 + 512) + (
        512 * 400 + 400
    )
    assert n_params(m) == 12 * 400 + 400 + 6 * n_params(blk) + 800 + 400 * 10 + 10
    with torch.device("meta"):
        lc = visattn.create_model("san_learned_content", num_classes=10)
    mix = lc.blocks[0].mixer
    assert mix.row_embed.shape == (31, 400) and mix.row_keys.shape == (9, 400)
    assert mix.qk.weight.shape == (2 * 9 * 400, 400)


@pytest.mark.parametrize("name", SAN)
def test_san_forward_backward_small(name):
    m = visattn.create_model(name, num_classes=10, depth=1).train()
    x = torch.randn(2, 3, 16, 16)
    y = m(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    y.logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in m.parameters())
    assert isinstance(m.blocks[0].mixer, RelativePositionAttention)
    assert m.forward_features(x).shape == (2, 400, 8, 8)


@pytest.mark.parametrize("mixer", ["mhsa", "external", "local", "conv", "relpos"])
def test_backbone_takes_any_mechanism(mixer):
    m = visattn.create_model(
        "san_quadratic",
        num_classes=5,
        attention=mixer,
        embed_dim=16,
        depth=2,
        mlp_dim=32,
        attn_kwargs={"num_heads": 2} if mixer in ("mhsa", "local", "relpos") else None,
    )
    assert all(type(b.mixer).registry_name == mixer for b in m.blocks)
    m.eval()
    x = torch.randn(3, 3, 12, 20)  # non-square, 6 x 10 tokens
    y = m(x)
    assert y.shape == (3, 5)
    # eval: examples are independent
    assert torch.allclose(m(x[1:2]), y[1:2], atol=1e-5)


def test_pre_and_post_norm_blocks_against_explicit_formula():
    torch.manual_seed(0)
    cfg = TransformerConfig(
        patch_size=2,
        embed_dim=8,
        depth=1,
        mlp_dim=16,
        mixer="mhsa",
        mixer_kwargs={"num_heads": 2},
        mixer_proj=True,
        drop_rate=0.0,
    )
    for norm_first in (True, False):
        m = TokenTransformer(TransformerConfig(**{**cfg.as_dict(), "norm_first": norm_first}), 3).eval().double()
        x = torch.randn(2, 3, 4, 6, dtype=torch.float64)
        blk = m.blocks[0]
        t = m.patch_embed(x).flatten(2).transpose(1, 2)

        def mix(u, blk=blk):
            g = u.transpose(1, 2).reshape(2, 8, 2, 3)
            return blk.mixer_proj(blk.mixer(g).flatten(2).transpose(1, 2))

        if norm_first:
            t = t + mix(blk.norm1(t))
            t = m.norm(t + blk.mlp(blk.norm2(t)))
        else:
            t = blk.norm1(t + mix(t))
            t = blk.norm2(t + blk.mlp(t))
        ref = m.head(t.mean(1))
        assert torch.allclose(m(x), ref, atol=1e-12)


def test_resolution_other_than_32_and_errors():
    m = visattn.create_model("san_quadratic", num_classes=10, depth=1).eval()
    assert m(torch.randn(1, 3, 8, 14)).shape == (1, 10)
    with pytest.raises(ValueError, match=r"divisible by 2, got \(9, 14\)"):
        m(torch.randn(1, 3, 9, 14))
    with pytest.raises(ValueError, match=r"expects images \(B, 3, H, W\), got \(1, 1, 8, 8\)"):
        m(torch.randn(1, 1, 8, 8))
    # the learned tables cover offsets -15..15: 16 x 16 tokens, i.e. 32 x 32 images
    ml = visattn.create_model("san_learned", num_classes=10, depth=1).eval()
    with pytest.raises(ValueError, match=r"max_offset=15"):
        ml(torch.randn(1, 3, 34, 32))
    with pytest.raises(
        TypeError, match=r"san_quadratic: unknown option\(s\) \['depht'\]; expected TransformerConfig fields"
    ):
        visattn.create_model("san_quadratic", depht=3)


def test_build_transformer_swaps_kwargs_like_resolve_mixer():
    cfg = TransformerConfig(
        embed_dim=8,
        depth=1,
        mlp_dim=8,
        mixer="relpos",
        mixer_kwargs={"num_heads": 2, "encoding": "learned", "max_offset": 3},
    )
    m = build_transformer(cfg, 4, attn_kwargs={"content": True})
    assert m.blocks[0].mixer.encoding == "learned" and m.blocks[0].mixer.content
    m = build_transformer(cfg, 4, attention="external", attn_kwargs={"memory_size": 4})
    assert m.blocks[0].mixer.memory_size == 4
