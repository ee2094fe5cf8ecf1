"""Multi-scale features from any visattn model, in timm's convention.

Every :class:`~visattn.models.base.VisionModel` declares its *feature levels* in
``model.feature_info`` (a :class:`FeatureInfo`): one entry per map it can return, with
``num_chs`` (channels), ``reduction`` (nominal stride w.r.t. the input) and ``module`` (the
dotted name of the sub-module whose output it is). Levels per family:

* ResNet: 5 levels: the stem (its last ReLU, before a max-pool) and the 4 stages;
* hierarchical transformers (Swin / PVT layout): the 4 stages (before the final norm);
* token transformers (SAN) and EAMLP: one scale; every block is a level (all at the same
  reduction), as timm does for ViTs.

Two ways to read them (timm semantics):

* ``model.forward_intermediates(x, indices=None, output_fmt="NCHW", intermediates_only=False,
  norm=False)`` on a full model: ``(final, [maps])`` where ``final`` is exactly
  ``forward_features(x)``, or only ``[maps]`` with ``intermediates_only=True`` (the forward then
  stops at the deepest level asked for);
* ``visattn.create_model(name, features_only=True, out_indices=(...))``: a
  :class:`FeatureExtractor` whose forward returns the list of maps; the levels after the deepest
  one asked for, the final norm and the classifier are removed (every parameter is used).

``indices`` / ``out_indices``: ``None`` (every level), an int ``n`` (the last ``n`` levels) or a
sequence of level indices (negative ones count from the end). Anything else, or an index that
does not exist, is a ``ValueError`` that lists the levels the model has.

Output size rule: level i of an input (H, W) has (ceil(H / r_i), ceil(W / r_i)) positions with
r_i = ``reduction`` for the ResNet and hierarchical families (strided convolutions and pools
with "same" padding; the transformers pad bottom/right); (H / p, W / p) for the token
transformers (H, W must divide by the patch size p); EAMLP's T2T stem gives
``h = ceil(floor((H + 1) / 4) / 4)`` (its ``reduction`` 16 is nominal).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

if TYPE_CHECKING:
    from visattn.models.base import VisionModel

__all__ = ["FeatureInfo", "FeatureExtractor", "feature_size"]


class FeatureInfo:
    """The feature levels of a model (or the selected ones of a :class:`FeatureExtractor`).

    Indexable like a list of dicts ``{"num_chs", "reduction", "module", "index"}`` (``index``: the
    level in the full model); ``channels()``, ``reduction()`` and ``module_name()`` give one value
    per entry, or the value of entry ``idx``.
    """

    def __init__(self, entries: Sequence[dict]):
        self._entries = [dict(e) for e in entries]
        for i, e in enumerate(self._entries):
            e.setdefault("index", i)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, idx: int) -> dict:
        return self._entries[idx]

    def __iter__(self) -> Iterator[dict]:
        return iter(self._entries)

    def __repr__(self) -> str:
        return f"FeatureInfo({self._entries!r})"

    def get_dicts(self) -> list[dict]:
        return [dict(e) for e in self._entries]

    def _get(self, key: str, idx: int | None):
        return [e[key] for e in self._entries] if idx is None else self._entries[idx][key]

    def channels(self, idx: int | None = None):
        """Channels of every entry (a list), or of entry ``idx``."""
        return self._get("num_chs", idx)

    def reduction(self, idx: int | None = None):
        """Nominal stride of every entry (a list), or of entry ``idx``."""
        return self._get("reduction", idx)

    def module_name(self, idx: int | None = None):
        """Dotted module name of every entry (a list), or of entry ``idx``."""
        return self._get("module", idx)

    def describe(self) -> str:
        """``"0: stem (32 ch, reduction 1), 1: stages.0 (...)"``: what error messages list."""
        return ", ".join(
            f"{i}: {e['module']} ({e['num_chs']} ch, reduction {e['reduction']})" for i, e in enumerate(self._entries)
        )

    def resolve(self, indices, owner: str = "model") -> list[int]:
        """Level indices (sorted, unique, non-negative) selected by ``indices`` (see module docstring)."""
        n = len(self._entries)
        if indices is None:
            return list(range(n))
        if (
            isinstance(indices, bool)
            or not isinstance(indices, (numbers.Integral, Sequence))
            or isinstance(indices, str)
        ):
            raise TypeError(
                f"{owner}: indices must be None, an int or a sequence of ints, got {type(indices).__name__}"
            )
        if isinstance(indices, numbers.Integral):
            indices = int(indices)
            if not 1 <= indices <= n:
                raise ValueError(
                    f"{owner}: indices={indices} asks for the last {indices} feature levels, but "
                    f"the model has {n}: {self.describe()}"
                )
            return list(range(n - indices, n))
        if len(indices) == 0:
            raise ValueError(f"{owner}: indices is empty; expected level indices in 0..{n - 1}: {self.describe()}")
        wrong_type = [i for i in indices if isinstance(i, bool) or not isinstance(i, numbers.Integral)]
        if wrong_type:
            raise TypeError(f"{owner}: feature level indices must be ints, got {tuple(indices)}")
        indices = [int(i) for i in indices]
        bad = [i for i in indices if not -n <= i < n]
        if bad:
            raise ValueError(
                f"{owner}: feature level indices {tuple(indices)} out of range: the model has {n} "
                f"levels, indices 0..{n - 1} (or -{n}..-1): {self.describe()}"
            )
        return sorted({i % n for i in indices})


def feature_size(size: int, reduction: int) -> int:
    """Positions along one side at a level of nominal ``reduction``: ceil(size / reduction)
    (ResNet and hierarchical families; see the module docstring for the others)."""
    return math.ceil(size / reduction)


class FeatureExtractor(nn.Module):
    """``features_only`` wrapper: images (B, C, H, W) -> [(B, C_i, H_i, W_i) for each out index].

    Args:
        model: a :class:`~visattn.models.base.VisionModel`; pruned in place after the deepest
            level asked for (later levels, final norm and classifier are removed).
        out_indices: levels to return (see :meth:`FeatureInfo.resolve`).
        output_fmt: ``"NCHW"`` or ``"NHWC"``.
        name: the model's name in error messages (default: ``model.name`` if set, else its class).

    ``feature_info`` describes the returned maps, in order.
    """

    def __init__(self, model: nn.Module, out_indices=None, output_fmt: str = "NCHW", name: str | None = None):
        super().__init__()
        info = getattr(model, "feature_info", None)
        if not isinstance(info, FeatureInfo):
            raise TypeError(
                f"{type(model).__name__} declares no feature levels (feature_info); features_only "
                "needs a visattn backbone"
            )
        owner = name or getattr(model, "name", None) or type(model).__name__
        take = info.resolve(out_indices, owner=f"{owner} out_indices")
        backbone = cast("VisionModel", model)
        backbone.prune_intermediate_layers(max(take) + 1)
        self.model = backbone
        self.out_indices = tuple(take)
        self.output_fmt = output_fmt
        self.feature_info = FeatureInfo([info[i] for i in take])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(
            x, indices=self.out_indices, output_fmt=self.output_fmt, intermediates_only=True
        )
