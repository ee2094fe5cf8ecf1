"""ResNet-style bottleneck backbones whose 3x3 slot takes any registered mechanism.

A network is a declarative :class:`ResNetConfig`; its ``mixer`` field names the mechanism
(``visattn.create_attention``) that replaces the 3x3 convolution of every bottleneck in the
stages listed by ``mixer_stages`` (other stages keep the 3x3 convolution), so a hybrid or a
new mechanism needs no model code.

Registered models:

* ``resnet26`` / ``resnet38`` / ``resnet50``: bottleneck ResNets (He et al., "Deep Residual
  Learning for Image Recognition", arXiv 1512.03385; stride on the 3x3 convolution, "v1.5")
  with stage depths (2, 2, 2, 2), (2, 3, 5, 2), (3, 4, 6, 3);
* ``lambda_resnet26`` / ``lambda_resnet38`` / ``lambda_resnet50``: the same layouts with every
  3x3 convolution of the bottlenecks replaced by a lambda layer (Bello, "LambdaNetworks:
  Modeling Long-Range Interactions Without Attention", arXiv 2102.08602; k=16, h=4, u=1,
  r=23). A strided block runs its lambda layer at stride 1 followed by a 3x3 average pool
  with stride 2, as the paper does; BatchNorm + ReLU after it as after the convolution.
  ``lambda_resnet50`` has 15.0M parameters (paper: 15.0M); with
  ``attn_kwargs={"intra_depth": 4, "local_scope": 7}`` 16.0M (paper: 16.0M);
* ``resnet_tiny``: a 4-stage bottleneck network for 32 x 32 inputs (3x3 stem, no
  max-pool, one block per stage, 0.31M parameters for 10 classes) whose slot ``visattn compare`` fills
  with each mechanism in turn;
* ``lambda_resnet26t`` / ``lambda_resnet50ts`` / ``lambda_resnet26rpt_256``: the layouts of timm's
  LambdaResNets, whose ImageNet weights load exactly (docs/weights.md): tiered 3x3 stem 24-32-64,
  lambda layers (k=16, h=4, u=1) only in the blocks timm puts them (26t/26rpt: stage 3 block 2,
  stage 4; 50ts: stage 2 block 4, stage 3 blocks 2, 4, 6, stage 4 block 2), a 2x2 average pool
  after the strided one, SiLU throughout in 50ts; a lambda convolution r=9 with a bias (26t,
  50ts) or a global relative table over 256 x 256 inputs (26rpt).

Not implemented: the LambdaResNet-101...420 scaling family (its deeper stages, image sizes
and the conv stages they keep), squeeze-excitation, stochastic depth.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from visattn.layers.base import check_choice, check_positive_int
from visattn.models.base import VisionModel
from visattn.models.blocks import (
    MixerOverride,
    coerce_overrides,
    config_builder,
    init_backbone_weights,
    make_mixer,
    plan_mixers,
)
from visattn.models.features import FeatureInfo
from visattn.models.pos_embed import ConvPosEmbed
from visattn.registry import register_model

__all__ = ["ResNetConfig", "ResNet", "Bottleneck", "LAMBDA_DEFAULTS", "LAMBDA_TIMM", "LAMBDA_TIMM_RPT"]

#: The paper's ImageNet lambda layer: k=16, h=4, u=1, r=23.
LAMBDA_DEFAULTS: dict[str, Any] = {"num_heads": 4, "key_dim": 16, "intra_depth": 1, "local_scope": 23}

_LAMBDA_PAPER = (
    "Bello, LambdaNetworks: Modeling Long-Range Interactions Without Attention (ICLR 2021, arXiv 2102.08602)"
)
_RESNET_PAPER = "He et al., Deep Residual Learning for Image Recognition (arXiv 1512.03385)"
_TIMM_LAMBDA_PAPER = _LAMBDA_PAPER + "; layout of timm's lambda ResNets (Wightman, pytorch-image-models, byoanet.py)"

#: Activations of the ``act`` option.
_ACTS = ("relu", "silu")


def _act(name: str) -> nn.Module:
    return nn.SiLU(inplace=True) if name == "silu" else nn.ReLU(inplace=True)


@dataclass(frozen=True)
class ResNetConfig:
    """Declarative description of a bottleneck ResNet.

    Attributes:
        depths: blocks per stage.
        widths: bottleneck (3x3 slot) width per stage; block output is ``width * expansion``.
        expansion: output / bottleneck width.
        stem_width: channels after the stem.
        small_stem: 3x3 stem without max-pool (32 x 32 inputs) instead of the 7x7 stride-2 stem
            with a 3x3 stride-2 max-pool.
        small_stem_stride: stride of the small stem's convolution (1 or 2).
        deep_stem: the large stem as three 3x3 convolutions (stride 2, widths stem_width / 2,
            stem_width / 2, stem_width, each with BatchNorm + ReLU) before the max-pool, as in
            PSPNet / EANet (the authors' EANet code: 64, 64, 128), instead of one 7x7.
        output_stride: total stride of the last stage. Less than the natural one (32, or 8 x
            ``small_stem_stride`` with the small stem) replaces the stride of the last one or two
            stages by dilation (PSPNet / DeepLab "dilated ResNet"): output_stride 8 gives stages
            3-4 dilation 2 and 4; the first block of a dilated stage keeps the previous dilation
            (torchvision's rule). A mechanism in a dilated stage ignores the dilation.
        mixer: registered mechanism name for the 3x3 slot; ``None`` keeps the 3x3 convolution.
        mixer_kwargs: constructor arguments of the mechanism.
        mixer_stages: indices (0-based) of the stages whose blocks use ``mixer``; ``None``: all.
        img_size: input side the model is built for; fills ``max_size``-style arguments of
            mechanisms that declare one (``AttentionInfo.max_resolution_arg``) when not given.
        mixer_overrides: per-stage / per-block mechanisms or arguments
            (:class:`~visattn.models.blocks.MixerOverride`); a stage override puts a mechanism in
            that stage's slots whether or not it is in ``mixer_stages``.
        pos_embed: put a depthwise-conv position encoding (:class:`~visattn.models.pos_embed.ConvPosEmbed`,
            CPVT / PVTv2) before every mechanism in the slot; gives content-only mechanisms position.
        multi_grid: DeepLab's multi-grid for the last stage, one factor per block: block j's
            dilation is multiplied by ``multi_grid[j]`` (block 0's is the dilation it keeps from the
            previous stage). The EANet authors' code: (1, 2, 4) at output stride 8 gives dilations
            2, 8, 16 instead of 2, 4, 4.
        stem_widths: the three widths of a 3x3-conv stem (each conv + BatchNorm + activation,
            then the max-pool), e.g. timm's tiered stem (24, 32, 64); the last is ``stem_width``.
            Implies the three-conv stem (``deep_stem``'s, with these widths).
        act: the activation everywhere: "relu" or "silu" (timm's lambda_resnet50ts).
        mixer_downsample: the pool after a mechanism in a strided block: "avg3x3" (3x3, stride 2,
            padding 1: the LambdaNetworks paper) or "avg2x2" (2x2, stride 2: timm).
    """

    depths: tuple[int, ...] = (3, 4, 6, 3)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    expansion: int = 4
    stem_width: int = 64
    small_stem: bool = False
    small_stem_stride: int = 1
    deep_stem: bool = False
    output_stride: int | None = None
    mixer: str | None = None
    mixer_kwargs: dict[str, Any] = field(default_factory=dict)
    mixer_stages: tuple[int, ...] | None = None
    img_size: int = 224
    pos_embed: bool = False
    mixer_overrides: tuple[MixerOverride, ...] = ()
    multi_grid: tuple[int, ...] | None = None
    stem_widths: tuple[int, ...] | None = None
    act: str = "relu"
    mixer_downsample: str = "avg3x3"

    def __post_init__(self):
        object.__setattr__(self, "mixer_overrides", coerce_overrides(self.mixer_overrides))
        check_choice("act", self.act, _ACTS)
        check_choice("mixer_downsample", self.mixer_downsample, ("avg3x3", "avg2x2"))
        if self.multi_grid is not None:
            grid = tuple(self.multi_grid)
            if len(grid) != self.depths[-1] or not all(isinstance(g, int) and g >= 1 for g in grid):
                raise ValueError(
                    f"multi_grid needs one int >= 1 per block of the last stage ({self.depths[-1]}), "
                    f"got {self.multi_grid!r}"
                )
        if self.stem_widths is not None:
            widths = tuple(self.stem_widths)
            if len(widths) != 3 or not all(isinstance(w, int) and w >= 1 for w in widths):
                raise ValueError(f"stem_widths needs three ints >= 1, got {self.stem_widths!r}")
            if widths[-1] != self.stem_width:
                raise ValueError(f"stem_widths must end with stem_width={self.stem_width}, got {self.stem_widths!r}")
            if self.small_stem:
                raise ValueError("stem_widths describes the large (stride 4) stem; it cannot go with small_stem=True")
        if len(self.depths) != len(self.widths):
            raise ValueError(
                f"depths and widths need one entry per stage, got {len(self.depths)} depths "
                f"and {len(self.widths)} widths"
            )
        for d in self.depths:
            check_positive_int("depths[i]", d)
        for w in self.widths:
            check_positive_int("widths[i]", w)
        if self.small_stem_stride not in (1, 2):
            raise ValueError(f"small_stem_stride must be 1 or 2, got {self.small_stem_stride!r}")
        if self.output_stride is not None:
            natural = self.natural_stride()
            allowed = sorted({natural >> k for k in range(min(3, len(self.depths)))})
            if self.output_stride not in allowed:
                raise ValueError(
                    f"output_stride must be one of {allowed} for this stem and {len(self.depths)} "
                    f"stages, got {self.output_stride!r}"
                )
        if self.mixer_stages is not None:
            bad = [s for s in self.mixer_stages if not (isinstance(s, int) and 0 <= s < len(self.depths))]
            if bad:
                raise ValueError(
                    f"mixer_stages must hold stage indices in 0..{len(self.depths) - 1}, got {tuple(self.mixer_stages)}"
                )

    def natural_stride(self) -> int:
        """Total stride without dilation: stem x 2 per stage after the first."""
        stem = self.small_stem_stride if self.small_stem else 4
        return stem * 2 ** (len(self.depths) - 1)

    def stage_strides_and_dilations(self) -> list[tuple[int, int, int]]:
        """Per stage: (stride, dilation of its first block, dilation of the other blocks)."""
        n = len(self.depths)
        k = 0 if self.output_stride is None else int(math.log2(self.natural_stride() // self.output_stride))
        out, dil = [], 1
        for i in range(n):
            stride = 2 if i > 0 else 1
            first = dil
            if i >= n - k:
                dil, stride = dil * 2, 1
            out.append((stride, first, dil))
        return out


class Bottleneck(nn.Module):
    """1x1 -> 3x3 slot (conv or mechanism) -> 1x1, BatchNorm + ReLU, identity/projection shortcut.

    Shapes: (B, C_in, H, W) -> (B, width * expansion, H / stride, W / stride) (rounded up).
    A mechanism in a strided block runs at stride 1 and is followed by AvgPool2d(3, 2, 1)
    (``downsample="avg2x2"``: AvgPool2d(2, 2)); ``act`` names the activation;
    ``dilation`` applies to the 3x3 convolution only; ``size`` (the side of the slot's map at the
    model's ``img_size``) fills the mechanism's ``max_resolution_arg`` (:func:`~visattn.models.blocks.make_mixer`);
    ``where`` names the slot in its errors.
    """

    def __init__(
        self,
        in_ch: int,
        width: int,
        out_ch: int,
        stride: int = 1,
        mixer: str | None = None,
        mixer_kwargs: dict | None = None,
        dilation: int = 1,
        pos_embed: bool = False,
        size: int | None = None,
        where: str = "",
        act: str = "relu",
        downsample: str = "avg3x3",
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2: nn.Module
        if mixer is None:
            self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        else:
            attn = make_mixer(mixer, width, mixer_kwargs or {}, size=size, dim_out=width, where=where)
            if pos_embed:
                attn = nn.Sequential(ConvPosEmbed(width), attn)
            pool = nn.AvgPool2d(3, stride, 1) if downsample == "avg3x3" else nn.AvgPool2d(stride, stride)
            self.conv2 = attn if stride == 1 else nn.Sequential(attn, pool)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.act = _act(act)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.act(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.act(y + self.shortcut(x))


class ResNet(VisionModel):
    """Bottleneck ResNet built from a :class:`ResNetConfig` (see the module docstring).

    Args:
        cfg: the configuration.
        num_classes: classifier outputs (0: pooled features).
        in_chans: input channels.
        drop_rate: dropout before the classifier.

    Shapes: images (B, in_chans, H, W) -> features (B, widths[-1] * expansion, ceil(H / s),
    ceil(W / s)) with s = ``output_stride`` (default 32; 8 x ``small_stem_stride`` with
    ``small_stem``) -> logits (B, num_classes).

    Feature levels (``feature_info``, :meth:`forward_intermediates`): 0 = the stem (its last
    ReLU, before the max-pool; reduction 2, or ``small_stem_stride``), 1..4 = the stages; level i
    of an (H, W) input is (ceil(H / r_i), ceil(W / r_i)).
    """

    def __init__(
        self,
        cfg: ResNetConfig,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        attention: str | None = None,
        attn_kwargs: dict | None = None,
    ):
        super().__init__()
        has_mechanism = cfg.mixer is not None or any(o.mixer is not None for o in cfg.mixer_overrides)
        if attn_kwargs and attention is None and not has_mechanism:
            raise ValueError(
                "attn_kwargs were given but this model has no mechanism in its 3x3 slot; pass attention=NAME as well"
            )
        self.cfg = cfg
        self.in_chans = in_chans
        w = cfg.stem_width
        if cfg.small_stem:
            s = cfg.small_stem_stride
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, w, 3, stride=s, padding=1, bias=False), nn.BatchNorm2d(w), _act(cfg.act)
            )
            reduction = s
        else:
            if cfg.deep_stem or cfg.stem_widths is not None:
                w0, w1, _ = cfg.stem_widths if cfg.stem_widths is not None else (w // 2, w // 2, w)
                convs = [
                    nn.Conv2d(in_chans, w0, 3, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(w0),
                    _act(cfg.act),
                    nn.Conv2d(w0, w1, 3, padding=1, bias=False),
                    nn.BatchNorm2d(w1),
                    _act(cfg.act),
                    nn.Conv2d(w1, w, 3, padding=1, bias=False),
                ]
            else:
                convs = [nn.Conv2d(in_chans, w, 7, stride=2, padding=3, bias=False)]
            self.stem = nn.Sequential(*convs, nn.BatchNorm2d(w), _act(cfg.act), nn.MaxPool2d(3, stride=2, padding=1))
            reduction = 2
        size = math.ceil(cfg.img_size / (cfg.small_stem_stride if cfg.small_stem else 4))
        info = [
            {"num_chs": w, "reduction": reduction, "module": f"stem.{len(self.stem) - (1 if cfg.small_stem else 2)}"}
        ]
        reduction = reduction if cfg.small_stem else 2 * reduction
        stages = []
        in_ch = w
        n = len(cfg.depths)
        slots = [cfg.mixer_stages is None or i in cfg.mixer_stages for i in range(n)]
        mixers = plan_mixers(
            cfg.depths,
            [cfg.mixer if slot else None for slot in slots],
            [cfg.mixer_kwargs] * n,
            cfg.mixer_overrides,
            attention,
            attn_kwargs,
            swappable=slots,
        )
        plan = cfg.stage_strides_and_dilations()
        for i, (depth, width) in enumerate(zip(cfg.depths, cfg.widths)):
            blocks = []
            out_ch = width * cfg.expansion
            stage_stride, first_dil, dil = plan[i]
            for j in range(depth):
                stride = stage_stride if j == 0 else 1
                mixer, mixer_kwargs = mixers[i][j]
                dilation = first_dil if j == 0 else dil
                if cfg.multi_grid is not None and i == n - 1:
                    dilation *= cfg.multi_grid[j]
                blocks.append(
                    Bottleneck(
                        in_ch,
                        width,
                        out_ch,
                        stride,
                        mixer,
                        mixer_kwargs,
                        dilation=dilation,
                        pos_embed=cfg.pos_embed,
                        size=size,
                        where=f"stage {i} block {j}",
                        act=cfg.act,
                        downsample=cfg.mixer_downsample,
                    )
                )
                in_ch = out_ch
                size = math.ceil(size / stride)
            reduction *= stage_stride
            stages.append(nn.Sequential(*blocks))
            info.append({"num_chs": out_ch, "reduction": reduction, "module": f"stages.{i}"})
        self.stages = nn.Sequential(*stages)
        self.feature_info = FeatureInfo(info)
        self._init_head(in_ch, num_classes, drop_rate)
        self._init_weights()

    def _init_weights(self) -> None:
        # He init for the network's own convolutions; mechanisms keep their reset_parameters().
        init_backbone_weights(self, conv=True)

    def _levels(self, x: torch.Tensor, take, stop: int) -> list:
        # Level 0: the stem's last ReLU (before the max-pool); level i + 1: stage i.
        self._check_image(x, self.in_chans)
        out: list = [None] * (stop + 1)
        for m in self.stem:
            if isinstance(m, nn.MaxPool2d):
                out[0] = x
                if stop == 0:
                    return out
            x = m(x)
        if out[0] is None:
            out[0] = x
        for i, stage in enumerate(self.stages):
            if i + 1 > stop:
                break
            x = stage(x)
            if i + 1 in take or i + 1 == stop:
                out[i + 1] = x
        return out

    def _prune_levels(self, keep: int) -> None:
        self.stages = nn.Sequential(*list(self.stages)[: keep - 1])


# ---------------------------------------------------------------------------
# Registered models
# ---------------------------------------------------------------------------

_DEPTHS = {26: (2, 2, 2, 2), 38: (2, 3, 5, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def _build(
    cfg: ResNetConfig,
    num_classes: int,
    attention: str | None,
    attn_kwargs: dict | None,
    model_name: str = "ResNet",
    **kw,
) -> ResNet:
    """Config fields and ``in_chans`` / ``drop_rate`` from ``kw``, then the model with ``attention`` swapped in."""
    build = config_builder(model_name, ResNet, cfg, extra=("in_chans", "drop_rate"))
    return build(num_classes, attention, attn_kwargs, **kw)


_TEST_KW = {"depths": (1, 1, 1, 1), "widths": (8, 16, 16, 16), "stem_width": 8, "small_stem": True, "img_size": 32}


def _register_pair(depth: int, published_conv: dict, published_lambda: dict) -> None:
    base = ResNetConfig(depths=_DEPTHS[depth])

    @register_model(
        f"resnet{depth}",
        family="resnet",
        default_input=(3, 224, 224),
        test_input=(3, 32, 32),
        test_kwargs=_TEST_KW,
        published=published_conv,
        paper=_RESNET_PAPER,
    )
    def conv_builder(
        num_classes: int = 1000, attention: str | None = None, attn_kwargs: dict | None = None, **kw
    ) -> ResNet:
        return _build(base, num_classes, attention, attn_kwargs, f"resnet{depth}", **kw)

    lam = dataclasses.replace(base, mixer="lambda", mixer_kwargs=dict(LAMBDA_DEFAULTS))

    @register_model(
        f"lambda_resnet{depth}",
        family="resnet",
        default_input=(3, 224, 224),
        test_input=(3, 32, 32),
        test_kwargs=_TEST_KW,
        published=published_lambda,
        paper=_LAMBDA_PAPER,
    )
    def lambda_builder(
        num_classes: int = 1000, attention: str | None = None, attn_kwargs: dict | None = None, **kw
    ) -> ResNet:
        return _build(lam, num_classes, attention, attn_kwargs, f"lambda_resnet{depth}", **kw)

    conv_builder.__name__, lambda_builder.__name__ = f"resnet{depth}", f"lambda_resnet{depth}"
    conv_builder.__doc__ = (
        f"ResNet-{depth} (bottleneck, 3x3 convolutions), stage depths {_DEPTHS[depth]}. "
        "``attention=NAME`` puts a mechanism in every 3x3 slot (``mixer_stages`` to choose)."
    )
    lambda_builder.__doc__ = (
        f"LambdaResNet-{depth}: ResNet-{depth} with every bottleneck 3x3 convolution replaced "
        "by a lambda layer (k=16, h=4, u=1, r=23; ``attn_kwargs`` to change)."
    )


_register_pair(26, {}, {})
_register_pair(38, {}, {})
_register_pair(50, {"params_m": 25.6, "top1": 76.9}, {"params_m": 15.0, "top1": 78.4})

_TINY = ResNetConfig(
    depths=(1, 1, 1, 1), widths=(16, 32, 64, 128), expansion=2, stem_width=32, small_stem=True, img_size=32
)


@register_model("resnet_tiny", family="resnet", default_input=(3, 32, 32), test_input=(3, 32, 32), paper=_RESNET_PAPER)
def resnet_tiny(num_classes: int = 1000, attention: str | None = None, attn_kwargs: dict | None = None, **kw) -> ResNet:
    """Small bottleneck ResNet for 32 x 32 images: 3x3 stem (32 channels), one block per stage,
    slot widths 16-32-64-128, outputs 32-64-128-256, feature map 4 x 4 at 32 x 32 input.
    ``attention=NAME`` puts any registered mechanism in every slot."""
    return _build(_TINY, num_classes, attention, attn_kwargs, "resnet_tiny", **kw)


# ---------------------------------------------------------------------------
# timm's lambda ResNets (ByobNet layouts), whose ImageNet weights load exactly
# ---------------------------------------------------------------------------

#: timm's LambdaLayer: k=16, h=4, u=1; a lambda convolution r=9 with a bias per key channel.
LAMBDA_TIMM: dict[str, Any] = {
    "num_heads": 4,
    "key_dim": 16,
    "intra_depth": 1,
    "local_scope": 9,
    "lambda_conv_bias": True,
}
#: ... its "rpt" form: a global relative table (max_size: the slot's map at img_size), no bias.
LAMBDA_TIMM_RPT: dict[str, Any] = {**LAMBDA_TIMM, "local_scope": None, "lambda_conv_bias": False}


def _timm_lambda(depths: tuple[int, ...], blocks: tuple[tuple[int, int], ...], lam: dict, act: str) -> ResNetConfig:
    """The config of a timm lambda ResNet: lambda layers in ``blocks`` ((stage, block) pairs), 3x3 convs elsewhere."""
    return ResNetConfig(
        depths=depths,
        stem_widths=(24, 32, 64),
        act=act,
        mixer_downsample="avg2x2",
        mixer_stages=tuple(sorted({s for s, _ in blocks})),
        mixer_overrides=tuple(MixerOverride(s, b, "lambda", dict(lam)) for s, b in blocks),
        img_size=256,
    )


_TIMM_26 = ((2, 1), (3, 0), (3, 1))
_TIMM_LAMBDA: dict[str, tuple[ResNetConfig, dict]] = {
    "lambda_resnet26t": (_timm_lambda(_DEPTHS[26], _TIMM_26, LAMBDA_TIMM, "relu"), {"params_m": 10.96}),
    "lambda_resnet50ts": (
        _timm_lambda(_DEPTHS[50], ((1, 3), (2, 1), (2, 3), (2, 5), (3, 1)), LAMBDA_TIMM, "silu"),
        {"params_m": 21.54},
    ),
    "lambda_resnet26rpt_256": (_timm_lambda(_DEPTHS[26], _TIMM_26, LAMBDA_TIMM_RPT, "relu"), {"params_m": 10.99}),
}
_TIMM_LAMBDA_TEST = {"widths": (8, 8, 16, 16), "stem_widths": (4, 4, 8), "stem_width": 8, "img_size": 64}


def _register_timm_lambda(name: str, cfg: ResNetConfig, published: dict) -> None:
    build = config_builder(name, ResNet, cfg, extra=("in_chans", "drop_rate"))
    build.__doc__ = (
        f"{name}: timm's layout (tiered stem 24-32-64, {cfg.act}, lambda in stage/block "
        f"{[(o.stage, o.block) for o in cfg.mixer_overrides]}, 2x2 pool after a strided lambda); "
        "see the module docstring and docs/weights.md."
    )
    register_model(
        name,
        family="resnet",
        default_input=(3, 256, 256),
        test_input=(3, 64, 64),
        test_kwargs=_TIMM_LAMBDA_TEST,
        published=published,
        paper=_TIMM_LAMBDA_PAPER,
    )(build)


for _name, (_cfg, _published) in _TIMM_LAMBDA.items():
    _register_timm_lambda(_name, _cfg, _published)
