"""``visattn compare --task segment``: one segmentation model per mechanism on the same data.

The backbone + head (default :data:`visattn.train.segment.SEG_DEFAULT_MODEL`) is built once per
mechanism and trained with :func:`visattn.train.segment.train_segment` (same seed, data order,
schedule, epochs). Per run: ``miou`` (primary) and ``pixel_acc`` on the test set. Costs: ``flops``
and ``latency_ms`` for one ``image_size`` x ``image_size`` image, ``peak_mib`` for one training
step (forward, pixel cross-entropy on random masks, backward). Results go to ``OUT/segment/``.
"""

from __future__ import annotations

from typing import Any

import torch

from visattn.compare.plugin import Metric, Task, TaskPlugin, register_task
from visattn.train.segment import SEG_DEFAULT_DATA, SEG_DEFAULT_MODEL

__all__ = ["SegmentTask", "SEG_TASKS"]

#: The built-in data set: digit scenes at 32 px, sized so every mechanism trains on 2 CPU cores in minutes.
SEG_TASKS: dict[str, Task] = {
    SEG_DEFAULT_DATA: Task(
        SEG_DEFAULT_DATA,
        SEG_DEFAULT_DATA,
        32,
        4,
        1,
        0.0,
        "digits on textured scenes: label every pixel with its digit or background",
    ),
}


class SegmentTask(TaskPlugin):
    """Semantic segmentation: a class per pixel, test mIoU and pixel accuracy."""

    name = "segment"
    about = "a segmentation model per mechanism, test mIoU and pixel accuracy (docs/segmentation.md)"
    metrics = (
        Metric("miou", "mIoU", "test mean IoU", source="test_miou"),
        Metric("pixel_acc", "pixel acc", "test pixel accuracy over labelled pixels", source="test_pixel_acc"),
    )
    datasets = SEG_TASKS
    custom_data = SEG_TASKS[SEG_DEFAULT_DATA]  # a segfolder:PATH takes its size and epochs unless given
    defaults = {"model": SEG_DEFAULT_MODEL, "tasks": (SEG_DEFAULT_DATA,), "seeds": 1, "batch_size": 16, "lr": 5e-3}

    def check_model(self, model: str) -> None:
        from visattn.train.segment import check_segmentation_model

        check_segmentation_model(model)

    def load_data(self, data: Task, seed: int):
        from visattn.data.segmentation import load_seg_data

        return load_seg_data(data.data, data.image_size, seed=seed)

    def data_info(self, bundle) -> dict[str, Any]:
        return {**super().data_info(bundle), "ignore_index": bundle.ignore_index}

    def train(self, config: dict[str, Any], bundle):
        from visattn.train.segment import SegTrainConfig, train_segment

        return train_segment(SegTrainConfig(**config), data=bundle, bar_position=1)

    def cost_step(self, model, data, info, batch, device):
        s = data.image_size
        x = torch.randn(batch, 3, s, s, device=device)
        y = torch.randint(0, info["num_classes"], (batch, s, s), device=device)
        return lambda: torch.nn.functional.cross_entropy(model(x), y)


register_task(SegmentTask())
