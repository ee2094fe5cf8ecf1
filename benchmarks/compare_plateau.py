"""Is `visattn compare`'s default budget "trained enough"? Accuracy at each task's default epochs
against the same run with 4x the epochs (same seed, data and schedule shape).

Runs ``visattn.compare.compare`` twice per task (default epochs, then ``--factor`` x) for the
chosen mechanisms with one seed and writes a Markdown table and the JSON of both runs.

    python benchmarks/compare_plateau.py --out benchmarks/results/compare_plateau

Default (mhsa, efficient, conv on digits; lambda, mhsa on longrange; factor 4): about 10
minutes of one CPU core. The JSON carries the machine, torch version, threads, date and one
row per task and mechanism (``top1`` at the default budget, ``top1_long`` at ``--factor`` x).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _record import stamp, stamp_line, write_json, write_text
from visattn.bench.report import environment
from visattn.compare import TASKS, compare

RUN_ALL = {
    "args": [],
    "minutes": 5,
    "results": ["compare_plateau.json", "compare_plateau.md"],
    "check": ["top1"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--digits", nargs="*", default=["mhsa", "efficient", "conv"], metavar="MECH")
    p.add_argument("--longrange", nargs="*", default=["lambda", "mhsa"], metavar="MECH")
    p.add_argument("--factor", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/compare_plateau")
    args = p.parse_args()
    rows, runs, table = [], {}, []
    for task, mechs in (("digits", args.digits), ("longrange", args.longrange)):
        if not mechs:
            continue
        base = TASKS[task].epochs
        accs = {}
        for epochs in (base, args.factor * base):
            rep = compare(
                mechs,
                tasks=[task],
                epochs=epochs,
                seeds=1,
                seed=args.seed,
                output=None,
                progress=False,
                threads=args.threads,
            )
            runs[f"{task}@{epochs}"] = rep.as_dict()
            for r in rep.rows:
                accs.setdefault(r.mechanism, []).append(r.tasks[task].mean)
            print(
                f"{task} {epochs} epochs: " + ", ".join(f"{m} {100 * a[-1]:.1f}" for m, a in accs.items()), flush=True
            )
        for m, (a, b) in accs.items():
            long = args.factor * base
            table.append({"task": task, "mechanism": m, "epochs": base, "top1": a, "epochs_long": long, "top1_long": b})
            rows.append(
                f"| {task} | {m} | {base} | {100 * a:.1f} | {args.factor * base} | {100 * b:.1f} | "
                f"{100 * (b - a):+.1f} |"
            )
    out = Path(args.out)
    rec = stamp(args.threads)
    doc = {**rec, "args": vars(args), "environment": environment(), "rows": table, "runs": runs}
    write_json(out.with_suffix(".json"), doc)
    lines = [
        f"# compare: default epochs against {args.factor}x ({rec['date']}, seed {args.seed})",
        "",
        stamp_line(rec),
        "",
        "| task | mechanism | epochs | top-1 % | epochs | top-1 % | gain |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
    ]
    write_text(out.with_suffix(".md"), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
