"""``visattn compare``: train one backbone per mechanism; accuracy, size, FLOPs, speed, memory."""

from __future__ import annotations

import argparse
import json

from visattn.compare import DEFAULTS

__all__ = ["add_parser", "run"]


def _kwargs_map(text: str) -> dict:
    try:
        v = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected JSON such as '{{\"lambda\": {{\"r\": 5}}}}', got {text!r} ({e})")
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(a, dict) for k, a in v.items()):
        raise argparse.ArgumentTypeError(f"expected a JSON object mapping mechanism -> kwargs object, got {text!r}")
    return v


def add_parser(sub) -> None:
    p = sub.add_parser(
        "compare", help="train the same backbone once per mechanism and compare them (the main job)",
        description="Train the same small backbone once per attention mechanism (default: every registered one, "
                    "the 'conv' baseline included) on the same data, then print one table: test accuracy, "
                    "parameters, FLOPs, training images/s, inference latency and peak training memory. Writes "
                    "compare.json and compare.png (accuracy against latency) into --output.")
    p.add_argument("--mechanisms", "-m", nargs="+", default=None, metavar="MECH",
                   help="mechanisms to compare (default: all registered, see `visattn list`)")
    p.add_argument("--model", default=DEFAULTS["model"], help="backbone (default: %(default)s)")
    p.add_argument("--data", default=DEFAULTS["data"], metavar="SPEC",
                   help="digits | cifar10:PATH | folder:PATH (default: %(default)s, built in)")
    p.add_argument("--image-size", type=int, default=DEFAULTS["image_size"], help="default: %(default)s")
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], help="default: %(default)s")
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="default: %(default)s")
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="peak AdamW learning rate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--latency-batch", type=int, default=DEFAULTS["latency_batch"],
                   help="images per timed inference call (default: %(default)s)")
    p.add_argument("--precise-bn", type=int, default=DEFAULTS["precise_bn"], metavar="N",
                   help="recompute BatchNorm statistics over N training batches before each evaluation "
                        "(0: off; default: %(default)s)")
    p.add_argument("--attn-kwargs", type=_kwargs_map, default=None, metavar="JSON",
                   help="per-mechanism constructor arguments, e.g. '{\"local\": {\"kernel_size\": 5}}'")
    p.add_argument("--amp", default="none", choices=("auto", "bf16", "fp16", "none"))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=DEFAULTS["threads"],
                   help="torch CPU threads for the whole run (default: %(default)s, steady timings of small models "
                        "even on a busy machine; 0: torch's choice)")
    p.add_argument("--output", "-o", default="compare-out", help="folder for compare.json, compare.png, runs/")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.add_argument("--task", default="classify", choices=("classify", "segment"),
                   help="segment: a segmentation model per mechanism, mIoU instead of top-1 (defaults then: "
                        "fpn_resnet_tiny on digitscenes, 32 px, 4 epochs, batch 16, lr 5e-3; docs/segmentation.md)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.task == "segment":
        from visattn.compare_segment import run_from_args

        return run_from_args(args)
    from visattn.compare import compare, format_table

    results = compare(args.mechanisms, model=args.model, data=args.data, image_size=args.image_size,
                      epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      latency_batch=args.latency_batch, attn_kwargs=args.attn_kwargs, amp=args.amp,
                      device=args.device, output=args.output, progress=not args.no_progress,
                      threads=args.threads, precise_bn=args.precise_bn)
    print(format_table(results, args.latency_batch))
    total = sum(r.time_s for r in results)
    print(f"\n{len(results)} mechanisms in {total:.0f} s; wrote {args.output}/compare.json and "
          f"{args.output}/compare.png")
    failed = [r.mechanism for r in results if r.error]
    if failed:
        print(f"failed: {', '.join(failed)} (see the error column)")
    return 1 if len(failed) == len(results) else 0
