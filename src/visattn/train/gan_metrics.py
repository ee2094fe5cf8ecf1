"""FID and KID of generated images, computed by ``torchmetrics`` on a chosen feature network.

The Fréchet distance (Heusel et al. 2017, arXiv 1706.08500) and the kernel inception distance
(Bińkowski et al. 2018, arXiv 1801.01401: unbiased MMD^2 with the cubic polynomial kernel
``(x.y / d + 1)^3``, mean and standard deviation over random subsets) are torchmetrics'
``FrechetInceptionDistance`` and ``KernelInceptionDistance``; visattn only chooses their
``feature=`` network (nothing here restates their formulas). Feature networks
(:func:`feature_network`):

* ``inception:PATH`` — torchmetrics' own InceptionV3 (via ``torch-fidelity``) with the user's
  weights file (torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``, the FID
  standard network); 2048 pool features. Only these numbers are comparable with published FIDs
  (and only at the published sample counts, usually 50,000). The file is first opened with
  ``torch.load(weights_only=True)`` so a file holding anything but tensors is refused before
  torch-fidelity reads it.
* ``run:DIR`` — the fallback: a classifier that ``visattn train`` trained on the same data
  (``DIR`` holds its ``config.json`` and ``model.safetensors``); the features are its pooled
  final map (``forward_head(pre_logits=True)``). FIDs on these features measure the same thing
  at another scale and are **not comparable to published FIDs**, nor between feature networks.

Images go in as floats in [0, 1] (B, 3, H, W); each network resizes them to its own input.
Nothing is downloaded: without a weights file the Inception network is not built.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from visattn.data import normalize

__all__ = [
    "ClassifierFeatures",
    "InceptionFeatures",
    "feature_network",
    "generation_metrics",
    "FEATURE_NOTE",
]

#: Printed and written beside every FID / KID from a fallback feature network.
FEATURE_NOTE = (
    "FID/KID on a visattn classifier's features (fallback): not comparable to published FIDs, "
    "which use InceptionV3 pool features and 50,000 samples"
)


class ClassifierFeatures(nn.Module):
    """A visattn classifier as a feature network: images (B, 3, H, W) in [0, 1] -> (B, num_features).

    Resizes to the classifier's ``image_size`` (bilinear, antialiased), normalises with its
    training mean / std and returns the pooled final feature map. Always in eval mode.
    """

    def __init__(self, model: nn.Module, image_size: int, mean, std, name: str = "classifier"):
        super().__init__()
        self.model: Any = model.eval()
        self.image_size, self.mean, self.std, self.name = int(image_size), tuple(mean), tuple(std), name
        self.num_features = int(cast(Any, model).num_features)  # read by torchmetrics
        for p in self.model.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> ClassifierFeatures:
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if x.shape[-2:] != (self.image_size, self.image_size):
            shrink = x.shape[-1] > self.image_size
            x = F.interpolate(x, size=(self.image_size,) * 2, mode="bilinear", align_corners=False, antialias=shrink)
        dev = next(self.model.parameters()).device
        f = self.model.forward_features(normalize(x, self.mean, self.std).to(dev))
        return self.model.forward_head(f, pre_logits=True).float()


class InceptionFeatures(nn.Module):
    """torchmetrics' InceptionV3 (2048 pool features) with a local weights file; images in [0, 1]."""

    def __init__(self, weights: str | os.PathLike):
        super().__init__()
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"Inception weights file {str(path)!r} does not exist; expected torch-fidelity's "
                "weights-inception-2015-12-05-6726825d.pth (the FID network), or use run:DIR features"
            )
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(
                f"{str(path)!r} is not a weights file that loads with torch.load(weights_only=True) "
                f"({type(e).__name__}: {' '.join(str(e).split())[:200]})"
            ) from None
        if not isinstance(sd, dict) or "Conv2d_1a_3x3.conv.weight" not in sd:
            raise ValueError(
                f"{str(path)!r} is not an InceptionV3 state dict of the FID network (no 'Conv2d_1a_3x3.conv.weight')"
            )
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
        except ImportError as e:  # pragma: no cover - optional extra
            raise ImportError("FID needs torchmetrics: pip install 'visattn[gen]'") from e
        try:
            self.net = NoTrainInceptionV3(
                name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(path)
            )
        except ModuleNotFoundError as e:
            raise ImportError(f"Inception features need torch-fidelity: pip install 'visattn[gen]' ({e})") from e
        self.num_features = 2048
        self.name = f"inception:{path}"

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            x = (x.float().clamp(0, 1) * 255.0).round().to(torch.uint8)
        return self.net(x).reshape(x.shape[0], -1)


