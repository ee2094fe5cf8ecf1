"""Point-cloud data: generated shape and part sets, ModelNet40 / ShapeNetPart HDF5 readers, augmentation.

Data specs (``visattn train --task points|partseg --data SPEC``):

* ``shapes`` (points): points on the surfaces of eight parametric solids (:data:`SHAPE_CLASSES`),
  each in a random pose (rotation about the vertical axis and a tilt up to 30 degrees), with a
  random anisotropic scale (0.75-1.33 per axis) and Gaussian noise (sigma 0.01), centred and
  scaled into the unit sphere. Balanced classes; the test shapes are other draws of the same
  generator (a separate seed stream), never seen in training.
* ``parts`` (partseg): four composite objects whose points carry a part label
  (:data:`PART_CATEGORIES`: mushroom = cap + stem, table = top + legs, rocket = body + nose +
  fins, mug = body + handle), with random proportions, pose and noise.
* ``modelnet40:DIR`` (points): the ``modelnet40_ply_hdf5_2048`` release: ``*train*.h5`` and
  ``*test*.h5`` files, each with ``data`` (M, 2048, 3) and ``label`` (M, 1), class names from
  ``shape_names.txt`` when present.
* ``shapenetpart:DIR`` (partseg): the ShapeNetPart HDF5 release (``shapenet_part_seg_hdf5_data``):
  ``*train*.h5`` and ``*val*.h5`` train, ``*test*.h5`` test, each with ``data`` (M, 2048, 3),
  ``label`` (M, 1) = category and ``pid`` (M, 2048) = part (50 parts over 16 categories,
  :data:`SHAPENET_PARTS`).

Every cloud read is checked: a non-finite coordinate, a label outside the classes, a part label
that is not a part of the cloud's category, or a file without the expected datasets raises
:class:`PointDataError` naming the file and the cloud's index (the CLI prints it as one line and
exits with 2). Clouds keep their first ``num_points`` points (the HDF5 releases store them in
random order). Augmentation (training only; the PCT/DGCNN recipe): a random anisotropic scale in
[2/3, 3/2] per axis, a translation in [-0.2, 0.2] per axis and random point dropout (a ratio up to
0.875 of the points replaced by the first point, as PointNet++ does), drawn from
(seed, epoch, example index) so a resumed run sees the same batches.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from visattn.data.datasets import DataBundle
from visattn.data.transforms import EpochBatches
from visattn.errors import VisattnError

__all__ = [
    "SHAPE_CLASSES",
    "PART_CATEGORIES",
    "SHAPENET_PARTS",
    "MODELNET40_CLASSES",
    "PointDataError",
    "PointSet",
    "PointBundle",
    "PointEpochBatches",
    "make_shapes",
    "make_parts",
    "read_modelnet40",
    "read_shapenetpart",
    "load_point_data",
    "augment_points",
    "split_part_input",
]

SHAPE_CLASSES = ["sphere", "box", "cylinder", "cone", "torus", "pyramid", "octahedron", "tetrahedron"]

#: Built-in part set: category -> its part names (global part index = position in the flattened list).
PART_CATEGORIES: dict[str, list[str]] = {
    "mushroom": ["cap", "stem"],
    "table": ["top", "leg"],
    "rocket": ["body", "nose", "fin"],
    "mug": ["body", "handle"],
}

#: ShapeNetPart (HDF5 release): category -> its global part indices (50 parts, 16 categories).
SHAPENET_PARTS: dict[str, list[int]] = {
    "Airplane": [0, 1, 2, 3],
    "Bag": [4, 5],
    "Cap": [6, 7],
    "Car": [8, 9, 10, 11],
    "Chair": [12, 13, 14, 15],
    "Earphone": [16, 17, 18],
    "Guitar": [19, 20, 21],
    "Knife": [22, 23],
    "Lamp": [24, 25, 26, 27],
    "Laptop": [28, 29],
    "Motorbike": [30, 31, 32, 33, 34, 35],
    "Mug": [36, 37],
    "Pistol": [38, 39, 40],
    "Rocket": [41, 42, 43],
    "Skateboard": [44, 45, 46],
    "Table": [47, 48, 49],
}

MODELNET40_CLASSES = (
    "airplane bathtub bed bench bookshelf bottle bowl car chair cone cup curtain desk door dresser flower_pot "
    "glass_box guitar keyboard lamp laptop mantel monitor night_stand person piano plant radio range_hood sink "
    "sofa stairs stool table tent toilet tv_stand vase wardrobe xbox"
).split()


class PointDataError(VisattnError, ValueError):
    """A point-cloud file or cloud that cannot be used (the message names the file and the index)."""


@dataclass
class PointSet:
    """Clouds of one split.

    Attributes:
        points: (M, P, 3) float32 coordinates.
        labels: (M,) int64: the shape class (points) or the shape category (partseg).
        parts: (M, P) int64 global part labels (partseg), else None.
    """

    points: torch.Tensor
    labels: torch.Tensor
    parts: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.points.shape[0])

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y). Shape sets: x (B, 3, P) coordinates, y (B,) classes. Part sets: x (B, 4, P), the
        coordinates and the shape category repeated along the points as a fourth channel (the
        engine passes one input tensor; :func:`split_part_input` takes it apart), y (B, P) parts."""
        x = self.points[indices].transpose(1, 2).contiguous()
        if self.parts is None:
            return x, self.labels[indices]
        cat = self.labels[indices].to(x.dtype)[:, None, None].expand(-1, 1, x.shape[-1])
        return torch.cat([x, cat], dim=1), self.parts[indices]


