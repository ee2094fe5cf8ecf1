"""``--task points``: a shape class per point cloud (docs/points.md)."""

from __future__ import annotations

import argparse
import os

from visattn.commands.tasks import CliTask, percent, say, with_defaults

__all__ = ["TASK", "TRAIN_DEFAULTS", "train_options", "config_from_args", "train"]

#: The classification defaults of ``visattn train`` that cannot read point clouds, replaced when not typed.
TRAIN_DEFAULTS = {"model": "pct", "data": "shapes", "label_smoothing": 0.2}


def train_options(g) -> None:
    """The options ``visattn train`` gains for ``--task points`` (and ``--task partseg``)."""
    from visattn.commands._args import positive_int

    g.add_argument(
        "--num-points",
        type=positive_int,
        default=None,
        help="points per cloud, the first N of each (default: 512 for shapes/parts, the files' own for HDF5 data)",
    )
    g.add_argument(
        "--data-size",
        type=positive_int,
        default=None,
        help="generated data (shapes, parts): training clouds per class or category (default 200 / 150); "
        "the test split has a quarter as many",
    )


def config_from_args(args: argparse.Namespace, defaults=TRAIN_DEFAULTS, config_class=None):
    """A point-cloud train config from ``visattn train`` arguments (untyped classification defaults
    become the task's)."""
    from visattn.commands.train_cmd import config_from_args as base_config
    from visattn.train.points import PointTrainConfig

    cls = config_class or PointTrainConfig
    args = with_defaults(args, defaults)
    base = base_config(args).as_dict()
    base.pop("task", None)
    return cls(**base, num_points=args.num_points, data_size=args.data_size)


def train(args: argparse.Namespace) -> int:
    """``visattn train --task points``: train and print the final accuracies."""
    from visattn.train.points import train_points

    res = train_points(config_from_args(args))
    if res.final and res.output is not None and os.environ.get("RANK", "0") == "0":
        f = res.final
        say(
            f"test accuracy {percent(f['test_acc'])} (mean-class {percent(f['test_mean_class_acc'])}) after "
            f"{f['epoch']} epochs; weights, metrics and curves in {res.output}"
        )
    return 0


TASK = CliTask(
    "points",
    "point-cloud shape classification, PCT with any set-capable mechanism (data shapes | modelnet40:DIR; "
    "docs/points.md)",
    train=train,
    train_options=train_options,
    train_defaults=TRAIN_DEFAULTS,
    compare=True,
)
