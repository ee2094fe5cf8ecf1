"""Data loading (digits, CIFAR-10 batches, image folders) and torch-only augmentation."""

import pickle

import numpy as np
import pytest
import torch

from visattn.data import (
    EpochBatches,
    load_cifar10,
    load_data,
    load_image_folder,
    normalize,
    random_crop_flip,
    stratified_split,
)
from visattn.data.datasets import CIFAR10_FILES

# ---------------------------------------------------------------------------
# Digits
# ---------------------------------------------------------------------------


def test_digits_split_sizes_stratified_and_fixed():
    b = load_data("digits", image_size=12)
    assert (len(b.train), len(b.test)) == (1438, 359)  # 1,797 scans, 20% per class held out
    assert b.train.images.shape == (1438, 3, 12, 12) and b.train.images.dtype == torch.float32
    assert torch.equal(b.train.images[:, 0], b.train.images[:, 2])  # grey repeated to RGB
    assert 0.0 <= float(b.train.images.min()) and float(b.train.images.max()) <= 1.0
    counts = torch.bincount(b.test.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # every class ~20% of its ~180 scans
    again = load_data("digits", image_size=12)
    assert torch.equal(again.test.labels, b.test.labels) and torch.equal(again.test.images, b.test.images)
    other = load_data("digits", image_size=12, seed=1)
    assert not torch.equal(other.test.images, b.test.images)


def test_digits_at_native_size_are_the_scans():
    from sklearn.datasets import load_digits

    b = load_data("digits", image_size=8)
    d = load_digits()
    tr, te = stratified_split(d.target, 0.2, 0)
    ref = torch.from_numpy(d.images[te].astype(np.float32) / 16.0)
    torch.testing.assert_close(b.test.images[:, 1], ref, rtol=0, atol=0)
    assert b.test.labels.tolist() == d.target[te].tolist()


def test_bad_spec_errors():
    with pytest.raises(ValueError, match="'digits', 'cifar10:PATH', 'folder:PATH' or 'tinyimagenet:PATH', got 'mnist'"):
        load_data("mnist")
    with pytest.raises(
        ValueError,
        match=r"image_size must be an int in 1\.\.1024 \(images are held in memory\) or "
        "None, got 0",
    ):
        load_data("digits", image_size=0)


# ---------------------------------------------------------------------------
# CIFAR-10 fixtures in the python-pickle batch format
# ---------------------------------------------------------------------------


def _write_cifar(root, n=4, seed=0):
    rng = np.random.default_rng(seed)
    batches = {}
    for name in CIFAR10_FILES[:-1]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        with open(root / name, "wb") as f:
            pickle.dump(
                {b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": [b"x.png"] * n},
                f,
                protocol=2,
            )
        batches[name] = (data, labels)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [s.encode() for s in names], b"num_vis": 3072}, f, protocol=2)
    return batches, names


def test_cifar10_loads_pixels_labels_and_names(tmp_path):
    batches, names = _write_cifar(tmp_path)
    b = load_data(f"cifar10:{tmp_path}")
    assert (len(b.train), len(b.test)) == (20, 4) and b.classes == names
    assert b.train.images.dtype == torch.uint8 and b.train.images.shape == (20, 3, 32, 32)
    data1, labels1 = batches["data_batch_1"]
    # row layout: 1024 red, 1024 green, 1024 blue values, each row-major 32 x 32
    i, c, y, x = 2, 1, 5, 30
    assert int(b.train.images[i, c, y, x]) == int(data1[i, c * 1024 + y * 32 + x])
    assert b.train.labels[:4].tolist() == labels1
    assert b.test.labels.tolist() == batches["test_batch"][1]
    small = load_cifar10(tmp_path, image_size=16)
    assert small.train.images.shape == (20, 3, 16, 16)


