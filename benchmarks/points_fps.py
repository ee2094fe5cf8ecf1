"""Farthest point sampling: the vectorised torch loop against the ``fpsample`` library kernel.

Both pick the same indices in the same order (checked here and in tests/models/test_pct.py);
``visattn.models.point_ops.farthest_point_sample`` uses fpsample on CPU tensors when it is
installed. Median of alternating rounds per (batch, points, samples), torch threads as given.

    flock -x /work/cpu.lock python benchmarks/points_fps.py --threads 2
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from _record import write_json, write_text

RUN_ALL = {
    "args": ["--threads", "2"],
    "minutes": 1,
    "results": ["points_fps.json", "points_fps.md"],
    "check": ["ratio"],
}

ROOT = Path(__file__).resolve().parents[1]
CASES = [(32, 256, 64), (8, 1024, 512), (8, 2048, 512), (8, 4096, 1024)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--note", default="")
    args = p.parse_args()

    from visattn.bench.report import environment
    from visattn.models.point_ops import farthest_point_sample

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for b, n, s in CASES:
        x = torch.randn(b, n, 3)
        same = torch.equal(farthest_point_sample(x, s, impl="torch"), farthest_point_sample(x, s, impl="fpsample"))
        ratios, tt, tf = [], [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            farthest_point_sample(x, s, impl="torch")
            t1 = time.perf_counter()
            farthest_point_sample(x, s, impl="fpsample")
            t2 = time.perf_counter()
            tt.append(t1 - t0)
            tf.append(t2 - t1)
            ratios.append((t1 - t0) / (t2 - t1))
        med = sorted(ratios)[len(ratios) // 2]
        rows.append(
            {
                "batch": b,
                "points": n,
                "samples": s,
                "torch_ms": 1e3 * sorted(tt)[len(tt) // 2],
                "fpsample_ms": 1e3 * sorted(tf)[len(tf) // 2],
                "ratio": med,
                "same_indices": same,
            }
        )
    env = environment()
    doc = {
        "machine": env["machine"],
        "torch": env["torch"],
        "threads": torch.get_num_threads(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": args.note,
        "results": rows,
        "environment": env,
    }
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "points_fps.json", doc)
    md = "| batch | points | samples | torch ms | fpsample ms | torch / fpsample | same indices |\n| --- | --- | --- | --- | --- | --- | --- |\n"
    md += "".join(
        f"| {r['batch']} | {r['points']} | {r['samples']} | {r['torch_ms']:.1f} | {r['fpsample_ms']:.1f} | "
        f"{r['ratio']:.1f}x | {r['same_indices']} |\n"
        for r in rows
    )
    md += (
        f"\nMedian of {args.rounds} alternating rounds, {args.threads} threads, torch {env['torch']}, {doc['date']}"
        + (f"; {args.note}" if args.note else "")
        + ".\n"
    )
    write_text(out / "points_fps.md", md)
    print(md)


if __name__ == "__main__":
    main()
