"""``visattn viz --model NAME`` (or ``viz --attention MECH`` for a bare mechanism): draw every head's attention (or the gradient receptive field) for one query pixel."""

from __future__ import annotations

import json

from visattn.commands._args import add_model_option, given_model, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser(
        "viz",
        help="draw per-layer, per-head attention for a query pixel as a PNG grid",
        description="For a registered model (fresh, or loaded from --weights) or a bare mechanism, draw every "
        "head's attention probabilities for one query pixel, one row per layer; mechanisms without "
        "an attention map get their gradient receptive field |d out[query] / d in|.",
    )
    add_model_option(
        p,
        "registered model to draw (see `visattn list`); draw a bare mechanism with --attention NAME alone",
        "model or mechanism name: the older spelling of --model (a mechanism is drawn bare)",
    )
    p.add_argument(
        "--image",
        default=None,
        metavar="PATH",
        help="image file read with Pillow (default: scikit-image's astronaut photograph)",
    )
    p.add_argument(
        "--query",
        type=int,
        nargs=2,
        default=None,
        metavar=("Y", "X"),
        help="query pixel in the image (default: the centre)",
    )
    p.add_argument(
        "--weights",
        default=None,
        metavar="SOURCE",
        help="safetensors state dict of the model, or published / converted weights (a URL, hf-hub:..., a name from "
        "`visattn convert --list`, a checkpoint file): then their classes, input size and normalisation",
    )
    p.add_argument(
        "--out",
        default="viz.png",
        metavar="PNG|DIR",
        help="output .png file, or a directory to write viz.png into (default: viz.png)",
    )
    p.add_argument(
        "--attention",
        default=None,
        metavar="MECH",
        help="swap the model's mixer for this mechanism; without a model, draw this mechanism bare",
    )
    p.add_argument("--attn-kwargs", default=None, metavar="JSON", help="mixer arguments as JSON")
    p.add_argument("--num-classes", type=positive_int, default=10, help="classifier size (must match --weights)")
    p.add_argument("--dim", type=positive_int, default=64, help="channels for a bare mechanism (default 64)")
    p.add_argument("--size", type=positive_int, default=32, help="input side for a bare mechanism (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of fresh weights (default 0)")
    p.set_defaults(func=run)


def target_of(args) -> tuple[str, str | None]:
    """(what to draw, mechanism swapped into it) from --model / the positional name / --attention."""
    from visattn.registry import list_attention, list_models

    name = given_model(args)
    if name is None:
        if args.attention is None:
            raise ValueError(
                "nothing to draw: name a model with --model NAME or a bare mechanism with --attention NAME "
                "(see `visattn list`)"
            )
        if args.attention not in list_attention():
            raise ValueError(f"unknown mechanism --attention {args.attention!r}; expected one of {list_attention()}")
        return args.attention, None  # a bare mechanism
    if args.model is not None and name not in list_models() and name in list_attention():
        raise ValueError(f"--model {name!r} is a mechanism, not a model; draw it bare with --attention {name}")
    if name in list_attention() and args.attention not in (None, name):
        raise ValueError(
            f"{name!r} is a bare mechanism; --attention {args.attention!r} swaps a model's mixer and does not apply"
        )
    return name, (None if name in list_attention() else args.attention)


def run(args) -> int:
    from visattn.viz import visualize

    target, attention = target_of(args)

    kw = None
    if args.attn_kwargs:
        try:
            kw = json.loads(args.attn_kwargs)
        except json.JSONDecodeError as e:
            raise ValueError(f"--attn-kwargs must be a JSON object, got {args.attn_kwargs!r}: {e}") from e
        if not isinstance(kw, dict):
            raise ValueError(f"--attn-kwargs must be a JSON object, got {args.attn_kwargs!r}")
    path = visualize(
        target,
        out=args.out,
        image=args.image,
        query=args.query,
        weights=args.weights,
        attention=attention,
        attn_kwargs=kw,
        num_classes=args.num_classes,
        dim=args.dim,
        size=args.size,
        seed=args.seed,
    )
    print(path)
    return 0
