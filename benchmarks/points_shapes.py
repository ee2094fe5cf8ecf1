"""Recorded point-cloud run: a PCT on the built-in shape set, held-out accuracy within 5 minutes.

Default: ``spct`` (PCT without the neighbour embedding) at 128 points, 8 epochs, no augmentation
(``points_shapes.{json,md}``). Recorded beside it with ``--model pct --num-points 256 --model-kwargs
'{"k": 16, "samples": [64, 32]}' --epochs 5 --name points_shapes_pct``: the full PCT.

The same run as the command it prints and records (``visattn train --task points ...``): data
generation, training, per-epoch evaluation, checkpoints and the final files, timed end to end.
Writes ``benchmarks/results/points_shapes.{json,md}`` (final overall and mean-class accuracy,
per-epoch history, wall time, environment). Run it under ``flock -x /work/cpu.lock`` so nothing
else runs beside it; ``--threads`` sets torch's threads (the command's OMP_NUM_THREADS).

    flock -x /work/cpu.lock python benchmarks/points_shapes.py --threads 2 [--model pct --name points_shapes_pct ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from _record import write_json, write_text

RUN_ALL = {
    "args": ["--threads", "2"],
    "minutes": 6,
    "results": ["points_shapes.json", "points_shapes.md"],
    "check": ["final.test_acc", "wall_time_s"],
}

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default="spct")
    p.add_argument("--num-points", type=int, default=128)
    p.add_argument("--model-kwargs", default="{}")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--data-size", type=int, default=200)
    p.add_argument("--budget-s", type=float, default=300.0, help="the time the run must stay within")
    p.add_argument("--augment", default="none", choices=("auto", "none"))
    p.add_argument("--label-smoothing", type=float, default=0.2)
    p.add_argument("--name", default="points_shapes", help="result files benchmarks/results/NAME.{json,md}")
    p.add_argument("--note", default="", help="recorded as is (e.g. 'measured under load')")
    args = p.parse_args()

    from visattn.bench.report import environment
    from visattn.train.points import PointTrainConfig, train_points

    torch.set_num_threads(args.threads)
    out = Path(tempfile.mkdtemp(prefix="points-shapes-"))
    cfg = PointTrainConfig(
        model=args.model,
        data="shapes",
        num_points=args.num_points,
        data_size=args.data_size,
        model_kwargs=json.loads(args.model_kwargs),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        augment=args.augment,
        label_smoothing=args.label_smoothing,
        output=str(out / "run"),
        progress=False,
        plot=False,
    )
    t0 = time.perf_counter()
    res = train_points(cfg)
    wall = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    final = res.final
    command = (
        f"OMP_NUM_THREADS={args.threads} visattn train --task points --model {args.model} --data shapes "
        f"--num-points {args.num_points} --data-size {args.data_size} --model-kwargs '{args.model_kwargs}' "
        f"--epochs {args.epochs} --batch-size {args.batch_size} --lr {args.lr:g} --augment {args.augment} "
        f"--label-smoothing {args.label_smoothing:g} --output runs/points-shapes"
    )
    env = environment()
    doc = {
        "command": command,
        "config": cfg.as_dict(),
        "machine": env["machine"],
        "torch": env["torch"],
        "threads": torch.get_num_threads(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": args.note,
        "wall_time_s": wall,
        "budget_s": args.budget_s,
        "within_budget": wall <= args.budget_s,
        "train_time_s": sum(h["train_time_s"] for h in res.history),
        "final": {k: final[k] for k in ("test_acc", "test_mean_class_acc", "test_loss", "train_acc", "epoch")},
        "history": [
            {k: h[k] for k in ("epoch", "train_loss", "train_acc", "test_acc", "test_mean_class_acc", "images_per_s")}
            for h in res.history
        ],
        "params": sum(p.numel() for p in res.model.parameters()),
        "environment": env,
    }
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    write_json(results / f"{args.name}.json", doc)
    rows = "\n".join(
        f"| {h['epoch']} | {100 * h['train_acc']:.1f} | {100 * h['test_acc']:.1f} | {100 * h['test_mean_class_acc']:.1f} "
        f"| {h['images_per_s']:.0f} |"
        for h in doc["history"]
    )
    md = (
        f"# {args.model} on the built-in shape set ({args.num_points} points, {args.threads} threads, "
        f"torch {env['torch']})\n\n"
        f"`{command}`\n\n"
        f"held-out accuracy **{100 * final['test_acc']:.2f}%** (mean-class {100 * final['test_mean_class_acc']:.2f}%) "
        f"after {final['epoch']} epochs; wall time **{wall:.0f} s** (data generation, training, evaluation, "
        f"checkpoints; training alone {doc['train_time_s']:.0f} s; budget {args.budget_s:.0f} s); "
        f"{doc['params'] / 1e6:.2f}M parameters; {doc['date']}"
        + (f"; {args.note}" if args.note else "")
        + ".\n\n| epoch | train acc % | test acc % | mean-class % | clouds/s |\n| --- | --- | --- | --- | --- |\n"
        + rows
        + "\n"
    )
    write_text(results / f"{args.name}.md", md)
    print(md)


if __name__ == "__main__":
    main()
