"""Point Cloud Transformer (PCT) with any set-capable mechanism in its attention layers.

Guo et al., "PCT: Point Cloud Transformer" (Computational Visual Media 2021, arXiv 2012.09688).
A cloud (B, 3, N) goes through:

* input embedding: two shared point-wise LBR layers (Conv1d 1x1 + BatchNorm + ReLU);
* neighbour embedding (``pct`` only): two sample-and-group stages, farthest point sampling of
  N/2 then N/4 centres (512 and 256 for the paper's 1024 points), k = 32 nearest neighbours each,
  every neighbour's feature minus its centre's next to the centre's, two LBRs and a max over the
  neighbours (PCT's SG module, widths 128 and 256);
* four offset-attention layers: F_out = F_in + LBR(F_in - SA(F_in)), where SA is PCT's own
  self-attention (``attention=None``: shared query/key projection to C/4, softmax over keys, then
  L1 over queries) or any set-capable registered mechanism by name (``attention="external"`` is
  the external-attention paper's point-cloud model);
* the four outputs concatenated (with the neighbour embedding's output in ``pct``), one LBR to
  1024 channels, max and average pooling over the points, and the classifier
  (LBR 512, dropout, LBR 256, dropout, linear), LeakyReLU 0.2 as in the paper.

``spct`` is the paper's simple variant (no neighbour embedding, 128 channels). ``pct_partseg`` is
the part-segmentation network: the simple encoder, the max- and average-pooled global features
and the shape category (one-hot through an LBR to 64 channels) repeated at every point, and a
point-wise head (LBR 512, dropout, LBR 256, linear) giving per-point part logits.

Sizes (``tests/models/test_pct.py`` pins them): the paper states 2.88M parameters for PCT and
1.36M for SPCT on ModelNet40 (Table 1). Its authors' released classifier pools by max only;
with ``pooling="max"`` ``pct`` has 2,876,136 parameters and ``spct`` 1,360,552, the published
sizes. The default ``pooling="max+avg"`` (the paper's text, the MA-pool) feeds 2048 channels to
the classifier: 3,400,424 and 1,884,840.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visattn.layers.base import check_choice, check_positive_int
from visattn.layers.sets import create_set_attention
from visattn.models.point_ops import check_cloud_size, sample_and_group
from visattn.registry import register_model

__all__ = ["PCTSelfAttention", "OffsetAttention", "PCTEncoder", "PointCloudTransformer", "PCTPartSeg"]

_PAPER = "Guo et al., PCT: Point Cloud Transformer, CVM 2021 (arXiv 2012.09688)"


def _lbr(c_in: int, c_out: int, slope: float = 0.0) -> nn.Sequential:
    act: nn.Module = nn.ReLU() if slope == 0 else nn.LeakyReLU(slope)
    return nn.Sequential(nn.Conv1d(c_in, c_out, 1, bias=False), nn.BatchNorm1d(c_out), act)


class PCTSelfAttention(nn.Module):
    """PCT's self-attention on (B, C, N): A = softmax_keys(Q^T K), then each key column L1-normalised
    over the queries; out = V A. Q and K share one projection to C/4 (no bias), V has a bias."""

    def __init__(self, channels: int):
        super().__init__()
        self.qk = nn.Conv1d(channels, channels // 4, 1, bias=False)
        self.v = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.qk(x)  # (B, C/4, N)
        attn = torch.softmax(torch.bmm(q.transpose(1, 2), q), dim=-1)  # (B, N, N): rows = queries
        attn = attn / (1e-9 + attn.sum(dim=1, keepdim=True))
        return torch.bmm(self.v(x), attn)


class OffsetAttention(nn.Module):
    """F_out = F_in + LBR(F_in - SA(F_in)) on (B, C, N); SA is PCT's or a registered mechanism."""

    def __init__(self, channels: int, attention: str | None = None, attn_kwargs: dict[str, Any] | None = None):
        super().__init__()
        self.attn: nn.Module = (
            PCTSelfAttention(channels)
            if attention is None
            else create_set_attention(attention, channels, **(attn_kwargs or {}))
        )
        self.lbr = nn.Sequential(nn.Conv1d(channels, channels, 1), nn.BatchNorm1d(channels), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.lbr(x - self.attn(x))


class _LocalOp(nn.Module):
    """PCT's SG feature step: two LBRs over each group, max over the k neighbours."""

    def __init__(self, channels: int):
        super().__init__()
        self.mlp = nn.Sequential(_lbr(channels, channels), _lbr(channels, channels))

    def forward(self, grouped: torch.Tensor) -> torch.Tensor:
        b, s, k, d = grouped.shape  # (B, S, k, D) -> (B, D, S)
        y = self.mlp(grouped.permute(0, 1, 3, 2).reshape(b * s, d, k))
        return y.amax(-1).reshape(b, s, -1).transpose(1, 2)


def _check_cloud(x: torch.Tensor, who: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{who} expects a point cloud (B, 3, N), got {shape}")
    if not x.is_floating_point():
        raise TypeError(f"{who} expects floating-point coordinates, got dtype {x.dtype}")


class PCTEncoder(nn.Module):
    """Input (and neighbour) embedding, four offset-attention layers, concatenation, LBR to 1024.

    (B, 3, N) -> point features (B, 1024, N') with N' = N (simple) or the second sample count.
    """

    def __init__(
        self,
        *,
        neighbour_embedding: bool = True,
        attention: str | None = None,
        attn_kwargs: dict[str, Any] | None = None,
        samples: tuple[int, int] | None = None,
        k: int = 32,
    ):
        super().__init__()
        check_positive_int("k", k)
        if samples is not None:
            if not (isinstance(samples, (tuple, list)) and len(samples) == 2):
                raise ValueError(f"samples must be None (N/2, N/4) or two ints, got {samples!r}")
            for s in samples:
                check_positive_int("samples", s)
            samples = (int(samples[0]), int(samples[1]))
        self.neighbour_embedding, self.samples, self.k = neighbour_embedding, samples, k
        width = 64 if neighbour_embedding else 128
        self.embed = nn.Sequential(_lbr(3, width), _lbr(width, width))
        if neighbour_embedding:
            self.local0, self.local1 = _LocalOp(2 * width), _LocalOp(4 * width)
            channels = 4 * width  # 256
            self.pre = nn.Sequential(_lbr(channels, channels), _lbr(channels, channels))
        else:
            channels = width
        self.channels = channels
        self.layers = nn.ModuleList(OffsetAttention(channels, attention, attn_kwargs) for _ in range(4))
        cat = 4 * channels + (channels if neighbour_embedding else 0)
        self.fuse = _lbr(cat, 1024, slope=0.2)

    def sample_counts(self, n: int) -> tuple[int, int]:
        """The two farthest-point sample counts for a cloud of n points."""
        return self.samples if self.samples is not None else (max(1, n // 2), max(1, n // 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.embed(x)
        extra: list[torch.Tensor] = []
        if self.neighbour_embedding:
            s0, s1 = self.sample_counts(x.shape[-1])
            check_cloud_size(x.shape[-1], s0, "the first farthest-point sample count")
            check_cloud_size(s0, s1, "the second farthest-point sample count")
            check_cloud_size(s1, self.k, "the neighbour count k at the second grouping")
            xyz = x.transpose(1, 2)
            xyz, g = sample_and_group(s0, self.k, xyz, f.transpose(1, 2))
            f0 = self.local0(g)
            _, g = sample_and_group(s1, self.k, xyz, f0.transpose(1, 2))
            f1 = self.local1(g)
            extra = [f1]
            f = self.pre(f1)
        outs = []
        for layer in self.layers:
            f = layer(f)
            outs.append(f)
        return self.fuse(torch.cat(outs + extra, dim=1))


def _pool(f: torch.Tensor, pooling: str) -> torch.Tensor:
    mx = f.amax(-1)
    return mx if pooling == "max" else torch.cat([mx, f.mean(-1)], dim=1)


class PointCloudTransformer(nn.Module):
    """PCT / SPCT shape classifier: (B, 3, N) -> logits (B, num_classes) (module docstring).

    Args:
        num_classes: shape classes (40: ModelNet40).
        attention: None (PCT's own self-attention) or a set-capable registered mechanism.
        attn_kwargs: its constructor arguments.
        neighbour_embedding: True (PCT) or False (the simple variant, SPCT).
        samples: the two farthest-point sample counts; None: N/2 and N/4 (512, 256 at 1024 points).
        k: neighbours per group (32).
        pooling: "max+avg" (the paper's MA-pool) or "max" (its authors' released classifier).
        dropout: in the classifier (0.5).
    """

    def __init__(
        self,
        num_classes: int = 40,
        *,
        attention: str | None = None,
        attn_kwargs: dict[str, Any] | None = None,
        neighbour_embedding: bool = True,
        samples: tuple[int, int] | None = None,
        k: int = 32,
        pooling: str = "max+avg",
        dropout: float = 0.5,
    ):
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_choice("pooling", pooling, ("max+avg", "max"))
        self.num_classes, self.pooling, self.attention = num_classes, pooling, attention
        self.encoder = PCTEncoder(
            neighbour_embedding=neighbour_embedding, attention=attention, attn_kwargs=attn_kwargs, samples=samples, k=k
        )
        pooled = 1024 if pooling == "max" else 2048
        self.head = nn.Sequential(
            nn.Linear(pooled, 512, bias=False),
            nn.BatchNorm1d(512),
            nn.LeakyReLU(0.2),
            nn.Dropout(dropout),
            nn.Linear(512, 256),
            nn.BatchNorm1d(256),
            nn.LeakyReLU(0.2),
            nn.Dropout(dropout),
            nn.Linear(256, num_classes),
        )

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A random (batch, 3, 1024) cloud (``visattn info``'s FLOPs at the paper's size)."""
        return torch.randn(batch, 3, 1024)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, N) coordinates -> (B, num_classes)."""
        _check_cloud(x, type(self).__name__)
        return self.head(_pool(self.encoder(x), self.pooling))


class PCTPartSeg(nn.Module):
    """PCT part segmentation: (points (B, 3, N), category (B,)) -> part logits (B, num_classes, N).

    Args:
        num_classes: parts over all categories (50: ShapeNetPart).
        num_categories: shape categories (16: ShapeNetPart), given one-hot to the head.
        attention, attn_kwargs: as :class:`PointCloudTransformer`.
        dropout: after the head's first LBR (0.5).
    """

    def __init__(
        self,
        num_classes: int = 50,
        *,
        num_categories: int = 16,
        attention: str | None = None,
        attn_kwargs: dict[str, Any] | None = None,
        dropout: float = 0.5,
    ):
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("num_categories", num_categories)
        self.num_classes, self.num_categories, self.attention = num_classes, num_categories, attention
        self.encoder = PCTEncoder(neighbour_embedding=False, attention=attention, attn_kwargs=attn_kwargs)
        self.label = _lbr(num_categories, 64, slope=0.2)
        self.head = nn.Sequential(
            nn.Conv1d(3 * 1024 + 64, 512, 1),
            nn.BatchNorm1d(512),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Conv1d(512, 256, 1),
            nn.BatchNorm1d(256),
            nn.ReLU(),
            nn.Conv1d(256, num_classes, 1),
        )

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A random (batch, 4, 2048) input: coordinates and category 0 (``visattn info``'s FLOPs)."""
        return torch.cat([torch.randn(batch, 3, 2048), torch.zeros(batch, 1, 2048)], dim=1)

    def forward(self, x: torch.Tensor, category: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, 3, N) coordinates, category: (B,) shape-category indices -> (B, num_classes, N).
        Without ``category``, x is (B, 4, N) with the category as the fourth channel (the training
        batches' layout, :func:`visattn.data.points.split_part_input`)."""
        if category is None:
            if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[1] != 4:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(
                    f"PCTPartSeg without a category expects (B, 4, N): coordinates and category, got {shape}"
                )
            x, category = x[:, :3], x[:, 3, 0].round().long()
        _check_cloud(x, type(self).__name__)
        b, _, n = x.shape
        if not isinstance(category, torch.Tensor) or category.shape != (b,) or category.is_floating_point():
            got = tuple(category.shape) if isinstance(category, torch.Tensor) else type(category).__name__
            raise ValueError(f"PCTPartSeg expects category indices of shape ({b},), got {got}")
        f = self.encoder(x)
        onehot = F.one_hot(category.long(), self.num_categories).to(f.dtype).unsqueeze(-1)
        glob = torch.cat([f.amax(-1, keepdim=True), f.mean(-1, keepdim=True), self.label(onehot)], dim=1)
        return self.head(torch.cat([f, glob.expand(-1, -1, n)], dim=1))


@register_model(
    "pct",
    family="point",
    task="points",
    default_input=(3, 1024, 1),
    test_input=(3, 64, 1),
    test_kwargs={"k": 8},
    published={"params_m": 2.88, "top1": 93.2},
    paper=_PAPER + "; published size with pooling='max' (the authors' classifier)",
)
def pct(num_classes: int = 40, attention: str | None = None, attn_kwargs: dict | None = None, **kw) -> nn.Module:
    """PCT: neighbour embedding + four offset-attention layers (ModelNet40: 40 classes)."""
    return PointCloudTransformer(num_classes, attention=attention, attn_kwargs=attn_kwargs, **kw)


@register_model(
    "spct",
    family="point",
    task="points",
    default_input=(3, 1024, 1),
    test_input=(3, 64, 1),
    published={"params_m": 1.36, "top1": 92.0},
    paper=_PAPER + " (SPCT, the simple variant); published size with pooling='max'",
)
def spct(num_classes: int = 40, attention: str | None = None, attn_kwargs: dict | None = None, **kw) -> nn.Module:
    """SPCT: PCT without the neighbour embedding (offset-attention on every input point)."""
    return PointCloudTransformer(
        num_classes, attention=attention, attn_kwargs=attn_kwargs, neighbour_embedding=False, **kw
    )


@register_model(
    "pct_partseg",
    family="point",
    task="partseg",
    default_input=(3, 2048, 1),
    test_input=(3, 64, 1),
    published={"miou": 86.4},
    paper=_PAPER + " (part segmentation, ShapeNetPart instance mIoU)",
)
def pct_partseg(
    num_classes: int = 50, attention: str | None = None, attn_kwargs: dict | None = None, **kw
) -> nn.Module:
    """PCT part segmentation (ShapeNetPart: 50 parts, 16 categories)."""
    return PCTPartSeg(num_classes, attention=attention, attn_kwargs=attn_kwargs, **kw)
