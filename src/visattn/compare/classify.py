"""``visattn compare`` (``--task classify``, the main job): the same backbone per mechanism, data set and seed.

For every mechanism (default: every registered one, the ``conv`` baseline included) the
backbone (default: ``resnet_tiny`` cut to its first two stages, :data:`SHALLOW_TINY`) is
built with that mechanism in its spatial-mixer slot and trained with
:func:`visattn.train.train` on each data set, once per seed (same seeds, data, schedule and
epochs for every mechanism). Two built-in data sets (:data:`TASKS`) pull in opposite
directions:

* ``digits`` — scikit-learn's handwritten digit scans at their native 8 x 8: local shape
  matters and position helps; every mechanism's receptive field covers the image.
* ``longrange`` — :mod:`visattn.data.longrange` at 16 x 16: are two marks, at least 8
  columns apart, the same colour? The shallow backbone's 3x3 local mixers (conv, local,
  slide) never see both marks, which caps them at 75% (provably: see that module) and in
  practice keeps them near chance; swin's windows are bridged by the strided block's
  average pool, so the proof does not cover it (it too stays near chance in practice);
  mechanisms that mix the whole map can compare them.

Per run: ``top1``, test accuracy after the last epoch (BatchNorm statistics recomputed over a
few training batches first, ``precise_bn``). Costs: random images and a cross-entropy step on
random labels (:mod:`visattn.compare.core` measures them).

"Trained enough": each data set's epochs are chosen so that every mechanism is near its own
plateau at the default budget (docs/compare.md records the check: accuracy within about a
point of a run with 4x the epochs).
"""

from __future__ import annotations

from typing import Any

import torch

from visattn.compare.plugin import Metric, Task, TaskPlugin, register_task

__all__ = ["ClassifyTask", "TASKS", "SHALLOW_TINY", "DEFAULTS"]

#: The built-in data sets (epochs from the plateau check recorded in docs/compare.md).
TASKS: dict[str, Task] = {
    "digits": Task(
        "digits",
        "digits",
        8,
        8,
        2,
        0.1,
        "handwritten digit scans at 8x8: local shape, every mixer sees the whole image",
    ),
    "longrange": Task(
        "longrange",
        "longrange",
        16,
        2,
        1,
        0.5,
        "same colour? two marks >= 8 columns apart: local mixers never see both",
    ),
}

#: ``resnet_tiny`` cut to its first two stages (stem, a stride-1 block, a stride-2 block): with a
#: 3x3 local mixer (conv, local, slide; each followed by the strided block's 3x3 average pool) a
#: feature sees 9 input columns, fewer than the 10 it needs to touch both long-range marks. swin's 7x7 windows
#: tile a 16-wide map at columns 0-6, 7-13, 14-15 and that pool straddles two windows: some of its
#: features see 15 columns. 10k-30k parameters.
SHALLOW_TINY: dict[str, Any] = {"depths": [1, 1], "widths": [16, 32]}

#: Defaults of the main job: 10 mechanisms x 2 data sets x 2 seeds in <= 8 minutes on 2 CPU cores.
DEFAULTS: dict[str, Any] = {
    "model": "resnet_tiny",
    "tasks": ("digits", "longrange"),
    "seeds": 2,
    "seed": 0,
    "batch_size": 64,
    "lr": 3e-3,
    "latency_batch": 1,
    "precise_bn": 5,
    "threads": 1,
}


class ClassifyTask(TaskPlugin):
    """Image classification: one label per image, test top-1 accuracy."""

    name = "classify"
    folder = ""  # the main job: compare.json, compare.png and runs/ at the top of the output
    about = "the same backbone on a local and a long-range task, test top-1 accuracy (the main job)"
    metrics = (Metric("top1", "top-1", "test accuracy", source="test_acc", values_key="accs"),)
    datasets = TASKS
    defaults = DEFAULTS

    def model_kwargs(self, model: str) -> dict[str, Any]:
        return dict(SHALLOW_TINY) if model == "resnet_tiny" else {}

    def load_data(self, data: Task, seed: int):
        from visattn.data import load_data

        return load_data(data.data, data.image_size, seed=seed)

    def train(self, config: dict[str, Any], bundle):
        from visattn.train import TrainConfig, train

        return train(TrainConfig(**config), data=bundle, bar_position=1)

    def cost_step(self, model, data, info, batch, device):
        s = data.image_size
        x = torch.randn(batch, 3, s, s, device=device)
        y = torch.randint(0, info["num_classes"], (batch,), device=device)
        return lambda: torch.nn.functional.cross_entropy(model(x), y)


register_task(ClassifyTask())
