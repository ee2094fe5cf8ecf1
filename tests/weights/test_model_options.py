"""The model options the published weights need, each usable on its own: ResNet's multi_grid,
stem_widths, act and mixer_downsample; the hierarchical family's norm_eps; the class-token mode of
EAMLP and of the hierarchical family's last stage."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import visattn
from visattn.models.resnet import ResNetConfig

PVT_TINY = dict(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), pos_embed_size=32)
EAMLP_TINY = dict(embed_dim=16, depth=2, num_heads=2, token_dim=8, memory_size=8, t2t_memory_size=8)


def test_multi_grid_dilations():
    m = visattn.create_model("eanet_r50", multi_grid=(1, 2, 4), num_classes=3)
    assert [b.conv2.dilation[0] for b in m.backbone.model.stages[3]] == [2, 8, 16]  # the EANet authors'
    assert [b.conv2.dilation[0] for b in visattn.create_model("eanet_r50").backbone.model.stages[3]] == [2, 4, 4]
    r = visattn.create_model("resnet26", multi_grid=[1, 3])  # undilated: 1 x grid
    assert [b.conv2.dilation[0] for b in r.stages[3]] == [1, 3] and r.cfg.multi_grid == (1, 3)
    with pytest.raises(
        ValueError, match=r"multi_grid needs one int >= 1 per block of the last stage \(3\), got \(1, 2\)"
    ):
        ResNetConfig(multi_grid=(1, 2))


def test_tiered_stem_silu_and_2x2_pool():
    m = visattn.create_model("lambda_resnet50ts")
    convs = [c for c in m.stem if isinstance(c, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [24, 32, 64] and [c.stride[0] for c in convs] == [2, 1, 1]
    assert not any(isinstance(a, nn.ReLU) for a in m.modules())
    assert sum(isinstance(a, nn.SiLU) for a in m.modules()) == 3 + sum(m.cfg.depths)
    strided = visattn.create_model("lambda_resnet26t").stages[3][0].conv2
    assert isinstance(strided[1], nn.AvgPool2d) and strided[1].kernel_size == 2 and strided[1].padding == 0
    # lambda only where timm puts it; 3x3 convolutions elsewhere
    assert [n for n, _ in visattn.create_model("lambda_resnet26t").named_mixers()] == [
        "stages.2.1.conv2",
        "stages.3.0.conv2.0",
        "stages.3.1.conv2",
    ]
    with pytest.raises(ValueError, match=r"stem_widths must end with stem_width=64, got \(24, 32, 48\)"):
        ResNetConfig(stem_widths=(24, 32, 48))
    with pytest.raises(ValueError, match="cannot go with small_stem=True"):
        ResNetConfig(stem_widths=(8, 8, 64), small_stem=True)
    with pytest.raises(ValueError, match="act must be one of"):
        ResNetConfig(act="gelu")
    with pytest.raises(ValueError, match="mixer_downsample must be one of"):
        ResNetConfig(mixer_downsample="max")


def test_norm_eps_applies_to_the_blocks_and_the_final_norm():
    m = visattn.create_model("pvt_t", norm_eps=1e-6, **PVT_TINY)
    eps = {n: mod.eps for n, mod in m.named_modules() if isinstance(mod, nn.LayerNorm)}
    block = {n for n in eps if ".blocks." in n and (n.endswith(("norm1", "norm2")))}
    assert block and all(eps[n] == 1e-6 for n in block) and eps["norm"] == 1e-6
    assert all(v == 1e-5 for n, v in eps.items() if n not in block and n != "norm")  # embeddings, SR norms
    with pytest.raises(ValueError, match="norm_eps must be a number > 0, got 0"):
        visattn.create_model("pvt_t", norm_eps=0)


@pytest.mark.parametrize("name,kw", [("pvt_t", PVT_TINY), ("eamlp_7", EAMLP_TINY)])
def test_class_token_mode(name, kw):
    torch.manual_seed(0)
    m = visattn.create_model(name, num_classes=5, class_token=True, **kw).eval()
    plain = visattn.create_model(name, num_classes=5, **kw).eval()
    assert (
        m.global_pool == "token"
        and sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in plain.parameters()) + m.cls_token.numel()
    )
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        f = m.forward_features(x)
        final, maps = m.forward_intermediates(x)
        assert f.shape[:3] == (2, m.num_features, 1) and torch.equal(final, f)
        assert torch.equal(m.forward_head(f), m(x))  # the head reads the token
        *_, (h, w) = (t.shape[-2:] for t in maps)
        assert f.shape[3] == 1 + h * w and all(t.dim() == 4 for t in maps)
        # the token joins the attention: the patch tokens differ from a model without it
        plain.load_state_dict({k: v for k, v in m.state_dict().items() if k != "cls_token"})
        assert not torch.allclose(plain.forward_intermediates(x)[1][-1], maps[-1])
    m.train()
    m(x).sum().backward()
    assert m.cls_token.grad is not None and m.cls_token.grad.abs().sum() > 0


def test_class_token_needs_a_position_agnostic_mechanism():
    with pytest.raises(
        ValueError, match=r"stage 3 block 0: class_token=True needs a mechanism that sees no position.*'swin'"
    ):
        visattn.create_model("swin_t", class_token=True)
    with pytest.raises(ValueError, match=r"stage 3 block 0: class_token=True.*'sra'.*sr_ratio=8"):
        visattn.create_model("pvt_t", class_token=True, mixer_kwargs=({"sr_ratio": 8},) * 4, **PVT_TINY)
    with pytest.raises(ValueError, match=r"stage 0 block 0: class_token=True.*'lambda'"):
        visattn.create_model("eamlp_7", class_token=True, attention="lambda", **EAMLP_TINY)
    visattn.create_model("eamlp_7", class_token=True, attention="mhsa", **EAMLP_TINY)  # content-only: fine


def test_class_token_pruned_with_its_stage():
    m = visattn.create_model("pvt_t", class_token=True, features_only=True, out_indices=(0, 1), **PVT_TINY)
    assert m.model.cls_token is None  # its stage is gone: no parameter without a gradient
    sum(f.sum() for f in m(torch.randn(1, 3, 32, 32))).backward()
    assert all(p.grad is not None for p in m.parameters())
    full = visattn.create_model("pvt_t", class_token=True, features_only=True, **PVT_TINY)
    assert full.model.cls_token is not None and len(full(torch.randn(1, 3, 32, 32))) == 4
