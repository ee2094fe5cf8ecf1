"""Segmentation models: logits at input resolution, every mechanism trains a step, EANet's
structure and parameter count, Semantic FPN against a written-out reference, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import visattn
from visattn.models.info import build_default
from visattn.models.segmentation import EANet, SemanticFPN
from visattn.registry import attention_info, model_entry

SEG = visattn.list_models(task="segment")
MECHANISMS = visattn.list_attention()


def build(name, **kw):
    cfg = dict(model_entry(name).test_kwargs)
    cfg.update(kw)
    return visattn.create_model(name, **cfg)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_registered_segmentation_models():
    assert SEG == ["eanet_r101", "eanet_r50", "fpn_pvt_t", "fpn_resnet_tiny", "fpn_slide_pvt_t", "semantic_fpn"]
    assert not set(SEG) & set(visattn.list_models(task="classify"))
    gen = visattn.list_models(task="generate")
    det = visattn.list_models(task="detect")
    pts = visattn.list_models(task="points") + visattn.list_models(task="partseg")
    assert sorted(SEG + visattn.list_models(task="classify") + gen + det + pts) == visattn.list_models()
    with pytest.raises(
        ValueError,
        match=r"task must be one of \('classify', 'segment', 'generate', 'detect', 'points', 'partseg'\) or None, got 'track'",
    ):
        visattn.list_models(task="track")


@pytest.mark.parametrize("size", [(33, 47), (17, 9), (64, 64)])
@pytest.mark.parametrize("name", SEG)
def test_logits_at_input_resolution(name, size):
    torch.manual_seed(0)
    model = build(name, num_classes=5).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, *size))
    assert y.shape == (2, 5, *size) and torch.isfinite(y).all()
    assert model.num_classes == 5


def _train_step(model, size=(32, 24), num_classes=4):
    torch.manual_seed(1)
    x = torch.randn(2, 3, *size)
    target = torch.randint(0, num_classes, (2, *size))
    target[:, :3] = 255  # ignored pixels
    loss = F.cross_entropy(model(x), target, ignore_index=255)
    assert torch.isfinite(loss)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without a gradient: {no_grad}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    return loss


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_every_mechanism_trains_a_step_in_the_small_model(mechanism):
    model = build(
        "fpn_resnet_tiny", num_classes=4, attention=mechanism, attn_kwargs=dict(attention_info(mechanism).test_kwargs)
    ).train()
    swapped = [m for m in model.backbone.model.mixers() if type(m).registry_name == mechanism]
    assert len(swapped) == 4  # one per resnet_tiny stage
    _train_step(model)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_eanet_trains_a_step_with_every_mechanism(mechanism):
    # Issue 13 "Done when": both segmentation models train a step with every mechanism
    # (the Semantic FPN side: test_every_mechanism_trains_a_step_in_the_small_model).
    model = build(
        "eanet_r50", num_classes=4, attention=mechanism, attn_kwargs=dict(attention_info(mechanism).test_kwargs)
    ).train()
    swapped = [m for m in model.backbone.model.mixers() if type(m).registry_name == mechanism]
    assert len(swapped) == 4  # one block per stage at the test depths, dilated stages included
    _train_step(model)


@pytest.mark.parametrize("name", ["eanet_r50", "fpn_slide_pvt_t"])
@pytest.mark.parametrize("mechanism", ["external", "mhsa"])
def test_other_models_train_a_step_with_a_swapped_mechanism(name, mechanism):
    model = build(name, num_classes=4, attention=mechanism, attn_kwargs=dict(attention_info(mechanism).test_kwargs))
    assert any(type(m).registry_name == mechanism for m in model.backbone.model.mixers())
    _train_step(model.train())


def test_fpn_resnet_tiny_levels():
    # Stride-2 stem: the 4 levels the FPN reads are at 2, 4, 8, 16 (32 x 32 ... 4 x 4 at 64 x 64).
    model = visattn.create_model("fpn_resnet_tiny")
    info = model.backbone.feature_info
    assert info.reduction() == [2, 4, 8, 16] and info.channels() == [32, 64, 128, 256]
    assert model.num_classes == 11
    feats = model.backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[-2:]) for f in feats] == [(32, 32), (16, 16), (8, 8), (4, 4)]


# ---------------------------------------------------------------------------
# EANet
# ---------------------------------------------------------------------------


def test_eanet_output_stride_8_dilations_and_composition():
    torch.manual_seed(0)
    model = build("eanet_r50", depths=(2, 2, 3, 3), num_classes=6).eval()
    stages = model.backbone.model.stages
    assert [b.conv2.dilation[0] for b in stages[2]] == [1, 2, 2]  # previous dilation in the first block
    assert [b.conv2.dilation[0] for b in stages[3]] == [2, 4, 4]
    assert [b.conv2.stride[0] for st in stages for b in st][:3] == [1, 1, 2]
    assert model.backbone.feature_info.reduction() == [8]
    x = torch.randn(1, 3, 61, 83)
    with torch.no_grad():
        (f,) = model.backbone(x)
        assert f.shape[-2:] == (8, 11)  # ceil(61 / 8), ceil(83 / 8)
        ref = F.interpolate(model.decode_head([f]), size=(61, 83), mode="bilinear", align_corners=True)
        assert torch.equal(model(x), ref)
    stem = model.backbone.model.stem  # deep stem: three 3x3 convolutions, 128 channels at full size
    assert [m.kernel_size for m in stem if isinstance(m, torch.nn.Conv2d)] == [(3, 3)] * 3


def _bottleneck_params(c_in, width, c_out):
    p = c_in * width + width * width * 9 + width * c_out + 2 * (2 * width + c_out)
    if c_in != c_out:
        p += c_in * c_out + 2 * c_out
    return p


def _eanet_params(depths, classes):
    stem = 3 * 64 * 9 + 64 * 64 * 9 + 64 * 128 * 9 + 2 * (64 + 64 + 128)
    body, c_in = 0, 128
    for d, w in zip(depths, (64, 128, 256, 512)):
        for _ in range(d):
            body += _bottleneck_params(c_in, w, 4 * w)
            c_in = 4 * w
    fc0 = 2048 * 512 * 9 + 2 * 512
    ea = (512 * 512 + 512) + 2 * 64 * 512 + 512 * 512 + 2 * 512  # conv_in, M_k, M_v, conv_out, BN
    fc1 = 512 * 256 * 9 + 2 * 256
    return stem + body + fc0 + ea + fc1 + 256 * classes + classes


@pytest.mark.parametrize(
    "name,depths,millions", [("eanet_r50", (3, 4, 6, 3), 34.85), ("eanet_r101", (3, 4, 23, 3), 53.84)]
)
def test_eanet_parameter_count(name, depths, millions):
    # The paper publishes none: the count is our arithmetic (21 classes, PASCAL VOC).
    model = build_default(name, meta=True)
    assert n_params(model) == _eanet_params(depths, 21)
    assert round(n_params(model) / 1e6, 2) == millions
    tied = visattn.create_model(name, num_classes=21, tie_memories=True, depths=(1, 1, 1, 1))
    untied = visattn.create_model(name, num_classes=21, depths=(1, 1, 1, 1))
    assert n_params(untied) - n_params(tied) == 64 * 512


def test_fpn_pvt_t_published_parameter_count():
    # PVT paper, Semantic FPN on ADE20K: PVT-Tiny 17.0M (150 classes). Ours has no class token.
    model = build_default("fpn_pvt_t", meta=True)
    published = model_entry("fpn_pvt_t").published
    assert published == {"params_m": 17.0, "miou": 35.7}
    assert abs(n_params(model) / 1e6 - 17.0) / 17.0 <= 0.01, n_params(model)


# ---------------------------------------------------------------------------
# Semantic FPN
# ---------------------------------------------------------------------------


def _gn_relu(seq, x):
    conv, gn, _ = seq
    return F.relu(F.group_norm(F.conv2d(x, conv.weight, padding=1), gn.num_groups, gn.weight, gn.bias, gn.eps))


def reference_fpn_logits(model, feats):
    """Semantic FPN written out for sizes that halve exactly (2x upsampling by scale factor)."""
    head = model.decode_head
    lat = [F.conv2d(f, c.weight, c.bias) for f, c in zip(feats, head.fpn.lateral)]
    for i in (2, 1, 0):
        lat[i] = lat[i] + F.interpolate(lat[i + 1], scale_factor=2, mode="nearest")
    outs = [F.conv2d(t, c.weight, c.bias, padding=1) for t, c in zip(lat, head.fpn.output)]
    y = 0
    for level, (t, sh) in enumerate(zip(outs, head.scale_heads)):
        for conv in sh.convs:
            t = _gn_relu(conv, t)
            if level:
                t = F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)
        assert len(sh.convs) == max(1, level)
        y = y + t
    return F.conv2d(y, head.classifier.weight, head.classifier.bias)


def test_semantic_fpn_equals_reference():
    torch.manual_seed(0)
    model = build("fpn_pvt_t", num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.backbone(x)
        assert [tuple(f.shape[-2:]) for f in feats] == [(16, 16), (8, 8), (4, 4), (2, 2)]
        ref = F.interpolate(reference_fpn_logits(model, feats), size=(64, 64), mode="bilinear", align_corners=False)
        assert (model(x) - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize("backbone", ["slide_pvt_t", "swin_t", "resnet26", "san_quadratic", "eamlp_7"])
def test_semantic_fpn_takes_any_backbone_by_name(backbone):
    kw = dict(model_entry(backbone).test_kwargs)
    model = visattn.create_model(
        "semantic_fpn",
        backbone=backbone,
        num_classes=3,
        backbone_kwargs=kw,
        fpn_channels=16,
        channels=8,
        attention="external",
        attn_kwargs=dict(attention_info("external").test_kwargs),
    ).eval()
    assert isinstance(model, SemanticFPN)
    assert any(type(m).registry_name == "external" for m in model.backbone.model.mixers())
    levels = model.backbone.feature_info
    assert len(levels) == min(4, len(visattn.create_model(backbone, **kw).feature_info))
    size = (30, 22) if backbone == "san_quadratic" else (37, 29)
    with torch.no_grad():
        y = model(torch.randn(1, 3, *size))
    assert y.shape == (1, 3, *size) and torch.isfinite(y).all()


def test_reset_classifier():
    model = build("fpn_resnet_tiny", num_classes=4).eval()
    model.reset_classifier(9)
    assert model.num_classes == 9 and model(torch.randn(1, 3, 20, 20)).shape == (1, 9, 20, 20)
    assert isinstance(model, visattn.models.segmentation.SegmentationModel) and not isinstance(model, EANet)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_errors():
    with pytest.raises(ValueError, match="unknown model 'pvt_x'"):
        visattn.create_model("semantic_fpn", backbone="pvt_x")
    with pytest.raises(ValueError, match="backbone 'eanet_r50' is a segment model; expected a classification"):
        visattn.create_model("semantic_fpn", backbone="eanet_r50")
    with pytest.raises(TypeError, match="backbone must be a registered model name"):
        visattn.create_model("semantic_fpn", backbone=torch.nn.Identity())
    with pytest.raises(ValueError, match="features_only needs a backbone; 'fpn_resnet_tiny' is a segment model"):
        visattn.create_model("fpn_resnet_tiny", features_only=True)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['fpn_width'\]"):
        visattn.create_model("fpn_resnet_tiny", fpn_width=3)
    with pytest.raises(ValueError, match="num_classes must be an int >= 1, got 0"):
        visattn.create_model("fpn_resnet_tiny", num_classes=0)
    with pytest.raises(ValueError, match="num_classes must be an int >= 1, got 0"):
        build("eanet_r50", num_classes=0)
    with pytest.raises(
        ValueError, match=r"resnet_tiny out_indices: feature level indices \(9,\) out of range: the model has 5 levels"
    ):
        visattn.create_model("fpn_resnet_tiny", backbone_indices=(9,))
    from visattn.models.segmentation import SemanticFPNHead

    assert len(SemanticFPNHead([4, 4, 4], [2, 2, 8], 3).scale_heads[2].convs) == 2  # 2 = log2(8 / 2)
    with pytest.raises(ValueError, match=r"reductions are the finest one times powers of 2, got \[4, 12\]"):
        SemanticFPNHead([4, 4], [4, 12], 3)
    model = build("fpn_resnet_tiny").eval()
    with pytest.raises(ValueError, match=r"SemanticFPN expects images \(B, 3, H, W\), got \(1, 1, 8, 8\)"):
        model(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"EANet expects images \(B, 3, H, W\), got \(3, 8, 8\)"):
        build("eanet_r50").eval()(torch.randn(3, 8, 8))


def test_safetensors_round_trip(tmp_path):
    torch.manual_seed(0)
    a = build("fpn_resnet_tiny", num_classes=4).eval()
    b = build("fpn_resnet_tiny", num_classes=4).eval()
    x = torch.randn(1, 3, 24, 40)
    with torch.no_grad():
        assert not torch.equal(a(x), b(x))
    visattn.save_weights(a, tmp_path / "seg.safetensors")
    visattn.load_weights(b, tmp_path / "seg.safetensors")
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_eanet_unknown_option_names_the_model_and_its_options():
    with pytest.raises(
        TypeError,
        match=r"^eanet_r50: unknown option\(s\) \['nope'\]; expected ResNetConfig fields \[.*\] or in_chans, "
        r"drop_rate, channels, mid_channels, memory_size, tie_memories, dropout$",
    ):
        visattn.create_model("eanet_r50", nope=1)
