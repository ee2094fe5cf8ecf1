"""Detection training and evaluation: COCOeval known answers, an overfit run, exact resume through
the CLI, predict's COCO results JSON."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")

import visattn
from visattn.data.detection import DetDataset, coco_ground_truth, load_digit_instances
from visattn.train.coco_eval import coco_evaluate, coco_results
from visattn.train.detect import evaluate_detector


@pytest.fixture
def one_thread():
    """Detection steps are many small operators: one thread is as fast, and it does not collapse when
    other processes load the machine (two spinning OpenMP threads there can take 20x longer)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


ONE = pytest.approx(1.0, abs=1e-9)  # COCOeval sums 101 precisions: 1.0 up to rounding


def _gt(boxes_per_image, cat_ids=(3, 7), crowd=None, size=64):
    """A DetDataset: one image per entry of ``boxes_per_image`` ([(x1, y1, x2, y2, label)]), box masks."""
    images, targets = [], []
    for i, boxes in enumerate(boxes_per_image):
        n = len(boxes)
        b = torch.tensor([bx[:4] for bx in boxes], dtype=torch.float32).reshape(n, 4)
        masks = torch.zeros(n, size, size, dtype=torch.uint8)
        for k, (x1, y1, x2, y2, _) in enumerate(boxes):
            masks[k, y1:y2, x1:x2] = 1
        targets.append(
            {
                "boxes": b,
                "labels": torch.tensor([bx[4] for bx in boxes], dtype=torch.int64),
                "masks": masks,
                "area": masks.flatten(1).sum(1).float(),
                "iscrowd": torch.tensor((crowd or {}).get(i, [0] * n), dtype=torch.int64),
            }
        )
        images.append(torch.zeros(3, size, size, dtype=torch.uint8))
    ds = DetDataset(images, targets, list(range(1, len(images) + 1)))
    return ds, coco_ground_truth(ds, list(cat_ids), ["background", "a", "b"])


def _pred(t, scores=None, keep=None):
    keep = torch.arange(len(t["labels"])) if keep is None else torch.tensor(keep, dtype=torch.int64)
    n = len(keep)
    return {
        "boxes": t["boxes"][keep],
        "labels": t["labels"][keep],
        "scores": torch.ones(n) if scores is None else torch.tensor(scores, dtype=torch.float32),
        "masks": t["masks"][keep][:, None].float(),
    }


def test_ground_truth_as_predictions_scores_one_and_no_predictions_zero():
    b = load_digit_instances(n_train=2, n_test=6)
    ds = b.test
    gt = coco_ground_truth(ds, b.cat_ids, b.classes)
    res = coco_results([_pred(t) for t in ds.targets], ds.image_ids, b.cat_ids)
    ev = coco_evaluate(gt, res)
    for kind in ("box", "mask"):
        assert ev[kind]["ap"] == ev[kind]["ap50"] == ev[kind]["ap75"] == ev[kind]["ap_small"] == ONE
        assert ev[kind]["ap_medium"] is None and ev[kind]["ap_large"] is None  # no objects of that size: null
    json.dumps(ev, allow_nan=False)  # strict JSON
    empty = coco_evaluate(gt, [])
    assert empty["box"]["ap"] == empty["mask"]["ap50"] == 0.0 and empty["box"]["ap_large"] is None


def test_category_ids_and_xywh():
    ds, gt = _gt([[(10, 20, 30, 50, 1), (40, 5, 60, 25, 2)]])
    res = coco_results([_pred(ds.targets[0])], [1], [3, 7])
    assert [(r["category_id"], r["bbox"]) for r in res] == [(3, [10.0, 20.0, 20.0, 30.0]), (7, [40.0, 5.0, 20.0, 20.0])]
    assert coco_evaluate(gt, res, ("bbox",))["box"]["ap"] == ONE
    swapped = [dict(r, category_id=7 if r["category_id"] == 3 else 3) for r in res]
    assert coco_evaluate(gt, swapped, ("bbox",))["box"]["ap"] == 0.0  # right boxes, wrong categories
    xyxy = [dict(r, bbox=[10.0, 20.0, 30.0, 50.0]) if r["category_id"] == 3 else r for r in res]
    assert coco_evaluate(gt, xyxy, ("bbox",))["box"]["ap50"] == pytest.approx(
        0.5, abs=1e-9
    )  # xyxy read as xywh: a miss, silently


def test_false_positives_on_images_without_objects_count():
    ds, gt = _gt([[(10, 20, 30, 50, 1)], []])
    hit = coco_results([_pred(ds.targets[0], [0.5])], [1], [3, 7])
    fp = [dict(hit[0], image_id=2, score=0.9)]
    ev = coco_evaluate(gt, hit + fp, ("bbox",))["box"]
    # the empty image's detection ranks first: precision 1/2 at every recall level
    assert ev["ap"] == pytest.approx(0.5, abs=1e-6)
    assert coco_evaluate(gt, hit, ("bbox",))["box"]["ap"] == ONE


def test_crowd_regions_are_ignored_not_missed():
    ds, gt = _gt([[(10, 20, 30, 50, 1), (40, 5, 60, 25, 1)]], crowd={0: [0, 1]})
    t = ds.targets[0]
    only_first = coco_results([_pred(t, keep=[0])], [1], [3, 7])
    both = coco_results([_pred(t, [1.0, 0.9])], [1], [3, 7])
    for res in (only_first, both):  # a missed crowd is no miss, a detection on it no false positive
        assert coco_evaluate(gt, res)["box"]["ap"] == ONE
    _, gt_plain = _gt([[(10, 20, 30, 50, 1), (40, 5, 60, 25, 1)]])
    assert coco_evaluate(gt_plain, only_first, ("bbox",))["box"]["ap"] < 0.6  # the same object not crowd: missed


