"""Detection and instance-segmentation training: ``visattn train --task detect``.

:class:`DetTrainer` is the engine's :class:`~visattn.train.engine.Trainer` with the task's parts
swapped: detection data (:mod:`visattn.data.detection`; batches are lists of images and target
dicts, torchvision's input), the loss is the sum of the torchvision detector's own losses (R-CNN:
classifier, box regression, objectness, RPN box (+ mask); RetinaNet: classification, box
regression; FCOS: + centerness), and evaluation is pycocotools' COCOeval on the test split
(:mod:`visattn.train.coco_eval`). Everything else is the engine's: AdamW + warm-up/cosine,
mixed precision, DDP under ``torchrun`` (evaluation results gathered from every process),
checkpoints, exact ``--resume``, ``metrics.jsonl``, ``model.safetensors`` + ``config.json``
(with the categories' COCO ids) and ``curves.png``.

The detector normalises its input itself (torchvision's transform), with the data's mean and std
(``image_mean`` / ``image_std``, or the pretrained weights'). Each line of ``metrics.jsonl``
holds ``train_loss`` (mean summed loss per image), ``test_box_ap``, ``test_box_ap50``,
``test_box_ap75``, ``test_box_ap_small`` / ``_medium`` / ``_large`` and the same for ``test_mask_*``
(Mask R-CNN); an AP over a size range without objects is ``null``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visattn._io import atomic_write_text
from visattn._strict_json import strict
from visattn.data.detection import DetDataBundle, DetEpochBatches, coco_ground_truth, load_det_data
from visattn.data.transforms import eval_indices
from visattn.train.coco_eval import AP_KEYS, coco_evaluate, coco_results
from visattn.train.engine import TrainConfig, Trainer, TrainResult, plot_panels

__all__ = [
    "DetTrainConfig",
    "DetTrainer",
    "train_detect",
    "check_detection_model",
    "evaluate_detector",
    "DET_DEFAULT_MODEL",
    "DET_DEFAULT_DATA",
]

#: The small detector that trains on digit scenes on a CPU in minutes.
DET_DEFAULT_MODEL = "maskrcnn_resnet_tiny"
DET_DEFAULT_DATA = "digitscenes"


@dataclass
class DetTrainConfig(TrainConfig):
    """A detection run: :class:`TrainConfig` with detection defaults. ``augment``: ``none``,
    ``crop`` (random scale 0.8-1.25 and shift), ``crop+flip``, ``auto`` (digit scenes: none,
    COCO: crop+flip). ``label_smoothing`` and ``precise_bn`` do not apply (the detector's
    losses are torchvision's; BatchNorm statistics are not recomputed)."""

    task: str = "detect"
    model: str = DET_DEFAULT_MODEL
    data: str = DET_DEFAULT_DATA
    batch_size: int = 8
    lr: float = 1e-3
    label_smoothing: float = 0.0
    weight_decay: float = 1e-4

    def validate(self) -> None:
        super().validate()
        if self.label_smoothing:
            raise ValueError("label_smoothing does not apply to detection (the losses are the detector's own)")
        if self.precise_bn:
            raise ValueError("precise_bn does not apply to detection; leave it at 0")


def check_detection_model(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a registered detection model."""
    from visattn.registry import list_models, model_entry

    task = model_entry(name).task
    if task != "detect":
        raise ValueError(
            f"detection needs a detection model; {name!r} is a {task} model "
            f"(detection models: {', '.join(list_models('detect'))})"
        )


def _has_mask_head(model: nn.Module) -> bool:
    heads = getattr(model, "roi_heads", None)
    return bool(heads is not None and heads.has_mask())


@torch.no_grad()
def predict_batches(
    model: nn.Module, images: Sequence[torch.Tensor], batch_size: int, device, autocast=None
) -> list[dict[str, torch.Tensor]]:
    """The detector's eval-mode outputs for ``images`` (each (3, H, W) in 0..1), on the CPU."""
    import contextlib

    model.eval()
    outs: list[dict[str, torch.Tensor]] = []
    for i in range(0, len(images), batch_size):
        xs = [x.to(device) for x in images[i : i + batch_size]]
        with autocast() if autocast is not None else contextlib.nullcontext():
            got = model(xs)
        outs += [{k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in o.items()} for o in got]
    return outs


def evaluate_detector(model: nn.Module, bundle: DetDataBundle, batch_size: int = 16, device="cpu") -> dict[str, Any]:
    """COCOeval of ``model`` on ``bundle.test``: ``{"box": {...}, "mask": {...}}`` (module docstring)."""
    ds = bundle.test
    outs = predict_batches(model, [ds.item(i)[0] for i in range(len(ds))], batch_size, device)
    res = coco_results(outs, ds.image_ids, bundle.cat_ids)
    gt = coco_ground_truth(ds, bundle.cat_ids, bundle.classes)
    return coco_evaluate(gt, res, ("bbox", "segm") if _has_mask_head(model) and ds.has_masks else ("bbox",))


class DetTrainer(Trainer):
    """One detection run (see module docstring); the engine's :class:`Trainer` with task hooks."""

    task = "detect"
    cfg: DetTrainConfig

    def __init__(
        self,
        cfg: DetTrainConfig,
        data: DetDataBundle | None = None,
        callbacks: Sequence[Any] = (),
        bar_position: int = 0,
    ):
        if not isinstance(cfg, DetTrainConfig):
            raise TypeError(f"DetTrainer needs a DetTrainConfig, got {type(cfg).__name__}")
        super().__init__(cfg, data, callbacks, bar_position)
        self._gt = None

    def _setup(self) -> None:
        cfg = self.cfg
        check_detection_model(cfg.model)
        if self.data is None:
            self.data = load_det_data(cfg.data, cfg.image_size, seed=cfg.seed)
        if not isinstance(self.data, DetDataBundle):
            raise TypeError(f"detection training needs a DetDataBundle, got {type(self.data).__name__}")
        super()._setup()
        if _has_mask_head(self.model) and not self.data.train.has_masks:
            raise ValueError(f"{cfg.model} predicts masks, but {self.data.name!r} has no instance masks")

    def _bundle(self) -> DetDataBundle:
        b = super()._bundle()
        if not isinstance(b, DetDataBundle):
            raise TypeError(f"detection training needs a DetDataBundle, got {type(b).__name__}")
        return b

    def _build_model(self, b) -> nn.Module:
        cfg = self.cfg
        kw = {"image_mean": list(b.mean), "image_std": list(b.std), **(cfg.model_kwargs or {})}
        from visattn.registry import create_model

        model = create_model(
            cfg.model,
            num_classes=b.num_classes,
            attention=cfg.attention,
            attn_kwargs=cfg.attn_kwargs,
            **kw,
            **({"pretrained": cfg.pretrained} if cfg.pretrained else {}),
        )
        pcfg = getattr(model, "pretrained_cfg", None)
        if pcfg and "image_mean" not in (cfg.model_kwargs or {}):  # normalise as the weights were trained
            tf: Any = model.transform
            tf.image_mean, tf.image_std = list(pcfg["mean"]), list(pcfg["std"])
        return model

    def _batches(self, epoch: int) -> DetEpochBatches:
        b = self._bundle()
        return DetEpochBatches(
            b.train,
            self.cfg.batch_size,
            epoch,
            self.cfg.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            augment=self.augment,
            merge_single_last=self.merge_single_last,
        )

    def _run_config(self) -> dict[str, Any]:
        d = super()._run_config()
        d.update(task="detect")
        return d

    def _train_step(self, x, y, batch: int, num_batches: int) -> torch.Tensor:
        cfg = self.cfg
        with self._autocast():
            losses = self.fwd(list(x), list(y))
        loss = sum(v.float() for v in losses.values())
        assert isinstance(loss, torch.Tensor)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self._call("after_backward")
        self._stop_if_not_finite(float(loss.detach()), batch, num_batches)
        if cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        n = len(x)
        objects = sum(int(t["boxes"].shape[0]) for t in y)
        return torch.tensor([float(loss.detach()) * n, objects, n], dtype=torch.float64)

    def _train_fields(self, tot: torch.Tensor) -> dict[str, Any]:
        return {"train_loss": float(tot[0] / tot[2]), "train_objects_per_image": float(tot[1] / tot[2])}

    def _bar_fields(self, running: torch.Tensor) -> dict[str, object]:
        return {"loss": f"{running[0] / running[2]:.3f}"}

    def _eval_fields(self) -> dict[str, Any]:
        ev = self.evaluate_coco()
        out: dict[str, Any] = {}
        for kind in ("box", "mask"):
            for k in AP_KEYS:
                out[f"test_{kind}_{k}"] = ev[kind][k] if kind in ev else None
        return out

    def _epoch_line(self, rec: dict[str, Any]) -> str:
        def f(v):
            return "null" if v is None else f"{v:.3f}"

        mask = (
            f" | mask AP {f(rec['test_mask_ap'])} AP50 {f(rec['test_mask_ap50'])}"
            if rec.get("test_mask_ap") is not None
            else ""
        )
        return (
            f"epoch {rec['epoch']}/{self.cfg.epochs}: train loss {rec['train_loss']:.4f} | box AP "
            f"{f(rec['test_box_ap'])} AP50 {f(rec['test_box_ap50'])}{mask} | {rec['images_per_s']:.1f} img/s"
        )

    def _plot(self, path: Path, title: str) -> None:
        plot_panels(
            self.history,
            path,
            [
                ("train loss (summed)", [("train_loss", "train", 1.0)]),
                (
                    "test AP (%)",
                    [
                        ("test_box_ap", "box AP", 100.0),
                        ("test_box_ap50", "box AP50", 100.0),
                        ("test_mask_ap", "mask AP", 100.0),
                    ],
                ),
            ],
            title,
        )

    def evaluate(self) -> tuple[float, float]:
        """(nan, box AP): the engine's (loss, accuracy) pair; :meth:`evaluate_coco` has everything."""
        ev = self.evaluate_coco()
        return float("nan"), float(ev["box"]["ap"] or 0.0)

    @torch.no_grad()
    def evaluate_coco(self) -> dict[str, Any]:
        """COCOeval (bbox, and segm for Mask R-CNN) on the test split; every process predicts its
        share, the results are gathered and scored on every process."""
        b = self._bundle()
        ds = b.test
        idx = eval_indices(len(ds), self.dist.rank, self.dist.world_size).tolist()
        bs = self.cfg.eval_batch_size or 2 * self.cfg.batch_size
        outs = predict_batches(self.model, [ds.item(i)[0] for i in idx], bs, self.device, self._autocast)
        res = coco_results(outs, [ds.image_ids[i] for i in idx], b.cat_ids)
        if self.dist.distributed:
            import torch.distributed as dist

            parts: list[Any] = [None] * self.dist.world_size
            dist.all_gather_object(parts, res)
            res = [r for p in parts for r in p]
        if self._gt is None:
            self._gt = coco_ground_truth(ds, b.cat_ids, b.classes)
        types = ("bbox", "segm") if _has_mask_head(self.model) and ds.has_masks else ("bbox",)
        self.net.train()
        return coco_evaluate(self._gt, res, types)

    def _finish(self) -> TrainResult:
        res = super()._finish()
        if self.out is not None and self.dist.is_main:
            path = self.out / "config.json"
            info = json.loads(path.read_text())
            b = self._bundle()
            info.update(task="detect", cat_ids=list(b.cat_ids), data=b.name, seed=self.cfg.seed)
            atomic_write_text(path, json.dumps(strict(info), indent=2, allow_nan=False))
        return res


def train_detect(
    cfg: DetTrainConfig, data: DetDataBundle | None = None, callbacks: Sequence[Any] = (), bar_position: int = 0
) -> TrainResult:
    """Run one detection job (see :class:`DetTrainer`). ``data`` skips loading ``cfg.data``."""
    return DetTrainer(cfg, data, callbacks, bar_position).run()


# ---------------------------------------------------------------------------
# A trained detector on images: boxes, masks and scores drawn, COCO results written
# ---------------------------------------------------------------------------


def load_detector(weights: str | os.PathLike, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The detector of a ``visattn train --task detect`` run folder (or its ``model.safetensors``)
    and its ``config.json``."""
    from visattn.models.io import load_weights
    from visattn.registry import create_model

    w = Path(weights)
    folder = w if w.is_dir() else w.parent
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(
            f"no config.json in {str(folder)!r}: pass the folder of a `visattn train --task detect` run"
        )
    try:
        info = json.loads(cfg_path.read_text())
    except ValueError as e:
        raise ValueError(f"{cfg_path}: malformed JSON ({e})") from None
    if not isinstance(info, dict) or info.get("task") != "detect" or not isinstance(info.get("config"), dict):
        raise ValueError(f"{cfg_path} is not the config of a detection run (task 'detect')")
    c = info["config"]
    kw = {"image_mean": info["mean"], "image_std": info["std"], **(c.get("model_kwargs") or {})}
    model = create_model(
        c["model"],
        num_classes=len(info["classes"]),
        attention=c.get("attention"),
        attn_kwargs=c.get("attn_kwargs"),
        **kw,
    )
    load_weights(model, folder / "model.safetensors" if w.is_dir() else w)
    return model.to(device).eval(), info


def draw_detections(
    image: torch.Tensor, out: dict[str, torch.Tensor], classes: Sequence[str], scale: int = 4
) -> torch.Tensor:
    """``image`` (3, H, W) uint8 with the masks, boxes, class names and scores of ``out`` drawn by
    torchvision.utils (``draw_segmentation_masks``, ``draw_bounding_boxes``), upscaled ``scale`` x."""
    import torch.nn.functional as F
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    img = F.interpolate(image[None].float(), scale_factor=scale, mode="nearest")[0].to(torch.uint8)
    if "masks" in out and len(out["masks"]):
        m = F.interpolate(out["masks"].float(), scale_factor=scale, mode="bilinear")[:, 0] > 0.5
        img = draw_segmentation_masks(img, m, alpha=0.45)
    if len(out["boxes"]):
        labels = [f"{classes[int(k)]} {float(s):.2f}" for k, s in zip(out["labels"], out["scores"])]
        img = draw_bounding_boxes(img, out["boxes"] * scale, labels, colors="yellow", width=2)
    return img


def predict_detect(
    weights: str | os.PathLike,
    image: str,
    out_png: str | os.PathLike,
    results: str | os.PathLike | None = None,
    score_thresh: float = 0.5,
    model_name: str | None = None,
) -> tuple[Path, Path, list[dict[str, Any]]]:
    """Run a trained detector on ``image`` (a file, or ``digitscenes:K``: test scene K of the run's
    data): the PNG with the detections at score >= ``score_thresh`` drawn, and a COCO results
    JSON (every detection; default: ``out_png`` with ``.json``). ``model_name``, when given, must be
    the run's model. Returns (png, json, results)."""
    from PIL import Image

    from visattn._io import atomic_path
    from visattn.data.segmentation import read_image

    if not 0.0 <= score_thresh <= 1.0:
        raise ValueError(f"score_thresh must be in [0, 1], got {score_thresh!r}")
    model, info = load_detector(weights)
    if model_name is not None and model_name != info["config"]["model"]:
        raise ValueError(
            f"the weights were trained as model {info['config']['model']!r} (see their config.json), not {model_name!r}"
        )
    image_id = 1
    if image.startswith("digitscenes:"):
        k_text = image.partition(":")[2]
        if not k_text.isdigit():
            raise ValueError(f"expected digitscenes:K with K a test-scene number, got {image!r}")
        from visattn.data.detection import load_digit_instances

        k = int(k_text)
        b = load_digit_instances(info.get("image_size") or 64, n_test=max(500, k + 1), seed=int(info.get("seed") or 0))
        x, image_id = b.test.images[k], b.test.image_ids[k]
    else:
        x = read_image(image)
    out = predict_batches(model, [x.float() / 255.0], 1, "cpu")[0]
    res = coco_results([out], [image_id], info["cat_ids"])
    keep = out["scores"] >= score_thresh
    drawn = draw_detections(x, {k: v[keep] for k, v in out.items()}, info["classes"])
    png = Path(out_png)
    with atomic_path(png, suffix=".png") as tmp:
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
    js = Path(results) if results is not None else png.with_suffix(".json")
    atomic_write_text(js, json.dumps(res, allow_nan=False))
    return png, js, res
