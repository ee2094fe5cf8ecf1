"""Detection and instance-segmentation data, all local: digit scenes with instances and COCO folders.

A :class:`DetDataset` holds images (3, H, W) uint8 and one target dict per image, torchvision's
detection format: ``boxes`` (N, 4) float32 **xyxy** in pixels, ``labels`` (N,) int64 (1..K; 0 is
background, as torchvision's R-CNNs expect), ``masks`` (N, H, W) uint8 (or absent), ``area`` (N,)
float32 (the mask's pixel count, else the box's) and ``iscrowd`` (N,) int64. ``image_ids`` are the
images' COCO ids. Crowd regions are kept for evaluation (COCOeval ignores detections on them) and
left out of training targets. An image without objects is a negative example, not an error.

Spec strings (:func:`load_det_data`):

* ``digitscenes``: the segmentation digit scenes (:func:`visattn.data.segmentation.load_digit_scenes`,
  same seed, same images) with each digit as an instance: its mask (the resized scan >= 0.5,
  exactly the pixels the semantic mask gives that digit, so the union of the instance masks is the
  segmentation mask's foreground), its tight box and its area; 10 categories ``digit 0`` ..
  ``digit 9`` (COCO ids 1..10). A few empty scenes (one per 50, at least one) are appended to
  each split as negatives.
* ``coco:PATH``: a COCO-format folder: ``PATH/annotations/instances_{train,val}[2017].json`` and
  the images in ``PATH/{train,val}[2017]/`` (or ``PATH/images/{train,val}/``), read through
  pycocotools (polygons and RLE, ``iscrowd``). Categories keep their COCO ids (gaps allowed) and
  map to contiguous labels 1..K in id order (``bundle.cat_ids[label - 1]`` is the id back).

Bad input is one ``ValueError`` naming the file and the annotation id: a box outside its image or
with zero area, a category id not in ``categories``, an annotation for a missing image, a malformed
JSON, an RLE mask whose size differs from its image, an image whose size differs from the JSON's.

Training batches (:class:`DetEpochBatches`) are lists (torchvision's input), augmented per example
with ``torchvision.transforms.v2`` on image, boxes and masks together (``crop``: random scale
0.8-1.25 and shift up to 10%; ``+flip``: horizontal flips), drawn from (seed, epoch, index) so a
resumed run sees the same batches; boxes that leave the image are dropped
(``SanitizeBoundingBoxes``).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visattn.data.datasets import DataBundle, check_memory_bytes, not_a_folder
from visattn.data.transforms import EpochBatches

__all__ = [
    "DetDataset",
    "DetDataBundle",
    "DetBatch",
    "DetEpochBatches",
    "load_det_data",
    "load_digit_instances",
    "load_coco",
    "random_det_batch",
    "coco_ground_truth",
    "DIGIT_CATEGORIES",
]

DIGIT_CATEGORIES: list[dict[str, Any]] = [{"id": d + 1, "name": f"digit {d}"} for d in range(10)]
_TARGET_KEYS = ("boxes", "labels", "masks", "area", "iscrowd")


class DetBatch(list):
    """A list of images or target dicts that moves to a device as a whole (``.to``) and reports
    its length as ``shape[0]``, as the training loop expects of a batch."""

    def to(self, device, non_blocking: bool = False) -> DetBatch:
        def move(v):
            if isinstance(v, dict):
                return {k: t.to(device, non_blocking=non_blocking) for k, t in v.items()}
            return v.to(device, non_blocking=non_blocking)

        return DetBatch(move(v) for v in self)

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)


@dataclass
class DetDataset:
    """In-memory images and their detection targets (see the module docstring)."""

    images: list[torch.Tensor]
    targets: list[dict[str, torch.Tensor]]
    image_ids: list[int]
    names: list[str] | None = None

    def __post_init__(self):
        if not len(self.images) == len(self.targets) == len(self.image_ids):
            raise ValueError(
                f"got {len(self.images)} images, {len(self.targets)} targets and {len(self.image_ids)} image ids"
            )
        for i, (x, t) in enumerate(zip(self.images, self.targets)):
            if x.dim() != 3 or x.shape[0] != 3 or x.dtype != torch.uint8:
                raise ValueError(f"image {i} must be (3, H, W) uint8, got {tuple(x.shape)} {x.dtype}")
            n = t["boxes"].shape[0]
            if t["boxes"].shape != (n, 4) or any(t[k].shape[0] != n for k in ("labels", "area", "iscrowd")):
                raise ValueError(f"target {i}: boxes (N, 4), labels, area and iscrowd (N,) must agree")
            if "masks" in t and tuple(t["masks"].shape) != (n, *x.shape[1:]):
                raise ValueError(f"target {i}: masks must be {(n, *x.shape[1:])}, got {tuple(t['masks'].shape)}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def has_masks(self) -> bool:
        return all("masks" in t for t in self.targets)

    def item(self, i: int, crowd: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Image ``i`` (3, H, W) float32 in 0..1 and its target (crowd regions left out unless ``crowd``)."""
        t = self.targets[i]
        if not crowd:
            keep = t["iscrowd"] == 0
            t = {k: v[keep] for k, v in t.items()}
        return self.images[i].float().div_(255.0), t

    def batch(self, indices) -> tuple[DetBatch, DetBatch]:
        """The images and training targets of ``indices`` (two lists)."""
        pairs = [self.item(int(i)) for i in indices]
        return DetBatch(p[0] for p in pairs), DetBatch(p[1] for p in pairs)


