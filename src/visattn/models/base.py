"""The model contract: features, head, classifier reset.

Every registered model is a :class:`VisionModel`:

* ``forward_features(x)``: (B, 3, H, W) -> final feature map (B, num_features, h, w);
* ``forward_head(f, pre_logits=False)``: global average pool (or, in class-token mode, the
  token), optional norm, classifier;
* ``forward(x) = forward_head(forward_features(x))``;
* ``reset_classifier(num_classes)``: new head (0 gives pooled features);
* ``feature_info`` and ``forward_intermediates(x, indices, ...)``: the model's feature levels
  in timm's convention (see :mod:`visattn.models.features`).

Class-token mode (``global_pool == "token"``; EAMLP's and the hierarchical family's
``class_token=True``): a learned token at position 0 runs through the blocks with the map's
tokens, as a 1 x (1 + h w) strip, and is read out for the head. Feature levels stay (B, C, h, w)
maps of the patch tokens; ``forward_features`` returns the final strip (B, C, 1, 1 + h w), token
first, so that ``forward_head(forward_features(x)) == forward(x)`` still holds.
"""

from __future__ import annotations

import torch
from torch import nn

from visattn.layers.base import check_choice, check_positive_int, from_tokens, to_tokens
from visattn.models.blocks import find_mixers, resolve_mixer
from visattn.models.features import FeatureInfo

__all__ = ["VisionModel", "TokenBlockLevels", "resolve_mixer", "check_images"]


