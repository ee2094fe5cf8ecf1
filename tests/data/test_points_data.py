"""Point-cloud data: the generated sets, the two HDF5 layouts, their checks and the augmentation."""

import h5py
import numpy as np
import pytest
import torch

from visattn.data.points import (
    PART_CATEGORIES,
    SHAPE_CLASSES,
    SHAPENET_PARTS,
    PointDataError,
    PointEpochBatches,
    augment_points,
    load_point_data,
    split_part_input,
)


def test_generated_shapes_are_balanced_seeded_and_held_out():
    b = load_point_data("shapes", 64, seed=3, size=6)
    assert b.classes == SHAPE_CLASSES and b.num_points == 64
    assert b.train.points.shape == (48, 64, 3) and len(b.test) == 8
    assert torch.bincount(b.train.labels).tolist() == [6] * 8
    assert torch.bincount(b.test.labels).tolist() == [1] * 8
    radius = b.train.points.norm(dim=-1).amax(1)
    assert torch.all((radius > 0.95) & (radius < 1.1))  # unit sphere, plus the noise
    again = load_point_data("shapes", 64, seed=3, size=6)
    assert torch.equal(again.train.points, b.train.points) and torch.equal(again.test.points, b.test.points)
    other = load_point_data("shapes", 64, seed=4, size=6)
    assert not torch.equal(other.train.points, b.train.points)
    assert not any(torch.equal(t, s) for t in b.test.points for s in b.train.points)


def test_generated_parts_carry_their_categories_parts():
    b = load_point_data("parts", 128, seed=0, task="partseg", size=3)
    assert list(b.categories) == list(PART_CATEGORIES)
    assert b.classes[:3] == ["mushroom/cap", "mushroom/stem", "table/top"]
    for cloud, cat, parts in zip(b.train.points, b.train.labels, b.train.parts):
        assert set(parts.tolist()) == set(b.categories[list(b.categories)[int(cat)]])
        assert torch.isfinite(cloud).all()
    x, y = b.train.batch(torch.tensor([0, 5]))
    assert x.shape == (2, 4, 128) and y.shape == (2, 128)
    pts, cat = split_part_input(x)
    assert torch.equal(pts, b.train.points[[0, 5]].transpose(1, 2)) and torch.equal(cat, b.train.labels[[0, 5]])


def _write(path, **datasets):
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f.create_dataset(k, data=v)


def test_modelnet40_layout(tmp_path):
    rng = np.random.default_rng(0)
    for name, m in (("ply_data_train0.h5", 6), ("ply_data_train1.h5", 4), ("ply_data_test0.h5", 3)):
        _write(
            tmp_path / name,
            data=rng.standard_normal((m, 32, 3)).astype(np.float32),
            label=rng.integers(0, 40, (m, 1)).astype(np.uint8),
        )
    b = load_point_data(f"modelnet40:{tmp_path}", 16)
    assert len(b.train) == 10 and len(b.test) == 3 and b.num_points == 16 and len(b.classes) == 40
    with h5py.File(tmp_path / "ply_data_train0.h5") as f:
        np.testing.assert_array_equal(b.train.points[:6].numpy(), f["data"][:, :16])
        np.testing.assert_array_equal(b.train.labels[:6].numpy(), f["label"][:, 0])
    (tmp_path / "shape_names.txt").write_text("\n".join(f"c{i}" for i in range(40)))
    assert load_point_data(f"modelnet40:{tmp_path}").classes[:2] == ["c0", "c1"]


def _shapenet(tmp_path, pid_fix=None, data_fix=None):
    rng = np.random.default_rng(1)
    for name, m in (("ply_data_train0.h5", 4), ("ply_data_val0.h5", 2), ("ply_data_test0.h5", 3)):
        label = rng.integers(0, 16, m)
        cats = list(SHAPENET_PARTS.values())
        pid = np.stack([rng.choice(cats[c], 20) for c in label])
        data = rng.standard_normal((m, 20, 3)).astype(np.float32)
        if pid_fix and name == pid_fix[0]:
            pid[pid_fix[1], pid_fix[2]] = 49 if label[pid_fix[1]] != 15 else 0
        if data_fix and name == data_fix[0]:
            data[data_fix[1], 3, 1] = np.nan
        _write(tmp_path / name, data=data, label=label[:, None].astype(np.uint8), pid=pid.astype(np.uint8))


