"""ResNet / LambdaResNet family: parameter counts against the papers, hybrids, any mechanism."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import visattn
from visattn.layers.lambda_layer import LambdaLayer
from visattn.models.resnet import ResNet
from visattn.registry import attention_class


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def count(name: str, **kw) -> int:
    """Parameters of a registered model, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        return n_params(visattn.create_model(name, **kw))


def lambda_params(c: int, k: int, h: int, u: int, r: int) -> int:
    """One lambda layer of width c (Bello 2021): W_Q, W_K, W_V, BN(q), BN(v), r x r embeddings."""
    v = c // h
    return c * (k * h + k * u + v * u) + 2 * k * h + 2 * v * u + k * u * r * r


def test_resnet50_has_25_6m_parameters():
    assert count("resnet50") == 25_557_032  # torchvision resnet50: 25.6M
    assert abs(count("resnet50") / 25.6e6 - 1) < 0.01


def test_lambda_resnet50_has_15_0m_parameters():
    with torch.device("meta"):
        m = visattn.create_model("lambda_resnet50")
    assert abs(n_params(m) / 15.0e6 - 1) < 0.01
    # exactly: ResNet-50 minus its 16 bottleneck 3x3 convolutions plus 16 lambda layers
    widths = [64] * 3 + [128] * 4 + [256] * 6 + [512] * 3
    expected = 25_557_032 - sum(9 * c * c for c in widths) + sum(lambda_params(c, 16, 4, 1, 23) for c in widths)
    assert n_params(m) == expected
    assert sum(isinstance(mod, LambdaLayer) for mod in m.modules()) == 16


def test_lambda_resnet50_u4_r7_has_16_0m_parameters():
    assert abs(count("lambda_resnet50", attn_kwargs={"intra_depth": 4, "local_scope": 7}) / 16.0e6 - 1) < 0.01


# SPEC.md 1 ablation rows (k, h, u) -> published M params (paper appendix D.1, ResNet-50, r=23).
# Reproduced within 1%: the u=1 rows below at r=23; the u>1 rows at r=7, the scope the paper
# pairs with u=4 for its 16.0M model (at r=23 they have 16.53M, +3.3%).
ABLATION = [
    ((16, 4, 1, 23), 15.0),
    ((32, 4, 1, 23), 15.4),
    ((16, 8, 1, 23), 15.1),
    ((2, 4, 1, 23), 14.7),
    ((8, 8, 8, 7), 16.0),
    ((16, 4, 4, 7), 16.0),
]


@pytest.mark.parametrize("cfg,published", ABLATION)
def test_ablation_rows_reproduced(cfg, published):
    k, h, u, r = cfg
    n = count("lambda_resnet50", attn_kwargs={"key_dim": k, "num_heads": h, "intra_depth": u, "local_scope": r})
    assert abs(n / (published * 1e6) - 1) < 0.01


def test_ablation_row_8_2_1_is_not_reproducible_with_this_layout():
    """(k, h, u) = (8, 2, 1) is published as 14.8M. With v = d/h the value projections alone
    take sum_c c^2/2 = 0.629M over the 16 layers; without position embeddings the lambda
    layers already hold 0.724M, so the network has >= 14.96M for any scope r (15.03M at r=23)."""
    assert count("lambda_resnet50", attn_kwargs={"key_dim": 8, "num_heads": 2}) == 15_031_144
    assert count("lambda_resnet50", attn_kwargs={"key_dim": 8, "num_heads": 2, "local_scope": 1}) > 14.8e6 * 1.01


@pytest.mark.parametrize("depth,blocks", [(26, 8), (38, 12), (50, 16)])
def test_family_layouts(depth, blocks):
    with torch.device("meta"):
        conv = visattn.create_model(f"resnet{depth}")
        lam = visattn.create_model(f"lambda_resnet{depth}")
    assert sum(len(s) for s in conv.stages) == blocks == sum(len(s) for s in lam.stages)
    assert sum(isinstance(m, LambdaLayer) for m in lam.modules()) == blocks
    assert conv.num_features == lam.num_features == 2048


def test_hybrid_stages_use_the_mechanism_only_where_asked():
    with torch.device("meta"):
        m = visattn.create_model("lambda_resnet50", mixer_stages=(2, 3))
    for i, stage in enumerate(m.stages):
        lambdas = sum(isinstance(mod, LambdaLayer) for mod in stage.modules())
        convs3 = sum(isinstance(mod, nn.Conv2d) and mod.kernel_size == (3, 3) for mod in stage.modules())
        assert (lambdas, convs3) == ((0, len(stage)) if i < 2 else (len(stage), 0))
    widths = [64] * 3 + [128] * 4
    full = count("lambda_resnet50")
    assert n_params(m) == full + sum(9 * c * c - lambda_params(c, 16, 4, 1, 23) for c in widths)


def test_strided_block_runs_the_mechanism_then_avg_pool():
    with torch.device("meta"):
        m = visattn.create_model("lambda_resnet26")
    slot = m.stages[1][0].conv2
    assert isinstance(slot, nn.Sequential) and isinstance(slot[0], LambdaLayer)
    assert isinstance(slot[1], nn.AvgPool2d) and slot[1].stride == 2 and slot[1].kernel_size == 3
    assert slot[0].stride == 1


