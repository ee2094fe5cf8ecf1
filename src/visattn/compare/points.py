"""``visattn compare --task points``: one PCT per set-capable mechanism on the same point clouds.

PCT (default ``pct``, with the neighbour embedding) is built once per mechanism in its four
offset-attention layers and trained with :func:`visattn.train.points.train_points` (same seed,
data order, schedule, epochs). Only mechanisms that run on an unordered set are compared by
default (``AttentionInfo.sets``; a grid-only one named with ``--mechanisms`` fails its row with
the reason). Per run: ``acc`` (primary, overall test accuracy) and ``mean_class_acc``. Costs:
``flops`` and ``latency_ms`` for one cloud, ``peak_mib`` for one training step. Results go to
``OUT/points/``.
"""

from __future__ import annotations

from typing import Any

import torch

from visattn.compare.plugin import Metric, Task, TaskPlugin, register_task

__all__ = ["PointsTask", "POINT_TASKS", "POINT_MODEL_KWARGS"]

#: The built-in shape set at 256 points, sized so every mechanism trains on 2 CPU cores in minutes.
POINT_TASKS: dict[str, Task] = {
    "shapes": Task(
        "shapes",
        "shapes",
        256,
        6,
        1,
        1 / 8,
        "points on 8 parametric solids in random pose, scale and anisotropy: name the solid",
    ),
}

#: PCT's neighbour embedding cut down for 256-point clouds on a CPU (64 and 32 centres, 16 neighbours).
POINT_MODEL_KWARGS: dict[str, Any] = {"k": 16, "samples": [64, 32]}


class PointsTask(TaskPlugin):
    """Point-cloud shape classification: overall and mean-class test accuracy."""

    name = "points"
    about = "a PCT per set-capable mechanism, point-cloud shape accuracy (docs/points.md)"
    metrics = (
        Metric("acc", "acc", "overall test accuracy", source="test_acc"),
        Metric("mean_class_acc", "mean-class acc", "mean over classes of test accuracy", source="test_mean_class_acc"),
    )
    datasets = POINT_TASKS
    custom_data = POINT_TASKS["shapes"]
    defaults = {"model": "pct", "tasks": ("shapes",), "seeds": 1, "batch_size": 32, "lr": 2e-3, "precise_bn": 0}

    def default_mechanisms(self) -> list[str]:
        from visattn.layers.sets import set_capable

        return set_capable()

    def model_kwargs(self, model: str) -> dict[str, Any]:
        return dict(POINT_MODEL_KWARGS) if model == "pct" else {}

    def check_model(self, model: str) -> None:
        from visattn.registry import list_models, model_entry

        task = model_entry(model).task
        if task != "points":
            raise ValueError(
                f"--task points needs a point-cloud classifier ({', '.join(list_models('points'))}); {model!r} is a {task} model"
            )

    def load_data(self, data: Task, seed: int):
        from visattn.data.points import load_point_data

        return load_point_data(data.data, data.image_size, seed=seed, task="points")

    def train(self, config: dict[str, Any], bundle):
        from visattn.train.points import PointTrainConfig, train_points

        cfg = dict(config)
        cfg["num_points"] = cfg.pop("image_size")
        return train_points(PointTrainConfig(**cfg), data=bundle, bar_position=1)

    def cost_input(self, data: Task, batch: int, device: torch.device) -> Any:
        return torch.randn(batch, 3, data.image_size, device=device)

    def cost_step(self, model, data, info, batch, device):
        x = torch.randn(batch, 3, data.image_size, device=device)
        y = torch.randint(0, info["num_classes"], (batch,), device=device)
        return lambda: torch.nn.functional.cross_entropy(model(x), y)


register_task(PointsTask())
