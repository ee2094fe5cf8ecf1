"""``visattn predict --model MODEL --weights W --image I --out O.png``: a trained model's prediction drawn over an image."""

from __future__ import annotations

from visattn.commands._args import add_model_option
from visattn.commands.tasks import add_task_argument, chosen
from visattn.commands.train_cmd import _json_dict

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="draw a trained model's prediction over an image (PNG; segmentation: the predicted mask)",
        description="Run a trained model on one image and write a PNG. --task segment (the default): the image, "
        "the ground truth (for digitscenes:K) and the predicted mask blended over the image, with a legend. "
        "Class names, normalisation and mechanism come from the run's config.json beside the weights.",
    )
    add_model_option(p, "registered model the weights belong to", "the older spelling of --model (positional)")
    p.add_argument(
        "--weights",
        required=True,
        metavar="PATH",
        help="run folder of `visattn train --task ...`, or a model.safetensors file",
    )
    p.add_argument(
        "--image",
        required=True,
        metavar="PATH",
        help="image file (read with Pillow), or digitscenes:K for test scene K of the built-in data",
    )
    p.add_argument("--out", default="predict.png", metavar="PNG", help="output PNG (default: %(default)s)")
    p.add_argument(
        "--attention",
        default=None,
        metavar="MECH",
        help="mechanism the model was trained with (default: from config.json)",
    )
    p.add_argument(
        "--attn-kwargs", type=_json_dict, default=None, metavar="JSON", help="its arguments (default: from config.json)"
    )
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classes of the model (needed only without a config.json beside the weights)",
    )
    add_task_argument(p, "predict", default="segment")
    p.set_defaults(func=run)


def run(args) -> int:
    task = chosen(args, "predict")
    assert task.predict is not None  # chosen() returns a task that predicts
    return task.predict(args)
