"""Point-cloud training: ``visattn train --task points`` (shape classes) and ``--task partseg`` (parts).

:class:`PointTrainer` and :class:`PartSegTrainer` are the engine's
:class:`~visattn.train.engine.Trainer` with the task parts swapped: point-cloud data
(:mod:`visattn.data.points`), point augmentation (anisotropic scale, translation, point dropout)
and evaluation. Checkpoints, exact ``--resume``, torchrun (DDP), AMP, ``metrics.jsonl``,
``model.safetensors`` + ``config.json`` and ``curves.png`` are the engine's own.

Records (``metrics.jsonl``) hold the engine's fields (``images_per_s`` counts clouds) plus:

* points: ``test_acc`` (overall accuracy) and ``test_mean_class_acc`` (the mean over classes of
  each class's accuracy, over the classes present in the test split);
* partseg: ``train_acc``/``test_acc`` are point accuracies; ``test_instance_miou`` (the mean IoU
  over test shapes), ``test_category_miou`` (the mean over categories of their shapes' mean) and
  ``test_category_iou`` (category -> mean IoU). The IoU of one shape is the standard ShapeNet rule
  (:func:`shape_ious`): the mean over its category's parts of |pred and truth| / |pred or truth|,
  where a part absent from both prediction and truth counts 1; the prediction of a point is the
  arg-max over its category's parts only, as the PointNet / DGCNN / PCT evaluations do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from visattn.data.points import PointBundle, PointDataError, PointEpochBatches, load_point_data, split_part_input
from visattn.data.transforms import eval_indices
from visattn.train.engine import TrainConfig, Trainer, TrainResult

__all__ = [
    "PointTrainConfig",
    "PartSegTrainConfig",
    "PointTrainer",
    "PartSegTrainer",
    "train_points",
    "train_partseg",
    "class_accuracies",
    "shape_ious",
    "restrict_to_category",
]


@dataclass
class PointTrainConfig(TrainConfig):
    """A shape-classification run: :class:`TrainConfig` plus ``num_points`` (None: the data's own;
    512 for the generated sets) and ``data_size`` (generated sets: training clouds per class).
    ``augment``: "auto" (scale, translation, point dropout) or "none". Label smoothing 0.2 and
    dropout are the PCT recipe's; ``image_size`` and ``precise_bn`` are image options and refused."""

    task: str = "points"
    model: str = "pct"
    data: str = "shapes"
    label_smoothing: float = 0.2
    num_points: int | None = None
    data_size: int | None = None

    def validate(self) -> None:
        super().validate()
        if self.augment not in ("auto", "none"):
            raise ValueError(
                f"point-cloud augment must be 'auto' (scale, translation, dropout) or 'none', got {self.augment!r}"
            )
        if self.image_size is not None:
            raise ValueError(
                "point clouds have no image size; give the points per cloud with num_points (--num-points)"
            )
        if self.precise_bn:
            raise ValueError("precise_bn is an image-task option; point-cloud runs do not take it")
        for name in ("num_points", "data_size"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be None or an int >= 1, got {v!r}")


@dataclass
class PartSegTrainConfig(PointTrainConfig):
    """A part-segmentation run (the fields of :class:`PointTrainConfig`)."""

    task: str = "partseg"
    model: str = "pct_partseg"
    data: str = "parts"
    label_smoothing: float = 0.0


def class_accuracies(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(2, K) float64: per class, [correct, count]."""
    t = target.long()
    correct = torch.bincount(t[pred == t], minlength=num_classes)
    count = torch.bincount(t, minlength=num_classes)
    return torch.stack([correct, count]).double()


def restrict_to_category(
    logits: torch.Tensor, category: torch.Tensor, categories: Sequence[Sequence[int]]
) -> torch.Tensor:
    """Per-point predictions (B, N): the arg-max over the parts of each cloud's category only."""
    mask = torch.full((len(categories), logits.shape[1]), float("-inf"), device=logits.device)
    for c, parts in enumerate(categories):
        mask[c, list(parts)] = 0
    return (logits.float() + mask[category].unsqueeze(-1)).argmax(1)


def shape_ious(
    pred: torch.Tensor, target: torch.Tensor, category: torch.Tensor, categories: Sequence[Sequence[int]]
) -> torch.Tensor:
    """(B,) float64: each shape's mean IoU over its category's parts (ShapeNet rule: a part absent
    from both the prediction and the truth counts 1). pred, target: (B, N) global part labels."""
    out = torch.empty(pred.shape[0], dtype=torch.float64)
    for i in range(pred.shape[0]):
        ious = []
        for part in categories[int(category[i])]:
            p, t = pred[i] == part, target[i] == part
            union = int((p | t).sum())
            ious.append(1.0 if union == 0 else int((p & t).sum()) / union)
        out[i] = sum(ious) / len(ious)
    return out


class PointTrainer(Trainer):
    """One shape-classification run (module docstring)."""

    task = "points"
    cfg: PointTrainConfig

    def __init__(
        self,
        cfg: PointTrainConfig,
        data: PointBundle | None = None,
        callbacks: Sequence[Any] = (),
        bar_position: int = 0,
    ):
        if not isinstance(cfg, PointTrainConfig):
            raise TypeError(
                f"{type(self).__name__} needs a {type(self).__name__.replace('Trainer', 'TrainConfig')}, got {type(cfg).__name__}"
            )
        super().__init__(cfg, data, callbacks, bar_position)
        self._last_eval: dict[str, Any] = {}

    def _setup(self) -> None:
        cfg = self.cfg
        self._check_task()
        if self.data is None:
            self.data = load_point_data(cfg.data, cfg.num_points, seed=cfg.seed, task=self.task, size=cfg.data_size)
        if not isinstance(self.data, PointBundle):
            raise TypeError(f"point-cloud training needs a PointBundle, got {type(self.data).__name__}")
        super()._setup()
        self._check_cloud_size()

    def _check_cloud_size(self) -> None:
        """Refuse clouds smaller than the model's farthest-point sample counts or its k (one line)."""
        enc = getattr(self.model, "encoder", None)
        b = self._bundle()
        if enc is None or not getattr(enc, "neighbour_embedding", False):
            return
        n = b.num_points
        s0, s1 = enc.sample_counts(n)
        for have, need, what in (
            (n, s0, "the first farthest-point sample count"),
            (s0, s1, "the second sample count"),
            (s1, enc.k, "the neighbour count k"),
        ):
            if have < need:
                raise PointDataError(
                    f"{b.name}: cloud 0 (as every cloud) holds {n} points, too few for {cfg_model(self.cfg)}: {what} is {need} "
                    f"but only {have} points reach that stage; give more points (--num-points) or smaller samples/k"
                )

    def _bundle(self) -> PointBundle:
        b = super()._bundle()
        if not isinstance(b, PointBundle):
            raise TypeError(f"point-cloud training needs a PointBundle, got {type(b).__name__}")
        return b

    def _batches(self, epoch: int) -> PointEpochBatches:
        b = self._bundle()
        return PointEpochBatches(
            b.train,  # type: ignore[arg-type]  # a PointSet
            self.cfg.batch_size,
            epoch,
            self.cfg.seed,
            augment=self.augment,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            drop_last=self._drop_last,
            merge_single_last=self.merge_single_last,
        )

    def _run_config(self) -> dict[str, Any]:
        d = super()._run_config()
        d.update(task=self.task, num_points=self.cfg.num_points, data_size=self.cfg.data_size)
        return d

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.fwd(x)

    def _complete_record(self, rec: dict[str, Any]) -> None:
        rec["test_mean_class_acc"] = self._last_eval.get("mean_class_acc")

    def _epoch_line(self, rec: dict[str, Any]) -> str:
        mca = rec.get("test_mean_class_acc")
        return (
            f"epoch {rec['epoch']}/{self.cfg.epochs}: train loss {rec['train_loss']:.4f} acc {100 * rec['train_acc']:.2f}% | "
            f"test acc {100 * rec['test_acc']:.2f}% mean-class {'null' if mca is None else f'{100 * mca:.2f}%'} | "
            f"{rec['images_per_s']:.0f} clouds/s"
        )

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """(mean cross-entropy, overall accuracy) on the test clouds over all processes; the
        mean-class accuracy is kept for the epoch's record."""
        b = self._bundle()
        k = b.num_classes
        self.net.eval()
        idx = eval_indices(len(b.test), self.dist.rank, self.dist.world_size)
        bs = self.cfg.eval_batch_size or 2 * self.cfg.batch_size
        loss_sum = torch.zeros(1, dtype=torch.float64)
        per = torch.zeros(2, k, dtype=torch.float64)
        for i in range(0, len(idx), bs):
            x, y = b.test.batch(idx[i : i + bs])
            x, y = x.to(self.device), y.to(self.device)
            with self._autocast():
                logits = self.fwd(x)
            loss_sum += float(self.eval_criterion(logits.float(), y))
            per += class_accuracies(logits.argmax(1).cpu(), y.cpu(), k)
        sums = self._reduce(torch.cat([loss_sum, per.flatten()]))
        correct, count = sums[1:].view(2, k)
        n = float(count.sum())
        seen = count > 0
        self._last_eval = {"mean_class_acc": float((correct[seen] / count[seen]).mean()) if bool(seen.any()) else None}
        if n == 0:
            return math.nan, math.nan
        return float(sums[0]) / n, float(correct.sum()) / n


def cfg_model(cfg: TrainConfig) -> str:
    return cfg.model + (f" with attention {cfg.attention!r}" if cfg.attention else "")


class PartSegTrainer(PointTrainer):
    """One part-segmentation run (module docstring). The model takes (points, category); the
    engine's one input tensor carries the category as a fourth channel (``split_part_input``)."""

    task = "partseg"
    cfg: PartSegTrainConfig

    def _build_model(self, b) -> nn.Module:
        from visattn.registry import create_model

        cfg = self.cfg
        return create_model(
            cfg.model,
            num_classes=b.num_classes,
            attention=cfg.attention,
            attn_kwargs=cfg.attn_kwargs,
            **{"num_categories": len(b.categories), **(cfg.model_kwargs or {})},
        )

    def _setup(self) -> None:
        super()._setup()
        net = self.fwd

        def fwd(x: torch.Tensor) -> torch.Tensor:
            pts, cat = split_part_input(x)
            return net(pts, cat)

        self.fwd = fwd
        self._categories = list(self._bundle().categories.values())

    def _complete_record(self, rec: dict[str, Any]) -> None:
        ev = self._last_eval
        clouds = len(self._batches(self.epoch).indices) * self.dist.world_size  # the running sums count points
        rec["images_per_s"] = clouds / max(rec["train_time_s"], 1e-9)
        rec.update(
            test_instance_miou=ev.get("instance_miou"),
            test_category_miou=ev.get("category_miou"),
            test_category_iou=ev.get("category_iou"),
        )

    def _epoch_line(self, rec: dict[str, Any]) -> str:
        def pct(v):
            return "null" if v is None else f"{100 * v:.2f}%"

        return (
            f"epoch {rec['epoch']}/{self.cfg.epochs}: train loss {rec['train_loss']:.4f} point acc "
            f"{pct(rec['train_acc'])} | test point acc {pct(rec['test_acc'])} instance mIoU "
            f"{pct(rec['test_instance_miou'])} category mIoU {pct(rec['test_category_miou'])} | "
            f"{rec['images_per_s']:.0f} clouds/s"
        )

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """(mean point cross-entropy, point accuracy) over all processes; instance and category
        mIoU (ShapeNet rule, predictions restricted to the category's parts) kept for the record."""
        b = self._bundle()
        names = list(b.categories)
        nc = len(names)
        self.net.eval()
        idx = eval_indices(len(b.test), self.dist.rank, self.dist.world_size)
        bs = self.cfg.eval_batch_size or 2 * self.cfg.batch_size
        # [loss, correct points, points, sum IoU per category (nc), shapes per category (nc)]
        sums = torch.zeros(3 + 2 * nc, dtype=torch.float64)
        for i in range(0, len(idx), bs):
            x, y = b.test.batch(idx[i : i + bs])
            x, y = x.to(self.device), y.to(self.device)
            with self._autocast():
                logits = self.fwd(x)
            cat = split_part_input(x)[1]
            pred = restrict_to_category(logits, cat, self._categories)
            ious = shape_ious(pred.cpu(), y.cpu(), cat.cpu(), self._categories)
            sums[0] += float(self.eval_criterion(logits.float(), y))
            sums[1] += float((pred == y).sum())
            sums[2] += y.numel()
            sums[3 : 3 + nc] += torch.bincount(cat.cpu(), weights=ious, minlength=nc)
            sums[3 + nc :] += torch.bincount(cat.cpu(), minlength=nc).double()
        sums = self._reduce(sums)
        iou_sum, shapes = sums[3 : 3 + nc], sums[3 + nc :]
        per = {n: (float(iou_sum[c] / shapes[c]) if shapes[c] > 0 else None) for c, n in enumerate(names)}
        present = [v for v in per.values() if v is not None]
        self._last_eval = {
            "instance_miou": float(iou_sum.sum() / shapes.sum()) if float(shapes.sum()) > 0 else None,
            "category_miou": sum(present) / len(present) if present else None,
            "category_iou": per,
        }
        if float(sums[2]) == 0:
            return math.nan, math.nan
        return float(sums[0] / sums[2]), float(sums[1] / sums[2])


def train_points(
    cfg: PointTrainConfig, data: PointBundle | None = None, callbacks: Sequence[Any] = (), bar_position: int = 0
) -> TrainResult:
    """Run one shape-classification job (see :class:`PointTrainer`)."""
    return PointTrainer(cfg, data, callbacks, bar_position).run()


def train_partseg(
    cfg: PartSegTrainConfig, data: PointBundle | None = None, callbacks: Sequence[Any] = (), bar_position: int = 0
) -> TrainResult:
    """Run one part-segmentation job (see :class:`PartSegTrainer`)."""
    return PartSegTrainer(cfg, data, callbacks, bar_position).run()
