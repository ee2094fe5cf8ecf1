"""Data loading never silently misreads: 16-bit PNGs by value, hidden files skipped, every unreadable
file named, CIFAR labels and truncated batches refused with the file's name, image sizes bounded."""

import pickle

import numpy as np
import pytest
import torch

from visattn.data import datasets as ds
from visattn.data import load_data
from visattn.data.datasets import CIFAR10_FILES


def _png(path, rgb=(0, 0, 255), size=6):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), rgb).save(path)


def _two_classes(root, n=3):
    for c, rgb in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
        for i in range(n):
            _png(root / c / f"{i}.png", rgb)


def test_16bit_png_is_converted_by_value(tmp_path):
    from PIL import Image

    _two_classes(tmp_path)
    for i, v in enumerate((32768, 65535, 0, 16384)):  # 16-bit greyscale: 0.5, 1, 0, 0.25
        Image.fromarray(np.full((6, 6), v, dtype=np.uint16)).save(tmp_path / "a" / f"g{i}.png")
    assert Image.open(tmp_path / "a" / "g0.png").mode == "I;16"
    b = ds.load_image_folder(tmp_path, image_size=6)
    both = torch.cat([b.train.images, b.test.images]).float() / 255
    labels = torch.cat([b.train.labels, b.test.labels])
    grey = both[(both[:, 0] == both[:, 1]).all(dim=(1, 2)) & (both[:, 1] == both[:, 2]).all(dim=(1, 2))]
    assert sorted(round(float(x.mean()), 3) for x in grey) == [0.0, 0.251, 0.502, 1.0]
    assert int((labels == 0).sum()) == 7


def test_hidden_files_and_folders_are_skipped(tmp_path):
    _two_classes(tmp_path)
    (tmp_path / "a" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    (tmp_path / "b" / ".thumb.png").write_bytes(b"not an image")
    (tmp_path / "b" / ".cache").mkdir()
    (tmp_path / "b" / ".cache" / "x.png").write_bytes(b"garbage")
    (tmp_path / ".Trashes").mkdir()
    (tmp_path / ".Trashes" / "y.png").write_bytes(b"garbage")
    b = ds.load_image_folder(tmp_path, image_size=6)
    assert b.classes == ["a", "b"] and len(b.train) + len(b.test) == 6


def test_every_unreadable_file_is_named(tmp_path):
    from PIL import Image

    _two_classes(tmp_path)
    Image.new("RGB", (40, 40), (10, 200, 30)).save(tmp_path / "a" / "cut.jpg", quality=90)
    data = (tmp_path / "a" / "cut.jpg").read_bytes()
    (tmp_path / "a" / "cut.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    (tmp_path / "b" / "junk.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")  # corrupt
    with pytest.raises(ValueError) as e:
        ds.load_image_folder(tmp_path, image_size=6)
    msg = str(e.value)
    assert msg.startswith("cannot read 2 of 8 image file(s): ")
    for f in (tmp_path / "a" / "cut.jpg", tmp_path / "b" / "junk.jpg"):
        assert f"{f} (" in msg  # the file, then Pillow's reason in parentheses


def _write_cifar(root, labels=None, n=4):
    rng = np.random.default_rng(0)
    for name in CIFAR10_FILES[:-1]:
        lab = labels if (labels is not None and name == "data_batch_2") else [int(v) for v in rng.integers(0, 10, n)]
        with open(root / name, "wb") as f:
            pickle.dump({b"labels": lab, b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}, f, protocol=2)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [str(i).encode() for i in range(10)]}, f, protocol=2)


@pytest.mark.parametrize("bad", [3.7, 3.0, True, "3"])
def test_cifar_label_that_is_not_an_int_is_refused(tmp_path, bad):
    _write_cifar(tmp_path, labels=[1, 2, bad, 4])
    with pytest.raises(ValueError) as e:
        load_data(f"cifar10:{tmp_path}")
    assert str(e.value) == (
        f"{tmp_path / 'data_batch_2'}: labels must be integers 0..9, got {bad!r} ({type(bad).__name__}) at index 2"
    )


def test_truncated_cifar_batch_names_the_file(tmp_path):
    _write_cifar(tmp_path)
    p = tmp_path / "data_batch_4"
    p.write_bytes(p.read_bytes()[:5000])
    with pytest.raises(ValueError, match=rf"^{p}: the CIFAR batch file is truncated \(5000 bytes\); extract "):
        load_data(f"cifar10:{tmp_path}")


def test_image_size_is_bounded_and_memory_is_checked(monkeypatch):
    with pytest.raises(ValueError, match=r"image_size must be an int in 1\.\.1024 .*got 8192"):
        load_data("digits", image_size=8192)
    # 1,797 float32 images of 3 x 1024 x 1024 need 21.1 GiB: refused on a machine with 16 GiB
    monkeypatch.setattr(ds, "_physical_memory", lambda: 16 * 2**30)
    with pytest.raises(
        ValueError,
        match=r"^digits: holding 1797 images of 3x1024x1024 \(4 byte\(s\) per value\) "
        r"in memory needs 21\.1 GiB, over half of this machine's 16\.0 GiB",
    ):
        load_data("digits", image_size=1024)


@pytest.mark.parametrize("split", [False, True])
def test_class_folder_without_training_images_is_refused(tmp_path, split):
    root = tmp_path / "train" if split else tmp_path
    _two_classes(root)
    (root / "empty").mkdir()
    _png(root / "empty" / "._0.png")  # a macOS resource fork only: skipped, so the class has no image
    if split:
        _two_classes(tmp_path / "test", n=1)
        (tmp_path / "test" / "empty").mkdir()
    # used to build a 3-class task with a class that has no image at all
    with pytest.raises(ValueError, match=r"class folder\(s\) \['empty'\] hold no training images"):
        ds.load_image_folder(tmp_path, image_size=6)
