"""A self-attention GAN whose attention block is any registered mechanism.

SAGAN (Zhang, Goodfellow, Metaxas & Odena, "Self-Attention Generative Adversarial Networks",
ICML 2019, arXiv 1805.08318) adds one attention block ``y = x + gamma * attn(x)`` (``gamma``
a learned scalar, 0 at the start) to a residual GAN in both the generator and the
discriminator, with spectral normalisation (Miyato et al. 2018, arXiv 1802.05957) on every
convolution and linear layer of G and D, conditional batch norm in G, a projection
discriminator (Miyato & Koyama 2018, arXiv 1802.05637) for class-conditional runs and the
hinge loss. External attention's paper (Guo et al. 2021, "Beyond Self-attention: External
Attention using Two Linear Layers for Visual Tasks", arXiv 2105.02358) replaces SAGAN's block
by external attention and reports FID / IS on Tiny ImageNet (64x64). Here the block is any
registered mechanism (``attention="external"`` is the EA variant; the default is ``mhsa`` with
one head, SAGAN's own non-local block up to the reduced query/key width).

Layout (``ch`` = width; ``side`` = image side, 32 or 64):

* G: z (B, z_dim) -> linear -> (B, c0, 4, 4) -> residual up blocks (BN/CBN, ReLU, nearest x2,
  3x3 conv, twice, with a 1x1 shortcut) doubling the side up to ``side`` -> BN, ReLU, 3x3 conv,
  tanh: images (B, 3, side, side) in [-1, 1]. The attention block sits after the block that
  outputs ``side / 2`` (16x16 at 32 px, 32x32 at 64 px: SAGAN's place at Tiny ImageNet's size).
* D: images (B, 3, side, side) -> residual down blocks (the first one "optimised": conv, ReLU,
  conv, avg-pool) halving the side down to 4 -> one block at 4x4 -> ReLU -> sum over positions
  -> linear to one logit (+ <embed(y), h> for a class-conditional D). Its attention block sits
  after the first block (``side / 2``), the same resolution as G's.

Widths per resolution: 32 px: G 4ch at 4, 8, 16 and ch at 32 ... see ``_WIDTHS``. Spectral norm
comes from ``torch.nn.utils.parametrizations.spectral_norm`` (one power iteration per training
forward), also on the mechanism's own Conv2d / Linear layers (``sn_attention=True``, as SAGAN).
Not implemented: SAGAN's 128x128 ImageNet size, orthogonal initialisation, BigGAN's shared
embedding / hierarchical z.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from visattn.models.blocks import find_mixers, make_mixer
from visattn.registry import register_model

__all__ = [
    "GANConfig",
    "SAGANGenerator",
    "SAGANDiscriminator",
    "AttentionBlock",
    "ConditionalBatchNorm2d",
    "hinge_d_loss",
    "hinge_g_loss",
    "apply_spectral_norm",
    "GAN_PAPER",
    "DEFAULT_ATTENTION",
    "discriminator_for",
]

GAN_PAPER = "Zhang et al. 2019, Self-Attention Generative Adversarial Networks (arXiv 1805.08318)"
#: SAGAN's own block: global softmax attention over positions, one head.
DEFAULT_ATTENTION = "mhsa"
DEFAULT_ATTN_KWARGS: dict[str, Any] = {"num_heads": 1}

# Width multipliers of ch, from 4x4 up to the image side (G) / from the image side down (D).
_WIDTHS = {32: (4, 4, 2, 1), 64: (8, 8, 4, 2, 1)}


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]; logits (B,) or (B, 1)."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss: -E[D(G(z))]; logits (B,) or (B, 1)."""
    return -fake_logits.mean()


