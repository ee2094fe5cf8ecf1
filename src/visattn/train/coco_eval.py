"""COCO evaluation through pycocotools' ``COCOeval`` (never a hand-written mAP).

:func:`coco_results` turns torchvision detector outputs into COCO results (labels -> category
ids, boxes xyxy -> **xywh**, soft masks thresholded at 0.5 -> RLE); :func:`coco_evaluate` scores
them against a ground truth (:func:`visattn.data.detection.coco_ground_truth`, or any
``pycocotools.coco.COCO``) for ``bbox`` and ``segm``: AP (IoU .50:.95), AP50, AP75 and AP for
small / medium / large objects, at 100 detections per image. COCOeval's -1 ("no ground truth
of that size") is ``None`` (``null`` in strict JSON). The traps it guards: no detections at all
(``loadRes([])`` crashes in pycocotools: every AP is then 0), images without objects (kept in
the evaluation, so their false positives count), crowd regions (ignored, not missed).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["coco_results", "coco_evaluate", "AP_KEYS", "IOU_TYPES"]

#: COCOeval's first six statistics, in order.
AP_KEYS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
IOU_TYPES = {"bbox": "box", "segm": "mask"}


def coco_results(
    outputs: Sequence[dict[str, torch.Tensor]], image_ids: Sequence[int], cat_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """COCO results ``[{"image_id", "category_id", "bbox" (xywh), "score", "segmentation"?}]``
    from torchvision outputs (one dict per image: ``boxes`` xyxy, ``labels`` 1..K, ``scores``,
    ``masks`` (N, 1, H, W) in 0..1 for Mask R-CNN). Label k is category ``cat_ids[k - 1]``."""
    from pycocotools import mask as mask_util

    res: list[dict[str, Any]] = []
    for out, iid in zip(outputs, image_ids):
        boxes = out["boxes"].detach().float().cpu()
        labels = out["labels"].cpu().tolist()
        scores = out["scores"].detach().float().cpu().tolist()
        soft = out.get("masks")
        masks = None if soft is None else (soft.detach().cpu()[:, 0] > 0.5).numpy().astype(np.uint8)
        for k in range(boxes.shape[0]):
            lab = int(labels[k])
            if not 1 <= lab <= len(cat_ids):
                raise ValueError(f"label {lab} of image {iid} is not a category (1..{len(cat_ids)})")
            x1, y1, x2, y2 = (float(v) for v in boxes[k])
            r: dict[str, Any] = {
                "image_id": int(iid),
                "category_id": int(cat_ids[lab - 1]),
                "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                "score": round(float(scores[k]), 5),
            }
            if masks is not None:
                rle = mask_util.encode(np.asfortranarray(masks[k]))
                rle["counts"] = rle["counts"].decode("ascii")
                r["segmentation"] = rle
            res.append(r)
    return res


def coco_evaluate(gt, results: list[dict[str, Any]], iou_types: Sequence[str] = ("bbox", "segm")) -> dict[str, Any]:
    """``{"box": {"ap": .., "ap50": .., ...}, "mask": {...}}`` from COCOeval (see module docstring).

    ``gt``: a ``pycocotools.coco.COCO``; ``results``: COCO results (boxes xywh). A ``segm``
    evaluation needs ``segmentation`` in every result (and masks in the ground truth).
    """
    from pycocotools.cocoeval import COCOeval

    out: dict[str, Any] = {}
    for iou in iou_types:
        if iou not in IOU_TYPES:
            raise ValueError(f"iou_type must be one of {list(IOU_TYPES)}, got {iou!r}")
        if iou == "segm" and any("segmentation" not in r for r in results):
            raise ValueError("a segm evaluation needs a segmentation in every result")
        if not results:  # pycocotools' loadRes([]) raises IndexError: nothing found scores 0
            out[IOU_TYPES[iou]] = {k: (0.0 if _has_gt(gt, k) else None) for k in AP_KEYS}
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes([dict(r) for r in results])
            ev = COCOeval(gt, dt, iou)
            ev.params.imgIds = sorted(gt.getImgIds())  # images without objects count their false positives
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out[IOU_TYPES[iou]] = {k: (None if v < 0 else float(v)) for k, v in zip(AP_KEYS, ev.stats[:6])}
    return out


_AREAS = {"ap_small": (0, 32**2), "ap_medium": (32**2, 96**2), "ap_large": (96**2, 1e10)}


def _has_gt(gt, key: str) -> bool:
    """Whether ``gt`` has a non-crowd object in ``key``'s area range (else COCOeval reports -1)."""
    lo, hi = _AREAS.get(key, (0, 1e10))
    return any(not a.get("iscrowd", 0) and lo <= a["area"] <= hi for a in gt.dataset["annotations"])
