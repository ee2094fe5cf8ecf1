"""Image classification data, all local: built-in digits, CIFAR-10 batches, image folders.

Every loader returns an :class:`ImageDataset` held in memory: ``images`` (N, 3, H, W) as
uint8 (0..255) or float32 (0..1) and ``labels`` (N,) int64. Small enough for the data
this project trains on (CIFAR-10 is 150 MB as uint8), and it makes the sample order a pure
function of (seed, epoch) so an interrupted run can resume exactly.

Spec strings (:func:`load_data`):

* ``digits`` — scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes,
  shipped inside scikit-learn: no download), resized with bilinear interpolation and
  repeated to 3 channels; fixed, seeded, stratified train/test split.
* ``cifar10:PATH`` — CIFAR-10 in its standard "python version" layout: ``PATH`` holds
  ``data_batch_1`` ... ``data_batch_5``, ``test_batch`` and ``batches.meta`` (or the
  ``cifar-10-batches-py`` folder inside ``PATH``).
* ``tinyimagenet:PATH`` — Tiny ImageNet's own layout (:mod:`visattn.data.tinyimagenet`).
* ``folder:PATH`` — ``PATH/<class_name>/*.png|jpg|jpeg|bmp|webp`` read with Pillow; if
  ``PATH/train`` and ``PATH/test`` (or ``PATH/val``) exist they are the split, otherwise a
  seeded stratified split is drawn. Hidden files and folders (``.x``, macOS ``._x.png``)
  are skipped; 16-bit greyscale images are converted by value (0..65535 -> 0..255); a file
  Pillow cannot read (corrupt, truncated) stops loading with an error naming every such file.

Every image read from a file (here, in segmentation folders, ``visattn predict`` and ``visattn
viz``) is turned upright first: its EXIF orientation is applied, as viewers and labelling tools
do (a phone's JPEG is stored sideways with a tag saying so).

Image sides are bounded by ``MAX_IMAGE_SIZE`` and every loader (the built-in data sets too)
refuses data that would take over half the machine's memory before building it, with a message
giving the estimate.

CIFAR-10's batch files are Python pickles. They are read with a restricted unpickler
(:class:`_CifarUnpickler`) that resolves only the few globals numpy needs to rebuild an
array (``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``,
``_codecs.encode``) and refuses everything else, so a tampered batch file cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ImageDataset",
    "DataBundle",
    "ExampleSet",
    "load_data",
    "load_digits_dataset",
    "load_cifar10",
    "load_image_folder",
    "stratified_split",
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_SIZE",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# Largest image side a loader accepts: every image is held in memory at this size.
MAX_IMAGE_SIZE = 1024


@dataclass
class ImageDataset:
    """In-memory images and labels.

    Attributes:
        images: (N, 3, H, W) uint8 in 0..255 or float32 in 0..1.
        labels: (N,) int64 class indices.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        if self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W), got {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be ({self.images.shape[0]},), got {tuple(self.labels.shape)}")
        if self.images.dtype not in (torch.uint8, torch.float32):
            raise TypeError(f"images must be uint8 or float32, got {self.images.dtype}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 3, H, W) float32 in 0..1 and labels (B,) for ``indices``."""
        x = self.images[indices]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.clone()
        return x, self.labels[indices]


class ExampleSet(Protocol):
    """What training and evaluation read from a split: its length and batches by index."""

    def __len__(self) -> int: ...

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass
class DataBundle:
    """A train/test pair with what a model needs to know about it.

    Attributes:
        name: spec string it was loaded from.
        train, test: the two splits.
        classes: class names, index = label.
        image_size: side of the (square) images.
        mean, std: per-channel normalisation statistics of the train split (0..1 scale).
        augment: default augmentation for this data ("crop" or "crop+flip").
    """

    name: str
    train: ExampleSet  # ImageDataset (classification) or SegDataset (segmentation)
    test: ExampleSet
    classes: list[str]
    image_size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    augment: str = "crop+flip"
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split: (train_idx, test_idx), each sorted, with about
    ``test_fraction`` of every class in test (at least one example per class with >= 2)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test_fraction))
        if len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        else:
            n_test = 0
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) float -> (N, C, size, size), bilinear (antialiased when shrinking)."""
    if images.shape[-2:] == (size, size):
        return images
    shrink = size < images.shape[-1] or size < images.shape[-2]
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


def _resize_uint8(images: torch.Tensor, size: int | None, chunk: int = 4096) -> torch.Tensor:
    if size is None or images.shape[-2:] == (size, size):
        return images
    out = [
        _resize(images[i : i + chunk].float(), size).round_().clamp_(0, 255).to(torch.uint8)
        for i in range(0, images.shape[0], chunk)
    ]
    return torch.cat(out)


RGB = tuple[float, float, float]


def _rgb(v: torch.Tensor) -> RGB:
    """A (3,) tensor of per-channel values as a 3-tuple of floats."""
    r, g, b = (float(c) for c in v)
    return r, g, b


def _channel_stats(images: torch.Tensor) -> tuple[RGB, RGB]:
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return _rgb(mean), _rgb(std)


def _check_size(image_size) -> None:
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or not 1 <= image_size <= MAX_IMAGE_SIZE
    ):
        raise ValueError(
            f"image_size must be an int in 1..{MAX_IMAGE_SIZE} (images are held in memory) or None, got {image_size!r}"
        )


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - platforms without sysconf
        return None


def _fmt_size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_memory_bytes(need: int, what: str, hint: str) -> None:
    """Refuse data that needs ``need`` bytes when that is over half the machine's memory:
    "``what`` in memory needs <need>, over half of this machine's <RAM>; ``hint``"."""
    ram = _physical_memory()
    if ram is not None and need > ram // 2:
        raise ValueError(
            f"{what} in memory needs {_fmt_size(need)}, over half of this machine's {_fmt_size(ram)}; {hint}"
        )


def _check_memory(n: int, size: int, itemsize: int, what: str) -> None:
    """Refuse to hold ``n`` images of 3 x size x size in memory when that needs over half the RAM."""
    check_memory_bytes(
        n * 3 * size * size * itemsize,
        f"{what}: holding {n} images of 3x{size}x{size} ({itemsize} byte(s) per value)",
        "choose a smaller --image-size",
    )


def not_a_folder(path: Path, what: str, expected: str) -> OSError:
    """The error for a data path that does not exist, or is a file where a folder is expected."""
    if path.exists() and not path.is_dir():
        return NotADirectoryError(f"{what} {str(path)!r} is a file, not a folder; {expected}")
    return FileNotFoundError(f"{what} {str(path)!r} does not exist; {expected}")


# ---------------------------------------------------------------------------
# Digits
# ---------------------------------------------------------------------------


def load_digits_dataset(image_size: int = 32, test_fraction: float = 0.2, seed: int = 0) -> DataBundle:
    """scikit-learn's 8x8 handwritten digits, resized to ``image_size`` and repeated to RGB.

    1,797 scans of 10 classes (Alpaydin & Kaynak, UCI "Optical Recognition of Handwritten
    Digits"), values 0..16 scaled to 0..1. The split is stratified and depends only on
    ``seed`` (default 0: 1,437 train / 360 test).
    """
    _check_size(image_size)
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - optional extra
        raise ImportError("the built-in digits data needs scikit-learn: pip install 'visattn[data]'") from e
    d = load_digits()
    size = image_size or 8
    _check_memory(len(d.images), size, 4, "digits")
    images = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8)
    images = _resize(images, size).clamp_(0.0, 1.0).repeat(1, 3, 1, 1).contiguous()  # (N, 3, S, S)
    labels = torch.from_numpy(d.target.astype(np.int64))
    tr, te = stratified_split(d.target, test_fraction, seed)
    train = ImageDataset(images[tr], labels[tr])
    test = ImageDataset(images[te], labels[te])
    mean, std = _channel_stats(train.images)
    return DataBundle("digits", train, test, [str(i) for i in range(10)], size, mean, std, augment="crop")


# ---------------------------------------------------------------------------
# CIFAR-10 (python pickle batches)
# ---------------------------------------------------------------------------

CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
    import codecs

    return codecs.encode(obj, encoding, errors)


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds dicts, lists, strings, bytes, ints and numpy arrays, nothing else.

    Python-2 and Python-3 pickles of numpy arrays name at most these globals; any other
    global (``os.system``, ``builtins.eval``, ...) raises ``pickle.UnpicklingError``.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name} from a CIFAR batch file: only numpy arrays, "
                "dicts, lists, strings and numbers are allowed"
            )
        if name == "_reconstruct":
            return _numpy_reconstruct()
        if module == "_codecs":
            return _codecs_encode
        return {"ndarray": np.ndarray, "dtype": np.dtype}[name]


def _read_cifar_pickle(path: Path) -> dict:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        obj = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (EOFError, pickle.UnpicklingError) as e:
        if isinstance(e, EOFError) or "truncated" in str(e):
            raise ValueError(
                f"{path}: the CIFAR batch file is truncated ({len(raw)} bytes); extract cifar-10-python.tar.gz again"
            ) from None
        raise ValueError(f"{path}: not a readable CIFAR batch file: {e}") from None
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable CIFAR batch file ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict in a CIFAR batch file, got {type(obj).__name__}")
    # Python-2 pickles give bytes keys; normalise to str.
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _cifar_root(path: str | os.PathLike) -> Path:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise not_a_folder(
            root,
            "CIFAR-10 directory",
            f"expected a folder holding {', '.join(CIFAR10_FILES)} (the extracted cifar-10-python.tar.gz)",
        )
    if not (root / "data_batch_1").exists() and (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    missing = [f for f in CIFAR10_FILES if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 directory {str(root)!r} is incomplete: missing {', '.join(missing)}; expected "
            f"{', '.join(CIFAR10_FILES)} (python pickle batches from cifar-10-python.tar.gz)"
        )
    return root


def _cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    d = _read_cifar_pickle(path)
    data, labels = d.get("data"), d.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{type(data).__name__} {getattr(data, 'dtype', '')} {getattr(data, 'shape', '')}"
        raise ValueError(f"{path}: 'data' must be a uint8 array (N, 3072), got {got}")
    if not isinstance(labels, list) or len(labels) != data.shape[0]:
        raise ValueError(f"{path}: 'labels' must be a list of {data.shape[0]} ints")
    bad = next(
        (
            (i, v)
            for i, v in enumerate(labels)
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer))
        ),
        None,
    )
    if bad is not None:
        raise ValueError(
            f"{path}: labels must be integers 0..9, got {bad[1]!r} ({type(bad[1]).__name__}) at index {bad[0]}"
        )
    labels_t = torch.tensor([int(v) for v in labels], dtype=torch.int64)
    if labels_t.numel() and (labels_t.min() < 0 or labels_t.max() > 9):
        raise ValueError(f"{path}: labels must be in 0..9")
    images = torch.from_numpy(data.copy()).view(-1, 3, 32, 32)  # rows: 1024 R, 1024 G, 1024 B
    return images, labels_t


def load_cifar10(path: str | os.PathLike, image_size: int | None = None) -> DataBundle:
    """CIFAR-10 from the python batch files in ``path`` (see module docstring).

    Train = data_batch_1..5, test = test_batch; class names from batches.meta. Images stay
    uint8; ``image_size`` other than 32 resizes them once at load time.
    """
    _check_size(image_size)
    root = _cifar_root(path)
    parts = [_cifar_batch(root / f"data_batch_{i}") for i in range(1, 6)]
    tr_x = torch.cat([p[0] for p in parts])
    tr_y = torch.cat([p[1] for p in parts])
    te_x, te_y = _cifar_batch(root / "test_batch")
    meta = _read_cifar_pickle(root / "batches.meta")
    names = meta.get("label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise ValueError(f"{root / 'batches.meta'}: expected 'label_names', a list of 10 names")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    size = image_size or 32
    _check_memory(len(tr_y) + len(te_y), size, 1, f"CIFAR-10 in {root}")
    train = ImageDataset(_resize_uint8(tr_x, size), tr_y)
    test = ImageDataset(_resize_uint8(te_x, size), te_y)
    mean, std = _channel_stats(train.images)
    return DataBundle(f"cifar10:{path}", train, test, classes, size, mean, std, augment="crop+flip")


# ---------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------


def _hidden(path: Path, root: Path) -> bool:
    """Hidden files and folders (``.x``, macOS ``._x.png`` resource forks) below ``root``."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _scan_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    items = []
    for ci, c in enumerate(classes):
        for f in sorted((root / c).rglob("*")):
            if f.suffix.lower() in IMAGE_EXTENSIONS and not _hidden(f, root) and f.is_file():
                items.append((f, ci))
    return classes, items


def upright(im):
    """A Pillow image as displayed: its EXIF orientation applied (``ImageOps.exif_transpose``);
    an image without one (or with an unreadable EXIF block) as it is."""
    from PIL import ImageOps

    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # a damaged EXIF block: the pixels are still the image
        return im
    return im if orientation in (None, 1) else ImageOps.exif_transpose(im)


def _to_rgb_uint8(im):
    """Any Pillow image -> upright (:func:`upright`) 8-bit RGB, converting by value: 16-bit and
    32-bit integer greyscale (modes I;16*, I) scale 0..65535 to 0..255; float greyscale (F) is
    taken as 0..1."""
    from PIL import Image

    im = upright(im)
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im, dtype=np.float64) / 65535.0
    elif im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
    else:
        return im.convert("RGB")
    a = np.clip(np.nan_to_num(a, nan=0.0), 0.0, 1.0)
    return Image.fromarray(np.round(a * 255.0).astype(np.uint8)).convert("RGB")  # (H, W) uint8: mode L