def apply_spectral_norm(module: nn.Module, skip_mixers: bool = False) -> int:
    """Spectral-normalise every Conv2d / Linear weight in ``module`` (in place; ``skip_mixers``: not
    those inside its mechanisms); returns how many layers carry it."""
    inside = {id(c) for _, mix in find_mixers(module) for c in mix.modules()} if skip_mixers else set()
    targets = [
        m
        for m in module.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight is not None and id(m) not in inside
    ]
    for m in targets:
        if not hasattr(m, "parametrizations"):
            spectral_norm(m)
    return len(targets)


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm whose gain and bias come from the class: ``BN(x) * (1 + g[y]) + b[y]``.

    x: (B, C, H, W); y: (B,) class indices. With ``num_classes=0`` it is an ordinary affine
    ``BatchNorm2d`` and ``y`` is ignored.
    """

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.bn = nn.BatchNorm2d(channels, affine=num_classes == 0)
        if num_classes:
            self.gain = nn.Embedding(num_classes, channels)
            self.bias = nn.Embedding(num_classes, channels)
            nn.init.zeros_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.bn(x)
        if not self.num_classes:
            return h
        if y is None:
            raise ValueError(f"a class-conditional generator ({self.num_classes} classes) needs labels y")
        return h * (1.0 + self.gain(y))[:, :, None, None] + self.bias(y)[:, :, None, None]


class AttentionBlock(nn.Module):
    """SAGAN's residual attention block: ``x + gamma * mechanism(x)``, ``gamma`` a scalar starting at 0.

    (B, C, H, W) -> (B, C, H, W); ``mechanism`` is any registered name (``make_mixer`` fills the
    head count and a resolution bound from ``size``).
    """

    def __init__(self, channels: int, mechanism: str, kwargs: dict[str, Any], size: int, where: str):
        super().__init__()
        self.attn = make_mixer(mechanism, channels, kwargs, num_heads=1, size=size, where=where)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma * self.attn(x)


def _conv(cin: int, cout: int, k: int = 3) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class _GBlock(nn.Module):
    """Residual up block: (B, cin, s, s) -> (B, cout, 2s, 2s)."""

    def __init__(self, cin: int, cout: int, num_classes: int):
        super().__init__()
        self.bn1 = ConditionalBatchNorm2d(cin, num_classes)
        self.conv1 = _conv(cin, cout)
        self.bn2 = ConditionalBatchNorm2d(cout, num_classes)
        self.conv2 = _conv(cout, cout)
        self.shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, y)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class _DBlock(nn.Module):
    """Residual down block: (B, cin, s, s) -> (B, cout, s/2, s/2) (or s with ``down=False``).

    ``first``: the optimised first block (no ReLU before the first conv; pool then 1x1 shortcut).
    """

    def __init__(self, cin: int, cout: int, down: bool = True, first: bool = False):
        super().__init__()
        self.down, self.first = down, first
        self.conv1 = _conv(cin, cout)
        self.conv2 = _conv(cout, cout)
        self.shortcut = nn.Conv2d(cin, cout, 1) if (cin != cout or down) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = self.conv2(F.relu(self.conv1(h)))
        if self.down:
            h = F.avg_pool2d(h, 2)
        s = x
        if self.first:  # pool first, then project (Miyato et al.'s optimised block)
            s = F.avg_pool2d(s, 2) if self.down else s
            s = self.shortcut(s) if self.shortcut is not None else s
        else:
            s = self.shortcut(s) if self.shortcut is not None else s
            s = F.avg_pool2d(s, 2) if self.down else s
        return h + s


@dataclass
class GANConfig:
    """Options of G and D (keyword options of the builders).

    Attributes:
        img_size: image side, 32 or 64.
        ch: base width (see ``_WIDTHS``).
        z_dim: latent size (G).
        num_classes: 0 unconditional; K > 0: conditional BN in G, projection in D.
        attention / attn_kwargs: the mechanism of the attention block (None: ``mhsa``, one head).
        sn_attention: spectral-normalise the mechanism's own Conv2d / Linear layers too.
        aux_classifier: D (class-conditional) also has an auxiliary classifier head (AC-GAN, Odena
            et al. 2017), not spectrally normalised: ``d(x, y, with_classes=True)`` returns (logits,
            class logits (B, K)).
    """

    img_size: int = 32
    ch: int = 64
    z_dim: int = 128
    num_classes: int = 0
    attention: str | None = None
    attn_kwargs: dict[str, Any] | None = None
    sn_attention: bool = True
    aux_classifier: bool = False

    def validate(self, owner: str) -> None:
        if self.img_size not in _WIDTHS:
            raise ValueError(f"{owner}: img_size must be one of {sorted(_WIDTHS)}, got {self.img_size!r}")
        for name in ("ch", "z_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{owner}: {name} must be an int >= 1, got {v!r}")
        v = self.num_classes
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{owner}: num_classes must be an int >= 0 (0: unconditional), got {v!r}")

    def mechanism(self) -> tuple[str, dict[str, Any]]:
        if self.attention is None or self.attention == DEFAULT_ATTENTION:
            kw = dict(DEFAULT_ATTN_KWARGS)
        else:
            kw = {}
        kw.update(self.attn_kwargs or {})
        return self.attention or DEFAULT_ATTENTION, kw


def _attention_block(cfg: GANConfig, channels: int, where: str) -> AttentionBlock:
    name, kw = cfg.mechanism()
    block = AttentionBlock(channels, name, kw, cfg.img_size // 2, where)
    if cfg.sn_attention:
        apply_spectral_norm(block.attn)
    return block


class _GANBase(nn.Module):
    cfg: GANConfig

    def named_mixers(self) -> list[tuple[str, nn.Module]]:
        """The spatial mixers (the attention block's mechanism), as (dotted name, module)."""
        return find_mixers(self)

    def mixers(self) -> list[nn.Module]:
        return [m for _, m in self.named_mixers()]

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A random input of this network: z (batch, z_dim) for G, images (batch, 3, S, S) for D."""
        if isinstance(self, SAGANGenerator):
            return torch.randn(batch, self.cfg.z_dim)
        return torch.randn(batch, 3, self.cfg.img_size, self.cfg.img_size)

    @property
    def attention_resolution(self) -> int:
        """Side of the feature map the attention block runs on."""
        return self.cfg.img_size // 2


class SAGANGenerator(_GANBase):
    """z (B, z_dim) [+ labels y (B,)] -> images (B, 3, img_size, img_size) in [-1, 1] (see module docstring)."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        cfg.validate(type(self).__name__)
        self.cfg = cfg
        self.z_dim, self.num_classes, self.img_size = cfg.z_dim, cfg.num_classes, cfg.img_size
        widths = [m * cfg.ch for m in _WIDTHS[cfg.img_size]]
        # conditional: the class also enters the first layer, one-hot next to z (as cGAN), besides the CBNs
        self.linear = nn.Linear(cfg.z_dim + cfg.num_classes, widths[0] * 16)
        self.blocks = nn.ModuleList(_GBlock(widths[i], widths[i + 1], cfg.num_classes) for i in range(len(widths) - 1))
        self.attn_after = len(self.blocks) - 2  # the block whose output side is img_size / 2
        self.attention = _attention_block(
            cfg, widths[-2], f"generator attention at {cfg.img_size // 2}x{cfg.img_size // 2}"
        )
        self.bn = nn.BatchNorm2d(widths[-1])
        self.out = _conv(widths[-1], 3)
        _init_own_layers(self)
        apply_spectral_norm(self, skip_mixers=True)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"SAGANGenerator expects z (B, {self.z_dim}), got {tuple(z.shape)}")
        if self.num_classes and y is None:
            raise ValueError(f"this generator is class-conditional ({self.num_classes} classes): pass labels y (B,)")
        if y is not None and self.num_classes:
            z = torch.cat([z, F.one_hot(y, self.num_classes).to(z.dtype)], dim=1)
        h = self.linear(z).view(z.shape[0], -1, 4, 4)
        for i, block in enumerate(self.blocks):
            h = block(h, y if self.num_classes else None)
            if i == self.attn_after:
                h = self.attention(h)
        return torch.tanh(self.out(F.relu(self.bn(h))))