def _classifier_from_run(run: str | os.PathLike, device: str | torch.device = "cpu") -> ClassifierFeatures:
    from visattn.models.io import load_weights
    from visattn.registry import create_model, model_entry

    root = Path(run).expanduser()
    cfg_path, weights = root / "config.json", root / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise FileNotFoundError(
            f"feature network run {str(root)!r} must hold config.json and model.safetensors "
            "(a finished `visattn train` classification run)"
        )
    info = json.loads(cfg_path.read_text())
    conf = info.get("config", {})
    name = conf.get("model")
    if not isinstance(name, str) or model_entry(name).task != "classify":
        raise ValueError(f"feature network run {str(root)!r}: expected a classification model, got {name!r}")
    model = create_model(
        name,
        num_classes=len(info["classes"]),
        attention=conf.get("attention"),
        attn_kwargs=conf.get("attn_kwargs"),
        **(conf.get("model_kwargs") or {}),
    )
    load_weights(model, weights)
    return ClassifierFeatures(model.to(device), info["image_size"], info["mean"], info["std"], name=f"run:{root}")


def feature_network(spec: str | nn.Module, device: str | torch.device = "cpu") -> nn.Module:
    """The feature network ``spec`` names: ``inception:PATH`` | ``run:DIR`` (see module docstring),
    or an ``nn.Module`` used as is (it maps images in [0, 1] to (B, F) and should set ``num_features``)."""
    if isinstance(spec, nn.Module):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"feature network must be 'inception:PATH', 'run:DIR' or an nn.Module, got {spec!r}")
    kind, _, path = spec.partition(":")
    if kind == "inception" and path:
        return InceptionFeatures(path).to(device)
    if kind == "run" and path:
        return _classifier_from_run(path, device)
    raise ValueError(f"feature network must be 'inception:PATH' or 'run:DIR', got {spec!r}")


def _batches(source: torch.Tensor | Iterable[torch.Tensor] | Callable[[], Iterable[torch.Tensor]], bs: int):
    if isinstance(source, torch.Tensor):
        for i in range(0, source.shape[0], bs):
            yield source[i : i + bs]
    else:
        yield from (source() if callable(source) else source)


def generation_metrics(
    real: torch.Tensor | Iterable[torch.Tensor],
    fake: torch.Tensor | Iterable[torch.Tensor],
    features: str | nn.Module,
    *,
    kid_subsets: int = 50,
    kid_subset_size: int = 1000,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, Any]:
    """FID and KID of ``fake`` against ``real`` through torchmetrics on ``features``.

    Args:
        real, fake: images (N, 3, H, W) in [0, 1] (or batches of them); anything the feature
            network maps to (B, F) works, e.g. feature vectors with an identity network.
        features: a :func:`feature_network` spec or module.
        kid_subsets, kid_subset_size: KID's random subsets (the size is capped at the smaller
            sample count); drawn from torch's generator seeded with ``seed``, restored afterwards.

    Returns:
        ``{"fid", "kid", "kid_std", "n_real", "n_fake", "features"}`` (floats, ints, the network's name).
    """
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance
    except ImportError as e:  # pragma: no cover - optional extra
        raise ImportError("FID / KID need torchmetrics: pip install 'visattn[gen]'") from e
    net = feature_network(features)
    # Features once per image, shared by both metrics: a cache module replays them.
    feats = {True: [], False: []}  # type: dict[bool, list[torch.Tensor]]
    for is_real, source in ((True, real), (False, fake)):
        for x in _batches(source, batch_size):
            feats[is_real].append(net(x).detach().double().cpu())
    f_real, f_fake = torch.cat(feats[True]), torch.cat(feats[False])
    if f_real.dim() != 2 or f_fake.dim() != 2 or f_real.shape[1] != f_fake.shape[1]:
        raise ValueError(
            f"the feature network must map images to (B, F); got {tuple(f_real.shape)} and {tuple(f_fake.shape)}"
        )
    n_real, n_fake = f_real.shape[0], f_fake.shape[0]
    if min(n_real, n_fake) < 2:
        raise ValueError(f"FID / KID need at least 2 real and 2 generated images, got {n_real} and {n_fake}")
    passthrough = _Features(f_real.shape[1])
    fid = FrechetInceptionDistance(feature=passthrough)
    size = min(kid_subset_size, n_real, n_fake)
    with warnings.catch_warnings():  # KID's note that it keeps every feature: these are already in memory
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        kid = KernelInceptionDistance(feature=passthrough, subsets=kid_subsets, subset_size=size)
    for m in (fid, kid):
        m.update(f_real, real=True)
        m.update(f_fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {
        "fid": float(fid.compute()),
        "kid": float(kid_mean),
        "kid_std": float(kid_std),
        "n_real": int(n_real),
        "n_fake": int(n_fake),
        "features": str(getattr(net, "name", type(net).__name__)),
    }


class _Features(nn.Module):
    """Identity on precomputed features (B, F): lets torchmetrics take features computed once."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f
