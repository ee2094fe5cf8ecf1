"""A tiny BatchNorm-free VisionModel for the training tests (tests only, never in the package).

Registered lazily (:func:`ensure_registered`), at test run time, so suites parametrised
over ``visattn.list_models()`` at collection time never see it.
"""

from __future__ import annotations

import torch
from torch import nn

import visattn
from visattn.models.base import VisionModel, resolve_mixer
from visattn.registry import _MODELS, register_model

NAME = "_tiny_test_net"


class TinyNet(VisionModel):
    """stem 3x3 conv (3 -> 8) [-> BatchNorm if bn] -> mixer (8 -> 8) -> ReLU -> 3x3 conv stride 2 (8 -> 16) -> head."""

    def __init__(self, num_classes=10, attention=None, attn_kwargs=None, width=8, bn=False):
        super().__init__()
        name, kw = resolve_mixer("conv", {"kernel_size": 3}, attention, attn_kwargs)
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width) if bn else nn.Identity()  # only with bn=True
        self.mixer = visattn.create_attention(name, width, **kw)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self._init_head(2 * width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(x + self.mixer(x))
        return torch.relu(self.down(x))


def unregister() -> None:
    _MODELS.pop(NAME, None)


def make_color_folder(root, per_class: int = 16, size: int = 8) -> str:
    """3 classes of noisy coloured squares as PNGs in root/class{0,1,2}; returns the data spec."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, rgb in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            arr = np.clip(np.array(rgb) + rng.normal(0, 60, (size, size, 3)), 0, 255).astype("uint8")
            Image.fromarray(arr).save(root / f"class{c}" / f"{i}.png")
    return f"folder:{root}"


def ensure_registered() -> str:
    if NAME not in _MODELS:

        @register_model(NAME, family="test", default_input=(3, 8, 8), test_input=(3, 8, 8))
        def _build(num_classes=10, attention=None, attn_kwargs=None, **kw):
            return TinyNet(num_classes, attention, attn_kwargs, **kw)

    return NAME
