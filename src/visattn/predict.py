"""Predicted segmentation masks drawn over their image (``visattn predict``).

:func:`load_segmenter` builds a registered segmentation model and loads trained weights;
when the weights come from ``visattn train --task segment`` (a run folder, or a
``model.safetensors`` next to its ``config.json``) the class names, normalisation and
mechanism are read from that ``config.json`` (its ``pretrained_cfg`` too, for a run fine-tuned from
published weights); a file written by ``visattn convert`` carries its normalisation, class count
and model options in its metadata. :func:`predict_mask` gives the per-pixel
class, :func:`draw_prediction` a :class:`matplotlib.figure.Figure` (no pyplot, no global
state): the image, the ground truth when known, and the prediction blended over the image,
with a legend of the classes present.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visattn._io import atomic_path

__all__ = ["load_segmenter", "predict_mask", "draw_prediction", "predict_image", "read_input_image"]


def _run_info(weights: Path) -> dict[str, Any] | None:
    folder = weights if weights.is_dir() else weights.parent
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{str(path)!r} is not valid JSON: {e}") from e
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
        raise ValueError(f"{str(path)!r} is not a visattn run config (no 'config' object)")
    _check_fields(info, path)
    return info


def _check_fields(info: dict[str, Any], path: Path) -> None:
    """Refuse ``config.json`` fields of the wrong type, naming the file and the field."""

    def bad(field: str, expected: str, v: Any) -> ValueError:
        return ValueError(f"{str(path)!r}: field {field!r} must be {expected}, got {type(v).__name__} {v!r}"[:400])

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    cfg = info["config"]
    checks = [
        ("config.model", cfg.get("model"), "a model name (string)", lambda v: isinstance(v, str)),
        (
            "config.attention",
            cfg.get("attention"),
            "a mechanism name or null",
            lambda v: v is None or isinstance(v, str),
        ),
        (
            "config.attn_kwargs",
            cfg.get("attn_kwargs"),
            "a JSON object or null",
            lambda v: v is None or isinstance(v, dict),
        ),
        (
            "config.model_kwargs",
            cfg.get("model_kwargs"),
            "a JSON object or null",
            lambda v: v is None or isinstance(v, dict),
        ),
        ("config.data", cfg.get("data"), "a data spec (string) or null", lambda v: v is None or isinstance(v, str)),
        ("config.seed", cfg.get("seed", 0), "an int >= 0", lambda v: is_int(v) and v >= 0),
        (
            "config.ignore_index",
            cfg.get("ignore_index"),
            "an int >= 0 or null",
            lambda v: v is None or is_int(v) and v >= 0,
        ),
        (
            "classes",
            info.get("classes"),
            "a list of class names (strings)",
            lambda v: v is None or isinstance(v, list) and all(isinstance(c, str) for c in v),
        ),
        ("image_size", info.get("image_size"), "an int >= 1 or null", lambda v: v is None or is_int(v) and v >= 1),
    ]
    for key in ("mean", "std"):
        checks.append(
            (
                key,
                info.get(key, [0.5] * 3),
                "a list of 3 finite numbers",
                lambda v: (
                    isinstance(v, list)
                    and len(v) == 3
                    and all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in v)
                ),
            )
        )
    for field, value, expected, ok in checks:
        if not ok(value):
            raise bad(field, expected, value)


def load_segmenter(
    model: str,
    weights: str | os.PathLike,
    *,
    attention: str | None = None,
    attn_kwargs: dict | None = None,
    num_classes: int | None = None,
    classes: Sequence[str] | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A segmentation model in eval mode with ``weights`` loaded, and what is known about it.

    Returns ``(model, info)`` with ``info`` keys ``classes``, ``mean``, ``std``, ``image_size``,
    ``data`` and ``seed`` (from the run's ``config.json`` when present, else ``num_classes``
    must be given and images are normalised with mean = std = 0.5).
    """
    from visattn.models.info import check_model_size
    from visattn.registry import create_model
    from visattn.train.checkpoint import load_weights

    wpath = Path(weights)
    if not wpath.exists():
        raise FileNotFoundError(
            f"weights {str(wpath)!r} do not exist (expected a model.safetensors file or the "
            "run folder of `visattn train --task segment`)"
        )
    run = _run_info(wpath)
    model_kwargs: dict = {}
    info: dict[str, Any] = {"mean": (0.5,) * 3, "std": (0.5,) * 3, "image_size": None, "data": None, "seed": 0}
    from visattn.models.pretrained import read_pretrained_cfg

    pcfg = (run or {}).get("pretrained_cfg") or (read_pretrained_cfg(wpath) if run is None else None)
    if pcfg:  # published / converted weights: their normalisation and the options they need
        info.update(mean=tuple(pcfg["mean"]), std=tuple(pcfg["std"]))
        model_kwargs = dict(pcfg.get("model_kwargs") or {})
        if run is None and num_classes is None and classes is None and pcfg.get("num_classes"):
            num_classes = int(pcfg["num_classes"])
    if run is not None:
        cfg = run["config"]
        if cfg.get("model") != model:
            raise ValueError(
                f"the weights were trained as model {cfg.get('model')!r} (see their config.json), not {model!r}"
            )
        attention = attention if attention is not None else cfg.get("attention")
        attn_kwargs = attn_kwargs if attn_kwargs is not None else cfg.get("attn_kwargs")
        model_kwargs = {**model_kwargs, **(cfg.get("model_kwargs") or {})}
        classes = classes if classes is not None else run.get("classes")
        info.update(
            mean=tuple(run.get("mean", info["mean"])),
            std=tuple(run.get("std", info["std"])),
            image_size=run.get("image_size"),
            data=cfg.get("data"),
            seed=cfg.get("seed", 0),
            ignore_index=cfg.get("ignore_index"),
        )
    if num_classes is None:
        if classes is None:
            raise ValueError(f"no config.json beside {str(wpath)!r}: pass the number of classes (--num-classes)")
        num_classes = len(classes)
    if classes is None:
        classes = [str(i) for i in range(num_classes)]
    if len(classes) != num_classes:
        raise ValueError(f"{len(classes)} class names for {num_classes} classes")
    check_model_size(model, num_classes, attention=attention, attn_kwargs=attn_kwargs, **model_kwargs)
    net = create_model(model, num_classes=num_classes, attention=attention, attn_kwargs=attn_kwargs, **model_kwargs)
    load_weights(net, wpath)
    net.eval()
    info["classes"] = list(classes)
    return net, info


