"""Semantic-segmentation training: ``visattn train --task segment``.

:class:`SegTrainer` is the classification :class:`~visattn.train.engine.Trainer` with the
task-specific parts swapped: segmentation data (:mod:`visattn.data.segmentation`), joint
image/mask augmentation (random scale, crop, flip; nearest neighbour for masks), pixel
cross-entropy with ``ignore_index`` (255 by default), and evaluation by a confusion matrix
summed over every process. Everything else is the engine's own, imported not copied:
AdamW + warm-up/cosine schedule, mixed precision, ``torch.compile``, DDP under
``torchrun``, checkpoints every epoch (or ``save_every`` steps), exact ``--resume``,
``metrics.jsonl``, ``model.safetensors`` + ``config.json`` and ``curves.png``.

Each line of ``metrics.jsonl`` (strict JSON: no NaN) holds the engine's fields, where
``train_acc``/``test_acc`` are pixel accuracies over labelled pixels and
``images_per_s`` counts images, plus ``test_miou`` (mean IoU over the classes that occur
in the test labels or predictions), ``test_pixel_acc``, ``test_iou`` (class name ->
IoU, null for a class absent from both) and ``test_iou_by_index`` (the same IoUs as a list,
index = class). A test split without a labelled pixel has nothing to measure: its loss,
accuracies and mIoU are null, and a warning says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visattn.data import normalize
from visattn.data.segmentation import IGNORE_INDEX, SegDataBundle, SegEpochBatches, load_seg_data
from visattn.data.transforms import eval_indices
from visattn.train import distributed as D
from visattn.train.engine import TrainConfig, Trainer, TrainResult

__all__ = [
    "SegTrainConfig",
    "SegTrainer",
    "GlobalPixelCrossEntropy",
    "check_segmentation_model",
    "train_segment",
    "confusion_matrix",
    "segmentation_metrics",
    "SEG_DEFAULT_MODEL",
    "SEG_DEFAULT_DATA",
]

#: The small segmentation model that trains on digit scenes on a CPU in minutes.
SEG_DEFAULT_MODEL = "fpn_resnet_tiny"
SEG_DEFAULT_DATA = "digitscenes"


@dataclass
class SegTrainConfig(TrainConfig):
    """A segmentation run: :class:`TrainConfig` plus ``ignore_index`` and ``scale_range``.

    ``image_size`` is the side of the training crops (digit scenes: the canvas, default 64;
    folders: default 128). ``augment``: ``crop`` = random scale in ``scale_range`` + random
    crop, ``crop+flip`` adds horizontal flips, ``none`` a centre crop at scale 1, ``auto``
    the data's default (digit scenes: crop, folders: crop+flip). ``scale_range`` None: the
    data's default (digit scenes 0.75-1.33, folders 0.5-2).
    """

    task: str = "segment"
    model: str = SEG_DEFAULT_MODEL
    data: str = SEG_DEFAULT_DATA
    label_smoothing: float = 0.0
    ignore_index: int = IGNORE_INDEX
    scale_range: tuple[float, float] | None = None

    def validate(self) -> None:
        super().validate()
        if isinstance(self.ignore_index, bool) or not isinstance(self.ignore_index, int) or self.ignore_index < 0:
            raise ValueError(f"ignore_index must be an int >= 0, got {self.ignore_index!r}")
        if self.scale_range is not None:
            sr = tuple(self.scale_range)
            if (
                len(sr) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in sr)
                or not 0 < sr[0] <= sr[1]
            ):
                raise ValueError(
                    f"scale_range must be (min, max) with 0 < min <= max, both finite, got {self.scale_range!r}"
                )
            self.scale_range = (float(sr[0]), float(sr[1]))


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """(K, K) int64 counts, rows = true class, columns = predicted, over pixels whose target is
    not ``ignore_index``. pred, target: integer tensors of the same shape."""
    valid = target != ignore_index
    t, p = target[valid].long(), pred[valid].long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        bad = t[(t < 0) | (t >= num_classes)][0]
        raise ValueError(
            f"target value {int(bad)} is neither a class (0..{num_classes - 1}) nor the ignore index {ignore_index}"
        )
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).view(num_classes, num_classes)


def segmentation_metrics(conf: torch.Tensor, classes: Sequence[str] | None = None) -> dict[str, Any]:
    """mIoU, per-class IoU and pixel accuracy from a (K, K) confusion matrix.

    IoU_c = TP / (TP + FP + FN); a class with TP + FP + FN = 0 (absent from labels and
    predictions) has IoU None and is left out of the mean. Pixel accuracy = trace / total.
    ``iou`` keys the IoUs by class name, ``iou_by_index`` lists them by class index; class names
    must be unique. With no labelled pixel at all, mIoU and pixel accuracy are None.
    """
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    names = list(classes) if classes is not None else [str(i) for i in range(conf.shape[0])]
    if len(names) != conf.shape[0]:
        raise ValueError(f"{len(names)} class names for a {conf.shape[0]}x{conf.shape[0]} confusion matrix")
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be unique, got {names!r}"[:300])
    ious = [float(tp[i] / union[i]) if union[i] > 0 else None for i in range(len(names))]
    present = [v for v in ious if v is not None]
    total = float(conf.sum())
    return {
        "miou": sum(present) / len(present) if present else None,
        "pixel_acc": float(tp.sum()) / total if total > 0 else None,
        "iou": dict(zip(names, ious)),
        "iou_by_index": ious,
    }


def check_segmentation_model(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a registered segmentation model."""
    from visattn.registry import list_models, model_entry

    task = model_entry(name).task
    if task != "segment":
        raise ValueError(
            f"segmentation needs a segmentation model; {name!r} is a {task} model "
            f"(segmentation models: {', '.join(list_models('segment'))})"
        )


