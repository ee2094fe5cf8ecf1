"""A generic token transformer whose spatial mixer is any registered mechanism, and the
self-attention networks (SAN) of Cordonnier et al.

:class:`TokenTransformer` is declared by a :class:`TransformerConfig`: patch embedding (a
p x p patch of C_in pixels -> ``embed_dim``, as a strided conv), ``depth`` blocks
``x + drop(proj(mixer(norm(x))))`` and ``x + drop(MLP(norm(x)))`` (pre-norm; post-norm,
as in BERT, with ``norm_first=False``), a final norm, global average pooling and a linear
classifier. The mixer is created by name with :func:`visattn.create_attention` on the
(B, C, h, w) grid of tokens, so any mechanism fits (``attention="external"``, ...).

Registered models (Cordonnier, Loukas and Jaggi, "On the Relationship between
Self-Attention and Convolutional Layers", ICLR 2020, arXiv 1911.03584, Table 1):
6 layers, 9 heads, hidden width 400, MLP 512, GELU, dropout 0.1, CIFAR-10 images cut
into 2x2-pixel patches (16 x 16 tokens of 12 values), 10 classes:

* ``san_quadratic``: quadratic encoding, position only (published 12.1M parameters);
* ``san_learned``: learned row/column relative embeddings, position only (12.3M);
* ``san_learned_content``: learned relative embeddings + content term (29.5M).

How those counts arise (the authors' code, epfml/attention-cnn ``models/bert.py``): every
head attends over the full 400-wide input (no per-head value projection); the 9 heads'
outputs are concatenated (3600 values) and mapped back to 400 by one linear layer (the
product W_val^(h) W_out^(h) of the theorem: ``value_proj=False``), followed by BERT's
attention-output dense layer 400 -> 400 (``mixer_proj=True`` here). With content the query
and key maps are 400 -> 9 x 400 (``key_dim=400``). The learned encoding has a row and a
column table of 31 x 400 (offsets -15..15, ``pos_dim=400``) and one 400-vector per head and
axis. Our counts: 12.09M, 12.28M, 29.60M (within 0.4% of the published figures).

Differences from the authors' code, stated: the classifier reads the average of the
tokens (the authors replace the top-left token by a learned CLS embedding); the authors'
unused reconstruction heads and mask token are not built; blocks are pre-norm by default
(the authors' BERT blocks are post-norm: ``norm_first=False`` reproduces that layout).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from visattn.layers.base import check_positive_int, to_tokens
from visattn.models.base import TokenBlockLevels, VisionModel
from visattn.models.blocks import (
    Block,
    MixerOverride,
    coerce_overrides,
    config_from_kwargs,
    make_mixer,
    plan_mixers,
)
from visattn.models.features import FeatureInfo
from visattn.registry import register_model

__all__ = [
    "TransformerConfig",
    "TokenTransformer",
    "build_transformer",
    "SAN_PAPER",
    "san_quadratic",
    "san_learned",
    "san_learned_content",
]

SAN_PAPER = "Cordonnier et al., On the Relationship between Self-Attention and Convolutional Layers (arXiv 1911.03584)"


@dataclass(frozen=True)
class TransformerConfig:
    """Declarative description of a :class:`TokenTransformer`.

    Attributes:
        patch_size: side p of the square pixel patches that become tokens.
        in_chans: image channels.
        embed_dim: token width (the paper's "hidden").
        depth: number of blocks.
        mlp_dim: hidden width of the MLP.
        mixer: registered mechanism name of the spatial mixer.
        mixer_kwargs: constructor arguments of the mixer (besides dim).
        mixer_proj: an extra Linear(embed_dim, embed_dim) after the mixer (BERT's attention
            output dense layer, present in the SAN models).
        drop_rate: dropout after the mixer, in and after the MLP, after the patch embedding.
        head_drop_rate: dropout before the classifier.
        norm_first: pre-norm (default) or post-norm blocks.
        norm_eps: LayerNorm epsilon.
        num_heads: the layout's head count, passed as ``num_heads`` to a mechanism that takes
            one unless its arguments set it (None: none; the SAN models set heads in
            ``mixer_kwargs``, as their 9 heads of width 400 are relpos's own layout).
        img_size: input side the model is built for; fills ``max_resolution_arg`` of mechanisms
            that declare one (img_size / patch_size) when not given.
        mixer_overrides: per-block changes (stage 0; :class:`~visattn.models.blocks.MixerOverride`).
    """

    patch_size: int = 2
    in_chans: int = 3
    embed_dim: int = 400
    depth: int = 6
    mlp_dim: int = 512
    mixer: str = "mhsa"
    mixer_kwargs: dict[str, Any] = field(default_factory=dict)
    mixer_proj: bool = False
    drop_rate: float = 0.1
    head_drop_rate: float = 0.0
    norm_first: bool = True
    norm_eps: float = 1e-6
    num_heads: int | None = None
    img_size: int = 32
    mixer_overrides: tuple[MixerOverride, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "mixer_overrides", coerce_overrides(self.mixer_overrides))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class TokenTransformer(TokenBlockLevels, VisionModel):
    """Patch embedding + ``depth`` transformer blocks with any registered token mixer.

    Shapes: images (B, C_in, H, W) with H, W divisible by ``patch_size`` ->
    ``forward_features`` (B, embed_dim, H/p, W/p) -> logits (B, num_classes).

    Feature levels (``feature_info``, :meth:`forward_intermediates`): one scale; level i is the
    output of block i, (B, embed_dim, H/p, W/p), all at reduction p (as timm does for ViTs).
    """

    def __init__(
        self,
        cfg: TransformerConfig,
        num_classes: int = 10,
        attention: str | None = None,
        attn_kwargs: dict | None = None,
    ):
        super().__init__()
        if not isinstance(cfg, TransformerConfig):
            raise TypeError(f"cfg must be a TransformerConfig, got {type(cfg).__name__}")
        for name in ("patch_size", "in_chans", "embed_dim", "depth", "mlp_dim"):
            check_positive_int(name, getattr(cfg, name))
        if num_classes != 0:
            check_positive_int("num_classes", num_classes)
        self.cfg = cfg
        self.in_chans = cfg.in_chans
        p = cfg.patch_size
        self.patch_embed = nn.Conv2d(cfg.in_chans, cfg.embed_dim, p, stride=p)  # p x p x C_in values -> C
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        (plan,) = plan_mixers(
            (cfg.depth,), (cfg.mixer,), (cfg.mixer_kwargs,), cfg.mixer_overrides, attention, attn_kwargs
        )
        c, grid = cfg.embed_dim, cfg.img_size // p
        norm = functools.partial(nn.LayerNorm, eps=cfg.norm_eps)
        self.blocks = nn.ModuleList(
            Block(
                c,
                make_mixer(name, c, kw, num_heads=cfg.num_heads, size=grid, where=f"stage 0 block {j}"),
                cfg.mlp_dim,
                drop=cfg.drop_rate,
                mixer_proj=cfg.mixer_proj,
                norm_first=cfg.norm_first,
                norm_layer=norm,
            )
            for j, (name, kw) in enumerate(plan)
        )
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps) if cfg.norm_first else nn.Identity()
        self.feature_info = FeatureInfo(
            [{"num_chs": cfg.embed_dim, "reduction": p, "module": f"blocks.{i}"} for i in range(cfg.depth)]
        )
        self._init_head(cfg.embed_dim, num_classes, cfg.head_drop_rate)

    def _levels(self, x: torch.Tensor, take, stop: int) -> list:
        self._check_image(x, self.cfg.in_chans)
        p = self.cfg.patch_size
        if x.shape[2] % p or x.shape[3] % p:
            raise ValueError(
                f"{type(self).__name__} cuts images into {p}x{p} patches: H and W must be divisible "
                f"by {p}, got {tuple(x.shape[2:])}"
            )
        f = self.patch_embed(x)  # (B, C, h, w)
        hw = (f.shape[2], f.shape[3])
        t = self.pos_drop(to_tokens(f))  # (B, N, C)
        return self._run_blocks(t, hw, take, stop)


def build_transformer(
    cfg: TransformerConfig,
    num_classes: int = 10,
    attention: str | None = None,
    attn_kwargs: dict | None = None,
    model_name: str = "TokenTransformer",
    **overrides,
) -> TokenTransformer:
    """A :class:`TokenTransformer` from ``cfg``, with the mixer swapped for ``attention`` and
    any config field overridden by keyword (e.g. ``depth=2``); ``model_name`` names the model in
    the unknown-option error."""
    cfg, _ = config_from_kwargs(model_name, cfg, overrides)
    return TokenTransformer(cfg, num_classes, attention, attn_kwargs)


_SAN = TransformerConfig(
    patch_size=2, in_chans=3, embed_dim=400, depth=6, mlp_dim=512, mixer="relpos", mixer_proj=True, drop_rate=0.1
)
_SAN_QUADRATIC = {
    "num_heads": 9,
    "encoding": "quadratic",
    "content": False,
    "key_dim": 400,
    "value_proj": False,
    "attn_drop": 0.1,
    "init_centre_std": 2.0,
}
_SAN_LEARNED = {
    "num_heads": 9,
    "encoding": "learned",
    "content": False,
    "key_dim": 400,
    "value_proj": False,
    "max_offset": 15,
    "pos_dim": 400,
    "attn_drop": 0.1,
}
_SAN_TEST = {"depth": 2}


def _san(name: str, relpos_kwargs: dict, num_classes, attention, attn_kwargs, **kw) -> TokenTransformer:
    # the model's relpos arguments; a mixer_kwargs option replaces them, as in every config
    cfg = replace(_SAN, mixer_kwargs=relpos_kwargs)
    return build_transformer(cfg, num_classes, attention, attn_kwargs, model_name=name, **kw)


@register_model(
    "san_quadratic",
    family="transformer",
    default_input=(3, 32, 32),
    test_input=(3, 16, 16),
    test_kwargs=_SAN_TEST,
    published={"params_m": 12.1, "top1": 93.8},
    paper=SAN_PAPER,
)
def san_quadratic(
    num_classes: int = 10, attention: str | None = None, attn_kwargs: dict | None = None, **kw
) -> TokenTransformer:
    """SA with quadratic relative encoding: 6 x 9 heads, hidden 400, MLP 512 (CIFAR-10, 12.1M)."""
    return _san("san_quadratic", _SAN_QUADRATIC, num_classes, attention, attn_kwargs, **kw)


@register_model(
    "san_learned",
    family="transformer",
    default_input=(3, 32, 32),
    test_input=(3, 16, 16),
    test_kwargs=_SAN_TEST,
    published={"params_m": 12.3, "top1": 91.8},
    paper=SAN_PAPER,
)
def san_learned(
    num_classes: int = 10, attention: str | None = None, attn_kwargs: dict | None = None, **kw
) -> TokenTransformer:
    """SA with learned relative row/column embeddings, position only (CIFAR-10, 12.3M)."""
    return _san("san_learned", _SAN_LEARNED, num_classes, attention, attn_kwargs, **kw)


@register_model(
    "san_learned_content",
    family="transformer",
    default_input=(3, 32, 32),
    test_input=(3, 16, 16),
    test_kwargs=_SAN_TEST,
    published={"params_m": 29.5, "top1": 87.1},
    paper=SAN_PAPER,
)
def san_learned_content(
    num_classes: int = 10, attention: str | None = None, attn_kwargs: dict | None = None, **kw
) -> TokenTransformer:
    """SA with learned relative embeddings and the content (query-key) term (CIFAR-10, 29.5M)."""
    return _san("san_learned_content", {**_SAN_LEARNED, "content": True}, num_classes, attention, attn_kwargs, **kw)
