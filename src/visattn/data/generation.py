"""Image-generation data, all local: built-in mirrored digit pairs, folders, CIFAR-10, Tiny ImageNet.

Spec strings (:func:`load_gen_data`); every loader returns a :class:`~visattn.data.DataBundle`
whose images are uint8 (N, 3, S, S) and whose labels are the classes (for class-conditional
runs and for the fallback feature network of FID / KID):

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

__all__ = ["load_gen_data", "load_digit_pairs", "folder_image_sizes", "PAIR_COLOURS", "GEN_SIZES"]

#: The sides the GAN models generate.
GEN_SIZES = (32, 64)
#: Digit colours of ``digitpairs`` (RGB, 0..1): orange, green, sky blue, pink.
PAIR_COLOURS = np.array([(1.0, 0.55, 0.1), (0.3, 0.95, 0.3), (0.35, 0.7, 1.0), (1.0, 0.4, 0.75)], dtype=np.float32)
_BACKGROUND = np.array((0.06, 0.06, 0.12), dtype=np.float32)


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
    out = np.empty((n, size, size, 3), dtype=np.float32)
    for i in range(n):
        alpha = np.zeros((size, size), dtype=np.float32)
        d, r, c = digits[i], int(rows[i]), int(cols[i])
        alpha[r : r + s, c : c + s] = d
        alpha[r : r + s, size - c - s : size - c] = np.maximum(alpha[r : r + s, size - c - s : size - c], d[:, ::-1])
        out[i] = _BACKGROUND + alpha[..., None] * (PAIR_COLOURS[colours[i]] - _BACKGROUND)
    return torch.from_numpy(np.round(out * 255.0).astype(np.uint8)).permute(0, 3, 1, 2).contiguous()


def load_digit_pairs(image_size: int = 32, n_train: int = 6000, n_test: int = 1000, seed: int = 0) -> DataBundle:
    """Mirrored digit pairs (see module docstring): 10 classes, uint8 images, deterministic by ``seed``."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not 16 <= image_size <= 256:
        raise ValueError(f"digit pairs need image_size in 16..256 (an int), got {image_size!r}")
    for name, v in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
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
    """Load ``digitpairs`` | ``digits`` | ``folder:PATH`` | ``cifar10:PATH`` | ``tinyimagenet:PATH``.

    ``image_size`` None: the data's own side (digitpairs 32, digits 32, CIFAR-10 32, Tiny
    ImageNet 64, a folder's single image size). The result must be one of :data:`GEN_SIZES`.
    """
    if not isinstance(spec, str):
        raise TypeError(f"data spec must be a str, got {type(spec).__name__}")
    _check_size(image_size)
    kind, _, path = spec.partition(":")
    if kind == "digitpairs" and not path:
        bundle = load_digit_pairs(image_size or 32, seed=seed)
    elif kind == "folder" and path:
        bundle = load_data(spec, image_size or _folder_size(path), seed=seed)
    elif kind in ("digits", "cifar10", "tinyimagenet"):
        bundle = load_data(spec, image_size, seed=seed)
    else:
        raise ValueError(
            "generation data spec must be 'digitpairs', 'digits', 'folder:PATH', 'cifar10:PATH' or "
            f"'tinyimagenet:PATH', got {spec!r}"
        )
    if bundle.image_size not in GEN_SIZES:
        raise ValueError(
            f"the GAN models generate {' or '.join(map(str, GEN_SIZES))} px images; {spec!r} gives "
            f"{bundle.image_size}x{bundle.image_size}: pass --image-size {' or '.join(map(str, GEN_SIZES))}"
        )
    return bundle
