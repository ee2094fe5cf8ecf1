"""Semantic segmentation models: a visattn backbone's feature levels + a decode head.

Every model maps images (B, C, H, W) to logits (B, num_classes, H, W) at the input resolution,
for any H, W (the head's logits are resized bilinearly). The backbone is a
:class:`~visattn.models.features.FeatureExtractor` over any registered classification model,
so ``attention=NAME`` swaps the mechanism of the backbone exactly as in classification.

* **EANet** (Guo et al., "Beyond Self-attention: External Attention using Two Linear Layers for
  Visual Tasks", arXiv 2105.02358), as the authors' released code builds it: dilated ResNet
  (deep 3x3 stem 64-64-128, output stride 8: stages 3-4 dilated 2 and 4) -> 3x3 conv-BN-ReLU
  2048 -> 512 -> the external-attention module (:class:`~visattn.models.heads.ExternalAttentionHead`,
  S = 64) -> 3x3 conv-BN-ReLU 512 -> 256 -> Dropout2d(0.1) -> 1x1 classifier -> bilinear
  upsampling (align_corners=True, as the authors). Registered: ``eanet_r50``, ``eanet_r101``
  (21 classes: PASCAL VOC). Differences from the authors' code: stage 4 has no multi-grid by
  default (their blocks 2-3 use dilation 8 and 16, ours 4; parameters are the same;
  ``multi_grid=(1, 2, 4)`` gives theirs and their VOC weights load with it), M_k and M_v are two
  memories (``tie_memories=True`` for the code's tied ones), no auxiliary loss (neither has one).
  The paper publishes no parameter count; ours: 34.85M (R-50) and 53.84M (R-101) at 21 classes
  (tests/models/test_segmentation.py re-derives them by arithmetic).
* **Semantic FPN** (Kirillov et al., "Panoptic Feature Pyramid Networks", arXiv 1901.02446; the
  set-up PVT and Slide-Transformer use on ADE20K): FPN over the backbone's last 4 levels
  (1x1 laterals, top-down nearest upsampling and sums, 3x3 outputs; 256 channels), per level
  conv3x3-GroupNorm-ReLU stages each followed by a 2x bilinear upsampling until the finest
  level's resolution (one stage without upsampling for the finest), sum, Dropout2d(0.1),
  1x1 classifier, bilinear upsampling to the input. Takes any backbone by name:
  ``create_model("semantic_fpn", backbone="slide_pvt_t", num_classes=150)``; registered
  ``fpn_pvt_t`` (PVT paper: 17.0M parameters, 35.7% ADE20K mIoU; ours 16.98M),
  ``fpn_slide_pvt_t`` (15.95M) and the small ``fpn_resnet_tiny`` for CPU runs (64 x 64 scenes).
  On a one-scale backbone (SAN, EAMLP) the last 4 blocks are all at one reduction: no upsampling
  stages.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visattn.layers.base import check_positive_int
from visattn.models.base import check_images
from visattn.models.blocks import config_from_kwargs, find_mixers
from visattn.models.features import FeatureExtractor, FeatureInfo
from visattn.models.heads import ExternalAttentionHead
from visattn.models.resnet import _DEPTHS, ResNetConfig, _build
from visattn.registry import create_model, model_entry, register_model

__all__ = ["SegmentationModel", "EANet", "EANetHead", "FPN", "SemanticFPNHead", "SemanticFPN"]

_EANET_PAPER = (
    "Guo et al., Beyond Self-attention: External Attention using Two Linear Layers for Visual Tasks (arXiv 2105.02358)"
)
_FPN_PAPER = "Kirillov et al., Panoptic Feature Pyramid Networks (arXiv 1901.02446)"
_PVT_PAPER = "Wang et al., Pyramid Vision Transformer, ICCV 2021 (arXiv 2102.12122), Semantic FPN on ADE20K"
_SLIDE_PAPER = "Pan et al., Slide-Transformer, CVPR 2023 (arXiv 2304.04237), Semantic FPN on ADE20K"


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SegmentationModel(nn.Module):
    """Backbone (a :class:`FeatureExtractor`) + ``decode_head`` (feature list -> logits at the
    head's resolution) + bilinear upsampling to the input: (B, C, H, W) -> (B, num_classes, H, W)."""

    align_corners: bool = False

    def __init__(self, backbone: FeatureExtractor, decode_head: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.num_classes = num_classes
        self.in_chans = backbone.model.in_chans

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_chans, H, W) -> logits (B, num_classes, H, W)."""
        check_images(type(self).__name__, x, self.in_chans, self)
        logits = self.decode_head(self.backbone(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners)

    def named_mixers(self) -> list[tuple[str, nn.Module]]:
        """The spatial mixers of backbone and head, as (dotted name, module) (the rule of
        :meth:`visattn.models.VisionModel.named_mixers`)."""
        return find_mixers(self)

    def mixers(self) -> list[nn.Module]:
        return [m for _, m in self.named_mixers()]

    def get_classifier(self) -> nn.Conv2d:
        return self.decode_head.get_submodule("classifier")  # type: ignore[return-value]  # get_submodule is typed nn.Module; this one is the head's Conv2d

    def reset_classifier(self, num_classes: int) -> None:
        """A new 1x1 classifier for ``num_classes`` (fine-tuning on another label set)."""
        check_positive_int("num_classes", num_classes)
        old = self.get_classifier()
        self.decode_head.classifier = nn.Conv2d(old.in_channels, num_classes, 1).to(old.weight.device)
        self.num_classes = num_classes


class EANetHead(nn.Module):
    """EANet's head on the last feature map: (B, C_in, h, w) -> (B, num_classes, h, w).

    3x3 conv-BN-ReLU (C_in -> channels) -> :class:`ExternalAttentionHead` -> 3x3 conv-BN-ReLU
    (channels -> mid_channels) -> Dropout2d -> 1x1 classifier (with bias).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        channels: int = 512,
        mid_channels: int = 256,
        memory_size: int = 64,
        tie_memories: bool = False,
        dropout: float = 0.1,
    ):
        super().__init__()
        for name, v in (
            ("in_channels", in_channels),
            ("num_classes", num_classes),
            ("channels", channels),
            ("mid_channels", mid_channels),
        ):
            check_positive_int(name, v)
        self.fc0 = _conv_bn_relu(in_channels, channels)
        self.ea = ExternalAttentionHead(channels, memory_size=memory_size, tie_memories=tie_memories)
        self.fc1 = _conv_bn_relu(channels, mid_channels)
        self.drop = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(mid_channels, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.drop(self.fc1(self.ea(self.fc0(feats[-1])))))


