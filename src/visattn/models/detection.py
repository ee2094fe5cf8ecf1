"""Object detection and instance segmentation on torchvision's detection engine.

A visattn detector *is* a torchvision model (:class:`torchvision.models.detection.MaskRCNN`,
``FasterRCNN``, ``RetinaNet`` or ``FCOS``); only its backbone is ours: a visattn model's
``features_only`` levels (:class:`~visattn.models.features.FeatureExtractor`, any registered
classification backbone, any mechanism through ``attention=``) behind torchvision's
:class:`~torchvision.ops.FeaturePyramidNetwork` (:class:`FPNBackbone`). Inputs and outputs are
torchvision's: a list of (3, H, W) images in 0..1; in training a list of target dicts (``boxes``
xyxy float, ``labels`` int64, ``masks`` uint8 for Mask R-CNN) gives a dict of losses, in eval mode
one dict per image (``boxes``, ``labels``, ``scores``, ``masks`` (N, 1, H, W) in 0..1).

``create_model("maskrcnn", backbone="slide_pvt_t", num_classes=81, attention=...)``: the R-CNNs
take the backbone's last 4 levels + a max-pooled P6 (LastLevelMaxPool), RetinaNet and FCOS the
last 3 + P6/P7 (LastLevelP6P7 on P5), as torchvision's ResNet-50 builders do. Anchors follow the
levels' reductions r (R-CNN: 8r with ratios 0.5/1/2; RetinaNet: 4r x 2^(0, 1/3, 2/3); FCOS: r), so
on ResNet-50 they are torchvision's defaults. Every other keyword goes to the torchvision
constructor (``min_size``, ``max_size``, ``image_mean``, ``rpn_*``, ``box_*``, heads...).

Registered: ``maskrcnn``, ``fasterrcnn``, ``retinanet``, ``fcos`` (any backbone, default
``resnet50``: with torchvision's COCO weights copied across, ``maskrcnn`` gives torchvision's
outputs, tests/models/test_detection.py); ``maskrcnn_pvt_t`` / ``maskrcnn_slide_pvt_t`` (81 classes,
the papers' COCO set-up; parameters against the published 32.9M / 32M in docs/detection.md); and
the CPU presets ``{maskrcnn,fasterrcnn,retinanet,fcos}_resnet_tiny`` for 64 px digit scenes
(no resize, 64-wide FPN at strides 4-16 + pool, small anchors and heads).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from visattn.models import hierarchical, resnet  # noqa: F401  (the backbones named below register first)
from visattn.models.features import FeatureExtractor, FeatureInfo
from visattn.registry import create_model, model_entry, register_model

__all__ = ["FPNBackbone", "build_detector", "DETECTORS", "detector_levels"]

#: The torchvision detectors a visattn backbone can drive.
DETECTORS = ("maskrcnn", "fasterrcnn", "retinanet", "fcos")
_RCNN = ("maskrcnn", "fasterrcnn")
_PAPERS = {
    "maskrcnn": "He et al., Mask R-CNN, ICCV 2017 (arXiv 1703.06870); torchvision's MaskRCNN",
    "fasterrcnn": "Ren et al., Faster R-CNN, NeurIPS 2015 (arXiv 1506.01497); torchvision's FasterRCNN",
    "retinanet": "Lin et al., Focal Loss for Dense Object Detection, ICCV 2017 (arXiv 1708.02002); torchvision's RetinaNet",
    "fcos": "Tian et al., FCOS, ICCV 2019 (arXiv 1904.01355); torchvision's FCOS",
}


class FPNBackbone(nn.Module):
    """A visattn ``features_only`` body + torchvision's FeaturePyramidNetwork: images (B, 3, H, W) ->
    ``OrderedDict`` ``"0".."n-1"`` (+ ``"pool"`` or ``"p6"``, ``"p7"``) of (B, out_channels, h, w).

    Args:
        body: a :class:`FeatureExtractor` (its maps, fine -> coarse).
        out_channels: FPN width (``self.out_channels``, what torchvision's heads read).
        extra: ``"pool"`` (LastLevelMaxPool: the R-CNNs), ``"p6p7"`` (LastLevelP6P7 on P5:
            RetinaNet, FCOS) or ``None``.
    """

    def __init__(self, body: FeatureExtractor, out_channels: int = 256, extra: str | None = "pool"):
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

        blocks: Any = None
        if extra == "pool":
            blocks = LastLevelMaxPool()
        elif extra == "p6p7":
            blocks = LastLevelP6P7(out_channels, out_channels)
        elif extra is not None:
            raise ValueError(f"extra must be 'pool', 'p6p7' or None, got {extra!r}")
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.feature_info.channels(), out_channels, extra_blocks=blocks)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def detector_levels(kind: str, info: FeatureInfo) -> list[int]:
    """Default feature levels of ``kind``: the last 4 (R-CNNs) or 3 (RetinaNet, FCOS), or all if fewer."""
    return list(range(len(info)))[-(4 if kind in _RCNN else 3) :]


def _default_anchors(kind: str, reductions: list[int]) -> tuple[tuple[tuple[int, ...], ...], tuple[float, ...]]:
    """Anchor sizes per returned map (the body's levels + the extra ones) and aspect ratios."""
    r = list(reductions)
    r += [r[-1] * 2] if kind in _RCNN else [r[-1] * 2, r[-1] * 4]
    if kind in _RCNN:
        return tuple((8 * s,) for s in r), (0.5, 1.0, 2.0)
    if kind == "retinanet":
        return tuple(tuple(int(4 * s * 2 ** (k / 3)) for k in range(3)) for s in r), (0.5, 1.0, 2.0)
    return tuple((s,) for s in r), (1.0,)


def build_detector(
    kind: str,
    backbone: str = "resnet50",
    num_classes: int = 91,
    attention: str | None = None,
    attn_kwargs: dict | None = None,
    *,
    backbone_kwargs: dict | None = None,
    backbone_indices=None,
    fpn_channels: int = 256,
    anchor_sizes=None,
    aspect_ratios=None,
    representation_size: int | None = None,
    mask_layers=None,
    canonical_scale: int = 224,
    canonical_level: int = 4,
    **kw,
) -> nn.Module:
    """A torchvision ``kind`` detector on registered classification model ``backbone``.

    Args:
        kind: one of :data:`DETECTORS`.
        backbone: a registered classification model (any family); ``attention`` / ``attn_kwargs``
            swap its mechanism; ``backbone_kwargs``: options of its builder.
        num_classes: classes including background for the R-CNNs (torchvision's convention:
            label 0 is background); RetinaNet and FCOS take the same count (label 0 never used).
        backbone_indices: the feature levels (default :func:`detector_levels`).
        fpn_channels: FPN width.
        anchor_sizes, aspect_ratios: per returned map (default: from the levels' reductions).
        representation_size: the R-CNN box head's MLP width (default torchvision's 1024).
        mask_layers: Mask R-CNN's mask-head conv widths (default torchvision's 4 x 256).
        canonical_scale, canonical_level: the RoI pooler's level mapping (torchvision's 224, 4).
        **kw: the torchvision constructor's own options (``min_size``, ``max_size``,
            ``image_mean``, ``image_std``, ``rpn_*``, ``box_*``, ``score_thresh``, ...).
    """
    from torchvision.models import detection as tvd
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    if kind not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS}, got {kind!r}")
    if not isinstance(backbone, str):
        raise TypeError(f"backbone must be a registered model name (str), got {type(backbone).__name__}")
    if model_entry(backbone).task != "classify":
        raise ValueError(
            f"backbone {backbone!r} is a {model_entry(backbone).task} model; expected a classification backbone"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"{kind}: num_classes must be an int >= 2 (background + classes), got {num_classes!r}")
    model = create_model(backbone, attention=attention, attn_kwargs=attn_kwargs, **(backbone_kwargs or {}))
    info = model.feature_info
    if not isinstance(info, FeatureInfo):
        raise TypeError(f"backbone {backbone!r} declares no feature levels (feature_info)")
    indices = backbone_indices if backbone_indices is not None else detector_levels(kind, info)
    body = FeatureExtractor(model, indices, name=backbone)
    red = body.feature_info.reduction()
    if any(b <= a for a, b in zip(red, red[1:])):
        raise ValueError(
            f"{kind} needs feature levels of increasing reduction; {backbone} levels {list(body.out_indices)} "
            f"have reductions {red}"
        )
    back = FPNBackbone(body, fpn_channels, "pool" if kind in _RCNN else "p6p7")
    sizes, ratios = _default_anchors(kind, red)
    sizes = tuple(tuple(s) for s in anchor_sizes) if anchor_sizes is not None else sizes
    ratios = tuple(aspect_ratios) if aspect_ratios is not None else ratios
    n_maps = len(red) + (1 if kind in _RCNN else 2)
    if len(sizes) != n_maps:
        raise ValueError(f"{kind}: anchor_sizes needs one tuple per feature map ({n_maps}), got {len(sizes)}")
    anchors = AnchorGenerator(sizes, (ratios,) * n_maps)
    c = fpn_channels
    if kind in _RCNN:
        names = [str(i) for i in range(len(red))]
        pool = {"canonical_scale": canonical_scale, "canonical_level": canonical_level}
        kw.setdefault("box_roi_pool", MultiScaleRoIAlign(names, 7, 2, **pool))
        if representation_size is not None:
            from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

            kw.setdefault("box_head", TwoMLPHead(c * 7 * 7, representation_size))
            kw.setdefault("box_predictor", FastRCNNPredictor(representation_size, num_classes))
        if kind == "maskrcnn":
            kw.setdefault("mask_roi_pool", MultiScaleRoIAlign(names, 14, 2, **pool))
            if mask_layers is not None:
                from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

                layers = tuple(mask_layers)
                kw.setdefault("mask_head", MaskRCNNHeads(c, layers, 1))
                kw.setdefault("mask_predictor", MaskRCNNPredictor(layers[-1], layers[-1], num_classes))
            k = None if "mask_predictor" in kw or "box_predictor" in kw else num_classes
            det: nn.Module = tvd.MaskRCNN(back, k, rpn_anchor_generator=anchors, **kw)
        else:
            k = None if "box_predictor" in kw else num_classes
            det = tvd.FasterRCNN(back, k, rpn_anchor_generator=anchors, **kw)
    elif kind == "retinanet":
        det = tvd.RetinaNet(back, num_classes, anchor_generator=anchors, **kw)
    else:
        if len(ratios) != 1 or any(len(s) != 1 for s in sizes):
            raise ValueError(f"fcos takes one anchor per location; got sizes {sizes} and ratios {ratios}")
        det = tvd.FCOS(back, num_classes, anchor_generator=anchors, **kw)
    tf: Any = det.transform
    side = int(tf.min_size[-1])
    setattr(det, "num_classes", num_classes)  # noqa: B010  (what `visattn info` reads; nn.Module's typed setattr)
    setattr(det, "example_input", lambda n: [torch.rand(3, side, side) for _ in range(n)])  # noqa: B010  (a list of images)
    return det


# ---------------------------------------------------------------------------
# Registered models
# ---------------------------------------------------------------------------

_TINY_BACKBONE = {
    "backbone": "resnet_tiny",
    "backbone_kwargs": {"widths": (8, 8, 16, 16), "stem_width": 8, "small_stem_stride": 2},
}
_TEST_RCNN = {
    **_TINY_BACKBONE,
    "fpn_channels": 16,
    "representation_size": 32,
    "mask_layers": (16,),
    "min_size": 64,
    "max_size": 64,
}
_TEST_DENSE = {
    **_TINY_BACKBONE,
    "fpn_channels": 32,  # FCOS heads: GroupNorm(32)
    "min_size": 64,
    "max_size": 64,
}


def _register_generic(kind: str) -> None:
    @register_model(
        kind,
        family="detect",
        task="detect",
        default_input=(3, 800, 800),
        test_input=(3, 64, 64),
        test_kwargs=_TEST_RCNN if kind in _RCNN else _TEST_DENSE,
        paper=_PAPERS[kind],
    )
    def build(
        num_classes: int = 91,
        attention: str | None = None,
        attn_kwargs: dict | None = None,
        backbone: str = "resnet50",
        **kw,
    ) -> nn.Module:
        return build_detector(kind, backbone, num_classes, attention, attn_kwargs, **kw)

    build.__name__ = kind
    build.__doc__ = f"torchvision's {kind} on any registered backbone (``backbone=NAME``); see :func:`build_detector`."


for _kind in DETECTORS:
    _register_generic(_kind)

_SLIDE_PAPER = "Pan et al., Slide-Transformer, CVPR 2023 (arXiv 2304.04237), Mask R-CNN 1x on COCO"
_PVT_PAPER = "Wang et al., Pyramid Vision Transformer, ICCV 2021 (arXiv 2102.12122), Mask R-CNN 1x on COCO"


def _register_paper(name: str, backbone: str, published: dict, paper: str) -> None:
    @register_model(
        name,
        family="detect",
        task="detect",
        default_input=(3, 800, 1333),
        test_input=(3, 64, 64),
        test_kwargs={
            **{k: v for k, v in _TEST_RCNN.items() if k != "backbone"},
            "backbone_kwargs": model_entry(backbone).test_kwargs,
        },
        published=published,
        paper=paper,
    )
    def build(num_classes: int = 81, attention: str | None = None, attn_kwargs: dict | None = None, **kw):
        return build_detector("maskrcnn", backbone, num_classes, attention, attn_kwargs, **kw)

    build.__name__ = name
    build.__doc__ = f"Mask R-CNN on ``{backbone}`` (COCO set-up: 80 classes + background, FPN 256)."


_register_paper("maskrcnn_pvt_t", "pvt_t", {"params_m": 32.9}, _PVT_PAPER)
_register_paper("maskrcnn_slide_pvt_t", "slide_pvt_t", {"params_m": 32.0}, _SLIDE_PAPER)

#: The CPU presets' options (64 px digit scenes): resnet_tiny with a stride-2 stem, levels at
#: reductions 4, 8, 16 + pool, FPN 64, no resize (64 -> 64), anchors 12-96 px, RoIs of 12-45 px
#: on the finest level, small heads and proposal counts.
TINY_PRESET: dict[str, Any] = {
    "backbone": "resnet_tiny",
    "backbone_kwargs": {"small_stem_stride": 2},
    "backbone_indices": (2, 3, 4),
    "fpn_channels": 64,
    "min_size": 64,
    "max_size": 64,
}
_TINY_RCNN: dict[str, Any] = {
    "anchor_sizes": ((12,), (24,), (48,), (96,)),
    "representation_size": 128,
    "mask_layers": (32, 32),
    "canonical_scale": 32,
    "canonical_level": 3,
    "rpn_pre_nms_top_n_train": 300,
    "rpn_post_nms_top_n_train": 150,
    "rpn_pre_nms_top_n_test": 150,
    "rpn_post_nms_top_n_test": 75,
    "rpn_batch_size_per_image": 64,
    "box_batch_size_per_image": 32,
}
_TINY_DENSE: dict[str, dict[str, Any]] = {
    "retinanet": {"anchor_sizes": tuple((s, round(s * 1.26), round(s * 1.59)) for s in (10, 20, 40, 80, 160))},
    "fcos": {"anchor_sizes": ((4,), (8,), (16,), (32,), (64,))},
}


def tiny_preset(kind: str) -> dict[str, Any]:
    """The options of ``{kind}_resnet_tiny`` (a copy)."""
    extra = _TINY_RCNN if kind in _RCNN else _TINY_DENSE[kind]
    return {**TINY_PRESET, **extra, "backbone_kwargs": dict(TINY_PRESET["backbone_kwargs"])}


def _register_tiny(kind: str) -> None:
    @register_model(
        f"{kind}_resnet_tiny",
        family="detect",
        task="detect",
        default_input=(3, 64, 64),
        test_input=(3, 64, 64),
        test_kwargs={}
        if kind not in _RCNN
        else {"fpn_channels": 16, "mask_layers": (16,)},  # FCOS: GroupNorm(32) on 1x1 P7
        paper=_PAPERS[kind] + "; backbone: resnet_tiny (CPU preset for 64 px scenes)",
    )
    def build(num_classes: int = 11, attention: str | None = None, attn_kwargs: dict | None = None, **kw):
        cfg = tiny_preset(kind)
        if kind == "fasterrcnn":
            cfg.pop("mask_layers")
        cfg["backbone_kwargs"].update(kw.pop("backbone_kwargs", None) or {})
        cfg.update(kw)
        backbone = cfg.pop("backbone")
        return build_detector(kind, backbone, num_classes, attention, attn_kwargs, **cfg)

    build.__name__ = f"{kind}_resnet_tiny"
    build.__doc__ = (
        f"{kind} on ``resnet_tiny`` for 64 px scenes (levels at 4, 8, 16 + extra, FPN 64, no resize); "
        "11 classes (background + 10 digits)."
    )


for _kind in DETECTORS:
    _register_tiny(_kind)
