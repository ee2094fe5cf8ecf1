"""Lambda layer (local r=7, r=23, global) against global self-attention ("mhsa") on CPU.

C=64, batch 4, 4 heads (lambda: k=16, u=1), square maps 14..112; forward+backward median
time and peak memory of the cumulative CPU allocation curve (``visattn.bench``). Also the
memory of the global form's relative position embeddings: visattn keeps one table of
(2S-1)^2 offsets and slices it; a port that materialises E[n, m] holds n^2 k u values.

Run:  PYTHONPATH=src python benchmarks/lambda_vs_mhsa.py --out benchmarks/results/lambda_vs_mhsa
"""

from __future__ import annotations

import argparse
import json

import torch

from _record import stamp
from visattn.bench.core import bench_case

RUN_ALL = {
    "args": ["--threads", "2", "--sizes", "14", "28", "56", "--out", "benchmarks/results/lambda_vs_mhsa"],
    "minutes": 4,
    "results": ["lambda_vs_mhsa.json", "lambda_vs_mhsa.md"],
    "check": ["ratio_vs_mhsa"],
}

CASES = [
    ("lambda r=7", "lambda", {"num_heads": 4, "key_dim": 16, "local_scope": 7}),
    ("lambda r=23", "lambda", {"num_heads": 4, "key_dim": 16, "local_scope": 23}),
    ("lambda global", "lambda", {"num_heads": 4, "key_dim": 16, "local_scope": None, "max_size": 112}),
    ("mhsa", "mhsa", {"num_heads": 4}),
]


def embedding_memory(sizes, k=16, u=1) -> list[dict]:
    rows = []
    for s in sizes:
        n = s * s
        rows.append(
            {
                "size": s,
                "table_mib": (2 * s - 1) ** 2 * k * u * 4 / 2**20,
                "materialised_E_mib": n * n * k * u * 4 / 2**20,
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[14, 28, 56, 112])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for s in args.sizes:
        for label, mech, kw in CASES:
            torch.manual_seed(0)
            r = bench_case(label, mech, kw, dim=64, batch=4, resolution=s, min_time=0.5).as_dict()
            rows.append(r)
            print(
                f"S={s:3d} {label:14s} fwd+bwd {r['fwdbwd_ms']:9.1f} ms  train peak {r['mem_train_mib']:8.1f} MiB "
                f"fwd {r['fwd_ms']:8.1f} ms {r['mem_fwd_mib']:8.1f} MiB {r.get('error') or ''}",
                flush=True,
            )
    for r in rows:  # time against mhsa at the same size
        base = next(b for b in rows if b["label"] == "mhsa" and b["resolution"] == r["resolution"])
        if r.get("fwdbwd_ms") and base.get("fwdbwd_ms"):
            r["fwdbwd_ratio_vs_mhsa"] = r["fwdbwd_ms"] / base["fwdbwd_ms"]
    emb = embedding_memory(args.sizes)
    if args.out:
        with open(args.out + ".json", "w") as f:
            json.dump(
                {**stamp(args.threads), "rows": rows, "embedding_memory": emb},
                f,
                indent=1,
            )
        lines = [
            "# Lambda layer vs global self-attention (CPU, C=64, batch 4)",
            "",
            f"torch {torch.__version__}, {args.threads} thread(s); median forward+backward time and peak of the "
            "cumulative allocation curve (training step), forward-only in eval mode.",
            "",
            "| size | case | fwd+bwd ms | train peak MiB | fwd ms | fwd peak MiB |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in rows:
            lines.append(
                f"| {r['resolution']} | {r['label']} | {r['fwdbwd_ms']:.1f} | {r['mem_train_mib']:.1f} | "
                f"{r['fwd_ms']:.1f} | {r['mem_fwd_mib']:.1f} |"
            )
        lines += [
            "",
            "Global-form position embeddings (k=16, u=1, float32):",
            "",
            "| size S | visattn table (2S-1)^2 k u | materialised E: n^2 k u |",
            "| --- | --- | --- |",
        ]
        for e in emb:
            lines.append(f"| {e['size']} | {e['table_mib']:.3f} MiB | {e['materialised_E_mib']:.1f} MiB |")
        with open(args.out + ".md", "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