@dataclass
class DetDataBundle(DataBundle):
    """A detection train/test pair: ``classes[0]`` is ``"background"``, label k >= 1 is category
    ``cat_ids[k - 1]`` (its COCO id)."""

    train: DetDataset  # type: ignore[assignment]  # narrows DataBundle's splits (lists, not tensors)
    test: DetDataset  # type: ignore[assignment]
    cat_ids: list[int] = field(default_factory=list)

    @property
    def categories(self) -> list[dict[str, Any]]:
        return [{"id": c, "name": n} for c, n in zip(self.cat_ids, self.classes[1:])]


# ---------------------------------------------------------------------------
# Augmentation (torchvision.transforms.v2 on image, boxes and masks together)
# ---------------------------------------------------------------------------


def _v2_pipeline(augment: str):
    from torchvision.transforms import v2

    steps: list[Any] = []
    if "crop" in augment:
        steps.append(v2.RandomAffine(degrees=0.0, translate=(0.1, 0.1), scale=(0.8, 1.25)))
    if "flip" in augment:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1.0)]
    return v2.Compose(steps)


def augment_example(tf, x: torch.Tensor, t: dict[str, torch.Tensor], key: int):
    """Apply the v2 pipeline ``tf`` to one image and target with the random draws of ``key``."""
    from torchvision import tv_tensors

    h, w = x.shape[-2:]
    sample: dict[str, Any] = {
        "boxes": tv_tensors.BoundingBoxes(t["boxes"], format="XYXY", canvas_size=(h, w)),
        "labels": t["labels"],
        "iscrowd": t["iscrowd"],
    }
    if "masks" in t:
        sample["masks"] = tv_tensors.Mask(t["masks"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(key)
        x2, s2 = tf(tv_tensors.Image(x), sample)
    out = {k: v.as_subclass(torch.Tensor) for k, v in s2.items()}
    if "masks" in out:
        out["area"] = out["masks"].flatten(1).sum(1).float()
    else:
        b = out["boxes"]
        out["area"] = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return x2.as_subclass(torch.Tensor), out


class DetEpochBatches(EpochBatches):
    """The training batches of one epoch for one process (order as :class:`EpochBatches`): two
    :class:`DetBatch` lists (images in 0..1, targets), augmented per example (module docstring)."""

    data: DetDataset  # type: ignore[assignment]  # lists, not tensors

    def __init__(self, data: DetDataset, batch_size: int, epoch: int, seed: int, *, augment: str = "none", **kw):
        super().__init__(data, batch_size, epoch, seed, augment="none", **kw)  # type: ignore[arg-type]
        self.tf = _v2_pipeline(augment) if augment != "none" else None
        self.key = int(seed) * 1_000_003 + int(epoch) * 7919

    def get(self, i: int) -> tuple[DetBatch, DetBatch]:  # type: ignore[override]  # lists, not tensors
        xs, ts = DetBatch(), DetBatch()
        for j in self.batch_indices(i).tolist():
            x, t = self.data.item(j)
            if self.tf is not None:
                x, t = augment_example(self.tf, x, t, self.key + j)
            xs.append(x)
            ts.append(t)
        return xs, ts

    def iter_from(self, start: int = 0) -> Iterator[tuple[int, Any, Any]]:
        for i in range(start, self.num_batches):
            x, y = self.get(i)
            yield i, x, y


# ---------------------------------------------------------------------------
# Digit scenes with instances
# ---------------------------------------------------------------------------


def random_det_batch(
    batch: int, size: int, num_classes: int, *, min_side: int = 8, objects: int = 3, seed: int = 0
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """A seeded batch of random detection inputs and targets (cost measurements, benchmarks):
    ``batch`` images (3, size, size) in [0, 1), each with ``objects`` boxes (xyxy, sides in
    [min_side, size/2)), their filled-box masks and labels in [1, num_classes)."""
    g = torch.Generator().manual_seed(seed)
    xs, ts = [], []
    for _ in range(batch):
        xy = torch.randint(0, size // 2, (objects, 2), generator=g).float()
        wh = torch.randint(min_side, size // 2, (objects, 2), generator=g).float()
        boxes = torch.cat([xy, xy + wh], 1)
        masks = torch.zeros(objects, size, size, dtype=torch.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
            masks[k, y1:y2, x1:x2] = 1
        labels = torch.randint(1, num_classes, (objects,), generator=g)
        xs.append(torch.rand(3, size, size, generator=g))
        ts.append({"boxes": boxes, "labels": labels, "masks": masks})
    return xs, ts


def _empty_target(h: int, w: int, masks: bool = True) -> dict[str, torch.Tensor]:
    t = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "area": torch.zeros(0),
        "iscrowd": torch.zeros(0, dtype=torch.int64),
    }
    if masks:
        t["masks"] = torch.zeros(0, h, w, dtype=torch.uint8)
    return t


def _scene_target(placed, size: int) -> dict[str, torch.Tensor]:
    boxes, labels, masks = [], [], []
    for y, x, s, digit, scan in placed:
        m = torch.zeros(size, size, dtype=torch.uint8)
        m[y : y + s, x : x + s] = (scan >= 0.5).to(torch.uint8)
        ys, xs = torch.nonzero(m, as_tuple=True)
        if ys.numel() == 0:
            continue
        boxes.append([float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1])
        labels.append(digit + 1)
        masks.append(m)
    if not boxes:
        return _empty_target(size, size)
    mk = torch.stack(masks)
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": mk,
        "area": mk.flatten(1).sum(1).float(),
        "iscrowd": torch.zeros(len(boxes), dtype=torch.int64),
    }


def load_digit_instances(
    image_size: int = 64, n_train: int = 2000, n_test: int = 500, seed: int = 0, empty_every: int = 50
) -> DetDataBundle:
    """Digit scenes with instances (module docstring); ``empty_every``: one empty scene is appended
    per this many scenes (at least one per split; 0: none)."""
    from sklearn.datasets import load_digits

    from visattn.data.datasets import stratified_split
    from visattn.data.segmentation import IGNORE_INDEX, _compose_scenes, _seg_stats

    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
        raise ValueError(f"digit scenes need image_size >= 16 (an int), got {image_size!r}")
    for name, v in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    # uint8 images and up to 5 uint8 instance masks per scene
    check_memory_bytes(
        (n_train + n_test) * image_size * image_size * 8,
        f"digit scenes: holding {n_train + n_test} images of {image_size}x{image_size} with their instance masks",
        "choose a smaller --image-size",
    )
    d = load_digits()
    scans = d.images.astype(np.float32) / 16.0
    tr, te = stratified_split(d.target, 0.2, seed)
    rng = np.random.default_rng(seed)  # the segmentation scenes' draws, in the same order
    splits = []
    next_id = 1
    for part, idx, n in (("train", tr, n_train), ("test", te, n_test)):
        inst: list = []
        images, _ = _compose_scenes(scans[idx], d.target[idx], n, image_size, rng, IGNORE_INDEX, inst)
        targets = [_scene_target(p, image_size) for p in inst]
        names = [f"{part} scene {i}" for i in range(n)]
        n_empty = max(1, n // empty_every) if empty_every else 0
        for j in range(n_empty):
            images.append(torch.zeros(3, image_size, image_size, dtype=torch.uint8))
            targets.append(_empty_target(image_size, image_size))
            names.append(f"{part} empty scene {j}")
        ids = list(range(next_id, next_id + len(images)))
        next_id += len(images)
        splits.append(DetDataset(images, targets, ids, names))
    mean, std = _seg_stats(splits[0].images)
    return DetDataBundle(
        "digitscenes",
        splits[0],
        splits[1],
        ["background"] + [c["name"] for c in DIGIT_CATEGORIES],
        image_size,
        mean,
        std,
        augment="none",
        extra={"train_scans": tr.tolist(), "test_scans": te.tolist()},
        cat_ids=[c["id"] for c in DIGIT_CATEGORIES],
    )


# ---------------------------------------------------------------------------
# COCO folders
# ---------------------------------------------------------------------------


def _find(root: Path, candidates: Sequence[str]) -> Path | None:
    for c in candidates:
        if (root / c).exists():
            return root / c
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: expected a list under {key!r}, got {type(data.get(key)).__name__}")
    return data


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_coco(path: Path, data: dict[str, Any]) -> None:
    """Every image has id, file_name, width, height; every annotation a known image and category
    and a box inside its image with a positive area; an RLE's size is its image's."""
    images: dict[Any, dict] = {}
    for im in data["images"]:
        if not isinstance(im, dict) or not all(k in im for k in ("id", "file_name", "width", "height")):
            raise ValueError(f"{path}: image entry {str(im)[:80]} lacks id, file_name, width or height")
        if im["id"] in images:
            raise ValueError(f"{path}: image id {im['id']} appears twice")
        images[im["id"]] = im
    cats = set()
    for c in data["categories"]:
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise ValueError(f"{path}: category entry {str(c)[:80]} lacks id or name")
        cats.add(c["id"])
    seen = set()
    for a in data["annotations"]:
        aid = a.get("id") if isinstance(a, dict) else None
        where = f"{path}: annotation {aid}"
        if not isinstance(a, dict) or aid is None:
            raise ValueError(f"{path}: annotation {str(a)[:80]} has no id")
        if aid in seen:
            raise ValueError(f"{where}: the id appears twice")
        seen.add(aid)
        if a.get("image_id") not in images:
            raise ValueError(f"{where}: image_id {a.get('image_id')!r} is not among the images")
        if a.get("category_id") not in cats:
            raise ValueError(f"{where}: category_id {a.get('category_id')!r} is not in categories {sorted(cats)}")
        im = images[a["image_id"]]
        bb = a.get("bbox")
        if not (isinstance(bb, list) and len(bb) == 4 and all(_num(v) for v in bb)):
            raise ValueError(f"{where}: bbox must be [x, y, width, height], got {bb!r}")
        x, y, w, h = bb
        if w <= 0 or h <= 0:
            raise ValueError(f"{where}: box {bb} has zero area (width and height must be > 0)")
        tol = 1.0  # COCO's own boxes overshoot by rounding
        if x < -tol or y < -tol or x + w > im["width"] + tol or y + h > im["height"] + tol:
            raise ValueError(
                f"{where}: box {bb} (x, y, w, h) lies outside image {im['id']} ({im['width']}x{im['height']})"
            )
        seg = a.get("segmentation")
        if isinstance(seg, dict):
            size = seg.get("size")
            if list(size or []) != [im["height"], im["width"]]:
                raise ValueError(
                    f"{where}: mask size {size} differs from image {im['id']}'s [height, width] "
                    f"[{im['height']}, {im['width']}]"
                )


def _coco_split(json_path: Path, img_dir: Path) -> tuple[DetDataset, list[dict[str, Any]]]:
    from pycocotools.coco import COCO

    from visattn.data.segmentation import read_image

    data = _read_json(json_path)
    _check_coco(json_path, data)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    cats = sorted(data["categories"], key=lambda c: c["id"])
    label = {c["id"]: i + 1 for i, c in enumerate(cats)}
    with_masks = any("segmentation" in a for a in data["annotations"])
    check_memory_bytes(
        sum(3 * int(im["width"]) * int(im["height"]) for im in data["images"])
        + (
            sum(int(im["width"]) * int(im["height"]) * len(coco.getAnnIds(imgIds=im["id"])) for im in data["images"])
            if with_masks
            else 0
        ),
        f"{json_path}: {len(data['images'])} images with their masks",
        "use a smaller data set",
    )
    images, targets, ids, names = [], [], [], []
    for im in sorted(data["images"], key=lambda i: i["id"]):
        f = img_dir / im["file_name"]
        if not f.is_file():
            raise FileNotFoundError(f"{json_path}: image {im['id']}: file {str(f)!r} does not exist")
        x = read_image(f)
        if tuple(x.shape[1:]) != (im["height"], im["width"]):
            raise ValueError(
                f"{json_path}: image {im['id']} ({f.name}) is {x.shape[2]}x{x.shape[1]}, "
                f"but the JSON says {im['width']}x{im['height']}"
            )
        anns = coco.loadAnns(coco.getAnnIds(imgIds=im["id"]))
        h, w = im["height"], im["width"]
        t = _empty_target(h, w, with_masks)
        if anns:
            b = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)
            b[:, 2:] += b[:, :2]
            b[:, 0::2] = b[:, 0::2].clamp(0, w)
            b[:, 1::2] = b[:, 1::2].clamp(0, h)
            t = {
                "boxes": b,
                "labels": torch.tensor([label[a["category_id"]] for a in anns], dtype=torch.int64),
                "area": torch.tensor([float(a.get("area", a["bbox"][2] * a["bbox"][3])) for a in anns]),
                "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.int64),
            }
            if with_masks:
                ms = []
                for a in anns:
                    if "segmentation" not in a:
                        raise ValueError(f"{json_path}: annotation {a['id']}: no segmentation (others have one)")
                    try:
                        ms.append(torch.from_numpy(coco.annToMask(a)))
                    except Exception as e:  # pycocotools raises bare errors on malformed polygons / RLE
                        raise ValueError(f"{json_path}: annotation {a['id']}: unreadable segmentation ({e})") from None
                t["masks"] = torch.stack(ms).to(torch.uint8)
        images.append(x)
        targets.append(t)
        ids.append(int(im["id"]))
        names.append(str(im["file_name"]))
    return DetDataset(images, targets, ids, names), cats


def load_coco(root: str | os.PathLike) -> DetDataBundle:
    """A COCO-format folder (module docstring): train and val splits, categories from the train JSON."""
    root = Path(root)
    if not root.is_dir():
        raise not_a_folder(root, "COCO data", "expected a folder with annotations/instances_train.json")
    parts = []
    for split in ("train", "val"):
        js = _find(root, [f"annotations/instances_{split}.json", f"annotations/instances_{split}2017.json"])
        imgs = _find(root, [split, f"{split}2017", f"images/{split}"])
        if js is None or imgs is None:
            raise FileNotFoundError(
                f"COCO data {str(root)!r}: expected annotations/instances_{split}[2017].json and the images in "
                f"{split}[2017]/ or images/{split}/; missing {'the JSON' if js is None else 'the image folder'}"
            )
        parts.append(_coco_split(js, imgs))
    (train, cats), (test, val_cats) = parts
    if [c["id"] for c in cats] != [c["id"] for c in val_cats]:
        raise ValueError(
            f"COCO data {str(root)!r}: train and val categories differ "
            f"({[c['id'] for c in cats]} vs {[c['id'] for c in val_cats]})"
        )
    if not train.has_masks and any("masks" in t for t in train.targets):
        raise ValueError(f"COCO data {str(root)!r}: some train annotations have masks and others none")
    from visattn.data.segmentation import _seg_stats

    mean, std = _seg_stats(train.images)
    sizes = [max(x.shape[1:]) for x in train.images]
    return DetDataBundle(
        f"coco:{root}",
        train,
        test,
        ["background"] + [str(c["name"]) for c in cats],
        int(max(sizes)) if sizes else 0,
        mean,
        std,
        augment="crop+flip",
        cat_ids=[int(c["id"]) for c in cats],
    )


def load_det_data(spec: str, image_size: int | None = None, seed: int = 0) -> DetDataBundle:
    """``digitscenes`` or ``coco:PATH`` (module docstring)."""
    if not isinstance(spec, str):
        raise TypeError(f"data must be a spec string, got {type(spec).__name__}")
    if spec == "digitscenes":
        return load_digit_instances(image_size or 64, seed=seed)
    if spec.startswith("coco:"):
        if image_size is not None:
            raise ValueError("--image-size is not used with coco: data (the detector's min_size/max_size resize)")
        return load_coco(spec[len("coco:") :])
    raise ValueError(f"detection data must be 'digitscenes' or 'coco:PATH', got {spec!r}")


def coco_ground_truth(ds: DetDataset, cat_ids: Sequence[int], classes: Sequence[str]):
    """``ds`` as a pycocotools ``COCO`` ground truth: every image (with or without objects), boxes
    xywh, ``area`` and ``iscrowd`` from the targets, masks as RLE, annotation ids from 1."""
    from pycocotools import mask as mask_util
    from pycocotools.coco import COCO

    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for x, t, iid in zip(ds.images, ds.targets, ds.image_ids):
        h, w = int(x.shape[1]), int(x.shape[2])
        images.append({"id": int(iid), "width": w, "height": h})
        for k in range(t["boxes"].shape[0]):
            x1, y1, x2, y2 = (float(v) for v in t["boxes"][k])
            a = {
                "id": len(anns) + 1,
                "image_id": int(iid),
                "category_id": int(cat_ids[int(t["labels"][k]) - 1]),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": float(t["area"][k]),
                "iscrowd": int(t["iscrowd"][k]),
            }
            if "masks" in t:
                rle = mask_util.encode(np.asfortranarray(t["masks"][k].numpy().astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                a["segmentation"] = rle
            anns.append(a)
    gt = COCO()
    gt.dataset = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": int(c), "name": str(n)} for c, n in zip(cat_ids, classes[1:])],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt
