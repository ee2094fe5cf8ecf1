"""Recorded ``visattn compare --task detect`` default run: one maskrcnn_resnet_tiny per mechanism,
2 seeds, on the built-in cut of the digit scenes; its wall time (target <= 10 minutes on this
2-core machine) and its table.

    python benchmarks/detect_compare.py --threads 1 [--output runs/det-compare]

(the same as ``visattn compare --task detect --output runs/det-compare``; compare's default is one
thread). Writes ``benchmarks/results/detect_compare.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from _record import write_text

ROOT = Path(__file__).resolve().parents[1]

RUN_ALL = {
    "args": ["--threads", "1"],
    "minutes": 11,
    "results": ["detect_compare.json", "detect_compare.md"],
    "check": ["wall_time_s"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", default="runs/det-compare")
    args = p.parse_args()

    from visattn.compare import compare, format_table

    t0 = time.perf_counter()
    report = compare(task="detect", output=args.output, progress=False, threads=args.threads)
    wall = time.perf_counter() - t0
    table = format_table(report)
    doc = {
        "command": f"visattn compare --task detect --output {args.output}",
        "machine": platform.node() or platform.machine(),
        "torch": torch.__version__,
        "threads": args.threads,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": wall,
        "compare_json": str(Path(args.output) / "detect" / "compare.json"),
        "table": table,
    }
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    write_text(results / "detect_compare.json", json.dumps(doc, indent=2, allow_nan=False))
    md = (
        f"`visattn compare --task detect` (defaults: 10 mechanisms x 2 seeds), {args.threads} thread(s), "
        f"torch {torch.__version__}: wall time **{wall / 60:.1f} min**.\n\n```\n{table}\n```\n"
    )
    write_text(results / "detect_compare.md", md)
    print(md)


if __name__ == "__main__":
    main()