class EANet(SegmentationModel):
    """EANet: backbone's last level -> :class:`EANetHead` -> bilinear upsampling (align_corners=True).

    Args:
        backbone: a :class:`FeatureExtractor` (its last map is used).
        num_classes: classes K; the other keyword arguments go to :class:`EANetHead`.
    """

    align_corners = True

    def __init__(self, backbone: FeatureExtractor, num_classes: int = 21, **head_kw):
        head = EANetHead(backbone.feature_info.channels(-1), num_classes, **head_kw)
        super().__init__(backbone, head, num_classes)


class FPN(nn.Module):
    """Feature pyramid (Lin et al., arXiv 1612.03144): maps [(B, C_i, H_i, W_i)] fine -> coarse ->
    [(B, out_channels, H_i, W_i)]: 1x1 laterals, top-down nearest upsampling + sum, 3x3 outputs."""

    def __init__(self, in_channels: list[int], out_channels: int = 256):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        lat = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-2:], mode="nearest")
        return [conv(t) for conv, t in zip(self.output, lat)]


class _ScaleHead(nn.Module):
    """``steps`` x (3x3 conv, GroupNorm, ReLU[, 2x bilinear upsampling]) for one level."""

    def __init__(self, c_in: int, channels: int, ups: int, groups: int):
        super().__init__()
        self.ups = ups
        self.convs = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c_in if k == 0 else channels, channels, 3, padding=1, bias=False),
                nn.GroupNorm(groups, channels),
                nn.ReLU(inplace=True),
            )
            for k in range(max(1, ups))
        )

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        for k, conv in enumerate(self.convs):
            x = conv(x)
            if self.ups:
                # 2x steps; targets are the finest size / 2^(remaining steps), rounded up, which
                # are the sizes of the intermediate levels under the ceil(H / r) rule.
                left = self.ups - k - 1
                target = (math.ceil(size[0] / 2**left), math.ceil(size[1] / 2**left))
                x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
        return x