class SAGANDiscriminator(_GANBase):
    """Images (B, 3, img_size, img_size) [+ labels y (B,)] -> logits (B,) (see module docstring)."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        cfg.validate(type(self).__name__)
        self.cfg = cfg
        self.num_classes, self.img_size = cfg.num_classes, cfg.img_size
        widths = [m * cfg.ch for m in reversed(_WIDTHS[cfg.img_size])]  # side -> 4
        blocks = [_DBlock(3, widths[0], first=True)]
        blocks += [_DBlock(widths[i], widths[i + 1]) for i in range(len(widths) - 2)]
        blocks.append(_DBlock(widths[-2], widths[-1], down=False))
        self.blocks = nn.ModuleList(blocks)
        self.attention = _attention_block(
            cfg, widths[0], f"discriminator attention at {cfg.img_size // 2}x{cfg.img_size // 2}"
        )
        self.linear = nn.Linear(widths[-1], 1)
        self.embed = nn.Embedding(cfg.num_classes, widths[-1]) if cfg.num_classes else None
        _init_own_layers(self)
        apply_spectral_norm(self, skip_mixers=True)
        if self.embed is not None:
            nn.init.xavier_uniform_(self.embed.weight)
            spectral_norm(self.embed)
        # the auxiliary classifier (built after the spectral norms, so it has none: a 1-Lipschitz head
        # caps the class logits at the size of h, and its cross-entropy then barely fell in short runs)
        self.aux = nn.Linear(widths[-1], cfg.num_classes) if cfg.num_classes and cfg.aux_classifier else None

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None, with_classes: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 4 or x.shape[1:] != (3, self.img_size, self.img_size):
            raise ValueError(
                f"SAGANDiscriminator expects images (B, 3, {self.img_size}, {self.img_size}), got {tuple(x.shape)}"
            )
        if self.embed is not None and y is None:
            raise ValueError(
                f"this discriminator is class-conditional ({self.num_classes} classes): pass labels y (B,)"
            )
        h = x
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == 0:
                h = self.attention(h)
        h = F.relu(h).sum(dim=(2, 3))  # (B, C)
        out = self.linear(h).squeeze(1)
        if self.embed is not None:
            out = out + (self.embed(y) * h).sum(1)
        if with_classes:
            if self.aux is None:
                raise ValueError(
                    "with_classes needs a discriminator built with aux_classifier=True and num_classes > 0"
                )
            return out, self.aux(h)
        return out


def _init_own_layers(model: nn.Module) -> None:
    """Xavier-uniform weights, zero biases for the Conv2d / Linear layers outside the mechanisms."""
    inside = {id(c) for _, mix in find_mixers(model) for c in mix.modules()}
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in inside:
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def discriminator_for(generator: str) -> str:
    """The registered discriminator that pairs with generator ``generator`` (``sagan32_g`` -> ``sagan32_d``)."""
    if not generator.endswith("_g"):
        raise ValueError(f"{generator!r} is not a registered generator name (NAME_g); expected e.g. 'sagan32_g'")
    return generator[:-2] + "_d"


def _builder(cls: type, img_size: int):
    def build(attention: str | None = None, attn_kwargs: dict[str, Any] | None = None, **kwargs) -> nn.Module:
        fields = set(GANConfig.__dataclass_fields__) - {"attention", "attn_kwargs", "img_size"}
        unknown = sorted(set(kwargs) - fields)
        if unknown:
            raise TypeError(f"{cls.__name__}: unknown option(s) {unknown}; expected GANConfig fields {sorted(fields)}")
        return cls(GANConfig(img_size=img_size, attention=attention, attn_kwargs=attn_kwargs, **kwargs))

    return build


for _side in (32, 64):
    for _suffix, _cls, _input in (
        ("g", SAGANGenerator, (128, 1, 1)),
        ("d", SAGANDiscriminator, (3, _side, _side)),
    ):
        register_model(
            f"sagan{_side}_{_suffix}",
            family="sagan",
            default_input=_input,
            test_input=_input,
            test_kwargs={"ch": 8},
            paper=GAN_PAPER,
            task="generate",
        )(_builder(_cls, _side))
