"""``visattn predict --model MODEL --weights W --image I --out O.png``: a segmentation model's mask over an image."""

from __future__ import annotations

from visattn.commands._args import add_model_option, model_option
from visattn.commands.train_cmd import _json_dict

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="draw a segmentation model's predicted mask over an image (PNG)",
        description="Run a trained segmentation model on one image and write a PNG: the image, the ground truth "
        "(for digitscenes:K) and the predicted mask blended over the image, with a legend. Class "
        "names, normalisation and mechanism come from the run's config.json beside the weights.",
    )
    add_model_option(
        p, "registered segmentation model the weights belong to", "the older spelling of --model (positional)"
    )
    p.add_argument(
        "--weights",
        required=True,
        metavar="PATH",
        help="run folder of `visattn train --task segment`, or a model.safetensors file",
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
    p.set_defaults(func=run)


def run(args) -> int:
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
