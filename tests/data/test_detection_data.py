"""Detection data: digit scenes with instances, COCO folders through pycocotools, bad input, v2 augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")

from visattn.data.detection import (
    DetEpochBatches,
    load_coco,
    load_det_data,
    load_digit_instances,
)
from visattn.data.segmentation import load_digit_scenes


def test_digit_instances_are_the_segmentation_scenes_split_into_digits():
    det = load_digit_instances(n_train=30, n_test=20, seed=3)
    seg = load_digit_scenes(n_train=30, n_test=20, seed=3)
    assert len(det.train) == 31 and len(det.test) == 21  # + one empty scene each
    assert det.classes[0] == "background" and det.cat_ids == list(range(1, 11))
    for i in range(30):
        assert torch.equal(det.train.images[i], seg.train.images[i])
        t, m = det.train.targets[i], seg.train.masks[i]
        assert 2 <= len(t["labels"]) <= 5
        union = torch.zeros_like(m)
        for k in range(len(t["labels"])):
            mk = t["masks"][k].bool()
            assert not (union[mk] != 0).any()  # instances do not overlap
            union[mk] = t["labels"][k]
            ys, xs = torch.nonzero(mk, as_tuple=True)  # tight xyxy box, area = pixel count
            assert t["boxes"][k].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert float(t["area"][k]) == float(mk.sum())
        fg = (m >= 1) & (m <= 10)
        assert torch.equal(union[fg], m[fg]) and not union[~fg].any()
    empty = det.train.targets[30]
    assert det.train.names[30] == "train empty scene 0" and empty["boxes"].shape == (0, 4)
    assert not det.train.images[30].any()
    assert det.test.image_ids[0] == 32  # ids run on from the train split's: unique, from 1


def test_det_data_specs_are_checked():
    with pytest.raises(ValueError, match="detection data must be 'digitscenes' or 'coco:PATH', got 'digits'"):
        load_det_data("digits")
    with pytest.raises(FileNotFoundError, match="COCO data '.*nowhere' does not exist"):
        load_det_data("coco:/nowhere")


def _png(path, h, w, value=128):
    from PIL import Image

    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)


def _rle(mask):
    from pycocotools import mask as mask_util

    r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode("ascii")
    return r


def coco_folder(root, mutate=None):
    """A tiny COCO folder: categories 3 and 7 (ids with gaps), train images 1 (a polygon, an RLE
    crowd region) and 2 (no annotation: a negative), val image 5 (an RLE)."""
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (root / split).mkdir()
    _png(root / "train" / "a.png", 40, 60)
    _png(root / "train" / "b.png", 30, 30)
    _png(root / "val" / "c.png", 32, 48)
    m = np.zeros((40, 60), np.uint8)
    m[5:15, 30:50] = 1
    v = np.zeros((32, 48), np.uint8)
    v[2:12, 4:20] = 1
    cats = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    train = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 60, "height": 40},
            {"id": 2, "file_name": "b.png", "width": 30, "height": 30},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 7,
                "bbox": [10, 20, 10, 10],
                "area": 100,
                "iscrowd": 0,
                "segmentation": [[10, 20, 20, 20, 20, 30, 10, 30]],
            },
            {
                "id": 2,
                "image_id": 1,
                "category_id": 3,
                "bbox": [30, 5, 20, 10],
                "area": 200,
                "iscrowd": 1,
                "segmentation": _rle(m),
            },
        ],
        "categories": cats,
    }
    val = {
        "images": [{"id": 5, "file_name": "c.png", "width": 48, "height": 32}],
        "annotations": [
            {"id": 9, "image_id": 5, "category_id": 3, "bbox": [4, 2, 16, 10], "area": 160, "segmentation": _rle(v)}
        ],
        "categories": cats,
    }
    if mutate:
        mutate(train)
    (root / "annotations" / "instances_train.json").write_text(json.dumps(train))
    (root / "annotations" / "instances_val.json").write_text(json.dumps(val))
    return root


def test_coco_folder_reads_polygons_rle_crowds_and_negatives(tmp_path):
    b = load_det_data(f"coco:{coco_folder(tmp_path)}")
    assert b.classes == ["background", "cat", "dog"] and b.cat_ids == [3, 7]
    assert b.train.image_ids == [1, 2] and b.test.image_ids == [5]
    t = b.train.targets[0]
    assert t["boxes"].tolist() == [[10, 20, 20, 30], [30, 5, 50, 15]]  # xywh -> xyxy
    assert t["labels"].tolist() == [2, 1] and t["iscrowd"].tolist() == [0, 1]
    assert t["masks"].shape == (2, 40, 60) and int(t["masks"][1].sum()) == 200
    assert int(t["masks"][0][20:30, 10:20].sum()) >= 90  # the polygon's square, rasterised by pycocotools
    x, train_t = b.train.item(0)
    assert train_t["labels"].tolist() == [2]  # crowd regions are not trained on
    assert b.train.targets[1]["boxes"].shape == (0, 4)  # an image without objects: a negative
    assert b.test.targets[0]["masks"].shape == (1, 32, 48) and int(b.test.targets[0]["masks"].sum()) == 160


def _set(path, value):
    def mutate(d):
        obj = d
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value

    return mutate


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            _set(("annotations", 0, "bbox"), [55, 20, 10, 10]),
            r"annotation 1: box \[55, 20, 10, 10\] .* lies outside image 1 \(60x40\)",
        ),
        (_set(("annotations", 0, "bbox"), [10, 20, 0, 10]), r"annotation 1: box \[10, 20, 0, 10\] has zero area"),
        (_set(("annotations", 1, "category_id"), 4), r"annotation 2: category_id 4 is not in categories \[3, 7\]"),
        (_set(("annotations", 0, "image_id"), 99), r"annotation 1: image_id 99 is not among the images"),
        (
            _set(("annotations", 1, "segmentation", "size"), [30, 60]),
            r"annotation 2: mask size \[30, 60\] differs from image 1's \[height, width\] \[40, 60\]",
        ),
        (_set(("images", 1, "width"), 31), r"image 2 \(b.png\) is 30x30, but the JSON says 31x30"),
    ],
)
def test_bad_coco_input_names_the_file_and_the_annotation(tmp_path, mutate, message):
    root = coco_folder(tmp_path, mutate)
    with pytest.raises(ValueError, match=r"instances_train\.json: " + message):
        load_coco(root)


def test_malformed_coco_json_is_one_line_and_exit_2(tmp_path, capsys):
    from visattn.cli import main

    root = coco_folder(tmp_path)
    (root / "annotations" / "instances_train.json").write_text('{"images": [')
    with pytest.raises(ValueError, match=r"instances_train\.json: malformed JSON \(line 1, column 13"):
        load_coco(root)
    code = main(["train", "--task", "detect", "--data", f"coco:{root}", "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "malformed JSON" in err and "Traceback" not in err


def test_v2_augmentation_is_drawn_per_example_and_keeps_targets_consistent():
    b = load_digit_instances(n_train=8, n_test=2)
    one = DetEpochBatches(b.train, 4, epoch=1, seed=0, augment="crop+flip")
    two = DetEpochBatches(b.train, 4, epoch=1, seed=0, augment="crop+flip")
    (x1, t1), (x2, t2) = one.get(1), two.get(1)
    assert all(torch.equal(a, c) for a, c in zip(x1, x2))  # a resumed epoch sees the same batch
    assert all(torch.equal(a["boxes"], c["boxes"]) for a, c in zip(t1, t2))
    plain = DetEpochBatches(b.train, 4, epoch=1, seed=0, augment="none")
    assert not all(torch.equal(a, c) for a, c in zip(x1, plain.get(1)[0]))
    for x, t in zip(x1, t1):
        n = len(t["labels"])
        assert t["boxes"].shape == (n, 4) and t["masks"].shape == (n, 64, 64) and x.shape == (3, 64, 64)
        bx = t["boxes"]
        assert (bx[:, 2] > bx[:, 0]).all() and (bx[:, 3] > bx[:, 1]).all()
        assert (bx >= 0).all() and (bx <= 64).all()
        assert torch.equal(t["area"], t["masks"].flatten(1).sum(1).float())
