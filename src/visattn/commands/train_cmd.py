"""``visattn train``: train one model (optionally with another mechanism) on local data.

Also runs under ``torchrun --nproc_per_node=N -m visattn.cli train ...`` (one process
per CPU share or GPU; DistributedDataParallel).
"""

from __future__ import annotations

import argparse
import json

from visattn.commands._args import (
    float_range,
    folder_name,
    fraction,
    int_range,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
)
from visattn.commands.tasks import add_task_argument, chosen, with_defaults
from visattn.data.datasets import MAX_IMAGE_SIZE
from visattn.train.engine import DIST_TIMEOUT_RANGE

__all__ = ["add_parser", "add_train_arguments", "config_from_args", "run", "main"]


def _json_dict(text: str) -> dict:
    try:
        v = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(
            f"expected a JSON object such as '{{\"heads\": 4}}', got {text!r} ({e})"
        ) from None
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(v).__name__} {text!r}")
    return v


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``visattn train`` (shared with tests and the torchrun entry)."""
    p.add_argument("--model", default="resnet_tiny", help="registered model (see `visattn list`)")
    p.add_argument(
        "--attention",
        default=None,
        metavar="MECH",
        help="mechanism that replaces the model's spatial mixer (default: the model's own)",
    )
    p.add_argument(
        "--attn-kwargs",
        type=_json_dict,
        default=None,
        metavar="JSON",
        help="constructor arguments of the mechanism, a JSON object",
    )
    p.add_argument(
        "--model-kwargs",
        type=_json_dict,
        default=None,
        metavar="JSON",
        help="extra model constructor arguments, a JSON object",
    )
    p.add_argument(
        "--pretrained",
        default=None,
        metavar="SOURCE",
        help="start from published or converted weights (a file, an http(s) URL, hf-hub:ORG/REPO[:FILE] or a name "
        "from `visattn convert --list`); a new classifier for the data's classes, the weights' normalisation "
        "(docs/weights.md)",
    )
    p.add_argument(
        "--data",
        default="digits",
        metavar="SPEC",
        help="digits (built in, no download) | cifar10:PATH (python batches) | folder:PATH (PATH/class_name/*.png|jpg); "
        "--task generate also: shapepairs (its default) | digitpairs (built-in mirrored pairs)",
    )
    p.add_argument(
        "--image-size",
        type=int_range(1, MAX_IMAGE_SIZE, " (images are held in memory)"),
        default=None,
        help="resize images to this side (default: digits 32, cifar10 32, folder 64)",
    )
    p.add_argument("--epochs", type=positive_int, default=None, help="default: 10")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="per process (global = this x processes); default: 64 (--task detect: 8, --task generate: 32)",
    )
    p.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help="peak AdamW learning rate (default: 2e-3; --task generate: G's Adam rate, 2e-4)",
    )
    p.add_argument("--weight-decay", type=nonneg_float, default=0.05)
    p.add_argument(
        "--warmup-steps",
        type=nonneg_int,
        default=None,
        help="linear warm-up steps before the cosine decay (default: 5%% of all steps, <= 1 epoch)",
    )
    p.add_argument(
        "--label-smoothing",
        type=fraction,
        default=None,
        help="label smoothing of the cross-entropy (default: 0.1 classify, 0 segment)",
    )
    p.add_argument(
        "--augment",
        default="auto",
        choices=("auto", "none", "crop", "crop+flip"),
        help="auto: crop for digits, crop+flip otherwise",
    )
    p.add_argument(
        "--precise-bn",
        type=nonneg_int,
        default=0,
        metavar="N",
        help="before each evaluation, recompute BatchNorm statistics over N training batches "
        "(fixes eval-mode BN after short training; default: off)",
    )
    p.add_argument("--grad-clip", type=positive_float, default=None, help="clip the gradient norm to this value (> 0)")
    p.add_argument(
        "--amp",
        default="auto",
        choices=("auto", "bf16", "fp16", "none"),
        help="mixed precision; auto: bf16 (or fp16) on CUDA, none on CPU; fp16 needs CUDA",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument(
        "--sync-bn",
        action="store_true",
        help="under torchrun on GPUs: BatchNorm statistics over the global batch (SyncBatchNorm)",
    )
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic kernels (torch.use_deterministic_algorithms): bit-exact resume",
    )
    p.add_argument("--seed", type=int_range(0, 2**32 - 1), default=0)
    p.add_argument(
        "--output",
        "-o",
        type=folder_name,
        default="runs/train",
        metavar="DIR",
        help="checkpoints, metrics.jsonl, curves.png, model.safetensors, config.json, train.log",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --output from its latest checkpoint (starts fresh if the folder holds no run)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --output (its results, log and checkpoints; other files stay); "
        "without it a folder holding a run is refused",
    )
    p.add_argument(
        "--save-every",
        type=nonneg_int,
        default=0,
        metavar="N",
        help="also checkpoint every N optimizer steps (default: once per epoch)",
    )
    p.add_argument("--keep", type=positive_int, default=2, help="checkpoints kept on disk")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--dist-timeout",
        type=float_range(*DIST_TIMEOUT_RANGE, "a number of seconds in 1..2592000 (30 days)"),
        default=600.0,
        metavar="SECONDS",
        help="under torchrun: give up (and name the silent rank where possible) when a peer process "
        "does not answer a collective within this time (default: %(default)s)",
    )
    add_task_argument(p, "train", default="classify")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model on digits, CIFAR-10 or an image folder",
        description="Train a model (optionally with another attention mechanism) on local data. "
        "Works under torchrun for several processes or GPUs.",
    )
    add_train_arguments(p)
    p.set_defaults(func=run)


def config_from_args(args):
    from visattn.train import TrainConfig

    return TrainConfig(
        model=args.model,
        attention=args.attention,
        attn_kwargs=args.attn_kwargs,
        model_kwargs=args.model_kwargs,
        data=args.data,
        image_size=args.image_size,
        **({} if args.epochs is None else {"epochs": args.epochs}),
        **({} if args.batch_size is None else {"batch_size": args.batch_size}),
        **({} if args.lr is None else {"lr": args.lr}),
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        **({} if args.label_smoothing is None else {"label_smoothing": args.label_smoothing}),
        augment=args.augment,
        precise_bn=args.precise_bn,
        grad_clip=args.grad_clip,
        amp=args.amp,
        compile=args.compile,
        sync_bn=args.sync_bn,
        deterministic=args.deterministic,
        seed=args.seed,
        output=args.output,
        resume=args.resume,
        overwrite=args.overwrite,
        save_every=args.save_every,
        keep=args.keep,
        device=args.device,
        progress=not args.no_progress,
        dist_timeout=args.dist_timeout,
        pretrained=args.pretrained,
    )


def run(args) -> int:
    task = chosen(args, "train")
    assert task.train is not None  # chosen() returns a task that trains
    return task.train(with_defaults(args, task.train_defaults))


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry: ``python -m visattn.commands.train_cmd [options]``."""
    p = argparse.ArgumentParser(prog="visattn train")
    add_train_arguments(p)
    args = p.parse_args(argv)
    from visattn.cli import run_command

    return run_command("train", run, args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
