"""A generic four-stage hierarchical vision transformer (PVT / Swin layout), declared as a config.

One backbone, any mechanism per stage: a :class:`HierarchicalConfig` names the spatial mixer
of every stage (any registered mechanism, created with :func:`visattn.create_attention`), so
Slide-Swin, Swin, Slide-PVT and PVT are four configs of the same code.

Layout. Stem and down-sampling follow one of two published schemes:

* ``"swin"`` (Liu et al., Swin Transformer, arXiv 2103.14030): a patch_size x patch_size
  conv patch embedding + LayerNorm, then between stages *patch merging* (the 2 x 2 neighbours
  concatenated, LayerNorm(4C), Linear(4C, 2C) without bias);
* ``"pvt"`` (Wang et al., Pyramid Vision Transformer, arXiv 2102.12122): before every stage a
  strided conv patch embedding (stride 4, 2, 2, 2) + LayerNorm, and optionally learned
  absolute position embeddings per stage (defined at ``pos_embed_size``, resized bilinearly at
  other input sizes).

Each stage is ``depth`` pre-norm blocks (:class:`~visattn.models.blocks.Block`) ``x + mixer(LN(x))``, ``x + MLP(LN(x))`` (MLP: Linear,
GELU, Linear; hidden = mlp_ratio * C) with optional stochastic depth; a final LayerNorm per
token, then global average pooling and the classifier (:class:`VisionModel`). Sides that do
not divide by the down-sampling factor are zero-padded (bottom/right), so any input size works.

Registered configs (224 x 224, 1000 classes):

* ``slide_swin_t`` - Slide-Transformer (Pan et al., CVPR 2023, arXiv 2304.04237) on Swin-T:
  embed 96, depths (2, 2, 6, 2), heads (3, 6, 12, 24); slide attention (k = 3, deformed)
  in stages 1-2; stages 3-4 global attention with relative position bias (the authors' code
  sets the Swin window to the whole 14 x 14 / 7 x 7 map): ``"swin"`` with window 14 / 7.
* ``swin_t`` - Swin-T: windows of 7, shifted (3) in every second block.
* ``slide_pvt_t`` - Slide-PVT-T: PVT-T (embed 64, 128, 320, 512; depths 2, 2, 2, 2; heads
  1, 2, 5, 8; MLP ratios 8, 8, 4, 4) with slide attention (k = 3) in stages 1-2 in place of
  PVT's spatial-reduction attention; stages 3-4 keep SRA (R = 2, 1); position embeddings in
  every stage as in PVT (the authors released no Slide-PVT code; this layout gives the
  published 12.2M parameters exactly, while dropping the stage 1-2 embeddings gives 11.9M).
* ``pvt_t`` - PVT-T: SRA with R = 8, 4, 2, 1 and position embeddings in every stage.

Options for loading the authors' weights exactly (docs/weights.md): ``norm_eps`` (PVT v1's blocks
and final norm use LayerNorm eps 1e-6) and ``class_token`` (PVT v1's classifier: a learned token
joins the last stage's tokens at position 0 and is read out for the head; the default pools the
tokens instead).

Not implemented: Swin's absolute position embedding option (off in Swin-T), dropout inside blocks.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visattn.layers.base import check_choice, check_positive_int
from visattn.models.base import VisionModel
from visattn.models.blocks import (
    Block,
    MixerOverride,
    check_token_mixer,
    coerce_overrides,
    config_builder,
    init_backbone_weights,
    make_mixer,
    plan_mixers,
)
from visattn.models.features import FeatureInfo
from visattn.registry import register_model

__all__ = ["HierarchicalConfig", "HierarchicalTransformer"]

_SLIDE = "Pan et al., Slide-Transformer, CVPR 2023 (arXiv 2304.04237)"
_SWIN = "Liu et al., Swin Transformer, ICCV 2021 (arXiv 2103.14030)"
_PVT = "Wang et al., Pyramid Vision Transformer, ICCV 2021 (arXiv 2102.12122)"


@dataclass(frozen=True)
class HierarchicalConfig:
    """A four-stage (or n-stage) hierarchical transformer.

    Attributes:
        embed_dims: channels per stage.
        depths: blocks per stage.
        num_heads: heads per stage (the layout's: passed as ``num_heads`` to any stage mechanism
            that takes one, unless its arguments set it; kept when ``attention=`` swaps it).
        mixers: registered mechanism name per stage.
        mixer_kwargs: extra constructor arguments per stage (besides ``num_heads``); a block
            index may be selected with ``{"per_block": [kw0, kw1, ...]}`` (cycled), as Swin's
            alternating shift needs.
        mixer_overrides: per-stage / per-block changes of mechanism or arguments
            (:class:`~visattn.models.blocks.MixerOverride`).
        mlp_ratios: MLP hidden width / C per stage.
        stem: ``"swin"`` (patch embedding + patch merging) or ``"pvt"`` (conv embedding per stage).
        patch_size: first down-sampling factor.
        pos_embed: learned absolute position embeddings per stage (PVT).
        pos_embed_size: input side at which the position embeddings are defined.
        drop_path_rate: stochastic depth, linearly increasing over blocks.
        in_chans: image channels.
        img_size: input side the model is built for; fills ``max_resolution_arg`` of mechanisms
            that declare one (stage i: ceil(img_size / (patch_size * 2^i))) when not given.
        norm_eps: epsilon of the blocks' LayerNorms and the final norm (PVT v1: 1e-6); the patch
            embedding and merging norms keep 1e-5, as in Swin and PVT.
        class_token: a learned token (1, 1, C) joins the last stage's tokens at position 0 (after
            its position embedding), runs through its blocks with them as a 1 x (1 + h w) strip,
            and is read out for the head after the final norm (PVT v1's classifier). Needs
            position-agnostic mechanisms in that stage (e.g. SRA with ``sr_ratio`` 1); see
            :class:`~visattn.models.base.VisionModel` for the feature shapes.
    """

    embed_dims: tuple[int, ...]
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    mixers: tuple[str, ...]
    mixer_kwargs: tuple[dict[str, Any], ...] = ()
    mlp_ratios: tuple[float, ...] = (4.0, 4.0, 4.0, 4.0)
    stem: str = "swin"
    patch_size: int = 4
    pos_embed: tuple[bool, ...] = (False, False, False, False)
    pos_embed_size: int = 224
    drop_path_rate: float = 0.0
    in_chans: int = 3
    img_size: int = 224
    mixer_overrides: tuple[MixerOverride, ...] = ()
    norm_eps: float = 1e-5
    class_token: bool = False

    def __post_init__(self):
        object.__setattr__(self, "mixer_overrides", coerce_overrides(self.mixer_overrides))
        if isinstance(self.norm_eps, bool) or not isinstance(self.norm_eps, (int, float)) or not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be a number > 0, got {self.norm_eps!r}")
        if not isinstance(self.class_token, bool):
            raise TypeError(f"class_token must be a bool, got {type(self.class_token).__name__} {self.class_token!r}")
        n = len(self.embed_dims)
        for name in ("depths", "num_heads", "mixers", "mlp_ratios", "pos_embed"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} must have one entry per stage ({n}), got {getattr(self, name)!r}")
        if self.mixer_kwargs and len(self.mixer_kwargs) != n:
            raise ValueError(f"mixer_kwargs must have one dict per stage ({n}), got {len(self.mixer_kwargs)}")
        check_choice("stem", self.stem, ("swin", "pvt"))
        check_positive_int("patch_size", self.patch_size)
        if self.stem == "swin":
            for i in range(1, n):
                if self.embed_dims[i] != 2 * self.embed_dims[i - 1]:
                    raise ValueError(
                        f"the swin stem doubles channels per stage (patch merging), got embed_dims {self.embed_dims!r}"
                    )

    def replace(self, **kw) -> HierarchicalConfig:
        return dataclasses.replace(self, **kw)


def _pad_to(x: torch.Tensor, mult: int) -> torch.Tensor:
    """Zero-pad a (B, C, H, W) map at the bottom/right to multiples of ``mult``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % mult, (-w) % mult
    return F.pad(x, (0, pw, 0, ph)) if (ph or pw) else x


class ConvEmbed(nn.Module):
    """Strided conv patch embedding + LayerNorm: (B, C_in, H, W) -> (B, H/p, W/p, C) channels-last."""

    def __init__(self, c_in: int, c_out: int, patch: int):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(c_in, c_out, patch, stride=patch)
        self.norm = nn.LayerNorm(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(_pad_to(x, self.patch)).permute(0, 2, 3, 1))


class PatchMerging(nn.Module):
    """Swin patch merging: (B, H, W, C) -> (B, H/2, W/2, 2C) via LayerNorm(4C), Linear(4C, 2C)."""

    def __init__(self, dim: int, dim_out: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, dim_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _pad_to(x.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class Stage(nn.Module):
    """Down-sampling (embed), optional position embedding, blocks: (B, H, W, C_in) or (B, C_in, H, W)
    (the first stage / a conv embedding) -> channels-last (B, H', W', C)."""

    def __init__(self, embed: nn.Module, blocks: list[Block], pos_embed: nn.Parameter | None):
        super().__init__()
        self.embed = embed
        self.pos_embed = pos_embed  # (1, C, h0, w0) at pos_embed_size, or None
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, token: torch.Tensor | None = None):
        """``token`` (1, 1, C): class-token mode; then returns (map, token output (B, C))."""
        x = self.embed(x)  # (B, H, W, C)
        if self.pos_embed is not None:
            pe: torch.Tensor = self.pos_embed
            if pe.shape[-2:] != x.shape[1:3]:
                pe = F.interpolate(pe, size=x.shape[1:3], mode="bilinear", align_corners=False)
            x = x + pe.permute(0, 2, 3, 1)
        b, h, w, c = x.shape
        t = x.reshape(b, h * w, c)  # tokens in row-major order
        hw = (h, w)
        if token is not None:  # the token first, then the map, as one 1 x (1 + h w) strip
            t, hw = torch.cat([token.expand(b, -1, -1), t], dim=1), (1, 1 + h * w)
        for blk in self.blocks:
            t = blk(t, hw)
        if token is not None:
            return t[:, 1:].reshape(b, h, w, c), t[:, 0]
        return t.reshape(b, h, w, c)


class HierarchicalTransformer(VisionModel):
    """The backbone described by a :class:`HierarchicalConfig` (see module docstring).

    Args:
        cfg: the configuration.
        num_classes: classifier outputs (0: pooled features).
        attention: a registered mechanism that replaces the mixer of *every* block (None keeps
            each block's own); the stage's ``num_heads`` is kept (see :mod:`visattn.models.blocks`).
        attn_kwargs: constructor arguments for the mechanisms; override in every block.

    Shapes: images (B, in_chans, H, W) -> logits (B, num_classes); features
    (B, embed_dims[-1], ceil(H/32), ceil(W/32)) for the 4-stage layouts.

    Feature levels (``feature_info``, :meth:`forward_intermediates`): the output of every stage
    (before the final norm), stage i at reduction r_i = patch_size * 2^i with
    (ceil(H / r_i), ceil(W / r_i)) positions.
    """

    def __init__(
        self,
        cfg: HierarchicalConfig,
        num_classes: int = 1000,
        attention: str | None = None,
        attn_kwargs: dict | None = None,
    ):
        super().__init__()
        self.cfg = cfg
        self.in_chans = cfg.in_chans
        dims = cfg.embed_dims
        total = sum(cfg.depths)
        dpr = [cfg.drop_path_rate * i / max(1, total - 1) for i in range(total)]
        stages, k, side = [], 0, cfg.pos_embed_size
        red = [cfg.patch_size * 2**i for i in range(len(dims))]
        plan = plan_mixers(cfg.depths, cfg.mixers, cfg.mixer_kwargs, cfg.mixer_overrides, attention, attn_kwargs)
        norm_layer = functools.partial(nn.LayerNorm, eps=cfg.norm_eps)
        for i, dim in enumerate(dims):
            patch = cfg.patch_size if i == 0 else 2
            side = side // patch
            if cfg.stem == "swin":
                embed = ConvEmbed(cfg.in_chans, dim, patch) if i == 0 else PatchMerging(dims[i - 1], dim)
            else:
                embed = ConvEmbed(cfg.in_chans if i == 0 else dims[i - 1], dim, patch)
            pos = nn.Parameter(torch.zeros(1, dim, side, side)) if cfg.pos_embed[i] else None
            blocks = []
            for j, (name, kw) in enumerate(plan[i]):
                size = math.ceil(cfg.img_size / red[i])
                mixer = make_mixer(name, dim, kw, num_heads=cfg.num_heads[i], size=size, where=f"stage {i} block {j}")
                if cfg.class_token and i == len(dims) - 1:
                    check_token_mixer(mixer, f"stage {i} block {j}")
                blocks.append(Block(dim, mixer, int(dim * cfg.mlp_ratios[i]), drop_path=dpr[k], norm_layer=norm_layer))
                k += 1
            stages.append(Stage(embed, blocks, pos))
        self.stages = nn.ModuleList(stages)
        self.feature_info = FeatureInfo(
            [{"num_chs": d, "reduction": cfg.patch_size * 2**i, "module": f"stages.{i}"} for i, d in enumerate(dims)]
        )
        self.norm = norm_layer(dims[-1])
        self.cls_token: nn.Parameter | None = None
        if cfg.class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dims[-1]))
            self.global_pool = "token"
        self._init_head(dims[-1], num_classes)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        # As Swin / PVT: truncated normal (0.02) Linear weights with zero bias outside the
        # mechanisms (whose own initialisation is kept), unit LayerNorms, position embeddings.
        init_backbone_weights(self, linear=True)
        for st in self.modules():
            if isinstance(st, Stage) and st.pos_embed is not None:
                nn.init.trunc_normal_(st.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def _levels(self, x: torch.Tensor, take, stop: int) -> list:
        # Level i: stage i's output, channels-last inside, returned as a (B, C, H, W) view; in
        # class-token mode the token's output (B, C) follows when the last stage ran.
        self._check_image(x, self.cfg.in_chans)
        out: list = [None] * (stop + 1)
        last = len(self.stages) - 1
        for i, st in enumerate(self.stages):
            if i > stop:
                break
            if i > 0 and self.cfg.stem == "pvt":
                x = x.permute(0, 3, 1, 2)  # the conv embedding takes (B, C, H, W)
            if i == last and self.cls_token is not None:
                x, token = st(x, self.cls_token)
                out.append(token)
            else:
                x = st(x)
            if i in take or i == stop:
                out[i] = x.permute(0, 3, 1, 2)
        return out

    def _finish(self, f: torch.Tensor) -> torch.Tensor:
        """Last stage (B, C, h, w) -> the final per-token LayerNorm, (B, num_features, h, w)."""
        return self.norm(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def _prune_levels(self, keep: int) -> None:
        if keep < len(self.stages):  # the class token's stage is gone
            self.cls_token = None
        self.stages = nn.ModuleList(list(self.stages)[:keep])


# ---------------------------------------------------------------------------
# Named configs.
# ---------------------------------------------------------------------------

_SWIN_T: dict[str, Any] = dict(
    embed_dims=(96, 192, 384, 768), depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), stem="swin"
)
_PVT_T: dict[str, Any] = dict(
    embed_dims=(64, 128, 320, 512),
    depths=(2, 2, 2, 2),
    num_heads=(1, 2, 5, 8),
    mlp_ratios=(8.0, 8.0, 4.0, 4.0),
    stem="pvt",
)
_SWIN_SHIFTED = {"window_size": 7, "per_block": [{"shift_size": 0}, {"shift_size": 3}]}

CONFIGS: dict[str, HierarchicalConfig] = {
    "slide_swin_t": HierarchicalConfig(
        **_SWIN_T,
        mixers=("slide", "slide", "swin", "swin"),
        mixer_kwargs=({"kernel_size": 3}, {"kernel_size": 3}, {"window_size": 14}, {"window_size": 7}),
        drop_path_rate=0.2,
    ),
    "swin_t": HierarchicalConfig(
        **_SWIN_T, mixers=("swin",) * 4, mixer_kwargs=(_SWIN_SHIFTED,) * 4, drop_path_rate=0.2
    ),
    "slide_pvt_t": HierarchicalConfig(
        **_PVT_T,
        mixers=("slide", "slide", "sra", "sra"),
        mixer_kwargs=({"kernel_size": 3}, {"kernel_size": 3}, {"sr_ratio": 2}, {"sr_ratio": 1}),
        pos_embed=(True, True, True, True),
        drop_path_rate=0.1,
    ),
    "pvt_t": HierarchicalConfig(
        **_PVT_T,
        mixers=("sra",) * 4,
        mixer_kwargs=({"sr_ratio": 8}, {"sr_ratio": 4}, {"sr_ratio": 2}, {"sr_ratio": 1}),
        pos_embed=(True, True, True, True),
        drop_path_rate=0.1,
    ),
}

# Small configs the conformance suites build (fast at 32 x 32).
_TINY: dict[str, dict[str, Any]] = {
    "swin": dict(embed_dims=(8, 16, 32, 64), depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4)),
    "pvt": dict(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), pos_embed_size=32),
}


def _builder(name: str):
    return config_builder(name, HierarchicalTransformer, CONFIGS[name])


register_model(
    "slide_swin_t",
    family="hierarchical",
    test_kwargs=_TINY["swin"],
    published={"params_m": 29.0, "macs_g": 4.6, "top1": 82.3},
    paper=_SLIDE,
)(_builder("slide_swin_t"))
register_model(
    "swin_t",
    family="hierarchical",
    test_kwargs=_TINY["swin"],
    published={"params_m": 28.3, "macs_g": 4.5, "top1": 81.3},
    paper=_SWIN,
)(_builder("swin_t"))
register_model(
    "slide_pvt_t",
    family="hierarchical",
    test_kwargs=_TINY["pvt"],
    published={"params_m": 12.2, "macs_g": 2.0, "top1": 78.0},
    paper=_SLIDE,
)(_builder("slide_pvt_t"))
register_model(
    "pvt_t",
    family="hierarchical",
    test_kwargs=_TINY["pvt"],
    published={"params_m": 13.2, "macs_g": 1.9, "top1": 75.1},
    paper=_PVT,
)(_builder("pvt_t"))
