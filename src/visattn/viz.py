"""Pictures of what each layer looks at, for one query pixel.

For every spatial mixer of a model (one row per layer) :func:`visualize` draws, for a
chosen query pixel, either

* every head's attention probabilities over the token grid, for mechanisms that expose
  ``attention_maps(x) -> (B, heads, n, n)`` (e.g. ``"relpos"``), like Figure 4 of
  Cordonnier et al. (arXiv 1911.03584); or
* the gradient-based receptive field |d (g . out[:, query]) / d in| summed over input
  channels (g a fixed random unit vector over output channels, so channels do not cancel),
  for mechanisms without an attention map (lambda, external, efficient, slide, conv, ...).

Maps are taken at each mixer's own input, captured with forward pre-hooks during one
forward pass of the model in eval mode, and drawn over the image with the query marked.
A bare mechanism name works too: the image is lifted to ``dim`` channels by a fixed
random 1x1 projection and the mechanism is drawn as a single layer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from visattn.layers.base import SpatialAttention
from visattn.models.info import named_mixers

__all__ = ["LayerMaps", "load_image", "collect_mixers", "layer_maps", "draw_grid", "visualize", "png_path"]

# ImageNet statistics (used for every model: the registered models are trained from scratch
# on normalised images; this only sets the input scale).
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


@dataclass
class LayerMaps:
    """What one layer looks at: ``maps`` (heads, h, w) in [0, 1] on a grid of ``grid`` tokens."""

    name: str
    mechanism: str
    kind: str  # "attention" or "gradient"
    maps: np.ndarray
    grid: tuple[int, int]
    query: tuple[int, int]  # the query token on the grid


def load_image(path: str | None = None) -> np.ndarray:
    """An RGB image as uint8 (H, W, 3): the file at ``path`` (read with Pillow), or
    scikit-image's astronaut photograph (``skimage.data.astronaut()``) when ``path`` is None."""
    if path is None:
        try:
            from skimage import data
        except ImportError as e:  # pragma: no cover - optional dependency
            raise ImportError(
                "the default image comes from scikit-image: pip install 'visattn[data]' or pass --image PATH"
            ) from e
        return np.asarray(data.astronaut(), dtype=np.uint8)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path!r}")
    from PIL import Image, UnidentifiedImageError

    from visattn.data.datasets import _to_rgb_uint8  # 16-bit greyscale by value, as folder: data

    try:
        with Image.open(path) as im:
            return np.asarray(_to_rgb_uint8(im), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read {path!r} as an image with Pillow: {e}") from e


def _to_input(img: np.ndarray, size: tuple[int, int], mean=_MEAN, std=_STD) -> torch.Tensor:
    """uint8 (H, W, 3) -> normalised float (1, 3, size[0], size[1]) (bilinear resize with Pillow)."""
    from PIL import Image

    im = Image.fromarray(img).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
    x = (x - torch.tensor(mean, dtype=torch.float32)[:, None, None]) / torch.tensor(std, dtype=torch.float32)[
        :, None, None
    ]
    return x[None]


def _published(weights: str | None) -> bool:
    """Whether ``weights`` is a published / converted source (loaded with ``pretrained=``) rather than
    a plain visattn weights file (loaded strictly into a model of ``num_classes``)."""
    if weights is None:
        return False
    from visattn.models.convert import find_source
    from visattn.models.hub import is_remote
    from visattn.models.pretrained import read_pretrained_cfg

    if os.path.isfile(weights):
        return not weights.endswith(".safetensors") or read_pretrained_cfg(weights) is not None
    return is_remote(weights) or find_source(weights) is not None


def collect_mixers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The spatial mixers of ``model`` in order, as (name, module): ``model.named_mixers()`` for a
    visattn model, the same rule (outermost :class:`SpatialAttention` modules) for any other module;
    a mechanism on its own is one mixer named by its registry name."""
    if isinstance(model, SpatialAttention):
        return [(type(model).registry_name or type(model).__name__, model)]
    out = named_mixers(model)
    if not out:
        raise ValueError(f"{type(model).__name__} has no visattn spatial mixers (SpatialAttention modules) to draw")
    return out


def _grad_field(mixer: nn.Module, x: torch.Tensor, query: tuple[int, int], seed: int) -> np.ndarray:
    """|d (g . mixer(x)[0, :, qy, qx]) / d x| summed over input channels: (1, h, w)."""
    x = x[:1].detach().clone().requires_grad_(True)
    with torch.enable_grad():
        y = mixer(x)
        gen = torch.Generator().manual_seed(seed)
        g = torch.randn(y.shape[1], generator=gen).to(y)
        (y[0, :, query[0], query[1]] * g / g.norm()).sum().backward()
    assert x.grad is not None
    return x.grad[0].abs().sum(0, keepdim=True).numpy()


def layer_maps(model: nn.Module, x: torch.Tensor, query: tuple[float, float], seed: int = 0) -> list[LayerMaps]:
    """Per-layer maps for the query at fractional image position ``query`` = (y, x) in [0, 1).

    ``x``: model input (1, C, H, W). Each mixer's input is captured during one forward pass.
    """
    mixers = collect_mixers(model)
    captured: dict[int, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, i=i: captured.__setitem__(i, args[0].detach()))
        for i, (_, m) in enumerate(mixers)
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    out = []
    for i, (name, m) in enumerate(mixers):
        if i not in captured:
            continue
        inp = captured[i]
        gh, gw = inp.shape[2], inp.shape[3]
        qy, qx = min(int(query[0] * gh), gh - 1), min(int(query[1] * gw), gw - 1)
        mech = getattr(type(m), "registry_name", "") or type(m).__name__
        attention_maps = getattr(m, "attention_maps", None)
        if callable(attention_maps):
            with torch.no_grad():
                a = attention_maps(inp[:1])[0, :, qy * gw + qx].float()  # (heads, n)
            maps, kind = a.reshape(-1, gh, gw).numpy(), "attention"
        else:
            maps, kind = _grad_field(m, inp, (qy, qx), seed), "gradient"
        out.append(LayerMaps(name, mech, kind, maps, (gh, gw), (qy, qx)))
    return out


def draw_grid(
    img: np.ndarray,
    layers: list[LayerMaps],
    query_px: tuple[int, int],
    out: str,
    title: str = "",
    cell: float = 1.6,
    dpi: int = 100,
) -> str:
    """Draw one row per layer (image with the query, then one panel per head) to PNG ``out``.

    The figure is (1 + max heads) x len(layers) cells of ``cell`` inches at ``dpi``.
    """
    from matplotlib.figure import Figure  # no pyplot: the caller's backend stays as it is

    if not layers:
        raise ValueError("nothing to draw: no layer produced a map (did the model run its mixers?)")
    out = png_path(out)
    rows, cols = len(layers), 1 + max(lm.maps.shape[0] for lm in layers)
    fig = Figure(figsize=(cols * cell, rows * cell), dpi=dpi, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    h0, w0 = img.shape[:2]
    ext = (0, w0, h0, 0)
    side = int(cell * dpi)  # a panel's size in pixels: draw the photograph no finer than that
    if max(h0, w0) > side:
        from PIL import Image

        s = side / max(h0, w0)
        img = np.asarray(
            Image.fromarray(img).resize((max(1, round(w0 * s)), max(1, round(h0 * s))), Image.Resampling.LANCZOS)
        )
    grey = img.astype(np.float32).mean(2) / 255.0
    for r, lm in enumerate(layers):
        ax = axes[r, 0]
        ax.imshow(img, extent=ext)
        ax.plot(query_px[1], query_px[0], "c+", ms=10, mew=2)
        ax.set_title(f"layer {r}: {lm.mechanism}", fontsize=6)
        ax.set_ylabel(lm.name, fontsize=5)
        for hd in range(cols - 1):
            ax = axes[r, hd + 1]
            if hd < lm.maps.shape[0]:
                mp = lm.maps[hd] / max(float(lm.maps[hd].max()), 1e-30)
                if lm.kind == "gradient":  # three decades on a log scale: global fields stay visible
                    mp = np.clip(np.log10(np.maximum(mp, 1e-30)) / 3 + 1, 0, 1)
                ax.imshow(grey, cmap="gray", vmin=0, vmax=1, extent=ext)
                ax.imshow(mp, cmap="inferno", alpha=0.75, vmin=0, vmax=1, interpolation="nearest", extent=ext)
                ax.plot(query_px[1], query_px[0], "c+", ms=6, mew=1.5)
                label = f"head {hd}" if lm.kind == "attention" else "log |d out[q] / d in|"
                ax.set_title(label, fontsize=6)
            else:
                ax.set_visible(False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        import textwrap

        fig.suptitle("\n".join(textwrap.wrap(title, max(20, int(cols * cell * 14)))), fontsize=7)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    from visattn._io import atomic_path

    with atomic_path(out, suffix=".png") as tmp:  # a crash never leaves half a PNG under the final name
        fig.savefig(tmp, dpi=dpi, format="png")
    return out


def png_path(out: str | os.PathLike) -> str:
    """Where a PNG asked for as ``out`` goes: ``out`` itself when it ends in ``.png``,
    ``out/viz.png`` when ``out`` is an existing directory or ends with a path separator;
    anything else (``plot``, ``plot.jpg``) is refused with a ``ValueError``."""
    text = os.fspath(out)
    if os.path.isdir(text) or text.endswith(("/", os.sep)):
        return os.path.join(text, "viz.png")
    if os.path.splitext(text)[1].lower() != ".png":
        raise ValueError(
            f"--out must be a .png file or a directory, got {text!r} "
            f"(for a new directory end it with '/': {text.rstrip('/') + '/'!r})"
        )
    return text


def visualize(
    target: str,
    out: str = "viz.png",
    image: str | None = None,
    query: tuple[int, int] | None = None,
    weights: str | None = None,
    attention: str | None = None,
    attn_kwargs: dict | None = None,
    num_classes: int = 10,
    dim: int = 64,
    size: int = 32,
    seed: int = 0,
) -> str:
    """Draw what every layer of model (or mechanism) ``target`` looks at for one query pixel.

    Args:
        target: a registered model name, or a registered mechanism name (drawn as one layer on
            the image lifted to ``dim`` channels at ``size`` x ``size``).
        out: PNG path, or a directory (the file is then ``out/viz.png``).
        image: image file (any format Pillow reads); default: scikit-image's astronaut photograph.
        query: (y, x) pixel of the original image; default: its centre.
        weights: safetensors file with the model's state dict, or published / converted weights (a
            ``pretrained=`` source: a URL, ``hf-hub:...``, a table name, a checkpoint file, a ``visattn
            convert`` output): then the model takes their class count and options, and the image is
            resized to their input size and normalised with their mean / std (``pretrained_cfg``).
        attention, attn_kwargs: swap the model's mixer (see ``visattn.create_model``).
        num_classes: classifier size of the built model (must match ``weights``).
        dim, size: channels and side for a bare mechanism.
        seed: seed of the fresh weights and of the gradient direction.

    Returns the path of the PNG written.
    """
    from visattn.registry import create_attention, list_attention, list_models, model_entry

    out = png_path(out)  # refuse a bad --out before any work
    img = load_image(image)
    h0, w0 = img.shape[:2]
    if query is None:
        query = (h0 // 2, w0 // 2)
    qy, qx = (int(v) for v in query)
    if not (0 <= qy < h0 and 0 <= qx < w0):
        raise ValueError(
            f"query pixel (y={qy}, x={qx}) is outside the {h0} x {w0} image (expected 0 <= y < {h0}, 0 <= x < {w0})"
        )
    with torch.random.fork_rng(devices=[]):  # fresh weights from `seed`; the caller's RNG is left as it was
        torch.manual_seed(seed)
        if target in list_models():
            from visattn.registry import create_model

            size_hw = model_entry(target).default_input[1:]
            if _published(weights):
                model = create_model(target, attention=attention, attn_kwargs=attn_kwargs, pretrained=weights)
                cfg = getattr(model, "pretrained_cfg", {})
                side = int(cfg["input_size"][-1])
                x = _to_input(img, (side, side), cfg["mean"], cfg["std"])
            else:
                model = create_model(target, num_classes=num_classes, attention=attention, attn_kwargs=attn_kwargs)
                if weights is not None:
                    _load_weights(model, weights)
                x = _to_input(img, size_hw)
        elif target in list_attention():
            if weights is not None:
                raise ValueError("--weights applies to models; a bare mechanism is drawn with fresh weights")
            mech = create_attention(target, dim, **(attn_kwargs or {}))
            lift = torch.randn(dim, 3, 1, 1, generator=torch.Generator().manual_seed(seed)) / 3**0.5
            model = nn.Sequential(_Lift(lift), mech)
            x = _to_input(img, (size, size))
        else:
            raise ValueError(
                f"unknown model or mechanism {target!r}; expected one of the models {list_models()} "
                f"or mechanisms {list_attention()}"
            )
        layers = layer_maps(model, x, ((qy + 0.5) / h0, (qx + 0.5) / w0), seed=seed)
    src = "weights " + os.path.basename(weights) if weights else "fresh weights"
    title = f"{target} ({src}), query pixel (y={qy}, x={qx}) of a {h0}x{w0} image, input {tuple(x.shape[2:])}"
    return draw_grid(img, layers, (qy, qx), out, title)


class _Lift(nn.Module):
    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.register_buffer("w", w)

    def forward(self, x):
        return torch.nn.functional.conv2d(x, self.w)


def _load_weights(model: nn.Module, path: str) -> None:
    from visattn.models.io import load_weights

    try:
        load_weights(model, path)
    except ValueError as e:
        if "shape mismatch" in str(e):
            raise ValueError(f"{e}; check --num-classes") from e
        raise