class GlobalPixelCrossEntropy(nn.Module):
    """Pixel cross-entropy averaged over the labelled pixels of the *global* batch.

    Under DDP each process's gradient is averaged over processes, so a per-process mean
    would weight the processes equally however many labelled pixels each holds (they differ
    once pixels are ignored). Here each process returns ``world_size x its summed loss /
    labelled pixels of all processes`` (one all-reduce of a count per step), so the averaged
    gradient is that of one process holding the whole batch. In one process this is the
    ordinary mean over labelled pixels. ``last_count``: labelled pixels of the global batch.
    """

    def __init__(self, ignore_index: int, label_smoothing: float, dist: D.DistContext):
        super().__init__()
        self.ignore_index, self.label_smoothing, self.dist = ignore_index, label_smoothing, dist
        self.last_count = 0.0

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = F.cross_entropy(
            logits, target, ignore_index=self.ignore_index, reduction="sum", label_smoothing=self.label_smoothing
        )
        count = (target != self.ignore_index).sum().to(torch.float64)
        count = D.all_reduce_sum(count, self.dist)
        self.last_count = float(count)
        return total * (self.dist.world_size / max(self.last_count, 1.0))


class SegTrainer(Trainer):
    """One segmentation run (see module docstring); the engine's :class:`Trainer` with task hooks."""

    task = "segment"
    cfg: SegTrainConfig
    criterion: GlobalPixelCrossEntropy

    def __init__(
        self,
        cfg: SegTrainConfig,
        data: SegDataBundle | None = None,
        callbacks: Sequence[Any] = (),
        bar_position: int = 0,
    ):
        if not isinstance(cfg, SegTrainConfig):
            raise TypeError(f"SegTrainer needs a SegTrainConfig, got {type(cfg).__name__}")
        super().__init__(cfg, data, callbacks, bar_position)
        self._last_eval: dict[str, Any] = {}

    def _setup(self) -> None:
        cfg = self.cfg
        check_segmentation_model(cfg.model)
        if self.data is None:
            self.data = load_seg_data(cfg.data, cfg.image_size, seed=cfg.seed, ignore_index=cfg.ignore_index)
        if not isinstance(self.data, SegDataBundle):
            raise TypeError(f"segmentation training needs a SegDataBundle, got {type(self.data).__name__}")
        if self.data.ignore_index != cfg.ignore_index:
            raise ValueError(
                f"the data's ignore index {self.data.ignore_index} differs from ignore_index {cfg.ignore_index}"
            )
        self.scale_range = cfg.scale_range or self.data.scale_range
        super()._setup()
        self.criterion = GlobalPixelCrossEntropy(cfg.ignore_index, cfg.label_smoothing, self.dist)
        self.eval_criterion = nn.CrossEntropyLoss(ignore_index=cfg.ignore_index, reduction="sum")

    def _bundle(self) -> SegDataBundle:
        b = super()._bundle()
        if not isinstance(b, SegDataBundle):
            raise TypeError(f"segmentation training needs a SegDataBundle, got {type(b).__name__}")
        return b

    def _batches(self, epoch: int) -> SegEpochBatches:
        b = self._bundle()
        return SegEpochBatches(
            b.train,
            self.cfg.batch_size,
            epoch,
            self.cfg.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            augment=self.augment,
            crop_size=b.image_size,
            scale_range=self.scale_range,
            mean=b.mean,
            std=b.std,
            merge_single_last=self.merge_single_last,
        )

    def _run_config(self) -> dict[str, Any]:
        d = super()._run_config()
        d.update(task="segment", ignore_index=self.cfg.ignore_index, scale_range=list(self.scale_range))
        return d

    def _batch_sums(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        valid = y != self.cfg.ignore_index
        n = int(valid.sum())
        correct = int(((logits.argmax(1) == y) & valid).sum())
        local_sum = float(loss.detach()) * self.criterion.last_count / self.dist.world_size
        return torch.tensor([local_sum, correct, n], dtype=torch.float64)

    def _complete_record(self, rec: dict[str, Any]) -> None:
        ev = self._last_eval
        rec.update(
            test_miou=ev["miou"],
            test_pixel_acc=ev["pixel_acc"],
            test_iou=ev["iou"],
            test_iou_by_index=ev["iou_by_index"],
        )
        images = len(self._batches(self.epoch).indices) * self.dist.world_size
        rec["images_per_s"] = images / max(rec["train_time_s"], 1e-9)

        def pct(v):
            return "null" if v is None else f"{100 * v:.2f}%"

        self._log(
            f"epoch {rec['epoch']}/{self.cfg.epochs}: test mIoU {pct(ev['miou'])} pixel accuracy {pct(ev['pixel_acc'])}"
        )

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """(mean pixel cross-entropy, pixel accuracy) on whole test images, over all processes;
        mIoU and per-class IoU are kept for the epoch's record."""
        b = self._bundle()
        k = b.num_classes
        self.net.eval()
        idx = eval_indices(len(b.test), self.dist.rank, self.dist.world_size)
        bs = self.cfg.eval_batch_size or 2 * self.cfg.batch_size
        conf = torch.zeros(k, k, dtype=torch.float64)
        loss_sum = torch.zeros(1, dtype=torch.float64)
        for i in range(0, len(idx), bs):
            x, y = b.test.batch(idx[i : i + bs])
            x, y = normalize(x, b.mean, b.std).to(self.device), y.to(self.device)
            with self._autocast():
                logits = self.fwd(x)
            loss_sum += float(self.eval_criterion(logits.float(), y))
            conf += confusion_matrix(logits.argmax(1), y, k, self.cfg.ignore_index).cpu().double()
        sums = self._reduce(torch.cat([loss_sum, conf.flatten()]))
        conf = sums[1:].view(k, k)
        self._last_eval = segmentation_metrics(conf, b.classes)
        n = float(conf.sum())
        if n == 0:  # nothing to measure: null in metrics.jsonl, not 0
            self._log(
                f"warning: the test split has no labelled pixels (every mask pixel is the ignore index "
                f"{self.cfg.ignore_index}): test loss, pixel accuracy and mIoU are null"
            )
            return math.nan, math.nan
        return float(sums[0]) / n, float(self._last_eval["pixel_acc"])


def train_segment(
    cfg: SegTrainConfig, data: SegDataBundle | None = None, callbacks: Sequence[Any] = (), bar_position: int = 0
) -> TrainResult:
    """Run one segmentation job (see :class:`SegTrainer`). ``data`` skips loading ``cfg.data``."""
    return SegTrainer(cfg, data, callbacks, bar_position).run()
