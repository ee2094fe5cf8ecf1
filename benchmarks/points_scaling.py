"""Scaling in the number of points: PCT's attention layers with self-attention vs external / efficient.

SPCT (PCT without the neighbour embedding, so its four offset-attention layers see all n input
points; in full PCT they see n/4) with, in every layer:

* ``pct-sa``: PCT's own self-attention (``attention=None``; the explicit n x n map, as the paper);
* ``mhsa``: multi-head self-attention through ``scaled_dot_product_attention`` (fused kernel);
* ``external``: external attention (memory 64), the EA paper's point-cloud model;
* ``efficient``: efficient attention (4 heads).

For n in 512, 1024, 2048, 4096 points and batch 8: the time of one training step (forward +
cross-entropy + backward, the input requiring grad), the median over rounds in which every
configuration runs once in turn (alternating), and the peak memory of that step
(``visattn.bench.measure.peak_memory_bytes``: the profiler's allocation curve on the CPU). The
log-log slope of each curve (least squares over the four sizes) and, per linear mechanism, the
crossover: the smallest n at which it is faster / smaller than ``pct-sa`` and than ``mhsa``.

    flock -x /work/cpu.lock python benchmarks/points_scaling.py --threads 2 [--rounds 2]
"""

from __future__ import annotations

import argparse
import math
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from _record import write_json, write_text

RUN_ALL = {
    "args": ["--threads", "2"],
    "minutes": 8,
    "results": ["points_scaling.json", "points_scaling.md"],
    "check": ["slope_time", "slope_memory"],
}

ROOT = Path(__file__).resolve().parents[1]
MECHS = {
    "pct-sa": (None, None),
    "mhsa": ("mhsa", {"num_heads": 4}),
    "external": ("external", {"memory_size": 64}),
    "efficient": ("efficient", {"num_heads": 4}),
}


def _slope(ns, ys) -> float:
    xs, ls = [math.log(n) for n in ns], [math.log(y) for y in ys]
    mx, my = sum(xs) / len(xs), sum(ls) / len(ls)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ls)) / sum((x - mx) ** 2 for x in xs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    p.add_argument("--note", default="", help="recorded as is (e.g. 'measured under load')")
    args = p.parse_args()

    import visattn
    from visattn.bench.measure import peak_memory_bytes
    from visattn.bench.report import environment

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {}
    for label, (attn, kw) in MECHS.items():
        models[label] = visattn.create_model("spct", num_classes=40, attention=attn, attn_kwargs=kw).train()
    inputs = {n: torch.randn(args.batch, 3, n) for n in args.sizes}
    target = torch.randint(0, 40, (args.batch,))

    def step(label: str, n: int) -> None:
        m = models[label]
        x = inputs[n].clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(m(x), target)
        loss.backward()
        m.zero_grad(set_to_none=True)

    configs = [(label, n) for n in args.sizes for label in MECHS]
    for c in configs:  # warm-up
        step(*c)
    times: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
    for r in range(args.rounds):
        order = configs if r % 2 == 0 else configs[::-1]
        for c in order:
            t0 = time.perf_counter()
            step(*c)
            times[c].append(time.perf_counter() - t0)
    peak = {c: peak_memory_bytes(lambda c=c: step(*c)) for c in configs}

    env = environment()
    rows = []
    for label in MECHS:
        t = [sorted(times[(label, n)])[len(times[(label, n)]) // 2] for n in args.sizes]
        mem = [peak[(label, n)] for n in args.sizes]
        rows.append(
            {
                "mechanism": label,
                "time_s": dict(zip(map(str, args.sizes), t)),
                "peak_mib": {str(n): v / 2**20 for n, v in zip(args.sizes, mem)},
                "slope_time": _slope(args.sizes, t),
                "slope_memory": _slope(args.sizes, mem),
            }
        )
    by = {r["mechanism"]: r for r in rows}
    crossover = {}
    for lin in ("external", "efficient"):
        for quad in ("pct-sa", "mhsa"):
            for key in ("time_s", "peak_mib"):
                wins = [n for n in args.sizes if by[lin][key][str(n)] < by[quad][key][str(n)]]
                first = next((n for n in args.sizes if all(m in wins for m in args.sizes if m >= n)), None)
                crossover[f"{lin}_vs_{quad}_{key.split('_')[0]}"] = first
    doc = {
        "machine": env["machine"],
        "torch": env["torch"],
        "threads": torch.get_num_threads(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": args.note,
        "model": "spct (attention over all n points), 40 classes",
        "batch": args.batch,
        "rounds": args.rounds,
        "sizes": args.sizes,
        "results": rows,
        "crossover_n": crossover,
        "environment": env,
    }
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    write_json(results / "points_scaling.json", doc)
    head = " | ".join(f"n={n}" for n in args.sizes)
    lines = [
        f"| mechanism | step time (s): {head} | slope | peak MiB: {head} | slope |",
        "| --- | " + " | ".join(["---"] * (2 * len(args.sizes) + 2)) + " |",
    ]
    for r in rows:
        ts = " | ".join(f"{r['time_s'][str(n)]:.2f}" for n in args.sizes)
        ms = " | ".join(f"{r['peak_mib'][str(n)]:.0f}" for n in args.sizes)
        lines.append(f"| `{r['mechanism']}` | {ts} | {r['slope_time']:.2f} | {ms} | {r['slope_memory']:.2f} |")
    cross = ", ".join(f"{k}: {'none' if v is None else v}" for k, v in crossover.items())
    md = (
        "\n".join(lines)
        + f"\n\nSPCT training step (forward + backward), batch {args.batch}, {args.threads} threads, torch "
        f"{env['torch']}, median of {args.rounds} alternating rounds; peak = the step's allocation peak. "
        f"Crossover (smallest n from which the linear mechanism stays below): {cross}. {doc['date']}"
        + (f"; {args.note}" if args.note else "")
        + ".\n"
    )
    write_text(results / "points_scaling.md", md)
    print(md)


if __name__ == "__main__":
    main()
