"""Tiny ImageNet read as distributed (data spec ``tinyimagenet:PATH``), no conversion step.

The ``tiny-imagenet-200`` folder (Stanford CS231N) holds ``wnids.txt`` (the 200 class ids, one
per line), ``words.txt`` (id <tab> names), ``train/<wnid>/images/<wnid>_<i>.JPEG`` (500 per
class) and ``val/images/val_<i>.JPEG`` with ``val/val_annotations.txt`` (file <tab> wnid <tab>
box). The validation images are the test split (the ``test/`` images have no labels and are
not read). All images are 64x64 RGB (a few greyscale JPEGs are converted).
"""

from __future__ import annotations

import os
from pathlib import Path

from visattn.data.datasets import DataBundle, ImageDataset, _channel_stats, _check_memory, _check_size, _read_images

__all__ = ["load_tiny_imagenet"]


def _layout(root: Path) -> str:
    return (
        f"expected {str(root)!r} to hold wnids.txt, train/<wnid>/images/*.JPEG and val/images/*.JPEG "
        "with val/val_annotations.txt (the extracted tiny-imagenet-200.zip)"
    )


def load_tiny_imagenet(path: str | os.PathLike, image_size: int | None = None) -> DataBundle:
    """Tiny ImageNet from ``path`` (the ``tiny-imagenet-200`` folder or the folder holding it).

    Classes: ``wnids.txt`` order, named by the first name in ``words.txt`` where present.
    ``image_size`` other than 64 resizes at load time.
    """
    _check_size(image_size)
    root = Path(path).expanduser()
    if not (root / "wnids.txt").is_file() and (root / "tiny-imagenet-200").is_dir():
        root = root / "tiny-imagenet-200"
    if not root.is_dir() or not (root / "wnids.txt").is_file():
        raise FileNotFoundError(f"Tiny ImageNet folder {str(root)!r} not found or incomplete; {_layout(root)}")
    wnids = [w.strip() for w in (root / "wnids.txt").read_text().split() if w.strip()]
    if len(set(wnids)) != len(wnids) or not wnids:
        raise ValueError(f"{root / 'wnids.txt'}: expected distinct class ids, one per line")
    index = {w: i for i, w in enumerate(wnids)}
    names = dict.fromkeys(wnids, "")
    words = root / "words.txt"
    if words.is_file():
        for line in words.read_text(errors="replace").splitlines():
            wid, _, text = line.partition("\t")
            if wid in names:
                names[wid] = text.split(",")[0].strip()
    train_items = []
    for w in wnids:
        folder = root / "train" / w / "images"
        if not folder.is_dir():
            raise FileNotFoundError(f"Tiny ImageNet: class folder {str(folder)!r} is missing; {_layout(root)}")
        train_items += [
            (f, index[w]) for f in sorted(folder.iterdir()) if f.suffix.lower() in (".jpeg", ".jpg", ".png")
        ]
    ann = root / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise FileNotFoundError(f"Tiny ImageNet: {str(ann)!r} is missing; {_layout(root)}")
    val_items = []
    for n, line in enumerate(ann.read_text().splitlines(), 1):
        parts = line.split("\t")
        if len(parts) < 2 or not line.strip():
            continue
        if parts[1] not in index:
            raise ValueError(f"{ann}:{n}: class {parts[1]!r} is not in wnids.txt")
        val_items.append((root / "val" / "images" / parts[0], index[parts[1]]))
    if not train_items or not val_items:
        raise ValueError(f"Tiny ImageNet folder {str(root)!r} has no train or val images; {_layout(root)}")
    size = image_size or 64
    _check_memory(len(train_items) + len(val_items), size, 1, f"Tiny ImageNet in {root}")
    both = _read_images(train_items + val_items, size)
    k = len(train_items)
    train = ImageDataset(both.images[:k], both.labels[:k])
    test = ImageDataset(both.images[k:], both.labels[k:])
    mean, std = _channel_stats(train.images)
    classes = [names[w] or w for w in wnids]
    return DataBundle(f"tinyimagenet:{path}", train, test, classes, size, mean, std, augment="crop+flip")