def test_overfits_a_dozen_scenes(one_thread):
    """Mask R-CNN on resnet_tiny learns 12 scenes: box AP50 >= 0.9 on them after 120 steps (~15 s)."""
    torch.manual_seed(0)
    b = load_digit_instances(n_train=12, n_test=1, empty_every=0)
    b = dataclasses.replace(b, test=b.train)
    m = visattn.create_model("maskrcnn_resnet_tiny", num_classes=11, image_mean=list(b.mean), image_std=list(b.std))
    opt = torch.optim.AdamW(m.train().parameters(), 3e-3, weight_decay=0.0)
    for s in range(120):
        x, y = b.train.batch([(4 * s + j) % 12 for j in range(4)])
        loss = sum(m(list(x), list(y)).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    ev = evaluate_detector(m, b)
    assert ev["box"]["ap50"] >= 0.9, ev
    assert ev["mask"]["ap50"] >= 0.3, ev


def _write_coco(root, b):
    """Digit scenes as a COCO folder (PNG images, RLE masks): what `coco:PATH` reads."""
    from PIL import Image
    from pycocotools import mask as mask_util

    cats = b.categories
    for split, ds in (("train", b.train), ("val", b.test)):
        (root / split).mkdir(parents=True)
        images, anns = [], []
        for x, t, iid in zip(ds.images, ds.targets, ds.image_ids):
            Image.fromarray(x.permute(1, 2, 0).numpy()).save(root / split / f"{iid}.png")
            images.append({"id": iid, "file_name": f"{iid}.png", "width": 64, "height": 64})
            for k in range(len(t["labels"])):
                x1, y1, x2, y2 = t["boxes"][k].tolist()
                rle = mask_util.encode(np.asfortranarray(t["masks"][k].numpy()))
                rle["counts"] = rle["counts"].decode("ascii")
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": iid,
                        "category_id": int(t["labels"][k]),
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": float(t["area"][k]),
                        "iscrowd": 0,
                        "segmentation": rle,
                    }
                )
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats})
        )
    return root


def test_cli_train_resume_and_predict(tmp_path, monkeypatch, capsys, one_thread):
    from safetensors.torch import load_file

    import visattn.train.detect as det
    from visattn.cli import main

    root = _write_coco(tmp_path / "coco", load_digit_instances(n_train=8, n_test=3, empty_every=0))
    args = ["train", "--task", "detect", "--data", f"coco:{root}", "--epochs", "2", "--batch-size", "4"]
    args += ["--save-every", "1", "--deterministic", "--no-progress", "--model-kwargs", '{"fpn_channels": 32}']

    class Stop(Exception):
        pass

    class StopAt:
        def after_step(self, trainer):
            if trainer.step == 3:
                raise Stop

    real = det.train_detect
    monkeypatch.setattr(det, "train_detect", lambda cfg: real(cfg, callbacks=[StopAt()]))
    with pytest.raises(Stop):
        main([*args, "--output", str(tmp_path / "cut")])
    monkeypatch.setattr(det, "train_detect", real)
    assert main([*args, "--output", str(tmp_path / "cut"), "--resume"]) == 0
    assert main([*args, "--output", str(tmp_path / "full")]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "test box AP" in out
    a, c = (
        load_file(str(tmp_path / "full" / "model.safetensors")),
        load_file(str(tmp_path / "cut" / "model.safetensors")),
    )
    assert a.keys() == c.keys() and all(torch.equal(a[k], c[k]) for k in a)
    lines = [json.loads(s) for s in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert {"test_box_ap", "test_box_ap50", "test_mask_ap", "test_mask_ap_large"} <= set(lines[-1])
    assert lines[-1]["test_box_ap_large"] is None  # 64 px scenes: no large objects
    cfg = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert cfg["task"] == "detect" and cfg["cat_ids"] == list(range(1, 11))
    # predict: the drawn detections and a COCO results file
    png, res_path = tmp_path / "p.png", tmp_path / "p.json"
    rc = main(
        ["predict", "--task", "detect", "--weights", str(tmp_path / "cut"), "--image", str(root / "val" / "9.png")]
        + ["--out", str(png), "--results", str(res_path), "--score-thresh", "0.0"]
    )
    assert rc == 0 and png.read_bytes()[:4] == b"\x89PNG"
    res = json.loads(res_path.read_text())
    assert isinstance(res, list)
    for r in res:
        assert set(r) == {"image_id", "category_id", "bbox", "score", "segmentation"}
        assert r["category_id"] in range(1, 11) and len(r["bbox"]) == 4 and r["bbox"][2] > 0 and r["bbox"][3] > 0


def test_cli_batch_size_default_is_the_tasks_own():
    # the shared default (64) used to reach detection too; untyped, detect takes DetTrainConfig's 8
    import argparse

    from visattn.commands import train_cmd
    from visattn.commands.tasks.detect import config_from_args as det_config_from_args

    p = argparse.ArgumentParser()
    train_cmd.add_train_arguments(p)
    assert det_config_from_args(p.parse_args(["--task", "detect"])).batch_size == 8
    assert det_config_from_args(p.parse_args(["--task", "detect", "--batch-size", "3"])).batch_size == 3
    assert train_cmd.config_from_args(p.parse_args([])).batch_size == 64
    assert train_cmd.config_from_args(p.parse_args(["--batch-size", "5"])).batch_size == 5
