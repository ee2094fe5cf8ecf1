"""The model contract: features, head, classifier reset.

Every registered model is a :class:`VisionModel`:

* ``forward_features(x)``: (B, 3, H, W) -> final feature map (B, num_features, h, w);
* ``forward_head(f, pre_logits=False)``: global average pool, optional norm, classifier;
* ``forward(x) = forward_head(forward_features(x))``;
* ``reset_classifier(num_classes)``: new head (0 gives pooled features).
"""

from __future__ import annotations

import torch
from torch import nn

from visattn.layers.base import check_positive_int

__all__ = ["VisionModel", "resolve_mixer"]


def resolve_mixer(default: str, default_kwargs: dict | None, attention: str | None,
                  attn_kwargs: dict | None) -> tuple[str, dict]:
    """The mechanism name and kwargs a backbone slot uses.

    The model's own ``default`` mechanism keeps its ``default_kwargs``; when the user
    swaps in another ``attention``, only ``attn_kwargs`` apply. ``attn_kwargs`` always
    override.
    """
    if attention is None or attention == default:
        kw = dict(default_kwargs or {})
        kw.update(attn_kwargs or {})
        return default, kw
    return attention, dict(attn_kwargs or {})


class VisionModel(nn.Module):
    """Base class of visattn models (see module docstring).

    Subclasses set ``self.num_features`` and implement ``forward_features``; they call
    :meth:`_init_head` once the feature width is known.
    """

    num_features: int = 0

    def _init_head(self, num_features: int, num_classes: int, drop_rate: float = 0.0,
                   head_norm: nn.Module | None = None) -> None:
        self.num_features = num_features
        self.num_classes = num_classes
        self.head_norm = head_norm if head_norm is not None else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _check_image(self, x: torch.Tensor, channels: int = 3) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__} expects images (B, {channels}, H, W), got {shape}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """f: (B, num_features, h, w) -> logits (B, num_classes), or pooled (B, num_features)."""
        f = f.mean(dim=(2, 3))
        f = self.head_norm(f)
        f = self.head_drop(f)
        return f if pre_logits else self.head(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a new one for ``num_classes`` (0: no classifier)."""
        if num_classes != 0:
            check_positive_int("num_classes", num_classes)
        self.num_classes = num_classes
        dev = next(self.parameters()).device
        self.head = nn.Linear(self.num_features, num_classes).to(dev) if num_classes > 0 else nn.Identity()
