"""``visattn train``: train one model (optionally with another mechanism) on local data.

Also runs under ``torchrun --nproc_per_node=N -m visattn.cli train ...`` (one process
per CPU share or GPU; DistributedDataParallel).
"""

from __future__ import annotations

import argparse
import json
import os

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
        "--data",
        default="digits",
        metavar="SPEC",
        help="digits (built in, no download) | cifar10:PATH (python batches) | folder:PATH (PATH/class_name/*.png|jpg)",
    )
    p.add_argument(
        "--image-size",
        type=int_range(1, MAX_IMAGE_SIZE, " (images are held in memory)"),
        default=None,
        help="resize images to this side (default: digits 32, cifar10 32, folder 64)",
    )
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--batch-size", type=positive_int, default=64, help="per process (global = this x processes)")
    p.add_argument("--lr", type=positive_float, default=2e-3, help="peak AdamW learning rate")
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
    p.add_argument(
        "--task",
        default="classify",
        choices=("classify", "segment"),
        help="segment: semantic segmentation (data digitscenes | segfolder:PATH; docs/segmentation.md)",
    )
    add_segment_arguments(p)


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
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
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
    )


def run(args) -> int:
    if args.task == "segment":
        return run_segment(args)
    from visattn.train import train

    res = train(config_from_args(args))
    if res.final and res.output is not None and os.environ.get("RANK", "0") == "0":
        _say(
            f"test accuracy {_pct(res.final['test_acc'])} after {res.final['epoch']} epochs; "
            f"weights, metrics and curves in {res.output}"
        )
    return 0


def _pct(v) -> str:
    return "n/a (nothing to measure)" if v is None or v != v else f"{100 * v:.2f}%"


def _say(msg: str) -> None:
    """Print the run's summary; a reader that went away (``| head``) does not fail a finished run."""
    import sys

    from visattn.cli import silence_stdout

    try:
        print(msg, flush=True)
    except BrokenPipeError:
        silence_stdout()
        return
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # pragma: no cover - flushed above
        silence_stdout()


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry: ``python -m visattn.commands.train_cmd [options]``."""
    p = argparse.ArgumentParser(prog="visattn train")
    add_train_arguments(p)
    args = p.parse_args(argv)
    from visattn.cli import run_command

    return run_command("train", run, args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


# ---------------------------------------------------------------------------
# --task segment
# ---------------------------------------------------------------------------


class _ClassifyDefault(str):
    """A classification default of ``visattn train`` (``--model``, ``--data``) that was not given
    on the command line: ``--task segment`` replaces it; a value the user typed is kept (and
    refused with a clear error if it cannot segment)."""


def add_segment_arguments(p: argparse.ArgumentParser) -> None:
    """The options ``visattn train`` gains for ``--task segment``."""
    from visattn.data.segmentation import IGNORE_INDEX

    for dest in ("model", "data"):
        default = p.get_default(dest)
        if isinstance(default, str) and not isinstance(default, _ClassifyDefault):
            p.set_defaults(**{dest: _ClassifyDefault(default)})
    g = p.add_argument_group("segmentation (--task segment)")
    g.add_argument(
        "--ignore-index",
        type=int,
        default=IGNORE_INDEX,
        help="mask value of unlabelled pixels, left out of loss and metrics (default: %(default)s)",
    )
    g.add_argument(
        "--scale-range",
        type=float,
        nargs=2,
        default=None,
        metavar=("MIN", "MAX"),
        help="random scale of the crop augmentation (default: digitscenes 0.75 1.33, segfolder 0.5 2)",
    )


def seg_config_from_args(args):
    """A :class:`SegTrainConfig` from ``visattn train`` arguments. The classification defaults
    ``--model resnet_tiny`` and ``--data digits`` (which cannot segment) become
    :data:`SEG_DEFAULT_MODEL` and ``digitscenes`` when they were not given; typed on the
    command line they are kept (and refused: they cannot segment)."""
    from visattn.train.segment import SEG_DEFAULT_DATA, SEG_DEFAULT_MODEL, SegTrainConfig

    base = config_from_args(args).as_dict()
    if isinstance(args.model, _ClassifyDefault):
        base["model"] = SEG_DEFAULT_MODEL
    if isinstance(args.data, _ClassifyDefault):
        base["data"] = SEG_DEFAULT_DATA
    if args.label_smoothing is None:  # not given: the segmentation default (SegTrainConfig), not classification's
        base["label_smoothing"] = SegTrainConfig.label_smoothing
    return SegTrainConfig(
        **base, ignore_index=args.ignore_index, scale_range=tuple(args.scale_range) if args.scale_range else None
    )


def run_segment(args) -> int:
    """``visattn train --task segment``: train and print the final mIoU."""
    import os

    from visattn.train.segment import train_segment

    res = train_segment(seg_config_from_args(args))
    if res.final and res.output is not None and os.environ.get("RANK", "0") == "0":
        f = res.final
        _say(
            f"test mIoU {_pct(f['test_miou'])} (pixel accuracy {_pct(f['test_pixel_acc'])}) "
            f"after {res.final['epoch']} epochs; weights, metrics and curves in {res.output}"
        )
    return 0