def _read_images(items: list[tuple[Path, int]], size: int) -> ImageDataset:
    from PIL import Image

    imgs = np.empty((len(items), size, size, 3), dtype=np.uint8)
    failed = []
    for i, (f, _) in enumerate(items):
        try:
            with Image.open(f) as im:
                im = _to_rgb_uint8(im)
                if im.size != (size, size):
                    im = im.resize((size, size), Image.Resampling.BILINEAR)
                imgs[i] = np.asarray(im)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # unidentified, truncated...
            failed.append(f"{f} ({' '.join(str(e).split()) or type(e).__name__})")
    if failed:
        shown = "; ".join(failed[:20]) + (f"; and {len(failed) - 20} more" if len(failed) > 20 else "")
        raise ValueError(f"cannot read {len(failed)} of {len(items)} image file(s): {shown}")
    images = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S)
    labels = torch.tensor([c for _, c in items], dtype=torch.int64)
    return ImageDataset(images, labels)


def load_image_folder(
    path: str | os.PathLike, image_size: int | None = None, test_fraction: float = 0.2, seed: int = 0
) -> DataBundle:
    """Images in ``path/<class>/*.png|jpg...`` (or ``path/train/<class>`` + ``path/test/<class>``).

    Images are converted to RGB and resized to ``image_size`` x ``image_size`` (default 64)
    with Pillow's bilinear filter at load time.
    """
    _check_size(image_size)
    root = Path(path).expanduser()
    layout = (
        f"expected {str(root)!r}/<class_name>/*{{{','.join(IMAGE_EXTENSIONS)}}} "
        f"or {str(root)!r}/train/<class_name>/... with {str(root)!r}/test/<class_name>/..."
    )
    if not root.is_dir():
        raise not_a_folder(root, "image folder", layout)
    size = image_size or 64
    test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        classes, tr_items = _scan_folder(root / "train")
        te_classes, te_items = _scan_folder(test_dir)
        if te_classes != classes:
            raise ValueError(f"class folders differ between {root / 'train'} {classes} and {test_dir} {te_classes}")
    else:
        classes, items = _scan_folder(root)
        if items:
            labels = np.array([c for _, c in items])
            tr, te = stratified_split(labels, test_fraction, seed)
            tr_items, te_items = [items[i] for i in tr], [items[i] for i in te]
        else:
            tr_items, te_items = [], []
    if len(classes) < 2:
        raise ValueError(f"image folder {str(root)!r} has {len(classes)} class folder(s), need >= 2; {layout}")
    if not tr_items or not te_items:
        raise ValueError(f"image folder {str(root)!r} has no images in its train or test split; {layout}")
    empty = sorted(set(classes) - {classes[c] for _, c in tr_items})
    if empty:  # a class the model could never learn (and, with one other class, a trivial task)
        raise ValueError(
            f"image folder {str(root)!r}: class folder(s) {empty} hold no training images "
            f"(hidden files are skipped); remove them or add images; {layout}"
        )
    _check_memory(len(tr_items) + len(te_items), size, 1, f"image folder {str(root)!r}")
    both = _read_images(tr_items + te_items, size)  # one pass: an error names every unreadable file
    n = len(tr_items)
    train = ImageDataset(both.images[:n], both.labels[:n])
    test = ImageDataset(both.images[n:], both.labels[n:])
    mean, std = _channel_stats(train.images)
    return DataBundle(f"folder:{path}", train, test, classes, size, mean, std, augment="crop+flip")


