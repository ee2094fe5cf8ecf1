"""timm and torchvision sources: each source model built with random weights that move every tensor,
saved as the publisher saves it, loaded through ``create_model(..., pretrained=)`` and compared in
float32 (<= 1e-5 relative; most are bit-exact); a negative control per converter; full-size
keys and shapes on the meta device; the source table against timm's / torchvision's own metadata.
timm and torchvision come with the test / detect extras that ``dev`` installs."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from _wutil import exercise_, rel_err
from safetensors.torch import save_file

import visattn
from visattn.models.convert import FORMATS, SOURCES, detect_format, split_detector
from visattn.models.pretrained import load_backbone_pretrained

TOL = 1e-5


def _safetensors(tmp_path, model, name="model.safetensors") -> str:
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


@torch.no_grad()
def test_resnet_matches_timm(tmp_path):
    x = torch.randn(2, 3, 64, 64)
    src = exercise_(timm.create_model("resnet26"), x)
    path = _safetensors(tmp_path, src)  # as timm's hub files: safetensors, timm keys
    model = visattn.create_model("resnet26", pretrained=path).eval()
    assert torch.equal(model(x), src(x))  # bit-exact
    assert model.pretrained_cfg["format"] == "timm-resnet" and model.pretrained_cfg["assumed"]
    # Negative control: bn1 and bn2 of every block swapped (same shapes, a plausible slip).
    wrong = visattn.create_model("resnet26", pretrained=path).eval()
    for stage in wrong.stages:
        for blk in stage:
            a, b = blk.bn1.state_dict(), blk.bn2.state_dict()
            blk.bn1.load_state_dict(b)
            blk.bn2.load_state_dict(a)
    assert rel_err(wrong(x), src(x)) > 1e-3


def _meta_shapes(model) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_full_size_keys_and_shapes_on_meta():
    # The published architectures at full size: converted keys and shapes equal visattn's, and the
    # parameter counts equal the source models' and the table's.
    cases = [
        ("resnet50", "resnet50", {}, None),
        ("resnet26", "resnet26", {}, None),
        ("resnet50s", "eanet_r50", {}, "backbone"),
        ("resnet101s", "eanet_r101", {}, "backbone"),
        ("swin_tiny_patch4_window7_224", "swin_t", {}, None),
        ("swin_small_patch4_window7_224", "swin_t", {"depths": (2, 2, 18, 2)}, None),
        ("swin_base_patch4_window7_224", "swin_t", {}, None),
        ("lambda_resnet26t", "lambda_resnet26t", {}, None),
        ("lambda_resnet50ts", "lambda_resnet50ts", {}, None),
        ("lambda_resnet26rpt_256", "lambda_resnet26rpt_256", {}, None),
    ]
    for arch, name, kw, part in cases:
        with torch.device("meta"):
            src = timm.create_model(arch)
            sd = src.state_dict()
            fmt = detect_format(sd)
            conv = fmt.convert(sd)
            target = fmt.infer(sd)
            if part == "backbone":
                model = visattn.create_model(name).backbone.model
                conv = {k: v for k, v in conv.items() if not k.startswith("head.")}
            else:
                assert target.model == name, (arch, target)
                model = visattn.create_model(name, **{**target.kwargs, **kw})
        assert {k: tuple(v.shape) for k, v in conv.items()} == _meta_shapes(model), arch
        n_src = sum(p.numel() for p in src.parameters())
        n = sum(p.numel() for p in model.parameters())
        assert n == (n_src - src.fc.weight.numel() - src.fc.bias.numel() if part == "backbone" else n_src), arch


def test_swin_in22k_head_on_meta():
    with torch.device("meta"):
        sd = timm.create_model("swin_tiny_patch4_window7_224", num_classes=21841).state_dict()
        conv = FORMATS["timm-swin"].convert(sd)
        model = visattn.create_model("swin_t", num_classes=21841)
    assert {k: tuple(v.shape) for k, v in conv.items()} == _meta_shapes(model)
    assert SOURCES["timm/swin_tiny_patch4_window7_224.ms_in22k"].params == sum(p.numel() for p in model.parameters())


@torch.no_grad()
def test_deep_stem_resnet_is_the_eanet_backbone(tmp_path):
    # timm's gluon ResNet-50 v1s at output stride 8 (timm's dilation rule) is EANet's backbone.
    x = torch.randn(1, 3, 64, 64)
    src = exercise_(timm.create_model("resnet50s", output_stride=8), x)
    path = _safetensors(tmp_path, src)
    seg = visattn.create_model("eanet_r50", backbone_pretrained=path, num_classes=5).eval()
    assert torch.equal(seg.backbone(x)[-1], src.forward_features(x))
    assert seg.pretrained_cfg["format"] == "timm-resnet"
    # pretrained= with a backbone's weights on a segmentation model initialises the backbone, saying so
    seg2 = visattn.create_model("eanet_r50", pretrained=path, num_classes=5).eval()
    assert torch.equal(seg2.backbone(x)[-1], src.forward_features(x))


@torch.no_grad()
def test_torchvision_resnet50(tmp_path):
    x = torch.randn(1, 3, 64, 64)
    src = exercise_(torchvision.models.resnet50(), x)
    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save(src.state_dict(), path)  # torchvision's files: a pickled state dict
    model = visattn.create_model("resnet50", pretrained=str(path)).eval()
    assert torch.equal(model(x), src(x))


@torch.no_grad()
def test_torchvision_maskrcnn_body(tmp_path):
    # The COCO Mask R-CNN's file: a ResNet-50 body with FrozenBatchNorm2d (no num_batches_tracked),
    # an FPN, RPN and RoI heads. Its body fills a visattn features_only ResNet-50 (what a detector's
    # backbone_pretrained= uses); split_detector keeps the rest under torchvision's names.
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d

    body = exercise_(torchvision.models.resnet50(norm_layer=FrozenBatchNorm2d))  # the convolutions
    gen = torch.Generator().manual_seed(0)
    for m in body.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=gen))
            m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(torch.empty(m.running_var.shape).uniform_(0.5, 1.5, generator=gen))
    det = MaskRCNN(_resnet_fpn_extractor(body, 3), num_classes=91).eval()
    sd = det.state_dict()
    assert not any(k.endswith("num_batches_tracked") for k in sd if k.startswith("backbone.body."))
    path = tmp_path / "maskrcnn_resnet50_fpn_coco.pth"
    torch.save(sd, path)
    feats = visattn.create_model("resnet50", features_only=True, out_indices=(1, 2, 3, 4)).eval()
    report = load_backbone_pretrained(feats, str(path))
    assert report.loaded == len(feats.model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    ours = feats(x)
    theirs = list(det.backbone.body(x).values())
    for a, b in zip(ours, theirs):  # FrozenBatchNorm2d folds scale and shift: rounding differs from BN's
        assert rel_err(a, b) < TOL
    # the whole detector's keys, with the body under a visattn features_only module's names
    full = split_detector(sd, "backbone.body.model.")
    assert sum(k.startswith("backbone.body.model.") for k in full) == len(feats.model.state_dict())
    assert {k for k in full if not k.startswith("backbone.body.")} == {
        k for k in sd if not k.startswith("backbone.body.")
    }


def _timm_swin(**kw):
    return timm.create_model(
        "swin_tiny_patch4_window7_224", embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), **kw
    )


def _exercise_params_only(model, seed=0):
    # Swin has no BatchNorm; its buffers (index, masks) are the architecture: never perturbed
    # (perturbing timm's float attention mask fakes a mismatch in shifted blocks).
    return exercise_(model, None, seed=seed)


@torch.no_grad()
def test_swin_matches_timm(tmp_path):
    src = _exercise_params_only(_timm_swin())
    path = _safetensors(tmp_path, src)
    model = visattn.create_model("swin_t", pretrained=path).eval()  # depths, widths, heads from the keys
    assert model.cfg.embed_dims == (32, 64, 128, 256)
    x = torch.randn(2, 3, 224, 224)
    assert torch.equal(model(x), src(x))  # bit-exact
    # a features_only backbone from the same file takes the same layout (depths, widths, heads)
    feats = visattn.create_model("swin_t", features_only=True, pretrained=path).eval()
    assert all(torch.equal(a, b) for a, b in zip(feats(x), model.forward_intermediates(x, intermediates_only=True)))
    # Negative control: Microsoft's layout rule (merging at the end of a stage) on timm's keys.
    with pytest.raises(ValueError, match="do not fit"):
        visattn.create_model("swin_t", pretrained=path, source_format="swin-original")


@torch.no_grad()
def test_swin_original_layout(tmp_path):
    # Microsoft's files: {'model': ...}, layers.i.downsample at the END of stage i, `head`, and the
    # persistent relative_position_index / attn_mask buffers.
    src = _exercise_params_only(_timm_swin())
    ms = {}
    for k, v in src.state_dict().items():
        if ".downsample." in k:
            i = int(k.split(".")[1])
            k = k.replace(f"layers.{i}.downsample", f"layers.{i - 1}.downsample")
        ms[k.replace("head.fc.", "head.")] = v
    ms["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)
    ms["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": ms}, path)
    model = visattn.create_model("swin_t", pretrained=str(path)).eval()
    assert model.pretrained_cfg["format"] == "swin-original"
    x = torch.randn(1, 3, 224, 224)
    assert torch.equal(model(x), src(x))


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch,side", [("lambda_resnet26t", 128), ("lambda_resnet50ts", 128), ("lambda_resnet26rpt_256", 256)]
)
@torch.no_grad()
def test_lambda_resnet_matches_timm(tmp_path, arch, side):
    x = torch.randn(2, 3, side, side)
    src = exercise_(timm.create_model(arch), x)
    path = _safetensors(tmp_path, src)
    model = visattn.create_model(arch, pretrained=path).eval()
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in src.parameters())
    ref = src(x)
    err = rel_err(model(x), ref)
    assert err < TOL, err
    assert rel_err(model.double()(x.double()), src.double()(x.double())) < 1e-12  # exact: float32 rounding only
    model.float()
    # Negative control: the lambda convolution's kernel mirrored (an orientation slip).
    for m in model.mixers():
        m.pos_kernel.copy_(m.pos_kernel.flip(-1, -2))
    assert rel_err(model(x), ref) > 1e-3


def test_timm_entries_match_timm_pretrained_cfg():
    from timm.models import get_pretrained_cfg

    for s in SOURCES.values():
        if not s.name.startswith("timm/"):
            continue
        cfg = get_pretrained_cfg(s.name[len("timm/") :]).to_dict()
        pre = s.preprocess
        assert s.location == "hf-hub:" + cfg["hf_hub_id"], s.name
        assert (tuple(cfg["mean"]), tuple(cfg["std"])) == (pre.mean, pre.std), s.name
        assert cfg["input_size"] == (3, pre.input_size, pre.input_size), s.name
        assert (cfg["crop_pct"], cfg["interpolation"]) == (pre.crop_pct, pre.interpolation), s.name
        assert (cfg["license"], cfg["num_classes"]) == (s.license, s.num_classes), s.name


def test_torchvision_entries_match_torchvision_weights():
    from torchvision.models import ResNet50_Weights
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    for w, name in (
        (ResNet50_Weights.IMAGENET1K_V1, "torchvision/resnet50.IMAGENET1K_V1"),
        (ResNet50_Weights.IMAGENET1K_V2, "torchvision/resnet50.IMAGENET1K_V2"),
        (MaskRCNN_ResNet50_FPN_Weights.COCO_V1, "torchvision/maskrcnn_resnet50_fpn.COCO_V1"),
    ):
        s = SOURCES[name]
        assert s.location == w.url
        assert s.sha256 == w.url.rsplit("-", 1)[1].split(".")[0]  # torch hub's hash prefix in the name
        if "num_params" in w.meta and s.part == "model":
            assert s.params == w.meta["num_params"]
        t = w.transforms()
        if hasattr(t, "crop_size"):
            assert s.preprocess.input_size == t.crop_size[0]
            assert s.preprocess.crop_pct == pytest.approx(t.crop_size[0] / t.resize_size[0])
            assert (list(s.preprocess.mean), list(s.preprocess.std)) == (list(t.mean), list(t.std))