@dataclass
class PointBundle(DataBundle):
    """A point-cloud train/test pair. ``image_size`` holds the points per cloud; ``classes`` are the
    shape classes (points) or the part names (partseg, ``"category/part"``); ``categories`` maps each
    category to its global part indices (partseg only)."""

    categories: dict[str, list[int]] = field(default_factory=dict)
    augment: str = "points"

    @property
    def num_points(self) -> int:
        return self.image_size

    @property
    def category_names(self) -> list[str]:
        return list(self.categories)


# ---------------------------------------------------------------------------
# Surface sampling
# ---------------------------------------------------------------------------


def _sample_triangles(v: np.ndarray, faces: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    tri = v[faces]  # (F, 3, 3)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    f = rng.choice(len(faces), n, p=area / area.sum())
    r1, r2 = np.sqrt(rng.random(n)), rng.random(n)
    t = tri[f]
    return (1 - r1)[:, None] * t[:, 0] + (r1 * (1 - r2))[:, None] * t[:, 1] + (r1 * r2)[:, None] * t[:, 2]


_BOX_V = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=float)
_BOX_F = np.array(
    [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1], [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4]]
    + [[1, 5, 7], [1, 7, 3]]
)
_PYR_V = np.array([[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1], [0, 0, 1]], dtype=float)
_PYR_F = np.array([[0, 1, 2], [0, 2, 3], [0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]])
_OCT_V = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=float)
_OCT_F = np.array([[a, b, c] for a in (0, 1) for b in (2, 3) for c in (4, 5)])
_TET_V = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float)
_TET_F = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]])


def _disk(n: int, rng: np.random.Generator, r: float = 1.0) -> np.ndarray:
    rad, ang = r * np.sqrt(rng.random(n)), 2 * np.pi * rng.random(n)
    return np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1)


def _cylinder(n: int, rng: np.random.Generator, r: float = 1.0, h: float = 2.0, caps: bool = True) -> np.ndarray:
    side, cap = 2 * np.pi * r * h, np.pi * r * r
    which = rng.choice(3, n, p=np.array([side, cap, cap]) / (side + 2 * cap)) if caps else np.zeros(n, int)
    ang = 2 * np.pi * rng.random(n)
    out = np.stack([r * np.cos(ang), r * np.sin(ang), h * (rng.random(n) - 0.5)], 1)
    for c, z in ((1, -h / 2), (2, h / 2)):
        m = which == c
        out[m, :2], out[m, 2] = _disk(int(m.sum()), rng, r), z
    return out


def _cone(n: int, rng: np.random.Generator, r: float = 1.0, h: float = 2.0, base: bool = True) -> np.ndarray:
    lateral, disk = np.pi * r * math.hypot(r, h), np.pi * r * r
    on_base = rng.random(n) < (disk / (lateral + disk) if base else 0.0)
    t = np.sqrt(rng.random(n))  # distance fraction from the apex: uniform on the lateral surface
    ang = 2 * np.pi * rng.random(n)
    out = np.stack([r * t * np.cos(ang), r * t * np.sin(ang), h / 2 - h * t], 1)
    out[on_base, :2], out[on_base, 2] = _disk(int(on_base.sum()), rng, r), -h / 2
    return out


