"""``visattn sample RUN -n 64 --out grid.png``: a seeded grid of a trained generator's samples."""

from __future__ import annotations

from visattn.commands._args import int_range, positive_int

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="write a grid of a trained GAN's samples (PNG)",
        description="Draw N samples from the generator of a `visattn train --task generate` run (its moving "
        "average by default, at the epoch with the lowest FID where the run measured FID) with noise from a seeded generator: the same --seed gives the same grid.",
    )
    p.add_argument("run", metavar="RUN", help="the run folder (config.json and model.safetensors)")
    p.add_argument("-n", type=int_range(1, 4096), default=64, help="samples (default: %(default)s)")
    p.add_argument("--out", "-o", default="grid.png", metavar="PNG", help="output PNG (default: %(default)s)")
    p.add_argument("--seed", type=int_range(0, 2**63 - 1), default=0, help="noise seed (default: %(default)s)")
    p.add_argument("--nrow", type=positive_int, default=None, help="samples per row (default: about sqrt(N))")
    p.add_argument("--scale", type=int_range(1, 16), default=2, help="pixels per image pixel (default: %(default)s)")
    p.add_argument("--no-ema", action="store_true", help="sample G itself, not its moving average")
    p.add_argument(
        "--last",
        action="store_true",
        help="the last epoch's weights (default: the lowest-FID epoch's, where the run measured FID)",
    )
    p.add_argument(
        "--label",
        type=int,
        default=None,
        help="class-conditional runs: draw every sample of this class (default: the classes in turn)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from visattn.commands.tasks import say
    from visattn.train.generate import load_generator, sample_images, save_grid

    g = load_generator(args.run, ema=not args.no_ema, best=not args.last)
    labels = None
    if args.label is not None:
        k = int(getattr(g, "num_classes", 0))
        if not k:
            raise ValueError(
                f"--label {args.label}: the run's generator is unconditional (trained without --conditional)"
            )
        if not 0 <= args.label < k:
            raise ValueError(f"--label must be a class index in 0..{k - 1}, got {args.label}")
        labels = torch.full((args.n,), args.label, dtype=torch.int64)
    images = sample_images(g, args.n, seed=args.seed, labels=labels)
    path = save_grid(images, args.out, nrow=args.nrow, scale=args.scale)
    say(f"{args.n} samples (seed {args.seed}) written to {path}")
    return 0
