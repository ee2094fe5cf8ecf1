"""Detectors on torchvision's engine with visattn backbones (visattn.models.detection).

Wiring: with torchvision's Mask R-CNN R-50-FPN weights copied across, ``create_model("maskrcnn",
backbone="resnet50")`` gives torchvision's outputs. Every mechanism trains in a detector; every
detector kind trains and predicts; the paper models' parameter counts are pinned.
"""

from __future__ import annotations

import pytest
import torch

import visattn
from visattn.models.convert import split_detector
from visattn.registry import model_entry

torchvision = pytest.importorskip("torchvision")

DETECT = [
    "fasterrcnn",
    "fasterrcnn_resnet_tiny",
    "fcos",
    "fcos_resnet_tiny",
    "maskrcnn",
    "maskrcnn_pvt_t",
    "maskrcnn_resnet_tiny",
    "maskrcnn_slide_pvt_t",
    "retinanet",
    "retinanet_resnet_tiny",
]


def _target(masks: bool = True) -> dict[str, torch.Tensor]:
    t = {"boxes": torch.tensor([[4.0, 6.0, 24.0, 30.0], [30.0, 30.0, 50.0, 58.0]]), "labels": torch.tensor([1, 2])}
    if masks:
        m = torch.zeros(2, 64, 64, dtype=torch.uint8)
        m[0, 6:30, 4:24] = 1
        m[1, 30:58, 30:50] = 1
        t["masks"] = m
    return t


def test_registered_detection_models():
    assert visattn.list_models(task="detect") == DETECT
    assert not set(DETECT) & set(visattn.list_models(task="classify"))
    assert model_entry("maskrcnn_pvt_t").published == {"params_m": 32.9}


@torch.no_grad()
def test_maskrcnn_on_resnet50_equals_torchvision_maskrcnn_resnet50_fpn():
    torch.manual_seed(0)
    size = {"min_size": 128, "max_size": 160}
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, **size)
    gen = torch.Generator().manual_seed(1)
    for m in tv.modules():  # BatchNorm statistics that matter (fresh ones are 0 / 1)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(torch.empty(m.running_var.shape).uniform_(0.5, 1.5, generator=gen))
            m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=gen))
    tv.eval()
    ours = visattn.create_model("maskrcnn", backbone="resnet50", num_classes=91, **size).eval()
    ours.load_state_dict(split_detector(tv.state_dict(), "backbone.body.model."), strict=True)
    x = [torch.rand(3, 120, 150, generator=gen), torch.rand(3, 96, 128, generator=gen)]
    a, b = tv(x), ours(x)
    assert len(a) == len(b) == 2 and len(a[0]["boxes"]) > 0
    for da, db in zip(a, b):
        assert set(da) == set(db) == {"boxes", "labels", "scores", "masks"}
        assert torch.equal(da["labels"], db["labels"])
        for k in ("boxes", "scores", "masks"):
            torch.testing.assert_close(db[k], da[k], rtol=0, atol=1e-5)
    # the transforms match too (same resize and normalisation: torchvision's own module)
    assert ours.transform.min_size == tv.transform.min_size and ours.transform.max_size == tv.transform.max_size


def test_paper_parameter_counts():
    """Mask R-CNN (81 classes, FPN 256, torchvision's heads) on PVT-T: 32.89M (published 32.9M,
    PVT's Table 3); on Slide-PVT-T: 31.86M (published 32M, Slide-Transformer's detection table)."""
    counts = {}
    for name in ("maskrcnn_pvt_t", "maskrcnn_slide_pvt_t"):
        with torch.device("meta"):
            m = visattn.create_model(name)
        counts[name] = sum(p.numel() for p in m.parameters())
    assert counts == {"maskrcnn_pvt_t": 32_886_005, "maskrcnn_slide_pvt_t": 31_859_371}
    assert abs(counts["maskrcnn_pvt_t"] / 1e6 - 32.9) < 0.05
    assert abs(counts["maskrcnn_slide_pvt_t"] / 1e6 - 32.0) < 0.2


@pytest.mark.parametrize("mech", visattn.list_attention())
def test_every_mechanism_trains_in_a_detector(mech):
    torch.manual_seed(0)
    kw = dict(model_entry("maskrcnn").test_kwargs)
    model = visattn.create_model("maskrcnn", num_classes=3, attention=mech, **kw).train()
    mixers = [m for m in model.modules() if getattr(type(m), "registry_name", None) == mech]
    assert mixers, f"no {mech} module in the detector's backbone"
    losses = model([torch.rand(3, 64, 64)], [_target()])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for m in mixers for p in m.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ["fasterrcnn", "retinanet", "fcos"])
def test_each_detector_kind_trains_and_predicts(name):
    torch.manual_seed(0)
    model = visattn.create_model(name, **model_entry(name).test_kwargs).train()
    losses = model([torch.rand(3, 64, 64)] * 2, [_target(False), _target(False)])
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 64), torch.rand(3, 48, 40)])
    assert [set(o) for o in out] == [{"boxes", "labels", "scores"}] * 2
    assert out[1]["boxes"].shape[1] == 4
    if len(out[1]["boxes"]):  # boxes are in the input image's coordinates
        assert float(out[1]["boxes"][:, 2].max()) <= 40 + 1e-4 and float(out[1]["boxes"][:, 3].max()) <= 48 + 1e-4


def test_tiny_preset_keeps_64px_scenes_unresized():
    m = visattn.create_model("maskrcnn_resnet_tiny")
    images, _ = m.transform([torch.rand(3, 64, 64)])
    assert images.tensors.shape[-2:] == (64, 64)
    assert m.backbone.body.feature_info.reduction() == [4, 8, 16]
    assert m.rpn.anchor_generator.sizes == ((12,), (24,), (48,), (96,))


def test_backbone_pretrained_fills_the_detector_backbone(tmp_path):
    from visattn.models.io import save_weights

    src = visattn.create_model("resnet_tiny", small_stem_stride=2).eval()
    save_weights(src, tmp_path / "rt.safetensors")
    det = visattn.create_model("maskrcnn_resnet_tiny", backbone_pretrained=str(tmp_path / "rt.safetensors")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = src.forward_intermediates(x, indices=(2, 3, 4), intermediates_only=True)
        got = det.backbone.body(x)
    assert all(torch.equal(a, b) for a, b in zip(want, got))


def test_bad_detector_options_are_refused():
    with pytest.raises(ValueError, match="backbone 'fpn_pvt_t' is a segment model; expected a classification"):
        visattn.create_model("maskrcnn", backbone="fpn_pvt_t")
    with pytest.raises(ValueError, match=r"num_classes must be an int >= 2 \(background \+ classes\), got 1"):
        visattn.create_model("maskrcnn_resnet_tiny", num_classes=1)
    with pytest.raises(ValueError, match=r"anchor_sizes needs one tuple per feature map \(4\), got 2"):
        visattn.create_model("maskrcnn_resnet_tiny", anchor_sizes=((8,), (16,)))
    with pytest.raises(ValueError, match="features_only needs a backbone; 'maskrcnn' is a detect model"):
        visattn.create_model("maskrcnn", features_only=True)
