"""Is `visattn compare`'s default budget "trained enough"? Accuracy at each task's default epochs
against the same run with 4x the epochs (same seed, data and schedule shape).

Runs ``visattn.compare.compare`` twice per task (default epochs, then ``--factor`` x) for the
chosen mechanisms with one seed and writes a Markdown table and the JSON of both runs.

    python benchmarks/compare_plateau.py --out benchmarks/results/compare_plateau

Default (mhsa, efficient, conv on digits; lambda, mhsa on longrange; factor 4): about 10
minutes of one CPU core.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

from visattn.bench.report import environment
from visattn.compare import TASKS, compare


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--digits", nargs="*", default=["mhsa", "efficient", "conv"], metavar="MECH")
    p.add_argument("--longrange", nargs="*", default=["lambda", "mhsa"], metavar="MECH")
    p.add_argument("--factor", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/compare_plateau")
    args = p.parse_args()
    rows, runs = [], {}
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
            rows.append(
                f"| {task} | {m} | {base} | {100 * a:.1f} | {args.factor * base} | {100 * b:.1f} | "
                f"{100 * (b - a):+.1f} |"
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps({"args": vars(args), "environment": environment(), "runs": runs}, indent=2)
    )
    lines = [
        f"# compare: default epochs against {args.factor}x ({datetime.date.today()}, seed {args.seed})",
        "",
        "| task | mechanism | epochs | top-1 % | epochs | top-1 % | gain |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