class SemanticFPNHead(nn.Module):
    """Semantic FPN's decode head: backbone maps (fine -> coarse) -> logits at the finest level's size.

    FPN (``fpn_channels``) -> per level conv3x3-GroupNorm-ReLU stages, level i with
    log2(r_i / r_0) stages each followed by 2x bilinear upsampling (the finest: one stage, no
    upsampling) -> sum -> Dropout2d -> 1x1 classifier.

    Args:
        in_channels: channels of every backbone level.
        reductions: reduction of every level (fine -> coarse; each the finest times a power of 2).
        num_classes: classes K.
        fpn_channels: FPN width (256).
        channels: width of the per-level stages (Panoptic FPN: 128).
        norm_groups: GroupNorm groups (32; reduced to a divisor of ``channels``).
        dropout: Dropout2d before the classifier.
    """

    def __init__(
        self,
        in_channels: list[int],
        reductions: list[int],
        num_classes: int,
        *,
        fpn_channels: int = 256,
        channels: int = 128,
        norm_groups: int = 32,
        dropout: float = 0.1,
    ):
        super().__init__()
        for name, v in (
            ("num_classes", num_classes),
            ("fpn_channels", fpn_channels),
            ("channels", channels),
            ("norm_groups", norm_groups),
        ):
            check_positive_int(name, v)
        ups = []
        for r in reductions:
            ratio = r / reductions[0]
            if ratio < 1 or ratio != 2 ** round(math.log2(ratio)):
                raise ValueError(
                    f"Semantic FPN needs levels whose reductions are the finest one times powers of "
                    f"2, got {list(reductions)}"
                )
            ups.append(round(math.log2(ratio)))
        groups = math.gcd(norm_groups, channels)
        self.fpn = FPN(list(in_channels), fpn_channels)
        self.scale_heads = nn.ModuleList(_ScaleHead(fpn_channels, channels, u, groups) for u in ups)
        self.drop = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        feats = self.fpn(feats)
        size = tuple(feats[0].shape[-2:])
        y = self.scale_heads[0](feats[0], size)
        for head, f in zip(self.scale_heads[1:], feats[1:]):
            y = y + head(f, size)
        return self.classifier(self.drop(y))


class SemanticFPN(SegmentationModel):
    """Semantic FPN on a backbone's levels: :class:`SemanticFPNHead` -> bilinear upsampling to the input.

    Args:
        backbone: a :class:`FeatureExtractor` (its maps, fine -> coarse, feed the FPN).
        num_classes: classes K; the other keyword arguments go to :class:`SemanticFPNHead`.
    """

    def __init__(self, backbone: FeatureExtractor, num_classes: int = 150, **head_kw):
        info = backbone.feature_info
        super().__init__(
            backbone, SemanticFPNHead(info.channels(), info.reduction(), num_classes, **head_kw), num_classes
        )


# ---------------------------------------------------------------------------
# Registered models
# ---------------------------------------------------------------------------


_HEAD_KEYS = ("channels", "mid_channels", "memory_size", "tie_memories", "dropout")


def _eanet_backbone(depth: int, attention, attn_kwargs, **kw) -> FeatureExtractor:
    cfg = ResNetConfig(depths=_DEPTHS[depth], stem_width=128, deep_stem=True, output_stride=8, img_size=512)
    # the one unknown-option message, naming the model and the head's options too
    config_from_kwargs(f"eanet_r{depth}", cfg, kw, extra=("in_chans", "drop_rate", *_HEAD_KEYS))
    model = _build(cfg, 0, attention, attn_kwargs, **kw)
    return FeatureExtractor(model, out_indices=(-1,), name=f"resnet{depth} (dilated)")


_EANET_TEST = {
    "depths": (1, 1, 1, 1),
    "widths": (8, 16, 16, 16),
    "stem_width": 8,
    "channels": 16,
    "mid_channels": 8,
    "memory_size": 8,
}


def _register_eanet(depth: int) -> None:
    @register_model(
        f"eanet_r{depth}",
        family="eanet",
        task="segment",
        default_input=(3, 512, 512),
        test_input=(3, 64, 64),
        test_kwargs=_EANET_TEST,
        paper=_EANET_PAPER,
    )
    def build(num_classes: int = 21, attention: str | None = None, attn_kwargs: dict | None = None, **kw) -> EANet:
        head_kw = {k: kw.pop(k) for k in _HEAD_KEYS if k in kw}
        return EANet(_eanet_backbone(depth, attention, attn_kwargs, **kw), num_classes, **head_kw)

    build.__name__ = f"eanet_r{depth}"
    build.__doc__ = (
        f"EANet on a dilated ResNet-{depth} (output stride 8); ``attention=NAME`` puts a mechanism in "
        "the backbone's 3x3 slots; ResNetConfig fields and head options as keywords."
    )


_register_eanet(50)
_register_eanet(101)

_FPN_KEYS = ("fpn_channels", "channels", "norm_groups", "dropout")


