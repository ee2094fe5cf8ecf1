"""``visattn compare``: train one model per mechanism, data set and seed for a task; metric ± spread, size, speed."""

from __future__ import annotations

import argparse
import json

from visattn.commands._args import nonneg_int, positive_float, positive_int
from visattn.commands.tasks import add_task_argument, choices, chosen
from visattn.compare import CORE_DEFAULTS, DEFAULT_TASK, get_task

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


def _per_task(key: str) -> str:
    """A task default as help text: "64; 16 with --task segment"."""
    first, *rest = choices("compare")
    text = str(get_task(first).default(key))
    others = [f"{get_task(n).default(key)} with --task {n}" for n in rest]
    return "; ".join([text, *others])


def _describe(task) -> str:
    """``--task`` help of one compare task: what it is and its defaults."""
    p = get_task(task.name)
    sets = ", ".join(p.default("tasks"))
    return (
        f"{p.about} (defaults: {p.default('model')} on {sets}, {p.default('seeds')} seed(s), "
        f"batch {p.default('batch_size')}, lr {p.default('lr')})"
    )


def add_parser(sub) -> None:
    names = choices("compare")
    sets = "; ".join(f"{n}: {', '.join(get_task(n).datasets)}" for n in names)
    about = "; ".join(f"{t.name}: {t.about}" for t in get_task(DEFAULT_TASK).datasets.values())
    p = sub.add_parser(
        "compare",
        help="train the same backbone per mechanism on a local and a long-range task and compare them (the main job)",
        description="Train the same small model once per attention mechanism (default: every registered one, "
        "the 'conv' baseline included), data set and seed, then print one table: the task's metrics on each "
        "data set (mean ± spread over seeds, '*' where a mechanism cannot be told apart from the best), "
        "whether the mechanism sees position, parameters, FLOPs, training images/s, inference latency "
        f"and peak training memory. Default task (classify, the main job): {about}. Writes compare.json, "
        "compare.png (the primary metric per data set with error bars) and runs/ into --output (classify), "
        "or into OUTPUT/TASK/ for any other --task, so tasks never overwrite each other.",
    )
    p.add_argument(
        "--mechanisms",
        "-m",
        nargs="+",
        default=None,
        metavar="MECH",
        help="mechanisms to compare (default: all registered, see `visattn list`; --task points: the set-capable ones)",
    )
    p.add_argument(
        "--tasks",
        nargs="+",
        default=None,
        choices=list(dict.fromkeys(d for n in names for d in get_task(n).datasets)),
        metavar="TASK",
        help=f"built-in data sets of the --task ({sets}; default: the task's, see --task)",
    )
    p.add_argument(
        "--seeds",
        type=positive_int,
        default=None,
        help=f"runs per mechanism and data set, seeds --seed, --seed + 1, ... (default: {_per_task('seeds')}; "
        "1 with --quick)",
    )
    p.add_argument("--seed", type=nonneg_int, default=CORE_DEFAULTS["seed"], help="first seed (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a smoke run: fewer epochs per data set, one seed")
    p.add_argument(
        "--model",
        default=None,
        help=f"model (default: {_per_task('model')}; classify's resnet_tiny is cut to its first two stages)",
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
        help="your own data instead of the data sets: cifar10:PATH | folder:PATH | digits | longrange "
        "(classify: needs --image-size and --epochs) | segfolder:PATH (segment)",
    )
    p.add_argument("--image-size", type=positive_int, default=None, help="override every data set's image size")
    p.add_argument("--epochs", type=positive_int, default=None, help="override every data set's epochs")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help=f"default: {_per_task('batch_size')}",
    )
    p.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help=f"peak AdamW learning rate (default: {_per_task('lr')})",
    )
    p.add_argument(
        "--latency-batch",
        type=positive_int,
        default=CORE_DEFAULTS["latency_batch"],
        help="images per timed inference call (default: %(default)s)",
    )
    p.add_argument(
        "--precise-bn",
        type=nonneg_int,
        default=CORE_DEFAULTS["precise_bn"],
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
        default=CORE_DEFAULTS["threads"],
        help="torch CPU threads for the whole run (default: %(default)s, steady timings of small models "
        "even on a busy machine; 0: torch's choice)",
    )
    p.add_argument(
        "--output",
        "-o",
        default="compare-out",
        help="folder for compare.json, compare.png, runs/ (other tasks: OUTPUT/TASK/; default: %(default)s)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_task_argument(p, "compare", default=DEFAULT_TASK, describe=_describe)
    p.set_defaults(func=run)


def run(args) -> int:
    from visattn.compare import compare, format_table, task_folder

    task = chosen(args, "compare")
    plugin = get_task(task.name)

    def given(key: str, value):
        return plugin.default(key) if value is None else value

    report = compare(
        args.mechanisms,
        task=task.name,
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
    folder = task_folder(args.output, task.name)
    print(
        f"\n{len(report.rows)} mechanisms x {len(report.tasks)} data set(s) x {len(report.config['seeds'])} seed(s) "
        f"in {report.total_time_s:.0f} s; wrote {folder / 'compare.json'} and {folder / 'compare.png'}"
    )
    failed = [r.mechanism for r in report.rows if any(s.error for s in r.tasks.values())]
    if failed:
        print(f"failed: {', '.join(failed)} (see the error column)")
    return 1 if len(failed) == len(report.rows) else 0
