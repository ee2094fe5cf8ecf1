"""``--task generate``: a SAGAN whose attention block is any mechanism (docs/generation.md)."""

from __future__ import annotations

import argparse
import os

from visattn.commands._args import int_range, nonneg_int, positive_float, positive_int
from visattn.commands.tasks import CliTask, say, with_defaults
from visattn.train.generate import GEN_DEFAULT_DATA, GenTrainConfig

__all__ = ["TASK", "TRAIN_DEFAULTS", "train_options", "config_from_args", "train"]

#: Shared ``visattn train`` options whose classification default does not fit a GAN (used when not typed).
TRAIN_DEFAULTS = {
    "model": GenTrainConfig.model,
    "data": GEN_DEFAULT_DATA,
    "lr": GenTrainConfig.lr,
    "epochs": GenTrainConfig.epochs,
    "batch_size": GenTrainConfig.batch_size,
    "label_smoothing": GenTrainConfig.label_smoothing,
}


def _ema(text: str) -> float:
    v = float(text)
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1) (0: no EMA), got {text!r}")
    return v


def _policy(text: str) -> str:
    from visattn.train.diffaug import parse_policy

    try:
        parse_policy(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def train_options(g) -> None:
    """The options ``visattn train`` gains for ``--task generate`` (``--lr`` is G's learning rate)."""
    d = GenTrainConfig
    g.add_argument(
        "--discriminator", default=None, metavar="NAME", help="registered discriminator (default: the generator's pair)"
    )
    g.add_argument(
        "--lr-d",
        type=positive_float,
        default=None,
        help=f"D's learning rate (TTUR; default {d.lr_d:g}; --lr is G's, default {d.lr:g})",
    )
    g.add_argument("--n-critic", type=positive_int, default=None, help=f"D steps per G step (default {d.n_critic})")
    g.add_argument("--width", type=positive_int, default=None, help=f"ch of G and D (default {d.width})")
    g.add_argument("--z-dim", type=positive_int, default=None, help=f"latent size (default {d.z_dim})")
    g.add_argument(
        "--conditional",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="class-conditional G (conditional BN) and D (projection) on the data's labels; --no-conditional: "
        f"unconditional (default {'conditional' if d.conditional else 'unconditional'})",
    )
    g.add_argument(
        "--diffaug",
        type=_policy,
        default=None,
        metavar="POLICY",
        help=f"DiffAugment of D's inputs, real and generated: a comma-separated subset of translation, cutout, "
        f"brightness; '' for none (default {d.diffaug!r})",
    )
    g.add_argument(
        "--aux-weight",
        type=float,
        default=None,
        help="class-conditional runs: weight of an AC-GAN auxiliary classifier loss in D (on real images) and G "
        f"(on its samples' requested classes); 0: none (default {d.aux_weight:g})",
    )
    g.add_argument("--ema-decay", type=_ema, default=None, help=f"EMA of G (default {d.ema_decay}; 0: off)")
    g.add_argument(
        "--grid-size",
        type=int_range(1, 1024),
        default=None,
        help=f"samples in each epoch's grid (default {d.grid_size})",
    )
    g.add_argument(
        "--fid-every",
        type=nonneg_int,
        default=None,
        help=f"FID / KID every N epochs and at the end (default {d.fid_every}; 0: never)",
    )
    g.add_argument(
        "--fid-samples",
        type=int_range(2, 200_000),
        default=None,
        help=f"generated images per FID (default {d.fid_samples})",
    )
    g.add_argument(
        "--fid-features",
        default=None,
        metavar="SPEC",
        help="inception:PATH (torch-fidelity's InceptionV3 weights file) or run:DIR (a visattn classifier run); "
        "default: a resnet_tiny trained on the data into OUTPUT/feature_net (not comparable to published FIDs)",
    )
    g.add_argument(
        "--feature-epochs",
        type=positive_int,
        default=None,
        help=f"epochs of that fallback classifier (default {d.feature_epochs})",
    )


def config_from_args(args: argparse.Namespace) -> GenTrainConfig:
    """A :class:`GenTrainConfig` from ``visattn train`` arguments (:data:`TRAIN_DEFAULTS` where not typed)."""
    from visattn.commands.train_cmd import config_from_args as base_config

    args = with_defaults(args, TRAIN_DEFAULTS)
    base = base_config(args).as_dict()
    own = {
        "discriminator": args.discriminator,
        "lr_d": args.lr_d,
        "n_critic": args.n_critic,
        "width": args.width,
        "z_dim": args.z_dim,
        "diffaug": args.diffaug,
        "aux_weight": args.aux_weight,
        "ema_decay": args.ema_decay,
        "grid_size": args.grid_size,
        "fid_every": args.fid_every,
        "fid_samples": args.fid_samples,
        "fid_features": args.fid_features,
        "feature_epochs": args.feature_epochs,
    }
    base.update({k: v for k, v in own.items() if v is not None})
    base["conditional"] = GenTrainConfig.conditional if args.conditional is None else bool(args.conditional)
    base["weight_decay"] = GenTrainConfig.weight_decay  # Adam without decay (SAGAN)
    base["min_lr_ratio"] = GenTrainConfig.min_lr_ratio  # constant learning rates
    if args.warmup_steps is None:
        base["warmup_steps"] = GenTrainConfig.warmup_steps
    base.pop("task", None)
    return GenTrainConfig(**base)


def train(args: argparse.Namespace) -> int:
    """``visattn train --task generate``: train the GAN and print the final FID / KID."""
    from visattn.train.generate import train_generate

    res = train_generate(config_from_args(args))
    if res.output is not None and os.environ.get("RANK", "0") == "0":
        f = res.final
        fid = (
            f"FID {f['fid']:.2f}, KID {f['kid']:.4f} ({f.get('fid_features', '')})"
            if f.get("fid") is not None
            else "no FID"
        )
        say(f"{fid} after {f.get('epoch', 0)} epochs; samples, weights and metrics in {res.output}")
    return 0


TASK = CliTask(
    "generate",
    "image generation, a SAGAN whose attention block is the mechanism (data shapepairs | digitpairs | folder: | cifar10: | "
    "tinyimagenet:; docs/generation.md)",
    train=train,
    train_options=train_options,
    train_defaults=TRAIN_DEFAULTS,
    compare=True,
)