def read_input_image(spec: str, info: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """(image (3, H, W) uint8, ground-truth mask or None, title) for ``spec``: an image file, or
    ``digitscenes:K``, test scene K of the built-in digit scenes (the run's size and seed)."""
    from visattn.data.segmentation import load_digit_scenes, read_image

    if spec.startswith("digitscenes:"):
        k_text = spec.partition(":")[2]
        if not k_text.isdigit():
            raise ValueError(f"expected digitscenes:K with K a test-scene number, got {spec!r}")
        k = int(k_text)
        if info.get("data") not in (None, "digitscenes"):
            raise ValueError(f"the model was trained on {info['data']!r}, not on digitscenes")
        kw = {} if info.get("ignore_index") is None else {"ignore_index": int(info["ignore_index"])}
        b = load_digit_scenes(
            info.get("image_size") or 64, n_test=max(500, k + 1), seed=int(info.get("seed") or 0), **kw
        )
        return b.test.images[k], b.test.masks[k], f"digit scenes, test scene {k}"
    # a file name that is not UTF-8 (surrogate escapes) is shown with replacement characters
    name = Path(spec).name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return read_image(spec), None, name


@torch.no_grad()
def predict_mask(model: torch.nn.Module, image: torch.Tensor, mean, std) -> torch.Tensor:
    """Per-pixel class (H, W) int64 of one image (3, H, W) uint8 (or float in 0..1)."""
    from visattn.data import normalize

    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image (3, H, W), got {tuple(image.shape)}")
    x = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    dev = next(model.parameters()).device
    logits = model(normalize(x[None], mean, std).to(dev))
    if logits.dim() != 4 or logits.shape[-2:] != image.shape[-2:]:
        raise ValueError(
            f"a segmentation model returns logits (1, K, {image.shape[1]}, {image.shape[2]}); this one "
            f"returned {tuple(logits.shape)} (is it a classifier?)"
        )
    return logits.argmax(1)[0].cpu()


def _colours(n: int) -> np.ndarray:
    from matplotlib import colormaps

    cmap = colormaps["tab20" if n > 10 else "tab10"]
    return np.array([cmap(i % cmap.N)[:3] for i in range(n)])


def draw_prediction(
    image: torch.Tensor,
    pred: torch.Tensor,
    classes: Sequence[str],
    truth: torch.Tensor | None = None,
    title: str = "",
    alpha: float = 0.55,
    ignore_index: int | None = None,
):
    """A Figure: the image, the ground truth (if given) and the prediction over the image.

    Masks are blended over the image with ``alpha``; a class named "background" is left
    transparent, and ``ignore_index`` pixels of the truth are drawn white. The legend lists
    the classes present in the prediction or the truth.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    img = image.permute(1, 2, 0).numpy().astype(np.float64)
    img = img / 255.0 if image.dtype == torch.uint8 else img
    colours = _colours(len(classes))

    def blend(mask: torch.Tensor) -> np.ndarray:
        m = mask.numpy()
        out = img.copy()
        for c in np.unique(m):
            if 0 <= c < len(classes) and classes[c] != "background":
                sel = m == c
                out[sel] = (1 - alpha) * img[sel] + alpha * colours[c]
            elif c == ignore_index:
                out[m == c] = 1.0
        return out

    panels = (
        [("image", img)]
        + ([("ground truth", blend(truth))] if truth is not None else [])
        + [("prediction", blend(pred))]
    )
    fig = Figure(figsize=(3.2 * len(panels) + 1.6, 3.6))
    axes = fig.subplots(1, len(panels))
    for ax, (name, arr) in zip(np.atleast_1d(axes), panels):
        ax.imshow(np.clip(arr, 0, 1), interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    present = sorted(set(pred.unique().tolist()) | (set(truth.unique().tolist()) if truth is not None else set()))
    handles = [
        Patch(color=colours[c], label=classes[c])
        for c in present
        if 0 <= c < len(classes) and classes[c] != "background"
    ]
    if handles:
        fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.02, right=1 - 1.5 / fig.get_figwidth(), top=0.85, bottom=0.03, wspace=0.05)
    return fig


def predict_image(
    model: str,
    weights: str | os.PathLike,
    image: str,
    out: str | os.PathLike,
    *,
    attention: str | None = None,
    attn_kwargs: dict | None = None,
    num_classes: int | None = None,
) -> tuple[Path, torch.Tensor, list[str]]:
    """Predict the mask of ``image`` (a file or ``digitscenes:K``) and write the figure to ``out`` (PNG).

    Returns (path written, predicted mask (H, W), class names).
    """
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"the output {str(out)!r} must be a .png file (the figure is written as PNG)")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"folder {str(out.parent)!r} for {out.name} does not exist")
    net, info = load_segmenter(model, weights, attention=attention, attn_kwargs=attn_kwargs, num_classes=num_classes)
    img, truth, name = read_input_image(image, info)
    pred = predict_mask(net, img, info["mean"], info["std"])
    fig = draw_prediction(
        img, pred, info["classes"], truth, title=f"{model} on {name}", ignore_index=info.get("ignore_index")
    )
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    return out, pred, info["classes"]
