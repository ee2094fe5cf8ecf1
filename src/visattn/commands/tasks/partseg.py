"""``--task partseg``: a part per point of a point cloud (docs/points.md)."""

from __future__ import annotations

import argparse
import os

from visattn.commands.tasks import CliTask, percent, say

__all__ = ["TASK", "TRAIN_DEFAULTS", "train", "predict"]

#: The classification defaults of ``visattn train`` that cannot segment parts, replaced when not typed.
TRAIN_DEFAULTS = {"model": "pct_partseg", "data": "parts", "label_smoothing": 0.0}


def train(args: argparse.Namespace) -> int:
    """``visattn train --task partseg``: train and print the final instance and category mIoU."""
    from visattn.commands.tasks.points import config_from_args
    from visattn.train.points import PartSegTrainConfig, train_partseg

    res = train_partseg(config_from_args(args, TRAIN_DEFAULTS, PartSegTrainConfig))
    if res.final and res.output is not None and os.environ.get("RANK", "0") == "0":
        f = res.final
        say(
            f"test instance mIoU {percent(f['test_instance_miou'])}, category mIoU "
            f"{percent(f['test_category_miou'])} (point accuracy {percent(f['test_acc'])}) after {f['epoch']} "
            f"epochs; weights, metrics and curves in {res.output}"
        )
    return 0


def predict(args: argparse.Namespace) -> int:
    """``visattn predict --task partseg --image parts:K``: the cloud coloured by predicted part."""
    from visattn.commands._args import model_option
    from visattn.predict_points import predict_parts

    path, pred, classes = predict_parts(
        model_option(args), args.weights, args.image, args.out, attention=args.attention, attn_kwargs=args.attn_kwargs
    )
    counts = pred.bincount(minlength=len(classes))
    print(", ".join(f"{classes[c]} {100 * int(n) / pred.numel():.1f}%" for c, n in enumerate(counts) if n))
    print(path)
    return 0


TASK = CliTask(
    "partseg",
    "point-cloud part segmentation, a part per point (data parts | shapenetpart:DIR; predict --image parts:K "
    "or FILE.h5:K; docs/points.md)",
    train=train,
    train_defaults=TRAIN_DEFAULTS,
    predict=predict,
    shares=("points",),
)
