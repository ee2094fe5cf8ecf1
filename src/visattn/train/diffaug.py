"""Differentiable augmentation of the images a GAN's discriminator sees (DiffAugment).

Zhao, Liu, Lin, Zhu & Han, "Differentiable Augmentation for Data-Efficient GAN Training"
(NeurIPS 2020, arXiv 2006.10738): the same random transformations are applied to real *and*
generated images every time D sees them (in D's step and in G's step), and they are
differentiable, so G's gradient flows through them; D then cannot tell real from fake by what the
augmentation changes, and it overfits the training images less.

Policies (a comma-separated string; ``""`` is the identity):

* ``translation``: every image shifted by integers drawn uniformly in ``[-r, r]`` per axis,
  ``r = round(ratio * side)`` (``ratio`` 1/8 as the paper), with zeros shifted in (0 is the middle of
  G's [-1, 1] range, as the paper pads);
* ``cutout``: one square of side ``round(0.5 * side)`` per image set to 0, its centre uniform over
  the image (clipped at the border);
* ``brightness``: a per-image offset uniform in [-0.5, 0.5) added to every pixel.

Random draws come from the global RNG (``torch.randint`` / ``torch.rand`` on the images' device),
so a run's checkpointed RNG states make resumed runs draw the same augmentations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["DIFFAUG_POLICIES", "diff_augment", "parse_policy", "translate", "cutout"]

#: The transformations a policy may name.
DIFFAUG_POLICIES = ("translation", "cutout", "brightness")


def parse_policy(policy: str) -> tuple[str, ...]:
    """``"translation,cutout"`` -> ``("translation", "cutout")``; unknown names are refused."""
    if not isinstance(policy, str):
        raise TypeError(f"a DiffAugment policy must be a str such as 'translation,cutout', got {policy!r}")
    names = tuple(p.strip() for p in policy.split(",") if p.strip())
    bad = [n for n in names if n not in DIFFAUG_POLICIES]
    if bad:
        raise ValueError(
            f"unknown DiffAugment transformation(s) {bad} in {policy!r}; expected a comma-separated "
            f"subset of {', '.join(DIFFAUG_POLICIES)} ('' for none)"
        )
    return names


def translate(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Shift each image of x (B, C, H, W) by ``shift`` (B, 2) integer (rows, columns), zeros shifted in.

    ``out[b, :, i, j] = x[b, :, i - shift[b, 0], j - shift[b, 1]]`` where that is inside the image.
    """
    b, _, h, w = x.shape
    r = int(shift.abs().max()) if shift.numel() else 0
    xp = F.pad(x, (r, r, r, r))
    rows = torch.arange(h, device=x.device)[None, :] + r - shift[:, 0:1]  # (B, H) rows of xp
    cols = torch.arange(w, device=x.device)[None, :] + r - shift[:, 1:2]  # (B, W)
    idx = torch.arange(b, device=x.device)[:, None, None]
    return xp.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, centre: torch.Tensor, size: int) -> torch.Tensor:
    """Zero a ``size`` x ``size`` square of each image of x (B, C, H, W) centred at ``centre`` (B, 2)
    (rows ``c - size // 2`` .. ``c - size // 2 + size - 1``, clipped to the image)."""
    _, _, h, w = x.shape
    lo = centre - size // 2  # (B, 2)
    ii = torch.arange(h, device=x.device)[None, :]
    jj = torch.arange(w, device=x.device)[None, :]
    in_r = (ii >= lo[:, 0:1]) & (ii < lo[:, 0:1] + size)  # (B, H)
    in_c = (jj >= lo[:, 1:2]) & (jj < lo[:, 1:2] + size)  # (B, W)
    keep = ~(in_r[:, :, None] & in_c[:, None, :])  # (B, H, W)
    return x * keep[:, None].to(x.dtype)


def diff_augment(x: torch.Tensor, policy: str | tuple[str, ...], translation_ratio: float = 0.125) -> torch.Tensor:
    """Apply ``policy`` (see module docstring) to images x (B, C, H, W); ``""``: x itself, unchanged."""
    names = parse_policy(policy) if isinstance(policy, str) else policy
    if not names:
        return x
    if x.dim() != 4:
        raise ValueError(f"diff_augment expects images (B, C, H, W), got {tuple(x.shape)}")
    b, _, h, w = x.shape
    for name in names:
        if name == "brightness":
            x = x + (torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype) - 0.5)
        elif name == "translation":
            r = torch.tensor([round(h * translation_ratio), round(w * translation_ratio)], device=x.device)
            shift = (torch.rand(b, 2, device=x.device) * (2 * r + 1)).floor().long() - r
            x = translate(x, shift)
        elif name == "cutout":
            size = round(min(h, w) * 0.5)
            centre = (torch.rand(b, 2, device=x.device) * torch.tensor([h, w], device=x.device)).floor().long()
            x = cutout(x, centre, size)
    return x
