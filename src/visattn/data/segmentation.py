"""Semantic-segmentation data, all local: built-in digit scenes and folders of image/mask pairs.

A :class:`SegDataset` holds images (3, H, W) uint8 and masks (H, W) int64 in memory, one
pair per example; sizes may differ between examples (a batch pads to its largest member:
images with 0, masks with the ignore index). Mask values are class indices
``0..num_classes-1`` or ``ignore_index`` (255 by default: pixels that take no part in the
loss or the metrics).

Spec strings (:func:`load_seg_data`):

* ``digitscenes`` — scenes composed from scikit-learn's handwritten digits (1,797 real 8x8
  scans, no download): a ``image_size`` x ``image_size`` canvas (default 64) with 2-5 digits
  at random places and sizes (12-26 px), no two overlapping. Per-pixel class = digit + 1 where
  the resized scan is >= 0.5, background 0 where it is < 0.3, ``ignore_index`` on the blurred
  rim in between. Train scenes use only the train scans and test scenes only the held-out
  scans (a stratified 80/20 split of the 1,797 scans), so the test measures unseen
  handwriting. Deterministic: a function of ``seed`` only.
* ``segfolder:PATH`` — image/mask pairs read with Pillow. Masks are single-channel PNGs whose
  values are class indices ("L", "I", "I;16") or palette PNGs ("P": the palette index is the
  class, the colour is ignored). Layouts:

  - VOC: ``PATH/JPEGImages/<id>.jpg``, ``PATH/SegmentationClass/<id>.png`` and
    ``PATH/ImageSets/Segmentation/{train,val}.txt`` (one id per line); 21 VOC class names.
  - ``PATH/train/{images,masks}`` and ``PATH/val/{images,masks}`` (or ``test``).
  - ``PATH/{images,masks}``: a seeded 80/20 split.

  Image and mask share a stem (``a.jpg`` <-> ``a.png``). Images are turned upright by their
  EXIF orientation (masks are drawn on the displayed image). Class names come from
  ``PATH/classes.txt`` (one per line, unique) if present, else VOC's for the VOC layout, else
  ``0..max`` from the largest mask value (``extra["classes_from"]`` names the mask); a largest
  value that leaves over half of ``0..max`` unused (one anti-aliased or 16-bit stray pixel) is
  refused, naming the mask and the value.

Bad input is refused with a ``ValueError`` naming the file: an image without a mask (or a
mask without an image), image and mask of different sizes, a mask value that is neither a
class nor the ignore index, a colour (RGB) mask, an unreadable file, duplicate class names.
Both loaders estimate the memory the data needs before building it and refuse over half the
machine's memory.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from visattn.data.datasets import (
    IMAGE_EXTENSIONS,
    RGB,
    DataBundle,
    _rgb,
    _to_rgb_uint8,
    check_memory_bytes,
    not_a_folder,
    stratified_split,
)
from visattn.data.transforms import EpochBatches, normalize

__all__ = [
    "SegDataset",
    "SegDataBundle",
    "SegEpochBatches",
    "SegAugmentParams",
    "seg_augment_params",
    "augment_pair",
    "load_seg_data",
    "load_digit_scenes",
    "load_seg_folder",
    "read_mask",
    "VOC_CLASSES",
    "IGNORE_INDEX",
]

IGNORE_INDEX = 255
VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


@dataclass
class SegDataset:
    """In-memory image/mask pairs.

    Attributes:
        images: list of (3, H_i, W_i) uint8 tensors.
        masks: list of (H_i, W_i) int64 tensors (class indices or the ignore index).
        ignore_index: mask value that marks pixels without a label.
        names: where each pair came from (file stem or scene number), for messages.
    """

    images: list[torch.Tensor]
    masks: list[torch.Tensor]
    ignore_index: int = IGNORE_INDEX
    names: list[str] | None = None

    def __post_init__(self):
        if len(self.images) != len(self.masks):
            raise ValueError(f"got {len(self.images)} images but {len(self.masks)} masks")
        for i, (x, m) in enumerate(zip(self.images, self.masks)):
            if x.dim() != 3 or x.shape[0] != 3 or x.dtype != torch.uint8:
                raise ValueError(f"image {i} must be (3, H, W) uint8, got {tuple(x.shape)} {x.dtype}")
            if m.shape != x.shape[1:]:
                raise ValueError(f"mask {i} must be {tuple(x.shape[1:])} like its image, got {tuple(m.shape)}")

    def __len__(self) -> int:
        return len(self.images)

    def sizes(self) -> list[tuple[int, int]]:
        return [(int(x.shape[1]), int(x.shape[2])) for x in self.images]

    def pair(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image (3, H, W) float32 in 0..1 and mask (H, W) int64 of example ``i``."""
        return self.images[i].float().div_(255.0), self.masks[i]

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 3, H, W) float32 in 0..1 and masks (B, H, W) int64, padded at the bottom/right
        to the largest example (images with 0, masks with ``ignore_index``)."""
        pairs = [self.pair(int(i)) for i in indices]
        return _stack_padded(pairs, self.ignore_index)


def _stack_padded(pairs, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    h = max(x.shape[1] for x, _ in pairs)
    w = max(x.shape[2] for x, _ in pairs)
    xs = torch.zeros(len(pairs), 3, h, w)
    ys = torch.full((len(pairs), h, w), ignore_index, dtype=torch.int64)
    for k, (x, m) in enumerate(pairs):
        xs[k, :, : x.shape[1], : x.shape[2]] = x
        ys[k, : m.shape[0], : m.shape[1]] = m
    return xs, ys


@dataclass
class SegDataBundle(DataBundle):
    """A segmentation train/test pair (see :class:`visattn.data.DataBundle`).

    ``image_size`` is the side of the square training crops; ``augment`` the default
    augmentation ("crop": random scale + crop, "crop+flip": plus horizontal flips);
    ``scale_range`` the default random-scale interval.
    """

    train: SegDataset  # narrows DataBundle's splits (fields keep their place)
    test: SegDataset
    ignore_index: int = IGNORE_INDEX
    scale_range: tuple[float, float] = (0.5, 2.0)


# ---------------------------------------------------------------------------
# Joint image/mask augmentation
# ---------------------------------------------------------------------------


@dataclass
class SegAugmentParams:
    """Per-example augmentation for one epoch: scales (N,), crop positions (N, 2) in [0, 1), flips (N,)."""

    scales: torch.Tensor
    crop_pos: torch.Tensor
    flips: torch.Tensor


def seg_augment_params(
    n: int, epoch: int, seed: int, scale_range: tuple[float, float], flip: bool, random_crop: bool = True
) -> SegAugmentParams:
    """Draw scales (log-uniform in ``scale_range``), crop positions and flips for ``n`` examples
    from a generator seeded by (seed, epoch); ``random_crop=False`` centres every crop."""
    lo, hi = scale_range
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch) * 7919 + 29)
    u = torch.rand(n, generator=g, dtype=torch.float64)
    scales = torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    pos = (
        torch.rand(n, 2, generator=g, dtype=torch.float64)
        if random_crop
        else torch.full((n, 2), 0.5, dtype=torch.float64)
    )
    flips = torch.rand(n, generator=g) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return SegAugmentParams(scales, pos, flips)


def augment_pair(
    x: torch.Tensor,
    m: torch.Tensor,
    scale: float,
    crop_pos: tuple[float, float],
    flip: bool,
    crop_size: int,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale, pad, crop and flip one image/mask pair the same way.

    x: (3, H, W) float; m: (H, W) int64 -> (3, S, S), (S, S) with S = ``crop_size``. The image
    is resized bilinearly (antialiased when shrinking), the mask with nearest neighbour;
    both are padded at the bottom/right to at least S (image 0, mask ``ignore_index``), then
    the crop starts at ``floor(pos * (size - S + 1))`` per axis.
    """
    h, w = x.shape[1:]
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=nh < h or nw < w)[0]
        m = F.interpolate(m[None, None].float(), size=(nh, nw), mode="nearest-exact")[0, 0].long()
    ph, pw = max(0, crop_size - nh), max(0, crop_size - nw)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
        m = F.pad(m, (0, pw, 0, ph), value=ignore_index)
    hh, ww = x.shape[1:]
    oy = min(hh - crop_size, int(crop_pos[0] * (hh - crop_size + 1)))
    ox = min(ww - crop_size, int(crop_pos[1] * (ww - crop_size + 1)))
    x = x[:, oy : oy + crop_size, ox : ox + crop_size]
    m = m[oy : oy + crop_size, ox : ox + crop_size]
    if flip:
        x, m = x.flip(-1), m.flip(-1)
    return x, m


