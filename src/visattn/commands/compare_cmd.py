"""``visattn compare``: train one backbone per mechanism, task and seed; accuracy ± spread, size, speed."""

from __future__ import annotations

import argparse
import json

from visattn.commands._args import nonneg_int, positive_float, positive_int
from visattn.compare import DEFAULTS, TASKS
from visattn.compare_segment import SEG_COMPARE_DEFAULTS as SEG

__all__ = ["add_parser", "run"]


def _json_object(example: str, nested: bool):
    def parse(text: str) -> dict:
        try:
            v = json.loads(text)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"expected JSON such as '{example}', got {text!r} ({e})") from None
        if not isinstance(v, dict) or (nested and not all(isinstance(a, dict) for a in v.values())):
            what = "mechanism -> kwargs object" if nested else "option -> value"
            raise argparse.ArgumentTypeError(f"expected a JSON object mapping {what}, got {text!r}")
        return v

    return parse


_kwargs_map = _json_object('{"lambda": {"local_scope": 5}}', nested=True)


def add_parser(sub) -> None:
    tasks = "; ".join(f"{t.name}: {t.about}" for t in TASKS.values())
    p = sub.add_parser(
        "compare",
        help="train the same backbone per mechanism on a local and a long-range task and compare them (the main job)",
        description="Train the same small backbone once per attention mechanism (default: every registered one, "
        "the 'conv' baseline included), task and seed, then print one table: test accuracy on each "
        "task (mean ± spread over seeds, '*' where a mechanism cannot be told apart from the best), "
        "whether the mechanism sees position, parameters, FLOPs, training images/s, inference latency "
        f"and peak training memory. Tasks: {tasks}. Writes compare.json, compare.png (accuracy per task "
        "with error bars) and runs/ into --output.",
    )
    p.add_argument(
        "--mechanisms",
        "-m",
        nargs="+",
        default=None,
        metavar="MECH",
        help="mechanisms to compare (default: all registered, see `visattn list`)",
    )
    p.add_argument(
        "--tasks",
        nargs="+",
        default=None,
        choices=list(TASKS),
        metavar="TASK",
        help=f"built-in tasks, from {', '.join(TASKS)} (default: all)",
    )
    p.add_argument(
        "--seeds",
        type=positive_int,
        default=None,
        help=f"runs per mechanism and task, seeds --seed, --seed + 1, ... (default: {DEFAULTS['seeds']}, "
        "1 with --quick)",
    )
    p.add_argument("--seed", type=nonneg_int, default=DEFAULTS["seed"], help="first seed (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a smoke run: fewer epochs per task, one seed")
    p.add_argument(
        "--model",
        default=None,
        help=f"backbone (default: {DEFAULTS['model']}, first two stages; {SEG['model']} with --task segment)",
    )
    p.add_argument(
        "--model-kwargs",
        type=_json_object('{"depths": [1, 1, 1, 1]}', nested=False),
        default=None,
        metavar="JSON",
        help="backbone options (default for resnet_tiny: its first two stages, "
        "'{\"depths\": [1, 1], \"widths\": [16, 32]}'; '{}' for all four)",
    )
    p.add_argument(
        "--pos-embed",
        action="store_true",
        help="depthwise-conv position encoding before every mechanism (CPVT/PVTv2): gives the "
        "content-only mechanisms (mhsa, efficient, sra, external) position",
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="SPEC",
        help="your own data instead of the tasks: cifar10:PATH | folder:PATH | digits | longrange "
        "(needs --image-size and --epochs)",
    )
    p.add_argument("--image-size", type=positive_int, default=None, help="override every task's image size")
    p.add_argument("--epochs", type=positive_int, default=None, help="override every task's epochs")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help=f"default: {DEFAULTS['batch_size']} ({SEG['batch_size']} with --task segment)",
    )
    p.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help=f"peak AdamW learning rate (default: {DEFAULTS['lr']}; {SEG['lr']} with --task segment)",
    )
    p.add_argument(
        "--latency-batch",
        type=positive_int,
        default=DEFAULTS["latency_batch"],
        help="images per timed inference call (default: %(default)s)",
    )
    p.add_argument(
        "--precise-bn",
        type=nonneg_int,
        default=DEFAULTS["precise_bn"],
        metavar="N",
        help="recompute BatchNorm statistics over N training batches before each evaluation "
        "(0: off; default: %(default)s)",
    )
    p.add_argument(
        "--attn-kwargs",
        type=_kwargs_map,
        default=None,
        metavar="JSON",
        help='per-mechanism constructor arguments, e.g. \'{"local": {"kernel_size": 5}}\'',
    )
    p.add_argument("--amp", default="none", choices=("auto", "bf16", "fp16", "none"))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument(
        "--threads",
        type=nonneg_int,
        default=DEFAULTS["threads"],
        help="torch CPU threads for the whole run (default: %(default)s, steady timings of small models "
        "even on a busy machine; 0: torch's choice)",
    )
    p.add_argument(
        "--output",
        "-o",
        default="compare-out",
        help="folder for compare.json, compare.png, runs/ (default: %(default)s)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.add_argument(
        "--task",
        default="classify",
        choices=("classify", "segment"),
        help="segment: a segmentation model per mechanism, mIoU instead of top-1 (defaults then: "
        "fpn_resnet_tiny on digitscenes, 32 px, 4 epochs, batch 16, lr 5e-3; docs/segmentation.md)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    if args.task == "segment":
        from visattn.compare_segment import run_from_args

        return run_from_args(args)
    from visattn.compare import compare, format_table

    def given(key: str, value):
        return DEFAULTS[key] if value is None else value

    report = compare(
        args.mechanisms,
        tasks=args.tasks,
        model=given("model", args.model),
        model_kwargs=args.model_kwargs,
        pos_embed=args.pos_embed,
        data=args.data,
        image_size=args.image_size,
        epochs=args.epochs,
        seeds=args.seeds,
        seed=args.seed,
        batch_size=given("batch_size", args.batch_size),
        lr=given("lr", args.lr),
        latency_batch=args.latency_batch,
        attn_kwargs=args.attn_kwargs,
        amp=args.amp,
        device=args.device,
        output=args.output,
        progress=not args.no_progress,
        threads=args.threads,
        precise_bn=args.precise_bn,
        quick=args.quick,
    )
    print(format_table(report))
    print(
        f"\n{len(report.rows)} mechanisms x {len(report.tasks)} task(s) x {len(report.config['seeds'])} seed(s) "
        f"in {report.total_time_s:.0f} s; wrote {args.output}/compare.json and {args.output}/compare.png"
    )
    failed = [r.mechanism for r in report.rows if any(s.error for s in r.tasks.values())]
    if failed:
        print(f"failed: {', '.join(failed)} (see the error column)")
    return 1 if len(failed) == len(report.rows) else 0
