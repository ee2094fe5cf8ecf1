"""Hierarchical transformers: published sizes and costs, other input sizes, the mechanisms they use.

Published (224 x 224, 1000 classes; SPEC.md section 4, Swin and PVT papers):
Slide-Swin-T 29M / 4.6G, Swin-T 28.3M / 4.5G, Slide-PVT-T 12.2M / 2.0G, PVT-T 13.2M / 1.9G
(multiply-adds). Parameters within 3%, multiply-adds within 10% (torch.utils.flop_counter).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import visattn
from visattn.flops import count_macs
from visattn.layers.mhsa import MultiHeadSelfAttention
from visattn.layers.slide import SlideAttention
from visattn.layers.sra import SpatialReductionAttention
from visattn.layers.swin import WindowAttention
from visattn.models.hierarchical import CONFIGS, HierarchicalConfig, HierarchicalTransformer
from visattn.registry import model_entry

NAMES = ["slide_swin_t", "swin_t", "slide_pvt_t", "pvt_t"]


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("name", NAMES)
def test_published_params_and_macs(name):
    pub = model_entry(name).published
    torch.manual_seed(0)
    model = visattn.create_model(name).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params - pub["params_m"]) / pub["params_m"] <= 0.03, params
    with torch.no_grad():
        macs = count_macs(model, torch.randn(1, 3, 224, 224)) / 1e9
    assert abs(macs - pub["macs_g"]) / pub["macs_g"] <= 0.10, macs


def test_exact_counts_of_the_baselines():
    # Swin-T and PVT-T are reproduced to the parameter (timm: 28,288,354 and 13,228,... with cls token)
    swin = visattn.create_model("swin_t")
    assert sum(p.numel() for p in swin.parameters()) == 28_288_354
    pvt = visattn.create_model("pvt_t")
    assert abs(sum(p.numel() for p in pvt.parameters()) - 13_228_000) < 1_000  # PVT's table: 13.2M


def test_stage_layouts():
    m = visattn.create_model("slide_swin_t")
    kinds = [[type(b.mixer) for b in st.blocks] for st in m.stages]
    assert kinds == [[SlideAttention] * 2, [SlideAttention] * 2, [WindowAttention] * 6, [WindowAttention] * 2]
    assert [st.blocks[0].mixer.num_heads for st in m.stages] == [3, 6, 12, 24]
    assert [st.blocks[0].mixer.window_size for st in m.stages[2:]] == [14, 7]
    assert all(b.mixer.kernel_size == 3 and b.mixer.deformed for st in m.stages[:2] for b in st.blocks)
    p = visattn.create_model("slide_pvt_t")
    assert [type(st.blocks[0].mixer) for st in p.stages] == [
        SlideAttention,
        SlideAttention,
        SpatialReductionAttention,
        SpatialReductionAttention,
    ]
    assert [st.blocks[0].mixer.sr_ratio for st in p.stages[2:]] == [2, 1]
    s = visattn.create_model("swin_t")
    assert [b.mixer.shift_size for b in s.stages[0].blocks] == [0, 3]


@pytest.mark.parametrize("name", NAMES)
def test_other_input_sizes(name):
    model = visattn.create_model(name, num_classes=5, **model_entry(name).test_kwargs).eval()
    with torch.no_grad():
        for hw in [(32, 32), (45, 70), (17, 9)]:
            f = model.forward_features(torch.randn(1, 3, *hw))
            assert f.shape == (1, model.num_features, -(-hw[0] // 32), -(-hw[1] // 32))
            assert torch.isfinite(model(torch.randn(2, 3, *hw))).all()


def test_swapping_the_mechanism_of_every_stage():
    m = visattn.create_model(
        "slide_swin_t", attention="local", attn_kwargs={"num_heads": 2}, **model_entry("slide_swin_t").test_kwargs
    )
    assert all(type(b.mixer).registry_name == "local" and b.mixer.num_heads == 2 for st in m.stages for b in st.blocks)
    # the model's own mechanism keeps its per-stage arguments, attn_kwargs override
    m = visattn.create_model("slide_swin_t", attention="slide", attn_kwargs={"kernel_size": 5})
    assert [st.blocks[0].mixer.kernel_size for st in m.stages[:2]] == [5, 5]
    assert [st.blocks[0].mixer.num_heads for st in m.stages[:2]] == [3, 6]


def test_config_validation_messages():
    with pytest.raises(ValueError, match=r"depths must have one entry per stage \(4\)"):
        HierarchicalConfig(embed_dims=(8, 16, 32, 64), depths=(1, 1), num_heads=(1, 1, 1, 1), mixers=("mhsa",) * 4)
    with pytest.raises(ValueError, match=r"stem must be one of \('swin', 'pvt'\), got 'vit'"):
        CONFIGS["swin_t"].replace(stem="vit")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['depth'\]"):
        visattn.create_model("swin_t", depth=(1, 1, 1, 1))


def test_reparameterize_model_exact():
    torch.manual_seed(0)
    model = visattn.create_model("slide_swin_t", num_classes=10, **model_entry("slide_swin_t").test_kwargs).eval()
    x = torch.randn(2, 3, 40, 48)
    with torch.no_grad():
        before = model(x)
        visattn.reparameterize(model)
        after = model(x)
    slides = [m for m in model.modules() if isinstance(m, SlideAttention)]
    assert slides and all(m.reparameterized for m in slides)
    assert _rel(after, before) < 1e-5


def test_custom_config_any_mechanisms():
    cfg = HierarchicalConfig(
        embed_dims=(8, 16, 24),
        depths=(1, 1, 1),
        num_heads=(2, 2, 2),
        mixers=("conv", "slide", "mhsa"),
        mixer_kwargs=({}, {"deformed": False}, {}),
        mlp_ratios=(2, 2, 2),
        stem="pvt",
        pos_embed=(False, False, True),
        pos_embed_size=32,
    )
    # "conv" takes no num_heads: the layout's head count goes only to mechanisms that take one
    m = HierarchicalTransformer(cfg, num_classes=3)
    assert [type(st.blocks[0].mixer).registry_name for st in m.stages] == ["conv", "slide", "mhsa"]
    assert [st.blocks[0].mixer.num_heads for st in m.stages[1:]] == [2, 2]
    assert m(torch.randn(2, 3, 24, 20)).shape == (2, 3)
    cfg = cfg.replace(mixers=("efficient", "slide", "mhsa"))
    m = HierarchicalTransformer(cfg, num_classes=3)
    assert m(torch.randn(2, 3, 24, 20)).shape == (2, 3)
    # arguments a mechanism does not take are still a TypeError
    with pytest.raises(TypeError):
        HierarchicalTransformer(cfg.replace(mixer_kwargs=({"kernel_size": 3}, {}, {})), num_classes=3)


# ---------------------------------------------------------------------------
# The mechanisms the models add: window attention (Swin) and SRA (PVT).
# ---------------------------------------------------------------------------


def _dense_swin_reference(m: WindowAttention, x: torch.Tensor) -> torch.Tensor:
    """Dense attention over all positions with Swin's allowed-pairs rule written out per pair."""
    b, c, h, w = x.shape
    nh, d, ms, s = m.num_heads, m.head_dim, m.window_size, m.shift_size
    wh, ww = min(ms, h), min(ms, w)
    sh, sw = (s if h > ms else 0), (s if w > ms else 0)
    hp, wp = -(-h // wh) * wh, -(-w // ww) * ww
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    ry, rx = (ys - sh) % hp, (xs - sw) % wp  # position in the rolled frame
    win = (ry // wh) * (wp // ww) + rx // ww

    def band(r, size, win_, sft):
        return (r >= size - win_).long() + (r >= size - sft).long() if sft else torch.zeros_like(r)

    region = band(ry, hp, wh, sh) * 3 + band(rx, wp, ww, sw)
    allowed = (win[:, None] == win[None, :]) & (region[:, None] == region[None, :])
    dy, dx = ys[:, None] - ys[None, :], xs[:, None] - xs[None, :]
    dy, dx = dy.clamp(1 - ms, ms - 1), dx.clamp(1 - ms, ms - 1)  # pairs beyond a window are masked anyway
    bias = m.relative_position_bias_table[((dy + ms - 1) * (2 * ms - 1) + dx + ms - 1).flatten()]
    bias = bias.view(h * w, h * w, nh).permute(2, 0, 1)
    t = x.flatten(2).transpose(1, 2)
    qkv = m.qkv(t).view(b, h * w, 3, nh, d).permute(2, 0, 3, 1, 4)
    logits = (qkv[0] * m.scale) @ qkv[1].transpose(-1, -2) + torch.where(allowed, bias, float("-inf"))
    o = (logits.softmax(-1) @ qkv[2]).transpose(1, 2).reshape(b, h * w, c)
    return m.proj(o).transpose(1, 2).reshape(b, -1, h, w)


@pytest.mark.parametrize("shift", [0, 1, 2])
@pytest.mark.parametrize("hw", [(6, 6), (7, 5), (2, 9), (3, 3)])
def test_swin_window_attention_equals_dense_reference(shift, hw):
    torch.manual_seed(0)
    m = WindowAttention(8, num_heads=2, window_size=3, shift_size=shift).double()
    with torch.no_grad():
        m.relative_position_bias_table.normal_()
    x = torch.randn(2, 8, *hw, dtype=torch.float64)
    assert (m(x) - _dense_swin_reference(m, x)).abs().max().item() < 1e-12


def test_swin_window_covering_the_map_is_global_attention():
    # Slide-Swin's stages 3-4: window = whole map; with a zero bias table this is "mhsa".
    swin = WindowAttention(16, num_heads=4, window_size=7).double().eval()
    mhsa = MultiHeadSelfAttention(16, num_heads=4).double().eval()
    mhsa.load_state_dict({k: v for k, v in swin.state_dict().items() if k.startswith(("qkv", "proj"))})
    with torch.no_grad():
        swin.relative_position_bias_table.zero_()
    x = torch.randn(2, 16, 7, 6, dtype=torch.float64)
    assert _rel(swin(x), mhsa(x)) < 1e-12


def test_sra_reference():
    torch.manual_seed(0)
    m = SpatialReductionAttention(8, num_heads=2, sr_ratio=2).double()
    x = torch.randn(2, 8, 6, 5, dtype=torch.float64)
    b, c, h, w = x.shape
    ctx = m.sr(F.pad(x, (0, 1, 0, 0)))  # (B, C, 3, 3)
    ctx = m.norm(ctx.flatten(2).transpose(1, 2))
    t = x.flatten(2).transpose(1, 2)
    q = m.q(t).view(b, -1, 2, 4).transpose(1, 2)
    k, v = m.kv(ctx).view(b, -1, 2, 2, 4).permute(2, 0, 3, 1, 4)
    o = ((q @ k.transpose(-1, -2)) / 2.0).softmax(-1) @ v
    ref = m.proj(o.transpose(1, 2).reshape(b, h * w, c)).transpose(1, 2).reshape(b, c, h, w)
    assert (m(x) - ref).abs().max().item() < 1e-12
    # R = 1 is plain global attention
    m1 = SpatialReductionAttention(8, num_heads=2, sr_ratio=1).double()
    mhsa = MultiHeadSelfAttention(8, num_heads=2).double()
    with torch.no_grad():
        mhsa.qkv.weight.copy_(torch.cat([m1.q.weight, m1.kv.weight]))
        mhsa.qkv.bias.copy_(torch.cat([m1.q.bias, m1.kv.bias]))
        mhsa.proj.load_state_dict(m1.proj.state_dict())
    assert _rel(m1(x), mhsa(x)) < 1e-12
