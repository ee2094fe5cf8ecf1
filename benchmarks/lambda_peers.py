"""visattn's LambdaLayer side by side with the public ports, at equal configuration.

Peers (optional, never a visattn dependency):
* ``lambda-networks`` (lucidrains) ``LambdaLayer(dim, dim_k=16, r=r, heads=4, dim_u=1)``;
* timm's ``timm.layers.lambda_layer.LambdaLayer``, if ``import timm`` works here.

For each configuration (channels C, local scope r, resolution S, batch 4, 4 heads, k=16, u=1)
the script times forward+backward (``y.sum().backward()``, training mode, the input requiring
grad as a layer inside a network receives it; issue 19) of every
implementation *interleaved* (round-robin, one call each per round) so that load from
other processes on a shared machine hits all of them alike, and reports medians, the
ratio ours / fastest peer, and the peak of the cumulative CPU allocation curve of one
forward+backward (``visattn.bench.measure.peak_memory_bytes``).

Run:  PYTHONPATH=src python benchmarks/lambda_peers.py --out benchmarks/results/lambda_peers
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

import torch

from _record import stamp
from visattn.bench.measure import peak_memory_bytes
from visattn.layers.lambda_layer import LambdaLayer

RUN_ALL = {
    "args": [
        "--threads",
        "2",
        "--channels",
        "64",
        "--sizes",
        "14",
        "28",
        "56",
        "--min-time",
        "0.5",
        "--out",
        "benchmarks/results/lambda_peers",
    ],
    "minutes": 5,
    "results": ["lambda_peers.json", "lambda_peers.md"],
    "check": ["time_ratio"],
}


def make_impls(c: int, r: int) -> tuple[dict, dict]:
    impls, skipped = {}, {}
    impls["visattn"] = LambdaLayer(c, num_heads=4, key_dim=16, intra_depth=1, local_scope=r)
    try:
        from lambda_networks import LambdaLayer as LucidLambda

        impls["lambda-networks"] = LucidLambda(c, dim_k=16, r=r, heads=4, dim_u=1)
    except Exception as e:
        skipped["lambda-networks"] = f"{type(e).__name__}: {e}"
    try:
        from timm.layers.lambda_layer import LambdaLayer as TimmLambda

        impls["timm"] = TimmLambda(c, dim_out=c, num_heads=4, dim_head=16, r=r, qk_ratio=1.0)
    except Exception as e:
        skipped["timm"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    for m in impls.values():
        m.train()
    return impls, skipped


def step(m, x):
    m.zero_grad(set_to_none=True)
    m(x.detach().requires_grad_(True)).sum().backward()  # input requiring grad, as inside a network


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    rows, skipped_all = [], {}
    for c in args.channels:
        for r in args.scopes:
            for s in args.sizes:
                torch.manual_seed(0)
                impls, skipped = make_impls(c, r)
                skipped_all.update(skipped)
                x = torch.randn(args.batch, c, s, s)
                for m in impls.values():  # warm-up
                    for _ in range(args.warmup):
                        step(m, x)
                times = {k: [] for k in impls}
                t_start = time.perf_counter()
                rounds = 0
                while rounds < args.min_rounds or (
                    time.perf_counter() - t_start < args.min_time and rounds < args.max_rounds
                ):
                    for name, m in impls.items():
                        t0 = time.perf_counter()
                        step(m, x)
                        times[name].append(time.perf_counter() - t0)
                    rounds += 1
                mem = {}
                for name, m in impls.items():
                    gc.collect()
                    mem[name] = peak_memory_bytes(lambda m=m: step(m, x))
                med = {k: statistics.median(v) for k, v in times.items()}
                peers = [k for k in impls if k != "visattn"]
                best = min(peers, key=lambda k: med[k]) if peers else None
                row = {
                    "C": c,
                    "r": r,
                    "size": s,
                    "batch": args.batch,
                    "rounds": rounds,
                    "median_ms": {k: 1e3 * v for k, v in med.items()},
                    "peak_mb": {k: v / 2**20 for k, v in mem.items()},
                }
                if "lambda-networks" in med:  # issue 19's target: <= 0.8 at 28 and 56 (r=7)
                    row["time_ratio_vs_lambda_networks"] = med["visattn"] / med["lambda-networks"]
                if best:
                    row["fastest_peer"] = best
                    row["time_ratio"] = med["visattn"] / med[best]
                    row["mem_ratio"] = mem["visattn"] / max(mem[k] for k in peers if k == best)
                rows.append(row)
                print(
                    f"C={c:3d} r={r:2d} S={s:3d}  "
                    + "  ".join(f"{k}: {1e3 * med[k]:8.1f} ms {mem[k] / 2**20:7.1f} MB" for k in impls)
                    + (f"  ratio t={row['time_ratio']:.2f} mem={row['mem_ratio']:.2f}" if best else ""),
                    flush=True,
                )
    return {**stamp(args.threads), "rows": rows, "skipped": skipped_all}


def to_markdown(res: dict) -> str:
    lines = [
        "# visattn LambdaLayer vs public ports (CPU, forward+backward)",
        "",
        f"torch {res['torch']}, {res['threads']} thread(s), batch {res['rows'][0]['batch'] if res['rows'] else '?'}, "
        "4 heads, k=16, u=1, training mode, input requiring grad. Median of interleaved rounds; peak = peak of the cumulative",
        "CPU allocation curve of one forward+backward (torch profiler). Ratios are ours / fastest peer",
        "(< 1: ours faster / smaller). Shared machine: compare ratios, not absolute times.",
        "",
        "| C | r | size | visattn ms | lambda-networks ms | timm ms | ours / lambda-networks | fastest peer | time ratio "
        "| visattn MB "
        "| fastest peer MB | memory ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in res["rows"]:
        med, mem = row["median_ms"], row["peak_mb"]
        best = row.get("fastest_peer")
        lines.append(
            f"| {row['C']} | {row['r']} | {row['size']} | {med['visattn']:.1f} | "
            f"{med.get('lambda-networks', float('nan')):.1f} | {med.get('timm', float('nan')):.1f} | "
            f"{row.get('time_ratio_vs_lambda_networks', float('nan')):.2f} | {best or '-'} | "
            f"{row.get('time_ratio', float('nan')):.2f} | {mem['visattn']:.1f} | "
            f"{mem.get(best, float('nan')) if best else float('nan'):.1f} | {row.get('mem_ratio', float('nan')):.2f} |"
        )
    if res["skipped"]:
        lines += ["", "Not measured:", ""]
        lines += [f"* {k}: {v}" for k, v in res["skipped"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--channels", type=int, nargs="+", default=[64, 128])
    p.add_argument("--scopes", type=int, nargs="+", default=[7, 23])
    p.add_argument("--sizes", type=int, nargs="+", default=[14, 28, 56, 112])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--min-rounds", type=int, default=5)
    p.add_argument("--max-rounds", type=int, default=30)
    p.add_argument("--min-time", type=float, default=2.0)
    p.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    p.add_argument("--from-json", default=None, help="only rewrite OUT.md from a saved JSON")
    args = p.parse_args()
    if args.from_json:
        with open(args.from_json) as f:
            res = json.load(f)
    else:
        res = run(args)
    if args.out:
        if not args.from_json:
            with open(args.out + ".json", "w") as f:
                json.dump(res, f, indent=1)
        with open(args.out + ".md", "w") as f:
            f.write(to_markdown(res))


if __name__ == "__main__":
    main()