def _torus(n: int, rng: np.random.Generator, big: float = 1.0, small: float = 0.35) -> np.ndarray:
    pts: list[np.ndarray] = []
    while sum(len(p) for p in pts) < n:  # rejection: surface element ~ (R + r cos v)
        u, v = 2 * np.pi * rng.random(2 * n), 2 * np.pi * rng.random(2 * n)
        keep = rng.random(2 * n) < (big + small * np.cos(v)) / (big + small)
        u, v = u[keep], v[keep]
        w = big + small * np.cos(v)
        pts.append(np.stack([w * np.cos(u), w * np.sin(u), small * np.sin(v)], 1))
    return np.concatenate(pts)[:n]


def _sphere(n: int, rng: np.random.Generator) -> np.ndarray:
    p = rng.standard_normal((n, 3))
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def _solid(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if name == "sphere":
        return _sphere(n, rng)
    if name == "cylinder":
        return _cylinder(n, rng)
    if name == "cone":
        return _cone(n, rng)
    if name == "torus":
        return _torus(n, rng)
    mesh = {"box": (_BOX_V, _BOX_F), "pyramid": (_PYR_V, _PYR_F), "octahedron": (_OCT_V, _OCT_F)}
    v, f = mesh.get(name, (_TET_V, _TET_F))
    return _sample_triangles(v, f, n, rng)


def _rotation(rng: np.random.Generator, tilt: float = math.radians(30)) -> np.ndarray:
    a, b, c = 2 * np.pi * rng.random(), tilt * (2 * rng.random() - 1), 2 * np.pi * rng.random()
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    rz2 = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz2 @ rx @ rz


def _pose(p: np.ndarray, rng: np.random.Generator, noise: float = 0.01) -> np.ndarray:
    p = p * rng.uniform(0.75, 4 / 3, size=3)
    p = p @ _rotation(rng).T
    p = p - p.mean(0)
    p = p / np.linalg.norm(p, axis=1).max()
    return (p + noise * rng.standard_normal(p.shape)).astype(np.float32)


def make_shapes(per_class: int, num_points: int, seed: int = 0) -> PointSet:
    """``per_class`` clouds of each of :data:`SHAPE_CLASSES` (balanced), ``num_points`` each, seeded."""
    rng = np.random.default_rng(seed)
    pts, labels = [], []
    for _ in range(per_class):
        for c, name in enumerate(SHAPE_CLASSES):
            pts.append(_pose(_solid(name, num_points, rng), rng))
            labels.append(c)
    return PointSet(torch.from_numpy(np.stack(pts)), torch.tensor(labels, dtype=torch.int64))


def _part_object(cat: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One composite object of category ``cat``: (points (n, 3), local part index (n,))."""
    u = rng.uniform
    pieces: list[tuple[np.ndarray, int]] = []
    if cat == "mushroom":
        cap_r, stem_r, stem_h = u(0.8, 1.2), u(0.2, 0.35), u(0.8, 1.5)
        m = int(n * u(0.55, 0.7))
        s = _sphere(m, rng)
        s[:, 2] = np.abs(s[:, 2]) * u(0.5, 0.9)
        pieces += [(s * [cap_r, cap_r, cap_r] + [0, 0, stem_h / 2], 0)]
        pieces += [(_cylinder(n - m, rng, stem_r, stem_h, caps=False), 1)]
    elif cat == "table":
        w, d, top_h, leg_h, leg_r = u(1.0, 1.6), u(0.7, 1.1), u(0.08, 0.15), u(0.8, 1.3), u(0.05, 0.1)
        m = int(n * u(0.55, 0.7))
        top = _sample_triangles(_BOX_V, _BOX_F, m, rng) * [w, d, top_h / 2] + [0, 0, leg_h / 2]
        pieces.append((top, 0))
        legs = _cylinder(n - m, rng, leg_r, leg_h, caps=False)
        corner = rng.integers(0, 4, len(legs))
        legs[:, 0] += np.where(corner % 2 == 0, -1, 1) * (w - 2 * leg_r)
        legs[:, 1] += np.where(corner < 2, -1, 1) * (d - 2 * leg_r)
        pieces.append((legs, 1))
    elif cat == "rocket":
        r, h, nose_h = u(0.25, 0.4), u(1.5, 2.5), u(0.4, 0.8)
        m1, m2 = int(n * 0.6), int(n * 0.2)
        pieces.append((_cylinder(m1, rng, r, h, caps=False), 0))
        pieces.append((_cone(m2, rng, r, nose_h, base=False) + [0, 0, (h + nose_h) / 2], 1))
        fin = np.array([[0, 0, 0], [u(0.4, 0.7), 0, 0], [0, 0, u(0.5, 0.9)]])
        k = n - m1 - m2
        f = _sample_triangles(fin, np.array([[0, 1, 2]]), k, rng) + [r, 0, -h / 2]
        ang = (np.pi / 2) * rng.integers(0, 4, k)
        c, s_ = np.cos(ang), np.sin(ang)
        pieces.append((np.stack([c * f[:, 0] - s_ * f[:, 1], s_ * f[:, 0] + c * f[:, 1], f[:, 2]], 1), 2))
    else:  # mug
        r, h = u(0.5, 0.8), u(1.0, 1.6)
        m = int(n * u(0.75, 0.85))
        body = _cylinder(m, rng, r, h)
        pieces.append((body, 0))
        handle = _torus(n - m, rng, big=h * 0.3, small=u(0.05, 0.09))
        handle = handle[:, [0, 2, 1]]  # the ring stands in the x-z plane
        handle[:, 0] = np.abs(handle[:, 0]) + r - 0.05
        pieces.append((handle, 1))
    pts = np.concatenate([p for p, _ in pieces])
    lab = np.concatenate([np.full(len(p), i) for p, i in pieces])
    return pts, lab


def make_parts(per_category: int, num_points: int, seed: int = 0) -> PointSet:
    """``per_category`` composite objects of each of :data:`PART_CATEGORIES`, with global part labels."""
    rng = np.random.default_rng(seed)
    offsets = np.cumsum([0] + [len(p) for p in PART_CATEGORIES.values()])
    pts, labels, parts = [], [], []
    for _ in range(per_category):
        for c, cat in enumerate(PART_CATEGORIES):
            p, lab = _part_object(cat, num_points, rng)
            order = rng.permutation(len(p))  # no part order along the cloud
            pts.append(_pose(p[order], rng))
            parts.append(lab[order] + offsets[c])
            labels.append(c)
    return PointSet(
        torch.from_numpy(np.stack(pts)),
        torch.tensor(labels, dtype=torch.int64),
        torch.from_numpy(np.stack(parts).astype(np.int64)),
    )


# ---------------------------------------------------------------------------
# Checks and HDF5 readers
# ---------------------------------------------------------------------------


def check_clouds(
    where: str,
    points: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    parts: np.ndarray | None = None,
    categories: list[list[int]] | None = None,
) -> None:
    """Raise :class:`PointDataError` naming ``where`` and the first bad cloud's index: a non-finite
    coordinate, a label outside 0..num_classes-1, or a part label not among its category's parts."""
    bad = ~np.isfinite(points).all(axis=(1, 2))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise PointDataError(f"{where}: cloud {i} has a non-finite (NaN or inf) coordinate")
    out = (labels < 0) | (labels >= num_classes)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise PointDataError(f"{where}: cloud {i} has label {int(labels[i])}, outside the classes 0..{num_classes - 1}")
    if parts is not None and categories is not None:
        for c, allowed in enumerate(categories):
            rows = np.flatnonzero(labels == c)
            if not len(rows):
                continue
            wrong = ~np.isin(parts[rows], allowed)
            if wrong.any():
                r, j = np.argwhere(wrong)[0]
                i = int(rows[r])
                raise PointDataError(
                    f"{where}: cloud {i} point {int(j)} has part {int(parts[i, j])}, not a part of its category "
                    f"{c} (parts {allowed})"
                )


def _h5_files(root: Path, word: str) -> list[Path]:
    return sorted(p for p in root.glob(f"*{word}*.h5"))


def _read_h5(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise PointDataError(f"{path}: not a readable HDF5 file ({e})") from e
    with f:
        missing = [n for n in names if n not in f]
        if missing:
            raise PointDataError(
                f"{path}: no dataset {', '.join(repr(m) for m in missing)} (expected {', '.join(names)}; "
                f"found {', '.join(sorted(f.keys())) or 'none'})"
            )
        out = {n: np.asarray(f[n][()]) for n in names}
    pts = out["data"]
    if pts.ndim != 3 or pts.shape[2] != 3:
        raise PointDataError(f"{path}: dataset 'data' must be (M, P, 3), got shape {pts.shape}")
    m = pts.shape[0]
    out["label"] = out["label"].reshape(-1).astype(np.int64)
    if len(out["label"]) != m:
        raise PointDataError(f"{path}: 'label' holds {len(out['label'])} entries for {m} clouds")
    if "pid" in out:
        out["pid"] = out["pid"].astype(np.int64)
        if out["pid"].shape != pts.shape[:2]:
            raise PointDataError(f"{path}: 'pid' must be (M, P) = {pts.shape[:2]}, got {out['pid'].shape}")
    out["data"] = pts.astype(np.float32)
    return out


def _read_split(files: list[Path], names: tuple[str, ...], num_classes: int, categories=None) -> dict[str, np.ndarray]:
    chunks: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for path in files:
        d = _read_h5(path, names)
        check_clouds(str(path), d["data"], d["label"], num_classes, d.get("pid"), categories)
        for n in names:
            chunks[n].append(d[n])
    sizes = {c.shape[1] for c in chunks["data"]}
    if len(sizes) > 1:
        raise PointDataError(f"the files {[str(f) for f in files]} hold clouds of different sizes {sorted(sizes)}")
    return {n: np.concatenate(v) for n, v in chunks.items()}


def _dir(path: str | os.PathLike, what: str) -> Path:
    root = Path(path)
    if not root.is_dir():
        raise PointDataError(f"{what}: {str(root)!r} is not a folder")
    return root


def read_modelnet40(path: str | os.PathLike, num_points: int | None = None) -> PointBundle:
    """The ``modelnet40_ply_hdf5_2048`` folder (module docstring) as a :class:`PointBundle`."""
    root = _dir(path, "modelnet40")
    names_file = root / "shape_names.txt"
    classes = names_file.read_text().split() if names_file.is_file() else list(MODELNET40_CLASSES)
    split = {}
    for word in ("train", "test"):
        files = _h5_files(root, word)
        if not files:
            raise PointDataError(f"{root}: no *{word}*.h5 file (expected the modelnet40_ply_hdf5_2048 layout)")
        split[word] = _read_split(files, ("data", "label"), len(classes))
    return _bundle(f"modelnet40:{path}", split, classes, num_points, {})


def read_shapenetpart(path: str | os.PathLike, num_points: int | None = None) -> PointBundle:
    """The ShapeNetPart HDF5 folder (module docstring) as a :class:`PointBundle` (train = train + val)."""
    root = _dir(path, "shapenetpart")
    cats = list(SHAPENET_PARTS.values())
    split = {}
    for key, words in (("train", ("train", "val")), ("test", ("test",))):
        files = [f for w in words for f in _h5_files(root, w)]
        if not files:
            raise PointDataError(f"{root}: no *{words[0]}*.h5 file (expected the ShapeNetPart HDF5 layout)")
        split[key] = _read_split(files, ("data", "label", "pid"), len(cats), cats)
    classes = [f"{c}/{i - parts[0]}" for c, parts in SHAPENET_PARTS.items() for i in parts]
    return _bundle(f"shapenetpart:{path}", split, classes, num_points, dict(SHAPENET_PARTS))


def _bundle(name, split, classes, num_points, categories) -> PointBundle:
    have = split["train"]["data"].shape[1]
    n = have if num_points is None else num_points
    if n > have or min(split["test"]["data"].shape[1], have) < n:
        raise PointDataError(f"{name}: clouds hold {have} points, fewer than num_points={n}")

    def ps(d):
        pid = d.get("pid")
        return PointSet(
            torch.from_numpy(np.ascontiguousarray(d["data"][:, :n])),
            torch.from_numpy(d["label"]),
            None if pid is None else torch.from_numpy(np.ascontiguousarray(pid[:, :n])),
        )

    return PointBundle(name, ps(split["train"]), ps(split["test"]), classes, n, categories=categories)


def load_point_data(
    spec: str, num_points: int | None = None, seed: int = 0, task: str = "points", size: int | None = None
) -> PointBundle:
    """Load ``shapes`` | ``parts`` | ``modelnet40:DIR`` | ``shapenetpart:DIR`` (module docstring).

    ``num_points`` None: 512 for the generated sets, the files' own size for the real ones.
    ``size``: training clouds per class (generated sets; default 200 shapes, 150 part objects per
    category); the test split has a quarter as many.
    """
    if not isinstance(spec, str):
        raise TypeError(f"data spec must be a str, got {type(spec).__name__}")
    kind, _, path = spec.partition(":")
    want = {"points": ("shapes", "modelnet40"), "partseg": ("parts", "shapenetpart")}[task]
    if kind not in want or bool(path) != (kind in ("modelnet40", "shapenetpart")):
        raise ValueError(f"--task {task} data must be {want[0]!r} or '{want[1]}:DIR', got {spec!r}")
    if num_points is not None and (isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 1):
        raise ValueError(f"num_points must be None or an int >= 1, got {num_points!r}")
    if kind == "modelnet40":
        return read_modelnet40(path, num_points)
    if kind == "shapenetpart":
        return read_shapenetpart(path, num_points)
    n = num_points or 512
    ss = np.random.SeedSequence(seed).spawn(2)
    tr_seed, te_seed = (int(s.generate_state(1)[0]) for s in ss)
    if kind == "shapes":
        per = size or 200
        train, test = make_shapes(per, n, tr_seed), make_shapes(max(1, per // 4), n, te_seed)
        return PointBundle("shapes", train, test, list(SHAPE_CLASSES), n)
    per = size or 150
    train, test = make_parts(per, n, tr_seed), make_parts(max(1, per // 4), n, te_seed)
    offsets = np.cumsum([0] + [len(p) for p in PART_CATEGORIES.values()])
    cats = {c: list(range(int(offsets[i]), int(offsets[i + 1]))) for i, c in enumerate(PART_CATEGORIES)}
    classes = [f"{c}/{p}" for c, ps in PART_CATEGORIES.items() for p in ps]
    return PointBundle("parts", train, test, classes, n, categories=cats)


# ---------------------------------------------------------------------------
# Augmentation and epoch batches
# ---------------------------------------------------------------------------


def augment_points(
    x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor, epoch: int, seed: int, max_dropout: float = 0.875
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anisotropic scale, translation and point dropout of clouds x (B, 3 or 4, P) (only the
    coordinates change), seeded per (seed, epoch, example index). Part labels y (B, P) follow the
    dropout; class labels (B,) stay."""
    x = x.clone()
    y = y.clone()
    p = x.shape[-1]
    for row, i in enumerate(indices.tolist()):
        g = torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7_919 + i) % 2**63)
        scale = torch.empty(3).uniform_(2 / 3, 3 / 2, generator=g)
        shift = torch.empty(3).uniform_(-0.2, 0.2, generator=g)
        ratio = float(torch.rand((), generator=g)) * max_dropout
        drop = torch.rand(p, generator=g) <= ratio
        drop[0] = False
        x[row, :3] = x[row, :3] * scale[:, None] + shift[:, None]
        x[row][:, drop] = x[row][:, :1]
        if y.dim() == 2:
            y[row][drop] = y[row, 0]
    return x, y


def split_part_input(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A part set's input (B, 4, P) -> (coordinates (B, 3, P), categories (B,) int64)."""
    if x.dim() != 3 or x.shape[1] != 4:
        raise ValueError(f"a part-segmentation input is (B, 4, P): coordinates and category, got {tuple(x.shape)}")
    return x[:, :3], x[:, 3, 0].round().long()


class PointEpochBatches(EpochBatches):
    """The training batches of one epoch (order as :class:`~visattn.data.transforms.EpochBatches`),
    augmented by :func:`augment_points` when ``augment`` is "points"."""

    def __init__(self, data: PointSet, batch_size: int, epoch: int, seed: int, *, augment: str = "points", **kw):
        super().__init__(data, batch_size, epoch, seed, augment="none", **kw)
        self.point_augment, self.epoch, self.seed = augment == "points", epoch, seed

    def get(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.batch_indices(i)
        x, y = self.data.batch(idx)
        if self.point_augment:
            x, y = augment_points(x, y, idx, self.epoch, self.seed)
        return x, y
