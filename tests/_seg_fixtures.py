"""Generated segmentation folders for the tests (PNG/JPEG written with Pillow into tmp_path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLOURS = np.array([(20, 20, 20), (220, 40, 40), (40, 220, 40)], dtype=np.int64)  # class 0, 1, 2


def scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """An (h, w, 3) uint8 image and its (h, w) uint8 mask: background 0 with a rectangle of class 1
    and one of class 2; pixel colour = class colour + noise."""
    mask = np.zeros((h, w), dtype=np.uint8)
    for c in (1, 2):
        y0, x0 = rng.integers(0, h - 3), rng.integers(0, w - 3)
        y1, x1 = y0 + rng.integers(3, h // 2 + 3), x0 + rng.integers(3, w // 2 + 3)
        mask[y0:y1, x0:x1] = c
    img = np.clip(COLOURS[mask] + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    return img, mask


def save_mask(mask: np.ndarray, path: Path, palette: bool) -> None:
    """A mask as an index ("L") PNG or a palette ("P") PNG whose colours are not the indices."""
    from PIL import Image

    if palette:
        im = Image.fromarray(mask, mode="P")
        im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [255, 255, 255] * 253)
    else:
        im = Image.fromarray(mask, mode="L")
    im.save(path)


def write_pairs(
    img_dir: Path,
    mask_dir: Path,
    n: int,
    *,
    seed: int = 0,
    size=(16, 20),
    palette: bool = False,
    ext: str = ".png",
    first: int = 0,
) -> list[np.ndarray]:
    from PIL import Image

    img_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    masks = []
    for i in range(first, first + n):
        img, mask = scene(rng, *size)
        Image.fromarray(img).save(img_dir / f"s{i:03d}{ext}", quality=95)
        save_mask(mask, mask_dir / f"s{i:03d}.png", palette)
        masks.append(mask)
    return masks


def make_seg_folder(root: Path, n: int = 24, size=(16, 20), palette: bool = False) -> str:
    """root/images + root/masks (seeded split by the loader); returns the data spec."""
    write_pairs(root / "images", root / "masks", n, size=size, palette=palette)
    return f"segfolder:{root}"


def make_voc_folder(root: Path, n_train: int = 6, n_val: int = 3, size=(16, 20)) -> str:
    """VOC layout: JPEGImages/*.jpg, SegmentationClass/*.png (palette), ImageSets/Segmentation/{train,val}.txt,
    plus a JPEG without a segmentation mask that no list names (as in real VOC)."""
    from PIL import Image

    write_pairs(root / "JPEGImages", root / "SegmentationClass", n_train + n_val, size=size, palette=True, ext=".jpg")
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / "JPEGImages" / "detection_only.jpg")
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("".join(f"s{i:03d}\n" for i in range(n_train)))
    (sets / "val.txt").write_text("".join(f"s{i:03d}\n" for i in range(n_train, n_train + n_val)))
    return f"segfolder:{root}"