def test_small_stem_and_feature_shapes():
    m = visattn.create_model(
        "lambda_resnet26",
        num_classes=10,
        small_stem=True,
        img_size=32,
        widths=(8, 16, 16, 16),
        stem_width=8,
        attn_kwargs={"local_scope": 7},
    ).train()
    x = torch.randn(2, 3, 32, 32)
    f = m.forward_features(x)
    assert f.shape == (2, 64, 4, 4)
    assert m.forward_head(f, pre_logits=True).shape == (2, 64)
    assert m(x).shape == (2, 10)
    assert isinstance(m.stem[0], nn.Conv2d) and m.stem[0].kernel_size == (3, 3)
    assert not any(isinstance(s, nn.MaxPool2d) for s in m.stem)
    m.reset_classifier(0)
    assert m(x).shape == (2, 64)


def test_global_lambda_gets_each_stage_size_as_max_size():
    m = visattn.create_model(
        "lambda_resnet26",
        num_classes=5,
        attn_kwargs={"local_scope": None},
        img_size=64,
        widths=(8, 16, 16, 16),
        stem_width=8,
    )
    sizes = [mod.max_size for mod in m.modules() if isinstance(mod, LambdaLayer)]
    assert sizes == [(16, 16), (16, 16), (16, 16), (8, 8), (8, 8), (4, 4), (4, 4), (2, 2)]
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    with pytest.raises(ValueError, match=r"inputs up to max_size=\(16, 16\), got an input of 24 x 24"):
        m(torch.randn(1, 3, 96, 96))


@pytest.mark.parametrize("name", visattn.list_attention())
def test_resnet_tiny_takes_every_mechanism(name):
    m = visattn.create_model("resnet_tiny", num_classes=10, attention=name).train()
    x = torch.randn(2, 3, 16, 16)  # (visattn compare runs it at 32 x 32; 16 keeps the suite fast)
    y = m(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    y.square().mean().backward()
    assert all(p.grad is not None for p in m.parameters())
    assert sum(isinstance(mod, attention_class(name)) for mod in m.modules()) == 4


def test_resnet_tiny_size():
    m = visattn.create_model("resnet_tiny", num_classes=10)
    assert 200_000 < n_params(m) < 400_000
    assert m.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 256, 4, 4)


def test_train_mode_with_1x1_maps():
    m = visattn.create_model("lambda_resnet26", num_classes=3, widths=(8, 16, 16, 16), stem_width=8).train()
    assert torch.isfinite(m(torch.randn(2, 3, 32, 32))).all()  # stage 4 runs on 1 x 1 maps
    # batch 1: the ResNet's own BatchNorm (after the slot) has one value per channel, which
    # torch refuses in training mode; the lambda layer alone handles it (tests/layers)
    with pytest.raises(ValueError, match=r"Expected more than 1 value per channel when training"):
        m(torch.randn(1, 3, 32, 32))


def test_option_errors():
    with pytest.raises(
        TypeError,
        match=r"resnet26: unknown option\(s\) \['depth'\]; expected ResNetConfig fields .* or in_chans, drop_rate",
    ):
        visattn.create_model("resnet26", depth=3)
    with pytest.raises(ValueError, match=r"mixer_stages must hold stage indices in 0..3, got \(4,\)"):
        visattn.create_model("lambda_resnet26", mixer_stages=(4,))
    with pytest.raises(ValueError, match=r"pass attention=NAME as well"):
        visattn.create_model("resnet26", attn_kwargs={"num_heads": 2})
    with pytest.raises(ValueError, match=r"unknown attention mechanism 'lamda'.*did you mean 'lambda'"):
        visattn.create_model("resnet26", attention="lamda")
    assert isinstance(visattn.create_model("resnet26", attention="lambda"), ResNet)


def test_output_stride_dilates_the_last_stages():
    from visattn.models.resnet import ResNetConfig

    cfg = ResNetConfig(depths=(1, 2, 2, 2), output_stride=16)
    assert cfg.stage_strides_and_dilations() == [(1, 1, 1), (2, 1, 1), (2, 1, 1), (1, 1, 2)]
    assert ResNetConfig(output_stride=8).stage_strides_and_dilations() == [(1, 1, 1), (2, 1, 1), (1, 1, 2), (1, 2, 4)]
    model = visattn.create_model("resnet26", num_classes=0, output_stride=16, widths=(4, 4, 4, 4), stem_width=8)
    assert model.feature_info.reduction() == [2, 4, 8, 16, 16]
    x = torch.randn(1, 3, 45, 38)
    assert [tuple(f.shape[-2:]) for f in model.forward_intermediates(x, intermediates_only=True)] == [
        (23, 19),
        (12, 10),
        (6, 5),
        (3, 3),
        (3, 3),
    ]
    with pytest.raises(
        ValueError, match=r"output_stride must be one of \[8, 16, 32\] for this stem and 4 stages, got 4"
    ):
        ResNetConfig(output_stride=4)
    with pytest.raises(ValueError, match=r"output_stride must be one of \[2, 4, 8\]"):
        ResNetConfig(small_stem=True, output_stride=16)
    with pytest.raises(ValueError, match="small_stem_stride must be 1 or 2, got 3"):
        ResNetConfig(small_stem=True, small_stem_stride=3)
