"""``--task classify`` (the default): one label per image, top-1 accuracy."""

from __future__ import annotations

import argparse
import os

from visattn.commands.tasks import CliTask, percent, say

__all__ = ["TASK", "train"]


def train(args: argparse.Namespace) -> int:
    """``visattn train``: train and print the final test accuracy."""
    from visattn.commands.train_cmd import config_from_args
    from visattn.train import train as run_training

    res = run_training(config_from_args(args))
    if res.final and res.output is not None and os.environ.get("RANK", "0") == "0":
        say(
            f"test accuracy {percent(res.final['test_acc'])} after {res.final['epoch']} epochs; "
            f"weights, metrics and curves in {res.output}"
        )
    return 0


TASK = CliTask(
    "classify",
    "image classification, one label per image (data digits | cifar10:PATH | folder:PATH; docs/training.md)",
    train=train,
    compare=True,
)
