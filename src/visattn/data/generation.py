"""Image-generation data, all local: built-in mirrored shape and digit pairs, folders, CIFAR-10, Tiny ImageNet.

Spec strings (:func:`load_gen_data`); every loader returns a :class:`~visattn.data.DataBundle`
whose images are uint8 (N, 3, S, S) and whose labels are the classes (for class-conditional
runs and for the fallback feature network of FID / KID):

* ``shapepairs`` — built in, no download (the generate task's default): a 32x32 (``image_size``)
  dark canvas holding one solid orange shape of :data:`SHAPES` (circle, square, right-pointing
  triangle, cross, diamond; side 0.38-0.47 of the image's, anti-aliased) in the left half and its
  *mirror image* in the right half (a triangle there points left), at the same height (centred,
  +- ``size / 16`` px); label = the shape. The same long-range constraint as
  ``digitpairs``, with glyphs that a GAN renders recognisably at this size within minutes.
  Deterministic (a function of ``seed``); train and test images are independent draws.
* ``digitpairs`` — built in, no download: a 32x32 (``image_size``) dark canvas holding one of
  scikit-learn's 1,797 handwritten digit scans (8x8, upscaled to ~ 0.4 of the side) in the left
  half and its *mirror image* in the right half, at the same height, in one of four colours;
  label = the digit. The two halves are a long-range constraint: at G's 16x16 attention map
  the copies are ~8 positions apart, beyond what a few 3x3 convolutions relate, while a global
  mechanism sees both. Train images use the train scans and test images the held-out scans
  (stratified 80/20 split by ``seed``); deterministic (a function of ``seed``).
* ``digits`` — scikit-learn's digits as for classification (grey, one per image).
* ``folder:PATH`` — ``PATH/<class>/*.png|jpg...`` (as :func:`~visattn.data.load_image_folder`).
  Without ``image_size`` every image must have one square size (that size is used); images of
  several sizes are refused with the sizes and a file of each named (pass ``image_size`` to
  resize them all).
* ``cifar10:PATH`` — the CIFAR-10 python batches (32x32).
* ``tinyimagenet:PATH`` — Tiny ImageNet as distributed (``tiny-imagenet-200``; see
  :func:`~visattn.data.tinyimagenet.load_tiny_imagenet`), 64x64, 200 classes.

Generated images are compared with these images mapped to [-1, 1] (G's tanh range).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from visattn.data.datasets import (
    IMAGE_EXTENSIONS,
    DataBundle,
    ImageDataset,
    _channel_stats,
    _check_size,
    _hidden,
    load_data,
    stratified_split,
)

__all__ = [
    "load_gen_data",
    "load_digit_pairs",
    "load_shape_pairs",
    "shape_mask",
    "SHAPES",
    "PAIR_DATA",
    "folder_image_sizes",
    "PAIR_COLOURS",
    "GEN_SIZES",
]

#: The sides the GAN models generate.
GEN_SIZES = (32, 64)
#: Digit colours of ``digitpairs`` (RGB, 0..1): orange, green, sky blue, pink.
PAIR_COLOURS = np.array([(1.0, 0.55, 0.1), (0.3, 0.95, 0.3), (0.35, 0.7, 1.0), (1.0, 0.4, 0.75)], dtype=np.float32)
_BACKGROUND = np.array((0.06, 0.06, 0.12), dtype=np.float32)
#: The classes of ``shapepairs``, in label order.
SHAPES = ("circle", "square", "triangle", "cross", "diamond")
#: The built-in mirrored-pair data sets (never flipped in training: a flip would swap the copies' looks).
PAIR_DATA = ("shapepairs", "digitpairs")


def _paint_pairs(
    glyphs: Sequence[np.ndarray], rows: np.ndarray, cols: np.ndarray, colours: np.ndarray, size: int
) -> torch.Tensor:
    """glyphs (each (s, s) in 0..1) -> images (n, 3, size, size) uint8: glyph i with its top-left
    corner at (rows[i], cols[i]), its mirror image at the mirrored column, in colour colours[i]
    on the dark background (see module docstring)."""
    n = len(glyphs)
    out = np.empty((n, size, size, 3), dtype=np.float32)
    for i in range(n):
        alpha = np.zeros((size, size), dtype=np.float32)
        d, r, c = glyphs[i], int(rows[i]), int(cols[i])
        s = d.shape[0]
        alpha[r : r + s, c : c + s] = d
        alpha[r : r + s, size - c - s : size - c] = np.maximum(alpha[r : r + s, size - c - s : size - c], d[:, ::-1])
        out[i] = _BACKGROUND + alpha[..., None] * (PAIR_COLOURS[colours[i]] - _BACKGROUND)
    return torch.from_numpy(np.round(out * 255.0).astype(np.uint8)).permute(0, 3, 1, 2).contiguous()


def _compose_pairs(scans: np.ndarray, size: int, rng: np.random.Generator) -> torch.Tensor:
    """scans (n, 8, 8) in 0..1 -> images (n, 3, size, size) uint8: scan i left, its mirror right, one
    colour per image (see module docstring)."""
    n = len(scans)
    s = max(6, round(size * 0.42))  # digit side
    half = size // 2
    colours = rng.integers(len(PAIR_COLOURS), size=n)
    top, jitter = (size - s) // 2, max(1, round(size / 16))  # the pair's top row: centred, +-2 px at 32 px
    rows = rng.integers(top - jitter, top + jitter + 1, size=n)
    cols = rng.integers(0, half - s + 1, size=n)  # left copy's column; the right copy mirrors it
    up = F.interpolate(torch.from_numpy(scans)[:, None], size=(s, s), mode="bilinear", align_corners=False)
    digits = up[:, 0].clamp_(0, 1).numpy()  # (n, s, s)
    return _paint_pairs(list(digits), rows, cols, colours, size)


def shape_mask(shape: int, side: int, supersample: int = 4) -> np.ndarray:
    """The anti-aliased (side, side) coverage in 0..1 of shape number ``shape`` of :data:`SHAPES`
    filling a side x side box (each pixel the mean of supersample x supersample sub-pixel tests)."""
    if not 0 <= shape < len(SHAPES):
        raise ValueError(f"shape must be an index into {SHAPES} (0..{len(SHAPES) - 1}), got {shape!r}")
    m = side * supersample
    t = (np.arange(m) + 0.5) / m * 2 - 1  # sub-pixel centres in (-1, 1)
    v, u = np.meshgrid(t, t, indexing="ij")  # v: down, u: right
    name = SHAPES[shape]
    if name == "circle":
        inside = u**2 + v**2 <= 0.95**2
    elif name == "square":
        inside = (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)
    elif name == "triangle":  # pointing right (its mirror image points left)
        inside = (u >= -0.85) & (np.abs(v) <= 0.95 * (0.85 - u) / 1.7)
    elif name == "cross":
        inside = ((np.abs(u) <= 0.3) | (np.abs(v) <= 0.3)) & (np.abs(u) <= 0.95) & (np.abs(v) <= 0.95)
    else:  # diamond
        inside = np.abs(u) + np.abs(v) <= 1.0
    return inside.reshape(side, supersample, side, supersample).mean(axis=(1, 3)).astype(np.float32)


def _compose_shapes(labels: np.ndarray, size: int, rng: np.random.Generator) -> torch.Tensor:
    """labels (n,) indices into :data:`SHAPES` -> images (n, 3, size, size) uint8 (see module docstring)."""
    n = len(labels)
    sides = rng.integers(round(size * 0.38), round(size * 0.47) + 1, size=n)  # 12..15 px at 32 px
    colours = np.zeros(n, dtype=np.int64)  # one colour (the first of PAIR_COLOURS): G's steps go to the shapes
    jitter = max(1, round(size / 16))
    rows = (size - sides) // 2 + rng.integers(-jitter, jitter + 1, size=n)  # centred, +-2 px at 32 px
    cols = (rng.random(n) * (size // 2 - sides + 1)).astype(np.int64)  # left copy's column, uniform
    masks = {}
    glyphs = []
    for k, s in zip(labels.tolist(), sides.tolist()):
        if (k, s) not in masks:
            masks[k, s] = shape_mask(k, s)
        glyphs.append(masks[k, s])
    return _paint_pairs(glyphs, rows, cols, colours, size)


def _check_pair_args(what: str, image_size: object, n_train: object, n_test: object) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not 16 <= image_size <= 256:
        raise ValueError(f"{what} need image_size in 16..256 (an int), got {image_size!r}")
    for name, v in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")


def load_digit_pairs(image_size: int = 32, n_train: int = 6000, n_test: int = 1000, seed: int = 0) -> DataBundle:
    """Mirrored digit pairs (see module docstring): 10 classes, uint8 images, deterministic by ``seed``."""
    _check_pair_args("digit pairs", image_size, n_train, n_test)
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - optional extra
        raise ImportError("the built-in digit pairs need scikit-learn: pip install 'visattn[data]'") from e
    d = load_digits()
    scans = d.images.astype(np.float32) / 16.0
    tr, te = stratified_split(d.target, 0.2, seed)
    rng = np.random.default_rng(seed)
    parts = []
    for split, n in ((tr, n_train), (te, n_test)):
        pick = rng.integers(len(split), size=n)
        images = _compose_pairs(scans[split][pick], image_size, rng)
        parts.append(ImageDataset(images, torch.from_numpy(d.target[split][pick].astype(np.int64))))
    train, test = parts
    mean, std = _channel_stats(train.images)
    return DataBundle("digitpairs", train, test, [str(i) for i in range(10)], image_size, mean, std, augment="none")


def load_shape_pairs(image_size: int = 32, n_train: int = 6000, n_test: int = 1000, seed: int = 0) -> DataBundle:
    """Mirrored shape pairs (see module docstring): 5 classes (:data:`SHAPES`), uint8 images,
    deterministic by ``seed``."""
    _check_pair_args("shape pairs", image_size, n_train, n_test)
    rng = np.random.default_rng(seed)
    parts = []
    for n in (n_train, n_test):
        labels = rng.integers(len(SHAPES), size=n)
        parts.append(ImageDataset(_compose_shapes(labels, image_size, rng), torch.from_numpy(labels.astype(np.int64))))
    train, test = parts
    mean, std = _channel_stats(train.images)
    return DataBundle("shapepairs", train, test, list(SHAPES), image_size, mean, std, augment="none")


def folder_image_sizes(path: str | Path) -> dict[tuple[int, int], list[Path]]:
    """(width, height) -> the image files of that size under ``path`` (read from the headers only)."""
    from PIL import Image

    root = Path(path).expanduser()
    sizes: dict[tuple[int, int], list[Path]] = {}
    for f in sorted(root.rglob("*")):
        if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file() and not _hidden(f, root):
            try:
                with Image.open(f) as im:
                    sizes.setdefault((int(im.size[0]), int(im.size[1])), []).append(f)
            except (OSError, ValueError, SyntaxError):
                continue  # the loader names unreadable files
    return sizes


def _folder_size(path: str) -> int:
    sizes = folder_image_sizes(path)
    if len(sizes) > 1:
        listed = "; ".join(
            f"{w}x{h}: {len(fs)} file(s), e.g. {str(fs[0])!r}"
            for (w, h), fs in sorted(sizes.items(), key=lambda kv: -len(kv[1]))
        )
        raise ValueError(
            f"image folder {path!r} mixes image sizes ({listed}); pass --image-size "
            f"{' or '.join(map(str, GEN_SIZES))} to resize them all"
        )
    if not sizes:
        return 64  # the folder loader names what it expected
    (w, h) = next(iter(sizes))
    if w != h:
        raise ValueError(f"image folder {path!r} holds {w}x{h} images (not square); pass --image-size to resize them")
    return w


def load_gen_data(spec: str, image_size: int | None = None, seed: int = 0) -> DataBundle:
    """Load ``shapepairs`` | ``digitpairs`` | ``digits`` | ``folder:PATH`` | ``cifar10:PATH`` | ``tinyimagenet:PATH``.

    ``image_size`` None: the data's own side (shapepairs 32, digitpairs 32, digits 32, CIFAR-10 32, Tiny
    ImageNet 64, a folder's single image size). The result must be one of :data:`GEN_SIZES`.
    """
    if not isinstance(spec, str):
        raise TypeError(f"data spec must be a str, got {type(spec).__name__}")
    _check_size(image_size)
    kind, _, path = spec.partition(":")
    if kind == "shapepairs" and not path:
        bundle = load_shape_pairs(image_size or 32, seed=seed)
    elif kind == "digitpairs" and not path:
        bundle = load_digit_pairs(image_size or 32, seed=seed)
    elif kind == "folder" and path:
        bundle = load_data(spec, image_size or _folder_size(path), seed=seed)
    elif kind in ("digits", "cifar10", "tinyimagenet"):
        bundle = load_data(spec, image_size, seed=seed)
    else:
        raise ValueError(
            "generation data spec must be 'shapepairs', 'digitpairs', 'digits', 'folder:PATH', 'cifar10:PATH' or "
            f"'tinyimagenet:PATH', got {spec!r}"
        )
    if bundle.image_size not in GEN_SIZES:
        raise ValueError(
            f"the GAN models generate {' or '.join(map(str, GEN_SIZES))} px images; {spec!r} gives "
            f"{bundle.image_size}x{bundle.image_size}: pass --image-size {' or '.join(map(str, GEN_SIZES))}"
        )
    return bundle