def test_shapenetpart_layout(tmp_path):
    _shapenet(tmp_path)
    b = load_point_data(f"shapenetpart:{tmp_path}", task="partseg")
    assert len(b.train) == 6 and len(b.test) == 3 and b.num_points == 20  # train = train + val
    assert len(b.classes) == 50 and b.classes[0] == "Airplane/0" and b.classes[49] == "Table/2"
    with h5py.File(tmp_path / "ply_data_val0.h5") as f:
        np.testing.assert_array_equal(b.train.parts[4:].numpy(), f["pid"][()])


def test_bad_files_name_the_file_and_the_cloud(tmp_path):
    _shapenet(tmp_path, pid_fix=("ply_data_val0.h5", 1, 7))
    with pytest.raises(
        PointDataError, match=r"ply_data_val0.h5: cloud 1 point 7 has part 49, not a part of its category \d+"
    ):
        load_point_data(f"shapenetpart:{tmp_path}", task="partseg")
    _shapenet(tmp_path, data_fix=("ply_data_test0.h5", 2))
    with pytest.raises(PointDataError, match=r"ply_data_test0.h5: cloud 2 has a non-finite \(NaN or inf\) coordinate"):
        load_point_data(f"shapenetpart:{tmp_path}", task="partseg")
    _write(tmp_path / "ply_data_test0.h5", data=np.zeros((2, 20, 3), np.float32), label=np.zeros((2, 1)))
    with pytest.raises(
        PointDataError, match=r"ply_data_test0.h5: no dataset 'pid' \(expected data, label, pid; found data, label\)"
    ):
        load_point_data(f"shapenetpart:{tmp_path}", task="partseg")
    m40 = tmp_path / "m40"
    m40.mkdir()
    _write(m40 / "train0.h5", data=np.zeros((3, 8, 3), np.float32), label=np.array([[1], [40], [2]]))
    _write(m40 / "test0.h5", data=np.zeros((1, 8, 3), np.float32), label=np.array([[1]]))
    with pytest.raises(PointDataError, match=r"train0.h5: cloud 1 has label 40, outside the classes 0..39"):
        load_point_data(f"modelnet40:{m40}")
    with pytest.raises(PointDataError, match="clouds hold 8 points, fewer than num_points=16"):
        _write(m40 / "train0.h5", data=np.zeros((3, 8, 3), np.float32), label=np.array([[1], [3], [2]]))
        load_point_data(f"modelnet40:{m40}", 16)
    with pytest.raises(ValueError, match="--task points data must be 'shapes' or 'modelnet40:DIR', got 'parts'"):
        load_point_data("parts")


def test_augmentation_is_seeded_and_dropout_moves_labels_with_points():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(3, 3, 50), torch.ones(3, 1, 50)], 1)
    y = torch.randint(0, 5, (3, 50))
    idx = torch.tensor([4, 9, 11])
    a, ya = augment_points(x, y, idx, epoch=2, seed=7)
    b, yb = augment_points(x, y, idx, epoch=2, seed=7)
    assert torch.equal(a, b) and torch.equal(ya, yb)
    c, _ = augment_points(x, y, idx, epoch=3, seed=7)
    assert not torch.equal(a, c)
    assert torch.equal(a[:, 3], x[:, 3])  # the category channel is left alone
    for r in range(3):
        dropped = (a[r, :3] == a[r, :3, :1]).all(0)
        dropped[0] = False
        assert torch.equal(ya[r][dropped], y[r, 0].expand(int(dropped.sum())))
        assert torch.equal(ya[r][~dropped], y[r][~dropped])
        # kept points are an anisotropic scale + shift of the input: per axis a straight line
        keep = (~dropped).nonzero()[:, 0]
        for ax in range(3):
            s = (a[r, ax, keep[1]] - a[r, ax, keep[0]]) / (x[r, ax, keep[1]] - x[r, ax, keep[0]])
            assert 2 / 3 - 1e-4 <= float(s) <= 1.5 + 1e-4
            torch.testing.assert_close(a[r, ax, keep] - a[r, ax, keep[0]], s * (x[r, ax, keep] - x[r, ax, keep[0]]))


def test_epoch_batches_cover_the_split_and_repeat_per_seed():
    b = load_point_data("shapes", 32, seed=0, size=4)
    e = PointEpochBatches(b.train, 10, epoch=1, seed=5)
    assert sorted(e.indices.tolist()) == list(range(32)) and len(e) == 4
    x1, y1 = e.get(0)
    x2, y2 = PointEpochBatches(b.train, 10, epoch=1, seed=5).get(0)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and x1.shape == (10, 3, 32)