def build_semantic_fpn(
    backbone: str = "pvt_t",
    num_classes: int = 150,
    attention: str | None = None,
    attn_kwargs: dict | None = None,
    backbone_indices=None,
    backbone_kwargs: dict | None = None,
    **head_kw,
) -> SemanticFPN:
    """Semantic FPN over registered classification model ``backbone`` (any mechanism via ``attention``).

    ``backbone_indices``: the feature levels to use (default: the backbone's last 4, or all if it has fewer);
    ``backbone_kwargs``: options of the backbone's builder; ``head_kw``: ``fpn_channels``,
    ``channels``, ``norm_groups``, ``dropout``.
    """
    if not isinstance(backbone, str):
        raise TypeError(f"backbone must be a registered model name (str), got {type(backbone).__name__}")
    if model_entry(backbone).task != "classify":
        raise ValueError(
            f"backbone {backbone!r} is a {model_entry(backbone).task} model; expected a classification backbone"
        )
    unknown = sorted(set(head_kw) - set(_FPN_KEYS))
    if unknown:
        raise TypeError(
            f"semantic_fpn: unknown option(s) {unknown}; expected backbone, backbone_indices, "
            f"backbone_kwargs or {list(_FPN_KEYS)}"
        )
    model = create_model(backbone, attention=attention, attn_kwargs=attn_kwargs, **(backbone_kwargs or {}))
    info = model.feature_info
    if not isinstance(info, FeatureInfo):
        raise TypeError(f"backbone {backbone!r} declares no feature levels (feature_info)")
    indices = backbone_indices if backbone_indices is not None else min(4, len(info))
    return SemanticFPN(FeatureExtractor(model, indices, name=backbone), num_classes, **head_kw)


_FPN_TEST = {"fpn_channels": 16, "channels": 8, "norm_groups": 4}


@register_model(
    "semantic_fpn",
    family="semantic_fpn",
    task="segment",
    default_input=(3, 512, 512),
    test_input=(3, 64, 64),
    paper=_FPN_PAPER,
    test_kwargs={**_FPN_TEST, "backbone": "resnet_tiny", "backbone_kwargs": {"widths": (4, 8, 8, 8), "stem_width": 8}},
)
def semantic_fpn(
    num_classes: int = 150, attention: str | None = None, attn_kwargs: dict | None = None, backbone: str = "pvt_t", **kw
) -> SemanticFPN:
    """Semantic FPN on any registered backbone (``backbone=NAME``, default ``pvt_t``); see :func:`build_semantic_fpn`."""
    return build_semantic_fpn(backbone, num_classes, attention, attn_kwargs, **kw)


def _register_fpn(name: str, backbone: str, test_backbone_kw: dict, published: dict, paper: str) -> None:
    @register_model(
        name,
        family="semantic_fpn",
        task="segment",
        default_input=(3, 512, 512),
        test_input=(3, 64, 64),
        test_kwargs={**_FPN_TEST, "backbone_kwargs": test_backbone_kw},
        published=published,
        paper=paper,
    )
    def build(
        num_classes: int = 150, attention: str | None = None, attn_kwargs: dict | None = None, **kw
    ) -> SemanticFPN:
        return build_semantic_fpn(backbone, num_classes, attention, attn_kwargs, **kw)

    build.__name__ = name
    build.__doc__ = f"Semantic FPN on ``{backbone}`` (ADE20K set-up: 150 classes, 512 x 512)."


_register_fpn("fpn_pvt_t", "pvt_t", model_entry("pvt_t").test_kwargs, {"params_m": 17.0, "miou": 35.7}, _PVT_PAPER)
_register_fpn("fpn_slide_pvt_t", "slide_pvt_t", model_entry("slide_pvt_t").test_kwargs, {}, _SLIDE_PAPER)

# The CPU model: resnet_tiny with a stride-2 stem (levels at 2, 4, 8, 16 for 64 x 64 scenes), a
# 32-wide FPN and 32-wide heads (a train step at batch 8, 64 x 64: ~0.18 s on one core,
# benchmarks/segment_step.py).
_TINY_BACKBONE = {"small_stem_stride": 2}


@register_model(
    "fpn_resnet_tiny",
    family="semantic_fpn",
    task="segment",
    default_input=(3, 64, 64),
    test_input=(3, 64, 64),
    test_kwargs={"fpn_channels": 16, "channels": 8},
    paper=_FPN_PAPER + "; backbone: resnet_tiny",
)
def fpn_resnet_tiny(
    num_classes: int = 11, attention: str | None = None, attn_kwargs: dict | None = None, **kw
) -> SemanticFPN:
    """Semantic FPN on ``resnet_tiny`` with a stride-2 stem (levels at reductions 2, 4, 8, 16),
    FPN 32 channels, heads 32 channels, 8 norm groups; 11 classes (digits + background)."""
    cfg: dict[str, Any] = {"fpn_channels": 32, "channels": 32, "norm_groups": 8}
    cfg.update(kw)
    cfg["backbone_kwargs"] = {**_TINY_BACKBONE, **(cfg.get("backbone_kwargs") or {})}
    return build_semantic_fpn("resnet_tiny", num_classes, attention, attn_kwargs, **cfg)
