"""Scaling of time and memory with n = H*W, and linear-vs-quadratic ratios (issue: foundation).

Runs the library's own benchmark (``visattn.bench``) for the chosen mechanisms at C=64,
batch 4, over resolutions, and writes a Markdown report with the table, the log-log
slopes, and the forward-time ratio of each mechanism to "mhsa" at every resolution.

    python benchmarks/scaling.py --mechanisms efficient external mhsa --resolutions 28 56 112 \
        --threads 1 --out benchmarks/results/scaling

The JSON carries the machine, torch version, threads and date, the slopes, and each case's
forward-time speed-up over mhsa per resolution (``speedup_vs_mhsa``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from _record import stamp, stamp_line, write_json, write_text
from visattn.bench.core import run_bench
from visattn.bench.report import environment, format_slopes, format_table, write_plot
from visattn.bench.report import write_json as write_bench_json

RUN_ALL = {
    "args": ["--threads", "1"],
    "minutes": 4,
    "results": ["scaling.json", "scaling.md", "scaling.png"],
    "check": ["slopes", "speedup_vs_mhsa"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mechanisms", nargs="+", default=["efficient", "external", "mhsa"])
    p.add_argument("--resolutions", nargs="+", type=int, default=[28, 56, 112])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--min-time", type=float, default=0.5)
    p.add_argument("--out", default="benchmarks/results/scaling")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = run_bench(
        args.mechanisms,
        resolutions=args.resolutions,
        dim=args.dim,
        batch=args.batch,
        min_time=args.min_time,
        progress=lambda label, s: print(f"  {label} {s}x{s}", flush=True),
    )
    out = Path(args.out)
    rec = stamp(args.threads)
    write_plot(results, out.with_suffix(".png"))
    lines = [
        f"# Scaling with resolution ({rec['date']})",
        "",
        f"Command: `python benchmarks/scaling.py --mechanisms {' '.join(args.mechanisms)} --resolutions "
        f"{' '.join(map(str, args.resolutions))} --threads {args.threads}`",
        "",
        f"C={args.dim}, batch {args.batch}, float32, {args.threads} CPU thread(s). Environment: {environment()}.",
        stamp_line(rec),
        "Times are medians; the machine is shared, so read ratios taken in this one run, not absolute times.",
        "",
        format_table(results),
        "",
        "Log-log slope against n (1 = linear, 2 = quadratic):",
        "",
        format_slopes(results),
        "",
    ]
    ref = {r.resolution: r for r in results if r.label == "mhsa" and not r.error}
    speedup: dict[str, dict[str, float]] = {}
    if ref:
        lines += [
            "Forward time of mhsa divided by each mechanism's (higher = faster than mhsa):",
            "",
            "| case | " + " | ".join(f"{s}x{s}" for s in args.resolutions) + " |",
            "|---|" + "---|" * len(args.resolutions),
        ]
        for label in dict.fromkeys(r.label for r in results):
            row = []
            for s in args.resolutions:
                r = next((r for r in results if r.label == label and r.resolution == s and not r.error), None)
                ok = r is not None and s in ref and math.isfinite(r.fwd_ms)
                row.append(f"{ref[s].fwd_ms / r.fwd_ms:.1f}x" if ok else "-")
                if ok:
                    speedup.setdefault(label, {})[f"{s}x{s}"] = ref[s].fwd_ms / r.fwd_ms
            lines.append(f"| {label} | " + " | ".join(row) + " |")
    tmp = out.with_name(f".{out.name}.bench.json")  # the library's JSON, then stamped
    try:
        write_bench_json(results, tmp, vars(args))
        doc = json.loads(tmp.read_text())
    finally:
        tmp.unlink(missing_ok=True)
    write_json(out.with_suffix(".json"), {**rec, **doc, "speedup_vs_mhsa": speedup})
    write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
