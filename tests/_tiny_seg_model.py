"""A tiny segmentation net for the segmentation training tests (tests only, never in the package).

Registered lazily (:func:`ensure_registered`) at test run time, so suites parametrised over
``visattn.list_models()`` at collection time never see it. Logits at input resolution.
"""

from __future__ import annotations

import torch
from torch import nn

import visattn
from visattn.models.base import resolve_mixer
from visattn.registry import _MODELS, register_model

NAME = "_tiny_seg_test_net"


class TinySegNet(nn.Module):
    """3x3 conv (3 -> w) [-> BatchNorm] -> ReLU -> mixer (w -> w) residual -> ReLU -> 1x1 conv classifier."""

    def __init__(self, num_classes=11, attention=None, attn_kwargs=None, width=8, bn=False):
        super().__init__()
        name, kw = resolve_mixer("conv", {"kernel_size": 3}, attention, attn_kwargs)
        self.num_classes = num_classes
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width) if bn else nn.Identity()
        self.mixer = visattn.create_attention(name, width, **kw)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(x + self.mixer(x))
        return self.classifier(x)


def unregister() -> None:
    _MODELS.pop(NAME, None)


def ensure_registered() -> str:
    if NAME not in _MODELS:

        @register_model(NAME, family="test", task="segment", default_input=(3, 16, 16), test_input=(3, 16, 16))
        def _build(num_classes=11, attention=None, attn_kwargs=None, **kw):
            return TinySegNet(num_classes, attention, attn_kwargs, **kw)

    return NAME