class SegEpochBatches(EpochBatches):
    """The training batches of one epoch for one process (order as :class:`EpochBatches`).

    Every example is scaled, cropped to ``crop_size`` and (with ``"flip"`` in ``augment``)
    flipped with parameters drawn per example from (seed, epoch), so resuming mid-epoch or
    splitting a batch across processes gives the same pairs. ``augment="none"`` keeps the
    scale and centres the crop (images larger than ``crop_size`` are cut, smaller ones padded).
    """

    data: SegDataset

    def __init__(
        self,
        data: SegDataset,
        batch_size: int,
        epoch: int,
        seed: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        augment: str = "crop",
        crop_size: int = 64,
        scale_range: tuple[float, float] = (0.5, 2.0),
        mean=(0.0,) * 3,
        std=(1.0,) * 3,
        merge_single_last: bool = False,
    ):
        super().__init__(
            data,
            batch_size,
            epoch,
            seed,
            rank=rank,
            world_size=world_size,
            augment="none",
            mean=mean,
            std=std,
            merge_single_last=merge_single_last,
        )
        self.crop_size = crop_size
        on = augment != "none"
        self.seg_aug = seg_augment_params(
            len(data), epoch, seed, scale_range if on else (1.0, 1.0), flip="flip" in augment, random_crop=on
        )

    def get(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``i``: normalised images (B, 3, S, S) float32 and masks (B, S, S) int64."""
        idx = self.batch_indices(i)
        a, d = self.seg_aug, self.data
        xs, ms = [], []
        for j in idx.tolist():
            x, m = d.pair(j)
            x, m = augment_pair(
                x,
                m,
                float(a.scales[j]),
                tuple(a.crop_pos[j].tolist()),
                bool(a.flips[j]),
                self.crop_size,
                d.ignore_index,
            )
            xs.append(x)
            ms.append(m)
        return normalize(torch.stack(xs), self.mean, self.std), torch.stack(ms)


def _seg_stats(images: list[torch.Tensor]) -> tuple[RGB, RGB]:
    s = torch.zeros(3, dtype=torch.float64)
    s2 = torch.zeros(3, dtype=torch.float64)
    n = 0
    for x in images:
        v = x.double().div(255.0).flatten(1)
        s += v.sum(1)
        s2 += (v * v).sum(1)
        n += v.shape[1]
    mean = s / max(n, 1)
    std = (s2 / max(n, 1) - mean * mean).clamp_min(1e-6).sqrt().clamp_min(1e-3)
    return _rgb(mean), _rgb(std)


# ---------------------------------------------------------------------------
# Digit scenes
# ---------------------------------------------------------------------------


def _compose_scenes(
    scans: np.ndarray,
    labels: np.ndarray,
    n: int,
    size: int,
    rng: np.random.Generator,
    ignore_index: int,
    instances: list | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``n`` scenes; ``instances`` (a list) receives, per scene, the digits placed as
    ``(y, x, side, digit, resized scan)`` (visattn.data.detection builds boxes and masks from them)."""
    images, masks = [], []
    lo, hi = max(4, round(size * 12 / 64)), max(5, round(size * 26 / 64))
    for _ in range(n):
        canvas = torch.zeros(size, size)
        mask = torch.zeros(size, size, dtype=torch.int64)
        boxes: list[tuple[int, int, int]] = []
        placed = []
        for _ in range(int(rng.integers(2, 6))):
            for _attempt in range(20):  # rejection sampling of a free square
                s = int(rng.integers(lo, hi + 1))
                y, x = int(rng.integers(0, size - s + 1)), int(rng.integers(0, size - s + 1))
                if all(y + s <= by or by + bs <= y or x + s <= bx or bx + bs <= x for by, bx, bs in boxes):
                    break
            else:
                continue
            k = int(rng.integers(len(scans)))
            digit = torch.from_numpy(scans[k])[None, None]  # (1, 1, 8, 8) in 0..1
            digit = F.interpolate(digit, size=(s, s), mode="bilinear", align_corners=False)[0, 0].clamp_(0, 1)
            canvas[y : y + s, x : x + s] = digit
            sub = mask[y : y + s, x : x + s]
            sub[digit >= 0.5] = int(labels[k]) + 1
            sub[(digit >= 0.3) & (digit < 0.5)] = ignore_index
            boxes.append((y, x, s))
            placed.append((y, x, s, int(labels[k]), digit))
        if instances is not None:
            instances.append(placed)
        images.append((canvas * 255).round_().to(torch.uint8)[None].repeat(3, 1, 1))
        masks.append(mask)
    return images, masks


def load_digit_scenes(
    image_size: int = 64, n_train: int = 2000, n_test: int = 500, seed: int = 0, ignore_index: int = IGNORE_INDEX
) -> SegDataBundle:
    """Digit scenes (see module docstring): 11 classes (background, digits 0-9), deterministic by ``seed``.

    Train scenes are composed from the train scans of :func:`stratified_split` (20% of each
    digit held out, seeded; 1,438 / 359 scans for seed 0), test scenes from the held-out
    ones: no scan appears in both (``extra["train_scans"]``, ``extra["test_scans"]``).
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
        raise ValueError(f"digit scenes need image_size >= 16 (an int), got {image_size!r}")
    for name, v in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - optional extra
        raise ImportError("the built-in digit scenes need scikit-learn: pip install 'visattn[data]'") from e
    # uint8 images and int64 masks: 3 + 8 bytes per pixel (1024x1024 scenes: 26.9 GiB)
    check_memory_bytes(
        (n_train + n_test) * image_size * image_size * 11,
        f"digit scenes: holding {n_train + n_test} images of {image_size}x{image_size} with their masks "
        "(11 bytes per pixel)",
        "choose a smaller --image-size",
    )
    d = load_digits()
    scans = d.images.astype(np.float32) / 16.0
    tr, te = stratified_split(d.target, 0.2, seed)
    rng = np.random.default_rng(seed)
    tr_x, tr_m = _compose_scenes(scans[tr], d.target[tr], n_train, image_size, rng, ignore_index)
    te_x, te_m = _compose_scenes(scans[te], d.target[te], n_test, image_size, rng, ignore_index)
    train = SegDataset(tr_x, tr_m, ignore_index, [f"train scene {i}" for i in range(n_train)])
    test = SegDataset(te_x, te_m, ignore_index, [f"test scene {i}" for i in range(n_test)])
    mean, std = _seg_stats(train.images)
    return SegDataBundle(
        "digitscenes",
        train,
        test,
        ["background"] + [f"digit {i}" for i in range(10)],
        image_size,
        mean,
        std,
        augment="crop",
        extra={"train_scans": tr.tolist(), "test_scans": te.tolist()},
        ignore_index=ignore_index,
        scale_range=(0.75, 1.33),
    )


# ---------------------------------------------------------------------------
# Folders of image/mask pairs
# ---------------------------------------------------------------------------


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(path)
        im.load()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"cannot read {str(path)!r} as an image: {e}") from e
    return im


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """An image file as (3, H, W) uint8 (converted to RGB by value, as ``folder:`` data: a 16-bit
    greyscale PNG keeps its grey level)."""
    with _open(Path(path)) as im:
        return torch.from_numpy(np.asarray(_to_rgb_uint8(im)).copy()).permute(2, 0, 1).contiguous()


def read_mask(path: str | os.PathLike) -> torch.Tensor:
    """A mask PNG as (H, W) int64: the pixel values of a single-channel image, or the palette
    indices of a palette ("P") image. Colour masks are refused."""
    path = Path(path)
    with _open(path) as im:
        if im.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "LA", "PA"):
            raise ValueError(
                f"mask {str(path)!r} is a {im.mode} image; expected a single-channel index PNG "
                "('L', 'I', 'I;16') or a palette PNG ('P') whose indices are the classes"
            )
        if im.mode in ("1", "F"):
            raise ValueError(
                f"mask {str(path)!r} has mode {im.mode!r}; expected integer class indices "
                "('L', 'I', 'I;16' or palette 'P')"
            )
        arr = np.asarray(im)  # "P": the palette indices, not the colours
    return torch.from_numpy(arr.astype(np.int64))


def _by_stem(folder: Path, exts: tuple[str, ...]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix.lower() in exts and not f.name.startswith("."):
            if f.stem in out:
                raise ValueError(f"two files with stem {f.stem!r} in {str(folder)!r}: {out[f.stem].name} and {f.name}")
            out[f.stem] = f
    return out


def _pairs_from_dirs(img_dir: Path, mask_dir: Path) -> list[tuple[Path, Path]]:
    if not mask_dir.is_dir():
        raise FileNotFoundError(f"{str(img_dir)!r} has no mask folder beside it: expected {str(mask_dir)!r}")
    images = _by_stem(img_dir, IMAGE_EXTENSIONS)
    masks = _by_stem(mask_dir, (".png",))
    no_mask = sorted(set(images) - set(masks))
    if no_mask:
        raise ValueError(
            f"image {str(images[no_mask[0]])!r} has no mask {str(mask_dir / (no_mask[0] + '.png'))!r}"
            + (f" ({len(no_mask)} images without masks)" if len(no_mask) > 1 else "")
        )
    no_image = sorted(set(masks) - set(images))
    if no_image:
        raise ValueError(
            f"mask {str(masks[no_image[0]])!r} has no image {no_image[0]}.* in {str(img_dir)!r}"
            + (f" ({len(no_image)} masks without images)" if len(no_image) > 1 else "")
        )
    return [(images[s], masks[s]) for s in sorted(images)]


def _voc_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"VOC layout in {str(root)!r} lacks {str(listing)!r}")
    images = _by_stem(root / "JPEGImages", IMAGE_EXTENSIONS)
    pairs = []
    for line in listing.read_text().split():
        if line not in images:
            raise ValueError(f"{str(listing)!r} lists {line!r} but {str(root / 'JPEGImages')!r} has no {line}.jpg")
        mask = root / "SegmentationClass" / f"{line}.png"
        if not mask.is_file():
            raise ValueError(f"image {str(images[line])!r} has no mask {str(mask)!r}")
        pairs.append((images[line], mask))
    if not pairs:
        raise ValueError(f"{str(listing)!r} lists no image ids")
    return pairs


def _check_pairs_memory(root: Path, pairs: list[tuple[Path, Path]]) -> None:
    """Estimate, from the image headers, the memory the pairs take once read (3 + 8 bytes per pixel)."""
    from PIL import Image

    pixels = 0
    for img_path, _ in pairs:
        try:
            with Image.open(img_path) as im:
                pixels += im.size[0] * im.size[1]
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            pass  # reading it names the file
    check_memory_bytes(
        pixels * 11,
        f"segmentation folder {str(root)!r}: holding {len(pairs)} images of {pixels:,} pixels in all with their "
        "masks (11 bytes per pixel)",
        "use fewer or smaller images",
    )


def _read_classes(path: Path) -> list[str]:
    """``classes.txt``: one unique class name per non-empty line."""
    classes: list[str] = []
    seen: dict[str, int] = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        name = line.strip()
        if not name:
            continue
        if name in seen:
            raise ValueError(
                f"{str(path)!r}: class names must be unique, but {name!r} is on lines {seen[name]} and {i}"
            )
        seen[name] = i
        classes.append(name)
    return classes


def _derive_classes(root: Path, datasets: list[SegDataset], ignore_index: int) -> tuple[list[str], str]:
    """Classes ``0..max`` from the largest mask value (no classes.txt, not VOC), and where that
    value is; refused when over half of ``0..max`` occurs in no mask (a stray value)."""
    found: dict[int, tuple[int, str]] = {}  # value -> (pixels, first mask holding it)
    for d in datasets:
        for m, name in zip(d.masks, d.names or [""] * len(d)):
            values, counts = torch.unique(m[(m != ignore_index) & (m >= 0)], return_counts=True)
            for v, c in zip(values.tolist(), counts.tolist()):
                pixels, first = found.get(v, (0, name))
                found[v] = (pixels + c, first)
    if not found:
        return ["0"], "no labelled pixel"
    top = max(found)
    pixels, where = found[top]
    if top + 1 - len(found) > (top + 1) // 2:
        shown = ", ".join(str(v) for v in sorted(found)[:12]) + (", ..." if len(found) > 12 else "")
        raise ValueError(
            f"{str(root)!r}: without classes.txt the classes are 0..largest mask value, and the largest value "
            f"{top} ({pixels} pixel{'s' if pixels != 1 else ''} of mask {where!r}) would make {top + 1} classes "
            f"of which only {len(found)} values occur ({shown}): a stray value (an anti-aliased resize?) rather "
            f"than classes; fix the mask or list the class names, one per line, in {str(root / 'classes.txt')!r}"
        )
    return [str(i) for i in range(top + 1)], f"largest mask value {top} (in {where!r})"


def _read_pairs(pairs: list[tuple[Path, Path]], ignore_index: int) -> SegDataset:
    images, masks = [], []
    for img_path, mask_path in pairs:
        x, m = read_image(img_path), read_mask(mask_path)
        if x.shape[1:] != m.shape:
            raise ValueError(
                f"image {str(img_path)!r} is {x.shape[2]}x{x.shape[1]} (WxH) but its mask "
                f"{str(mask_path)!r} is {m.shape[1]}x{m.shape[0]}"
            )
        images.append(x)
        masks.append(m)
    return SegDataset(images, masks, ignore_index, [str(m) for _, m in pairs])


def _check_values(ds: SegDataset, num_classes: int, ignore_index: int) -> None:
    for m, name in zip(ds.masks, ds.names or [""] * len(ds)):
        bad = (m >= num_classes) & (m != ignore_index) | (m < 0)
        if bad.any():
            v = int(m[bad][0])
            raise ValueError(
                f"mask {name!r} has value {v}, which is neither a class (0..{num_classes - 1}) "
                f"nor the ignore index {ignore_index}"
            )


def load_seg_folder(
    path: str | os.PathLike,
    image_size: int | None = None,
    seed: int = 0,
    ignore_index: int = IGNORE_INDEX,
    test_fraction: float = 0.2,
) -> SegDataBundle:
    """Image/mask pairs in one of the layouts of the module docstring; ``image_size`` is the
    side of the training crops (default 128); evaluation runs on whole images."""
    root = Path(path).expanduser()
    layouts = (
        f"expected {str(root)!r} to hold JPEGImages/ + SegmentationClass/ + ImageSets/Segmentation/"
        "{train,val}.txt (VOC), train/{images,masks}/ + val/{images,masks}/, or images/ + masks/"
    )
    if not root.is_dir():
        raise not_a_folder(root, "segmentation folder", layouts)
    classes: list[str] | None = None
    if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
        tr_pairs, te_pairs = _voc_pairs(root, "train"), _voc_pairs(root, "val")
        classes = list(VOC_CLASSES)
    elif (root / "train" / "images").is_dir():
        test_dir = next((root / n for n in ("val", "test") if (root / n / "images").is_dir()), None)
        if test_dir is None:
            raise FileNotFoundError(f"{str(root / 'train')!r} exists but neither val/images nor test/images; {layouts}")
        tr_pairs = _pairs_from_dirs(root / "train" / "images", root / "train" / "masks")
        te_pairs = _pairs_from_dirs(test_dir / "images", test_dir / "masks")
    elif (root / "images").is_dir() and (root / "masks").is_dir():
        pairs = _pairs_from_dirs(root / "images", root / "masks")
        if len(pairs) < 2:
            raise ValueError(f"{str(root)!r} holds {len(pairs)} image/mask pair(s); a train/test split needs >= 2")
        perm = np.random.default_rng(seed).permutation(len(pairs))
        n_test = min(len(pairs) - 1, max(1, round(test_fraction * len(pairs))))
        te_pairs = [pairs[i] for i in sorted(perm[:n_test])]
        tr_pairs = [pairs[i] for i in sorted(perm[n_test:])]
    else:
        raise FileNotFoundError(f"no segmentation layout found; {layouts}")
    if not tr_pairs or not te_pairs:
        raise ValueError(f"{str(root)!r}: the train or test split has no image/mask pairs; {layouts}")
    classes_from = "VOC" if classes is not None else None
    if (root / "classes.txt").is_file():
        classes, classes_from = _read_classes(root / "classes.txt"), str(root / "classes.txt")
    _check_pairs_memory(root, tr_pairs + te_pairs)
    train, test = _read_pairs(tr_pairs, ignore_index), _read_pairs(te_pairs, ignore_index)
    if classes is None:
        classes, classes_from = _derive_classes(root, [train, test], ignore_index)
    if len(classes) < 2:
        raise ValueError(f"{str(root)!r}: need >= 2 classes, got {classes}")
    for ds in (train, test):
        _check_values(ds, len(classes), ignore_index)
    order = sorted(range(len(test)), key=lambda i: test.sizes()[i])  # similar sizes share eval batches
    names = None if test.names is None else [test.names[i] for i in order]
    test = SegDataset([test.images[i] for i in order], [test.masks[i] for i in order], ignore_index, names)
    mean, std = _seg_stats(train.images)
    return SegDataBundle(
        f"segfolder:{path}",
        train,
        test,
        classes,
        image_size or 128,
        mean,
        std,
        augment="crop+flip",
        extra={"classes_from": classes_from},
        ignore_index=ignore_index,
        scale_range=(0.5, 2.0),
    )


def load_seg_data(
    spec: str, image_size: int | None = None, seed: int = 0, ignore_index: int = IGNORE_INDEX
) -> SegDataBundle:
    """Load ``digitscenes`` | ``segfolder:PATH`` (see module docstring).

    ``image_size``: digit scenes: the canvas side (default 64); folders: the training crop
    side (default 128).
    """
    if not isinstance(spec, str):
        raise TypeError(f"data spec must be a str, got {type(spec).__name__}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be an int >= 1 or None, got {image_size!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int) or ignore_index < 0:
        raise ValueError(f"ignore_index must be an int >= 0, got {ignore_index!r}")
    kind, _, path = spec.partition(":")
    if kind == "digitscenes" and not path:
        bundle = load_digit_scenes(image_size or 64, seed=seed, ignore_index=ignore_index)
    elif kind == "segfolder" and path:
        bundle = load_seg_folder(path, image_size, seed=seed, ignore_index=ignore_index)
    else:
        raise ValueError(f"segmentation data spec must be 'digitscenes' or 'segfolder:PATH', got {spec!r}")
    if ignore_index < bundle.num_classes:
        raise ValueError(
            f"ignore_index {ignore_index} is a class of {spec!r} (classes 0..{bundle.num_classes - 1}); "
            "choose a value >= the number of classes"
        )
    return bundle
