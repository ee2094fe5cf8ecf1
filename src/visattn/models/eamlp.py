"""EAMLP: a T2T-ViT-style token transformer whose token mixer is multi-head external attention.

Guo et al., "Beyond Self-attention: External Attention using Two Linear Layers for Visual
Tasks" (arXiv 2105.02358), section on EAMLP; the tokens-to-token stem is from Yuan et al.,
"Tokens-to-Token ViT: Training Vision Transformers from Scratch on ImageNet" (arXiv 2101.11986).

Implemented, following the structure of the authors' released EAMLP code (read for facts):

* Tokens-to-token stem: soft split (unfold 7x7 stride 4 pad 2) -> T2T block -> soft split
  (3x3 / 2 / 1) -> T2T block -> soft split (3x3 / 2 / 1) -> linear projection to the width.
  Total stride 16. Each T2T block is ``x = q + proj(EA(q)), q = W_q LN(x)`` (single-head external
  attention with S = 128 memory units, a widening/narrowing q projection that also carries the
  skip), then ``x + MLP(LN(x))`` with MLP ratio 1; token width 64.
* Fixed 1-D sinusoidal position encoding added to the tokens (not learned).
* Pre-norm blocks ``x + mixer(LN(x))``, ``x + MLP(LN(x))`` (GELU); the mixer is the registered
  ``"external"`` mechanism in its multi-head form: widened x4 by a 1x1 projection, ``4 * heads``
  EA heads of width 64 that all share one pair of memories with S = 64 units, double
  normalisation, output projection.
* Final LayerNorm, global average pool, linear classifier.

Deliberate differences from the authors' code, each with its reason:

* **No class token; mean pooling** (by default; ``class_token=True`` below). The spatial mixer
  is swappable for any registered mechanism, and the mechanism contract is a (B, C, H, W) grid: a class token has no place on
  the grid (a local or positional mechanism could not see it), so the head pools the final
  tokens instead (and ``forward_features`` returns a real feature map). With external
  attention the class token is the only thing that would differ: the tokens' updates are
  otherwise the same equations.
* **No value bias and no key bias in the memories.** The authors' memory layers carry biases;
  a per-unit bias on M_k cancels in the softmax over positions, and a bias on M_v is a constant
  vector that the following output projection's bias absorbs. So the model computes the same
  function class with ``2 * 64`` fewer parameters per block (64 per T2T block).
* The T2T blocks of the authors' code initialise M_v with the storage of M_k^T, which ties them
  for the whole run; the paper describes two memories. Default: two memories (as the paper,
  and as the authors' parameter count, which counts both); ``tie_t2t_memories=True`` ties them.
* Dropout inside the T2T attention (0.1 in the authors' code) is not implemented; stochastic
  depth (``drop_path_rate``) and head dropout (``drop_rate``) are.
* The position table is computed for the actual token count, so the model runs at any input
  size >= 3 pixels (the authors' table is fixed at the training resolution). At a resolution
  other than the default the 1-D encoding indexes tokens in row-major order.

``class_token=True`` is the authors' readout: a learned token plus the position-0 sinusoid, put
before the tokens and run through the blocks with them as a 1 x (1 + N) strip (external attention
sees no position, so the strip is the same set of tokens), read out after the final norm. It
loads the released EAMLP-7 weights exactly (docs/weights.md); the mean-pooled default differs
from it by the token's effect on every other token through the softmax over positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visattn.layers.base import check_divisible, check_positive_int, from_tokens, to_tokens
from visattn.models.base import TokenBlockLevels, VisionModel
from visattn.models.blocks import (
    Block,
    MixerOverride,
    Mlp,
    check_token_mixer,
    coerce_overrides,
    config_builder,
    config_from_kwargs,
    init_backbone_weights,
    make_mixer,
    plan_mixers,
)
from visattn.models.features import FeatureInfo
from visattn.registry import create_attention, register_model

__all__ = ["EAMLP", "EAMLPConfig", "T2TStem", "sinusoid_positions"]

_PAPER = (
    "Guo et al., Beyond Self-attention: External Attention using Two Linear Layers for Visual Tasks (arXiv 2105.02358)"
)


def sinusoid_positions(n: int, dim: int, offset: int = 1, device=None, dtype=None) -> torch.Tensor:
    """Fixed 1-D sinusoid table for positions offset..offset+n-1: (n, dim).

    Channel 2i holds sin(p / 10000^(2i/dim)), channel 2i+1 cos of the same angle (the
    Transformer encoding; the authors' EAMLP uses positions 1..n for the patches).
    """
    pos = torch.arange(offset, offset + n, device=device, dtype=torch.float64)[:, None]
    i = torch.arange(dim, device=device, dtype=torch.float64)
    angle = pos / torch.pow(10000.0, 2 * torch.div(i, 2, rounding_mode="floor") / dim)  # (n, dim)
    table = torch.where(i.remainder(2) == 0, torch.sin(angle), torch.cos(angle))
    return table.to(dtype or torch.get_default_dtype())


class T2TBlock(nn.Module):
    """One re-structurisation step of the T2T stem: tokens (B, N, dim_in) on an (h, w) grid -> (B, N, dim).

    ``q = W_q LN(x)``; ``x = q + proj(EA(q))`` (single-head external attention, S units);
    ``x = x + MLP(LN(x))`` with hidden width ``dim``.
    """

    def __init__(self, dim_in: int, dim: int, memory_size: int = 128, tie_memories: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim_in)
        self.q = nn.Linear(dim_in, dim)
        # Basic form A M_v; tie_memories: M_v = M_k (one registered parameter).
        self.ea = create_attention("external", dim, memory_size=memory_size, tie_memories=tie_memories)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        q = self.q(self.norm1(x))  # (B, N, dim)
        a = to_tokens(self.ea(from_tokens(q, hw)))  # (B, N, dim)
        x = q + self.proj(a)
        return x + self.mlp(self.norm2(x))


def _unfold_size(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


class T2TStem(nn.Module):
    """Tokens-to-token stem: images (B, in_chans, H, W) -> tokens (B, N, embed_dim) and their grid (h, w).

    Soft splits (unfold) of 7x7/4/2, 3x3/2/1, 3x3/2/1 with a :class:`T2TBlock` between them:
    h = ``(H - 3) // 4 + 1``, then ``(h - 1) // 2 + 1`` twice (about H / 16); needs H, W >= 3.
    """

    SPLITS = ((7, 4, 2), (3, 2, 1), (3, 2, 1))

    def __init__(
        self,
        in_chans: int = 3,
        embed_dim: int = 256,
        token_dim: int = 64,
        memory_size: int = 128,
        tie_memories: bool = False,
    ):
        super().__init__()
        (k0, _, _), (k1, _, _), (k2, _, _) = self.SPLITS
        self.block1 = T2TBlock(in_chans * k0 * k0, token_dim, memory_size, tie_memories)
        self.block2 = T2TBlock(token_dim * k1 * k1, token_dim, memory_size, tie_memories)
        self.project = nn.Linear(token_dim * k2 * k2, embed_dim)

    @classmethod
    def grid_size(cls, height: int, width: int) -> tuple[int, int]:
        """Token grid (h, w) for an input of height x width."""
        for k, s, p in cls.SPLITS:
            height, width = _unfold_size(height, k, s, p), _unfold_size(width, k, s, p)
        return height, width

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        h, w = x.shape[-2:]
        blocks = (self.block1, self.block2, None)
        for (k, s, p), block in zip(self.SPLITS, blocks):
            t = F.unfold(x, k, stride=s, padding=p).transpose(1, 2)  # (B, N, C k k)
            h, w = _unfold_size(h, k, s, p), _unfold_size(w, k, s, p)
            if block is None:
                return self.project(t), (h, w)
            x = from_tokens(block(t, (h, w)), (h, w))  # (B, token_dim, h, w)
        raise AssertionError("unreachable")


@dataclass(frozen=True)
class EAMLPConfig:
    """Declarative description of an :class:`EAMLP`.

    Attributes:
        embed_dim: token width C.
        depth: number of blocks.
        num_heads: the T2T-ViT head count h (the layout's: passed as ``num_heads`` to a swapped-in
            mechanism that takes one); external attention uses ``4 h`` heads on a x4-widened
            projection (head width C / h), all sharing one pair of memories.
        mlp_ratio: MLP hidden width / C.
        memory_size: memory units S of the blocks' external attention (authors: 64).
        token_dim: width of the T2T stem's tokens (authors: 64).
        t2t_memory_size: memory units of the stem's external attention (authors: 128).
        tie_t2t_memories: tie M_v = M_k in the stem (authors' code behaviour; see module docstring).
        mixer: registered mechanism of the blocks.
        mixer_kwargs: its constructor arguments; None: with ``"external"`` the EAMLP form
            ``{"num_heads": 4 h, "expansion": 4, "memory_size": memory_size}``, else none.
        mixer_overrides: per-block changes (stage 0; :class:`~visattn.models.blocks.MixerOverride`).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, rising linearly to this value over the blocks.
        in_chans: image channels.
        img_size: input side the model is built for; fills ``max_resolution_arg`` of mechanisms
            that declare one (the token grid side at img_size) when not given.
        class_token: the authors' class token (module docstring); needs position-agnostic
            mechanisms (``positional="none (content only)"``) in every block.
    """

    embed_dim: int = 256
    depth: int = 7
    num_heads: int = 4
    mlp_ratio: float = 2.0
    memory_size: int = 64
    token_dim: int = 64
    t2t_memory_size: int = 128
    tie_t2t_memories: bool = False
    mixer: str = "external"
    mixer_kwargs: dict[str, Any] | None = None
    mixer_overrides: tuple[MixerOverride, ...] = ()
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    in_chans: int = 3
    img_size: int = 224
    class_token: bool = False

    def __post_init__(self):
        object.__setattr__(self, "mixer_overrides", coerce_overrides(self.mixer_overrides))
        if not isinstance(self.class_token, bool):
            raise TypeError(f"class_token must be a bool, got {type(self.class_token).__name__} {self.class_token!r}")
        for name in ("embed_dim", "depth", "num_heads", "memory_size", "token_dim", "t2t_memory_size", "in_chans"):
            check_positive_int(name, getattr(self, name))
        check_divisible("embed_dim", self.embed_dim, "num_heads", self.num_heads)
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")

    def block_mixer_kwargs(self) -> dict[str, Any]:
        """The blocks' mechanism arguments (``mixer_kwargs`` or the EAMLP default)."""
        if self.mixer_kwargs is not None:
            return dict(self.mixer_kwargs)
        if self.mixer == "external":
            return {"num_heads": 4 * self.num_heads, "expansion": 4, "memory_size": self.memory_size}
        return {}


class EAMLP(TokenBlockLevels, VisionModel):
    """T2T stem + pre-norm blocks whose spatial mixer is any registered mechanism (default: multi-head EA).

    Args:
        num_classes: classifier outputs (0: pooled features).
        cfg: an :class:`EAMLPConfig`; without one, the keyword ``config_fields`` build it
            (``EAMLP(10, embed_dim=32, depth=2)``).
        attention: registered mechanism for every block's mixer (None: the config's); the
            layout's ``num_heads`` is kept (see :mod:`visattn.models.blocks`).
        attn_kwargs: constructor arguments for the blocks' mechanisms; override in every block.

    Shapes: (B, in_chans, H, W), H, W >= 3 -> logits (B, num_classes);
    ``forward_features``: (B, C, h, w) with (h, w) = :meth:`T2TStem.grid_size` (about H/16, W/16).

    Feature levels (``feature_info``, :meth:`forward_intermediates`): one scale; level i is the
    output of block i, (B, C, h, w) with h = ceil(floor((H + 1) / 4) / 4) (nominal reduction 16).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        cfg: EAMLPConfig | None = None,
        attention: str | None = None,
        attn_kwargs: dict | None = None,
        **config_fields,
    ):
        super().__init__()
        if cfg is None or config_fields:
            cfg, _ = config_from_kwargs("EAMLP", cfg if cfg is not None else EAMLPConfig(), config_fields)
        if num_classes != 0:
            check_positive_int("num_classes", num_classes)
        self.cfg = cfg
        self.in_chans, self.embed_dim = cfg.in_chans, cfg.embed_dim
        c = cfg.embed_dim

        self.stem = T2TStem(cfg.in_chans, c, cfg.token_dim, cfg.t2t_memory_size, cfg.tie_t2t_memories)
        (plan,) = plan_mixers(
            (cfg.depth,), (cfg.mixer,), (cfg.block_mixer_kwargs(),), cfg.mixer_overrides, attention, attn_kwargs
        )
        grid = T2TStem.grid_size(cfg.img_size, cfg.img_size)[0]
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # linear rule
        self.blocks = nn.ModuleList(
            Block(
                c,
                make_mixer(name, c, kw, num_heads=cfg.num_heads, size=grid, where=f"stage 0 block {j}"),
                int(c * cfg.mlp_ratio),
                drop_path=r,
            )
            for j, ((name, kw), r) in enumerate(zip(plan, rates))
        )
        self.norm = nn.LayerNorm(c)
        self.feature_info = FeatureInfo(
            [{"num_chs": c, "reduction": 16, "module": f"blocks.{i}"} for i in range(cfg.depth)]
        )
        self._init_head(c, num_classes, cfg.drop_rate)
        # Authors: truncated normal (std 0.02) for every Linear; mechanisms keep their own init.
        init_backbone_weights(self, linear=True)
        self.cls_token: nn.Parameter | None = None
        if cfg.class_token:
            for j, blk in enumerate(self.blocks):
                check_token_mixer(blk.get_submodule("mixer"), f"stage 0 block {j}")
            self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
            nn.init.trunc_normal_(self.cls_token, std=0.02)
            self.global_pool = "token"

    def _levels(self, x: torch.Tensor, take, stop: int) -> list:
        self._check_image(x, self.in_chans)
        if x.shape[-2] < 3 or x.shape[-1] < 3:
            raise ValueError(f"EAMLP needs images of at least 3 x 3 pixels, got {tuple(x.shape[-2:])}")
        t, hw = self.stem(x)  # (B, N, C)
        t = t + sinusoid_positions(t.shape[1], self.embed_dim, device=t.device, dtype=t.dtype)
        if self.cls_token is None:
            return self._run_blocks(t, hw, take, stop)
        # Class-token mode: the token (position 0 of the sinusoid) first, the blocks on the strip;
        # levels are the patch tokens' maps, the token's output follows them.
        token = self.cls_token + sinusoid_positions(1, self.embed_dim, offset=0, device=t.device, dtype=t.dtype)
        t = torch.cat([token.expand(t.shape[0], -1, -1), t], dim=1)
        out: list = [None] * (stop + 1)
        for i, blk in enumerate(self.blocks):
            if i > stop:
                break
            t = blk(t, (1, t.shape[1]))
            if i in take or i == stop:
                out[i] = from_tokens(t[:, 1:], hw)
        out.append(t[:, 0])
        return out


def _eamlp(name: str, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float, **published):
    cfg = EAMLPConfig(embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio)
    build = config_builder(name, EAMLP, cfg)
    build.__doc__ = (
        f"EAMLP ({embed_dim} wide, {depth} blocks, {num_heads} x 4 EA heads, MLP ratio {mlp_ratio:g}); "
        f"see :class:`EAMLP`."
    )
    return register_model(
        name,
        family="eamlp",
        default_input=(3, 224, 224),
        test_input=(3, 32, 32),
        test_kwargs={
            "embed_dim": 16,
            "depth": 1,
            "num_heads": 2,
            "token_dim": 8,
            "memory_size": 8,
            "t2t_memory_size": 8,
        },
        published=published,
        paper=_PAPER,
    )(build)


# Widths / depths / heads / MLP ratios of T2T-ViT-7/14/19 (SPEC.md section 2). The released
# EAMLP-7 was trained and evaluated at 384 px (71.7% top-1, SPEC.md); 224 px is the T2T-ViT
# default. EAMLP-14: 30M / 78.9% and EAMLP-19: 55M / 79.4% at 224 px are the figures quoted in
# the comparison table of Vision Permutator (Hou et al., arXiv 2106.12368, and its README).
# Those counts include the class token, the memory biases and the fixed position table
# (a non-trainable Parameter in the authors' code), which this model does not have: see
# tests/models/test_eamlp.py for the exact reconciliation.
eamlp_7 = _eamlp("eamlp_7", 256, 7, 4, 2.0, top1=71.7, top1_input=384)
eamlp_14 = _eamlp("eamlp_14", 384, 14, 6, 3.0, params_m=30.0, top1=78.9)
eamlp_19 = _eamlp("eamlp_19", 448, 19, 7, 3.0, params_m=55.0, top1=79.4)