# ---------------------------------------------------------------------------
# Spec strings
# ---------------------------------------------------------------------------


def load_data(spec: str, image_size: int | None = None, seed: int = 0) -> DataBundle:
    """Load ``digits`` | ``cifar10:PATH`` | ``folder:PATH`` (see module docstring).

    ``image_size=None`` keeps a default per source: digits 32, CIFAR-10 32, folders 64.
    """
    if not isinstance(spec, str):
        raise TypeError(f"data spec must be a str, got {type(spec).__name__}")
    _check_size(image_size)
    kind, _, path = spec.partition(":")
    if kind == "digits" and not path:
        return load_digits_dataset(image_size or 32, seed=seed)
    if kind == "cifar10" and path:
        return load_cifar10(path, image_size)
    if kind == "folder" and path:
        return load_image_folder(path, image_size, seed=seed)
    if kind == "tinyimagenet" and path:  # Tiny ImageNet's own layout, see visattn.data.tinyimagenet
        from visattn.data.tinyimagenet import load_tiny_imagenet

        return load_tiny_imagenet(path, image_size)
    if kind == "longrange" and not path:  # built-in long-range task, see visattn.data.longrange
        from visattn.data.longrange import load_longrange_dataset

        return load_longrange_dataset(image_size or 16, seed=seed)
    raise ValueError(
        f"data spec must be 'longrange', 'digits', 'cifar10:PATH', 'folder:PATH' or 'tinyimagenet:PATH', got {spec!r}"
    )
