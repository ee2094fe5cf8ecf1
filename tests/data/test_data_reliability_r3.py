"""Reliability, round 3 (issue 21), data side: derived class counts name the mask and the value,
duplicate class names are refused and metrics keyed by index, a test split with nothing labelled
reports null, EXIF orientation is applied to every image source, every built-in data set is
estimated before it is built, and a data path that is a file says so."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from _seg_fixtures import make_seg_folder, write_pairs
from visattn.data import datasets as ds
from visattn.data import load_data
from visattn.data.segmentation import load_digit_scenes, load_seg_data, read_image
from visattn.train.segment import SegTrainConfig, confusion_matrix, segmentation_metrics, train_segment


def _set_mask_pixel(path, value, mode="L"):
    m = np.asarray(Image.open(path)).astype(np.int64)
    m[0, 0] = value
    Image.fromarray(m.astype(np.uint16 if mode == "I;16" else np.uint8)).save(path)


# -- class counts derived from the masks ------------------------------------------------------------


@pytest.mark.parametrize("value,mode", [(37, "L"), (1000, "I;16")])
def test_a_stray_mask_value_is_named_with_how_the_class_count_was_derived(tmp_path, value, mode):
    spec = make_seg_folder(tmp_path / "d", n=10)  # classes 0, 1, 2
    bad = tmp_path / "d" / "masks" / "s004.png"
    _set_mask_pixel(bad, value, mode)  # one anti-aliased / 16-bit pixel
    with pytest.raises(ValueError) as e:
        load_seg_data(spec)
    assert str(e.value) == (
        f"{str(tmp_path / 'd')!r}: without classes.txt the classes are 0..largest mask value, and the largest "
        f"value {value} (1 pixel of mask {str(bad)!r}) would make {value + 1} classes of which only 4 values "
        f"occur (0, 1, 2, {value}): a stray value (an anti-aliased resize?) rather than classes; fix the mask "
        f"or list the class names, one per line, in {str(tmp_path / 'd' / 'classes.txt')!r}"
    )  # the 16-bit one used to be blamed on the ignore index


def test_a_derived_class_count_with_a_few_absent_classes_is_accepted(tmp_path):
    spec = make_seg_folder(tmp_path / "d", n=10)
    _set_mask_pixel(tmp_path / "d" / "masks" / "s004.png", 4)  # class 3 occurs nowhere: plausible
    b = load_seg_data(spec)
    assert b.classes == ["0", "1", "2", "3", "4"]
    assert b.extra["classes_from"] == f"largest mask value 4 (in {str(tmp_path / 'd' / 'masks' / 's004.png')!r})"


# -- duplicate class names -------------------------------------------------------------------------------


def test_duplicate_class_names_are_refused_and_metrics_are_keyed_by_index(tmp_path):
    spec = make_seg_folder(tmp_path / "d", n=10)
    (tmp_path / "d" / "classes.txt").write_text("sky\nroad\nsky\n")
    with pytest.raises(ValueError) as e:
        load_seg_data(spec)
    assert str(e.value) == (
        f"{str(tmp_path / 'd' / 'classes.txt')!r}: class names must be unique, but 'sky' is on lines 1 and 3"
    )
    conf = torch.tensor([[2, 0, 0], [0, 1, 1], [0, 0, 4]])  # IoU 1, 0.5, 0.8
    with pytest.raises(ValueError, match=r"class names must be unique, got \['a', 'b', 'a'\]"):
        segmentation_metrics(conf, ["a", "b", "a"])  # the dict kept 2 of 3 IoUs: mIoU 0.65 instead of 0.767
    m = segmentation_metrics(conf, ["a", "b", "c"])
    assert m["iou_by_index"] == pytest.approx([1.0, 0.5, 0.8], abs=1e-12)
    assert m["miou"] == pytest.approx(2.3 / 3, abs=1e-12)


# -- a test split with nothing labelled ---------------------------------------------------------------------


def test_a_test_split_without_labelled_pixels_reports_null_and_warns(tmp_path):
    from _tiny_seg_model import ensure_registered, unregister

    root = tmp_path / "d"
    write_pairs(root / "train" / "images", root / "train" / "masks", 8)
    write_pairs(root / "val" / "images", root / "val" / "masks", 3, first=8)
    for p in (root / "val" / "masks").iterdir():
        Image.fromarray(np.full((16, 20), 255, np.uint8)).save(p)  # every pixel: the ignore index
    (root / "classes.txt").write_text("bg\nred\ngreen\n")
    try:
        cfg = SegTrainConfig(
            model=ensure_registered(),
            epochs=1,
            batch_size=8,
            image_size=12,
            output=str(tmp_path / "run"),
            verbose=False,
        )
        res = train_segment(cfg.__class__(**{**cfg.as_dict(), "data": f"segfolder:{root}", "progress": False}))
    finally:
        unregister()
    f = res.final
    assert f["test_miou"] is None and f["test_pixel_acc"] is None and f["test_loss"] is None  # were 0.0
    assert f["test_acc"] is None and f["test_iou"] == {"bg": None, "red": None, "green": None}
    line = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert '"test_miou": null' in line and '"test_loss": null' in line
    assert (
        "warning: the test split has no labelled pixels (every mask pixel is the ignore index 255): test loss, "
        "pixel accuracy and mIoU are null" in (tmp_path / "run" / "train.log").read_text()
    )
    m = segmentation_metrics(confusion_matrix(torch.zeros(4), torch.full((4,), 255), 3))
    assert m["miou"] is None and m["pixel_acc"] is None


# -- EXIF orientation ------------------------------------------------------------------------------------------


def _exif_jpeg(path, orientation=6):
    """A stored 8 (wide) x 4 image, left half red, right half blue, with an EXIF orientation:
    6 = "rotate 90 degrees clockwise to display": displayed 4 wide x 8 tall, red on top."""
    arr = np.zeros((4, 8, 3), np.uint8)
    arr[:, :4] = (255, 0, 0)
    arr[:, 4:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=100, exif=exif)


def _red_on_top(x: torch.Tensor) -> bool:
    """x: (3, H, W) uint8 with H = 2 * W; top half red, bottom half blue (JPEG tolerance)."""
    h = x.shape[1]
    top, bottom = x[:, : h // 2].float().mean((1, 2)), x[:, h // 2 :].float().mean((1, 2))
    return bool(top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60)


def test_exif_orientation_is_applied_to_segmentation_images(tmp_path):
    root = tmp_path / "d"
    for i in range(3):
        _exif_jpeg(root / "images" / f"a{i}.jpg")
        mask = np.zeros((8, 4), np.uint8)  # drawn on the displayed image (4 wide, 8 tall), as labelling tools do
        mask[4:] = 1
        (root / "masks").mkdir(exist_ok=True)
        Image.fromarray(mask).save(root / "masks" / f"a{i}.png")
    x = read_image(root / "images" / "a0.jpg")
    assert x.shape == (3, 8, 4) and _red_on_top(x)  # was (3, 4, 8): the stored, unrotated pixels
    b = load_seg_data(f"segfolder:{root}")  # used to refuse: image 8x4 but its mask 4x8
    assert all(x.shape[1:] == (8, 4) and _red_on_top(x) for x in b.train.images + b.test.images)


def test_exif_orientation_is_applied_to_folder_images_and_viz_input(tmp_path):
    for c in ("a", "b"):
        for i in range(3):
            _exif_jpeg(tmp_path / c / f"{i}.jpg")
    b = ds.load_image_folder(tmp_path, image_size=8)
    x = torch.cat([b.train.images, b.test.images])[:, :, :, 2:6]  # the middle columns: (N, 3, 8, 4)
    assert all(_red_on_top(im) for im in x)
    from visattn.viz import load_image

    img = load_image(str(tmp_path / "a" / "0.jpg"))
    assert img.shape == (8, 4, 3) and _red_on_top(torch.tensor(img).permute(2, 0, 1))


# -- estimates before building -------------------------------------------------------------------------------


@pytest.fixture
def small_machine(monkeypatch):
    """A machine with 128 MiB of memory: data over 64 MiB is refused with the estimate."""
    monkeypatch.setattr(ds, "_physical_memory", lambda: 128 * 2**20)


def test_digit_scenes_are_estimated_before_they_are_built(small_machine, monkeypatch):
    import visattn.data.segmentation as seg

    assert len(load_digit_scenes(16, n_train=4, n_test=2).train) == 4  # small ones still load
    monkeypatch.setattr(seg, "_compose_scenes", lambda *a, **k: pytest.fail("built before the estimate"))
    # 2,500 scenes of 64x64, 3 bytes of image and 8 of mask per pixel: 107.4 MiB (at 1024: 26.9 GiB)
    with pytest.raises(ValueError) as e:
        load_seg_data("digitscenes", 64)
    assert str(e.value) == (
        "digit scenes: holding 2500 images of 64x64 with their masks (11 bytes per pixel) in memory needs "
        "107.4 MiB, over half of this machine's 128.0 MiB; choose a smaller --image-size"
    )


def test_longrange_and_segfolders_are_estimated_before_they_are_built(tmp_path, small_machine, monkeypatch):
    import visattn.data.longrange as lr

    monkeypatch.setattr(lr, "make_same_different", lambda *a, **k: pytest.fail("built before the estimate"))
    with pytest.raises(ValueError, match=r"^longrange: holding 3000 images of 3x128x128 .* needs 140\.6 MiB"):
        load_data("longrange", 128)
    root = tmp_path / "d"
    write_pairs(root / "images", root / "masks", 2, size=(400, 500))  # sizes from the headers: 4.2 MiB
    import visattn.data.segmentation as seg

    monkeypatch.setattr(ds, "_physical_memory", lambda: 8 * 2**20)
    monkeypatch.setattr(seg, "read_mask", lambda *a, **k: pytest.fail("read before the estimate"))
    with pytest.raises(ValueError) as e:
        load_seg_data(f"segfolder:{root}")
    assert str(e.value) == (
        f"segmentation folder {str(root)!r}: holding 2 images of 400,000 pixels in all with their masks "
        "(11 bytes per pixel) in memory needs 4.2 MiB, over half of this machine's 8.0 MiB; use fewer or "
        "smaller images"
    )


# -- a data path that is a file -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec,what",
    [("segfolder", "segmentation folder"), ("folder", "image folder"), ("cifar10", "CIFAR-10 directory")],
)
def test_a_data_path_that_is_a_file_says_so(tmp_path, spec, what):
    f = tmp_path / "data.zip"
    f.write_bytes(b"PK")
    with pytest.raises(NotADirectoryError) as e:
        (load_seg_data if spec == "segfolder" else load_data)(f"{spec}:{f}")
    assert str(e.value).startswith(f"{what} {str(f)!r} is a file, not a folder; expected ")
