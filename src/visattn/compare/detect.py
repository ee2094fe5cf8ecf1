"""``visattn compare --task detect``: one small detector per mechanism on the same data.

The detector (default :data:`visattn.train.detect.DET_DEFAULT_MODEL`, torchvision's Mask R-CNN on
``resnet_tiny``) is built once per mechanism (``attention=NAME`` in its backbone) and trained with
:func:`visattn.train.detect.train_detect` (same seed, data order, schedule, epochs). Per run:
``box_ap`` (primary), ``box_ap50`` and ``mask_ap`` from COCOeval on the held-out scenes. The
built-in data set is a cut of the digit scenes (:data:`DET_SCENES` train / test scenes, 64 px),
sized so that 10 mechanisms x 2 seeds run in about 10 minutes on 2 CPU cores. Costs: ``flops`` and
``latency_ms`` for one 64 x 64 image (a list of one, torchvision's input), ``peak_mib`` for one
training step on random boxes and masks. Results go to ``OUT/detect/``.
"""

from __future__ import annotations

from typing import Any

import torch

from visattn.compare.plugin import Metric, Task, TaskPlugin, register_task
from visattn.data.detection import random_det_batch
from visattn.train.detect import DET_DEFAULT_DATA, DET_DEFAULT_MODEL

__all__ = ["DetectTask", "DET_TASKS", "DET_SCENES"]

#: Train and test scenes of the built-in compare data (a cut of ``digitscenes``).
DET_SCENES = (200, 50)

DET_TASKS: dict[str, Task] = {
    DET_DEFAULT_DATA: Task(
        DET_DEFAULT_DATA,
        DET_DEFAULT_DATA,
        64,
        2,
        1,
        0.0,
        f"2-5 handwritten digits per 64 px scene ({DET_SCENES[0]} train / {DET_SCENES[1]} test scenes): "
        "box and mask each digit",
    ),
}


class DetectTask(TaskPlugin):
    """Detection and instance segmentation: COCO box AP, AP50 and mask AP on held-out scenes."""

    name = "detect"
    about = "a small Mask R-CNN per mechanism, COCO box and mask AP (docs/detection.md)"
    metrics = (
        Metric("box_ap", "box AP", "test box AP (COCO, IoU .50:.95)", source="test_box_ap"),
        Metric("box_ap50", "box AP50", "test box AP at IoU 0.5", source="test_box_ap50"),
        Metric("mask_ap", "mask AP", "test mask AP (COCO, IoU .50:.95)", source="test_mask_ap"),
    )
    datasets = DET_TASKS
    custom_data = None  # coco:PATH needs --image-size and --epochs
    defaults = {
        "model": DET_DEFAULT_MODEL,
        "tasks": (DET_DEFAULT_DATA,),
        "seeds": 2,
        "batch_size": 4,
        "lr": 3e-3,
        "precise_bn": 0,
    }

    def check_model(self, model: str) -> None:
        from visattn.train.detect import check_detection_model

        check_detection_model(model)

    def load_data(self, data: Task, seed: int):
        from visattn.data.detection import load_det_data, load_digit_instances

        if data.data == DET_DEFAULT_DATA:
            return load_digit_instances(data.image_size, n_train=DET_SCENES[0], n_test=DET_SCENES[1], seed=seed)
        return load_det_data(data.data, None, seed=seed)

    def data_info(self, bundle) -> dict[str, Any]:
        return {**super().data_info(bundle), "cat_ids": list(bundle.cat_ids)}

    def train(self, config: dict[str, Any], bundle):
        from visattn.train.detect import DetTrainConfig, train_detect

        cfg = {
            **config,
            "precise_bn": 0,
            "image_size": None if bundle.name.startswith("coco:") else config["image_size"],
        }
        return train_detect(DetTrainConfig(**cfg), data=bundle, bar_position=1)

    def cost_input(self, data: Task, batch: int, device: torch.device) -> Any:
        s = data.image_size
        return [torch.rand(3, s, s, device=device) for _ in range(batch)]

    def cost_step(self, model, data, info, batch, device):
        xs, ts = random_det_batch(batch, data.image_size, info["num_classes"])
        xs = [x.to(device) for x in xs]
        ts = [{k: v.to(device) for k, v in t.items()} for t in ts]

        def loss():
            return sum(model(xs, ts).values())

        return loss


register_task(DetectTask())