def test_cifar10_missing_files_name_the_layout(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="missing data_batch_3; expected data_batch_1, data_batch_2"):
        load_data(f"cifar10:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="does not exist; expected a folder holding data_batch_1"):
        load_data(f"cifar10:{tmp_path / 'nope'}")


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_cifar10_batch_with_code_is_refused(tmp_path):
    _write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": _Evil(str(marker)), b"labels": [0]}, f, protocol=2)
    with pytest.raises(
        ValueError,
        match=r"test_batch: not a readable CIFAR batch file: refusing to load global "
        r"\w+\.open from a CIFAR batch",
    ):
        load_data(f"cifar10:{tmp_path}")
    assert not marker.exists()


# ---------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------

COLORS = {"blue": (0, 0, 255), "green": (0, 200, 0), "red": (250, 0, 0)}


def _write_folder(root, n=5, size=10, ext="png"):
    from PIL import Image

    for name, rgb in COLORS.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (size, size + i % 2), rgb).save(root / name / f"{i}.{ext}")


def test_image_folder_split_classes_and_pixels(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "red" / "notes.txt").write_text("not an image")
    b = load_data(f"folder:{tmp_path}", image_size=6)
    assert b.classes == ["blue", "green", "red"]
    assert (len(b.train), len(b.test)) == (12, 3)  # 1 of every 5 per class held out
    assert torch.bincount(b.test.labels).tolist() == [1, 1, 1]
    for ds in (b.train, b.test):
        assert ds.images.shape[1:] == (3, 6, 6)
        for k in range(len(ds)):
            rgb = COLORS[b.classes[int(ds.labels[k])]]
            assert ds.images[k, :, 3, 3].tolist() == list(rgb)


def test_image_folder_with_train_test_dirs(tmp_path):
    _write_folder(tmp_path / "train", n=3, ext="jpg")
    _write_folder(tmp_path / "test", n=2)
    b = load_image_folder(tmp_path, image_size=8)
    assert (len(b.train), len(b.test)) == (9, 6) and b.classes == ["blue", "green", "red"]


def test_image_folder_errors_name_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; expected .*<class_name>/"):
        load_data(f"folder:{tmp_path / 'missing'}")
    (tmp_path / "only").mkdir()
    with pytest.raises(ValueError, match="has 1 class folder\\(s\\), need >= 2"):
        load_data(f"folder:{tmp_path}")


# ---------------------------------------------------------------------------
# Augmentation and batching
# ---------------------------------------------------------------------------


def test_crop_flip_equals_slicing_the_padded_image():
    x = torch.randn(3, 2, 5, 4)
    offsets = torch.tensor([[0, 0], [2, 1], [4, 4]])
    flips = torch.tensor([False, True, False])
    out = random_crop_flip(x, offsets, flips, pad=2)
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(3):
        ref = xp[b, :, offsets[b, 0] : offsets[b, 0] + 5, offsets[b, 1] : offsets[b, 1] + 4]
        torch.testing.assert_close(out[b], ref.flip(-1) if flips[b] else ref, rtol=0, atol=0)
    torch.testing.assert_close(random_crop_flip(x, torch.full((3, 2), 2), torch.zeros(3, dtype=torch.bool), 2), x)


def test_normalize():
    x = torch.rand(2, 3, 4, 4)
    y = normalize(x, (0.1, 0.2, 0.3), (2.0, 4.0, 8.0))
    torch.testing.assert_close(y[:, 2], (x[:, 2] - 0.3) / 8.0)


def test_two_ranks_see_the_single_process_batch():
    b = load_data("digits", image_size=8)
    kw = dict(augment="crop+flip", pad=1, mean=b.mean, std=b.std)
    single = EpochBatches(b.train, 32, epoch=3, seed=5, **kw)
    ranks = [EpochBatches(b.train, 16, epoch=3, seed=5, rank=r, world_size=2, **kw) for r in range(2)]
    assert len(single) == len(ranks[0]) == 45  # ceil(1438 / 32), ceil(719 / 16)
    for step in (0, 7):
        xs, ys = single.get(step)
        parts = [rk.get(step) for rk in ranks]
        # rank r holds the single run's positions r, r + 2, ...: same images, same augmentation
        for r in range(2):
            torch.testing.assert_close(parts[r][0], xs[r::2], rtol=0, atol=0)
            assert torch.equal(parts[r][1], ys[r::2])
    other_epoch = EpochBatches(b.train, 32, epoch=4, seed=5, **kw)
    assert not torch.equal(other_epoch.indices, single.indices)
