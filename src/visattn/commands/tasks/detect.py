"""``--task detect``: object detection and instance segmentation on torchvision's engine (docs/detection.md)."""

from __future__ import annotations

import argparse
import os

from visattn.commands.tasks import CliTask, say, with_defaults
from visattn.train.detect import DET_DEFAULT_DATA, DET_DEFAULT_MODEL, DetTrainConfig

__all__ = ["TASK", "TRAIN_DEFAULTS", "config_from_args", "train", "predict", "predict_options"]

#: The classification defaults of ``visattn train`` that cannot detect, replaced when not typed.
TRAIN_DEFAULTS = {
    "model": DET_DEFAULT_MODEL,
    "data": DET_DEFAULT_DATA,
    "lr": DetTrainConfig.lr,
    "batch_size": DetTrainConfig.batch_size,
    "label_smoothing": DetTrainConfig.label_smoothing,
}


def config_from_args(args: argparse.Namespace) -> DetTrainConfig:
    """A :class:`DetTrainConfig` from ``visattn train`` arguments (:data:`TRAIN_DEFAULTS` where not typed)."""
    from visattn.commands.train_cmd import config_from_args as base_config

    return DetTrainConfig(**base_config(with_defaults(args, TRAIN_DEFAULTS)).as_dict())


def train(args: argparse.Namespace) -> int:
    """``visattn train --task detect``: train and print the final box (and mask) AP."""
    from visattn.train.detect import train_detect

    res = train_detect(config_from_args(args))
    if res.final and res.output is not None and os.environ.get("RANK", "0") == "0":
        f = res.final

        def ap(k):
            return "n/a" if f.get(k) is None else f"{f[k]:.3f}"

        mask = (
            f", mask AP {ap('test_mask_ap')} (AP50 {ap('test_mask_ap50')})" if f.get("test_mask_ap") is not None else ""
        )
        say(
            f"test box AP {ap('test_box_ap')} (AP50 {ap('test_box_ap50')}){mask} after {f['epoch']} epochs; "
            f"weights, metrics and curves in {res.output}"
        )
    return 0


def predict_options(g) -> None:
    """The options ``visattn predict`` gains for ``--task detect``."""
    g.add_argument(
        "--results",
        default=None,
        metavar="JSON",
        help="COCO results file of every detection (default: the --out PNG's name with .json)",
    )
    g.add_argument(
        "--score-thresh",
        type=float,
        default=None,
        help="draw detections scoring at least this (default 0.5; the JSON holds every detection)",
    )


def predict(args: argparse.Namespace) -> int:
    """``visattn predict --task detect``: boxes, masks and scores drawn; the COCO results JSON written."""
    from visattn.commands._args import given_model
    from visattn.train.detect import predict_detect

    png, js, res = predict_detect(
        args.weights,
        args.image,
        args.out,
        results=args.results,
        score_thresh=0.5 if args.score_thresh is None else args.score_thresh,
        model_name=given_model(args),
    )
    shown = [r for r in res if r["score"] >= (0.5 if args.score_thresh is None else args.score_thresh)]
    print(f"{len(shown)} detections drawn ({len(res)} in the results file)")
    print(png)
    print(js)
    return 0


TASK = CliTask(
    "detect",
    "object detection and instance segmentation on torchvision's Mask R-CNN, Faster R-CNN, RetinaNet, FCOS "
    "(data digitscenes | coco:PATH; docs/detection.md)",
    train=train,
    train_defaults=TRAIN_DEFAULTS,
    predict=predict,
    predict_options=predict_options,
    compare=True,
)