def check_images(owner: str, x, channels: int, module: nn.Module | None = None) -> None:
    """Raise an error naming ``owner`` unless ``x`` is a (B, channels, H, W) floating-point tensor
    with H, W >= 1 (and, given ``module``, of its parameters' dtype, or under autocast)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != channels:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{owner} expects images (B, {channels}, H, W), got {shape}")
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"{owner} expects images (B, {channels}, H, W) with H, W >= 1, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(
            f"{owner} expects floating-point images (B, {channels}, H, W), got dtype {x.dtype}; convert "
            f"{str(x.dtype).replace('torch.', '')} images with x.float() / 255 (and normalise them as in training)"
        )
    if module is None or torch.is_autocast_enabled(x.device.type):
        return
    p = next((t for t in module.parameters() if t.is_floating_point()), None)
    if p is not None and p.dtype != x.dtype:
        raise TypeError(
            f"{owner} holds {p.dtype} parameters but got {x.dtype} images; convert the images with "
            f"x.to({p.dtype}), or the model with model.to({x.dtype})"
        )


class VisionModel(nn.Module):
    """Base class of visattn models (see module docstring).

    Subclasses set ``self.num_features`` and implement ``forward_features``; they call
    :meth:`_init_head` once the feature width is known. Backbones with feature levels set
    ``self.feature_info`` (a :class:`FeatureInfo`) and implement ``_levels`` (the maps of the
    levels up to ``stop``), ``_finish`` (last level -> ``forward_features`` output) and
    ``_prune_levels``; ``forward_features`` is then ``_finish`` of the last level, the same
    code path that :meth:`forward_intermediates` runs.
    """

    num_features: int = 0
    in_chans: int = 3
    feature_info: FeatureInfo | None = None
    #: "avg" (mean over the final map) or "token" (class-token mode: the strip's first position).
    global_pool: str = "avg"
    norm: nn.Module
    head: nn.Module
    head_norm: nn.Module

    def _info(self) -> FeatureInfo:
        if not isinstance(self.feature_info, FeatureInfo):
            raise TypeError(f"{type(self).__name__} declares no feature levels (feature_info)")
        return self.feature_info

    def _init_head(
        self, num_features: int, num_classes: int, drop_rate: float = 0.0, head_norm: nn.Module | None = None
    ) -> None:
        self.num_features = num_features
        self.num_classes = num_classes
        self.head_norm = head_norm if head_norm is not None else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _check_image(self, x: torch.Tensor, channels: int = 3) -> None:
        check_images(type(self).__name__, x, channels, self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> final feature map (B, num_features, h, w)."""
        last = len(self._info()) - 1
        return self._finish_levels(self._levels(x, (last,), last), last)

    def _levels(self, x: torch.Tensor, take, stop: int) -> list:  # pragma: no cover - abstract
        """Run levels 0..stop; a list of stop + 1 entries: (B, C_i, H_i, W_i) for the levels in
        ``take`` and for ``stop``, None for the others."""
        raise NotImplementedError

    def _finish(self, f: torch.Tensor) -> torch.Tensor:
        """Last level map -> ``forward_features`` output (the final norm, if any)."""
        return f

    def _finish_levels(self, levels: list, last: int) -> torch.Tensor:
        """``forward_features`` output from ``_levels``' list: ``_finish`` of the last level. In
        class-token mode ``_levels`` appends the token's output (B, C) after the levels; this
        then returns the normed strip (B, C, 1, 1 + h w), token first."""
        if len(levels) > last + 1 and levels[last + 1] is not None:
            token, f = levels[last + 1], levels[last]
            strip = torch.cat([token[:, :, None], f.flatten(2)], dim=2)[:, :, None]  # (B, C, 1, 1 + h w)
            return self._finish(strip)
        return self._finish(levels[last])

    def _prune_levels(self, keep: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices=None,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        norm: bool = False,
    ):
        """Feature maps of the levels ``indices`` (timm semantics).

        Args:
            x: images (B, C_in, H, W).
            indices: None (all levels), an int n (the last n) or a sequence of level indices
                (negative ones count from the end); see ``self.feature_info``.
            output_fmt: ``"NCHW"`` or ``"NHWC"`` for the intermediates.
            intermediates_only: return only the list (the forward stops at the deepest level asked for).
            norm: apply the final norm (as ``forward_features`` does) to the last level if it is asked for.

        Returns:
            ``(final, [maps])`` with ``final`` equal to ``forward_features(x)``, or ``[maps]``;
            map i has shape (B, feature_info.channels(i), H_i, W_i) (output-size rule:
            :mod:`visattn.models.features`).
        """
        info = self._info()
        take = info.resolve(indices, owner=f"{type(self).__name__}.forward_intermediates")
        check_choice("output_fmt", output_fmt, ("NCHW", "NHWC"))
        last = len(info) - 1
        stop = take[-1] if intermediates_only else last
        levels = self._levels(x, take, stop)
        final = None if intermediates_only else self._finish_levels(levels, last)
        feats = []
        for i in take:
            f = levels[i]
            if norm and i == last:
                f = final if final is not None else self._finish_levels(levels, last)
            feats.append(f.permute(0, 2, 3, 1) if output_fmt == "NHWC" else f)
        return feats if intermediates_only else (final, feats)

    def prune_intermediate_layers(self, keep: int) -> None:
        """Keep feature levels 0..keep-1 only: drop later levels, the final norm and the classifier
        (what ``features_only`` does, so that every remaining parameter is used)."""
        info = self._info()
        n = len(info)
        if not (isinstance(keep, int) and 1 <= keep <= n):
            raise ValueError(f"keep must be an int in 1..{n}, got {keep!r}")
        self._prune_levels(keep)
        if isinstance(getattr(self, "norm", None), nn.Module):
            self.norm = nn.Identity()
        self.reset_classifier(0)
        self.head_norm = nn.Identity()
        self.feature_info = FeatureInfo(info.get_dicts()[:keep])

    def named_mixers(self) -> list[tuple[str, nn.Module]]:
        """The spatial mixers of the model in module order, as (dotted name, module): every
        :class:`~visattn.layers.base.SpatialAttention` not nested inside another (a stem's
        mechanisms included). The one rule that ``visattn viz``, ``visattn info`` and the tests use."""
        return find_mixers(self)

    def mixers(self) -> list[nn.Module]:
        """The modules of :meth:`named_mixers`, in order."""
        return [m for _, m in self.named_mixers()]

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """f: (B, num_features, h, w) -> logits (B, num_classes), or pooled (B, num_features).

        Pooling: the mean over (h, w), or in class-token mode the token at (0, 0) of the strip."""
        f = f[:, :, 0, 0] if self.global_pool == "token" else f.mean(dim=(2, 3))
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


class TokenBlockLevels:
    """Feature levels of a one-scale token model (mixin for a :class:`VisionModel` with
    ``self.blocks`` taking ``(tokens (B, N, C), (h, w))`` and a final ``self.norm`` over C):
    level i is block i's output as a (B, C, h, w) map."""

    blocks: nn.ModuleList
    norm: nn.Module

    def _run_blocks(self, t: torch.Tensor, hw: tuple[int, int], take, stop: int) -> list:
        out: list = [None] * (stop + 1)
        for i, blk in enumerate(self.blocks):
            if i > stop:
                break
            t = blk(t, hw)
            if i in take or i == stop:
                out[i] = from_tokens(t, hw)
        return out

    def _finish(self, f: torch.Tensor) -> torch.Tensor:
        """Last block's map -> the final norm per token, (B, C, h, w)."""
        return from_tokens(self.norm(to_tokens(f)), (f.shape[2], f.shape[3]))

    def _prune_levels(self, keep: int) -> None:
        self.blocks = nn.ModuleList(list(self.blocks)[:keep])
