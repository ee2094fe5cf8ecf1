"""``--task segment``: a class per pixel (docs/segmentation.md)."""

from __future__ import annotations

import argparse
import os

from visattn.commands.tasks import CliTask, percent, say, with_defaults
from visattn.train.segment import SEG_DEFAULT_DATA, SEG_DEFAULT_MODEL, SegTrainConfig

__all__ = ["TASK", "TRAIN_DEFAULTS", "train_options", "config_from_args", "train", "predict"]

#: The classification defaults of ``visattn train`` that cannot segment, replaced when not typed.
TRAIN_DEFAULTS = {
    "model": SEG_DEFAULT_MODEL,
    "data": SEG_DEFAULT_DATA,
    "label_smoothing": SegTrainConfig.label_smoothing,
}


def train_options(g) -> None:
    """The options ``visattn train`` gains for ``--task segment``."""
    from visattn.data.segmentation import IGNORE_INDEX

    g.add_argument(
        "--ignore-index",
        type=int,
        default=None,
        help=f"mask value of unlabelled pixels, left out of loss and metrics (default: {IGNORE_INDEX})",
    )
    g.add_argument(
        "--scale-range",
        type=float,
        nargs=2,
        default=None,
        metavar=("MIN", "MAX"),
        help="random scale of the crop augmentation (default: digitscenes 0.75 1.33, segfolder 0.5 2)",
    )


def config_from_args(args: argparse.Namespace):
    """A :class:`SegTrainConfig` from ``visattn train`` arguments. The classification defaults
    ``--model resnet_tiny``, ``--data digits`` and label smoothing 0.1 become :data:`TRAIN_DEFAULTS`
    when they were not given; typed on the command line they are kept (and refused when they
    cannot segment)."""
    from visattn.commands.train_cmd import config_from_args as base_config
    from visattn.data.segmentation import IGNORE_INDEX

    args = with_defaults(args, TRAIN_DEFAULTS)
    return SegTrainConfig(
        **base_config(args).as_dict(),
        ignore_index=IGNORE_INDEX if args.ignore_index is None else args.ignore_index,
        scale_range=tuple(args.scale_range) if args.scale_range else None,
    )


def train(args: argparse.Namespace) -> int:
    """``visattn train --task segment``: train and print the final mIoU."""
    from visattn.train.segment import train_segment

    res = train_segment(config_from_args(args))
    if res.final and res.output is not None and os.environ.get("RANK", "0") == "0":
        f = res.final
        say(
            f"test mIoU {percent(f['test_miou'])} (pixel accuracy {percent(f['test_pixel_acc'])}) "
            f"after {f['epoch']} epochs; weights, metrics and curves in {res.output}"
        )
    return 0


def predict(args: argparse.Namespace) -> int:
    """``visattn predict --task segment``: the predicted mask over the image, and each class's share."""
    from visattn.commands._args import model_option
    from visattn.predict import predict_image

    path, pred, classes = predict_image(
        model_option(args),
        args.weights,
        args.image,
        args.out,
        attention=args.attention,
        attn_kwargs=args.attn_kwargs,
        num_classes=args.num_classes,
    )
    counts = {classes[c]: int(n) for c, n in enumerate(pred.flatten().bincount(minlength=len(classes))) if n}
    total = pred.numel()
    print(", ".join(f"{name} {100 * n / total:.1f}%" for name, n in counts.items()))
    print(path)
    return 0


TASK = CliTask(
    "segment",
    "semantic segmentation, a class per pixel (data digitscenes | segfolder:PATH; docs/segmentation.md)",
    train=train,
    train_options=train_options,
    train_defaults=TRAIN_DEFAULTS,
    predict=predict,
    compare=True,
)
