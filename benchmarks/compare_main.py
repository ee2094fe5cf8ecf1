"""The main job, recorded: ``visattn compare`` with no options (10 mechanisms x 2 tasks x 2 seeds).

Runs ``python -m visattn compare --output TMP --no-progress`` (the default run; only the output
folder and the progress bars differ) in a subprocess, and writes

* ``benchmarks/results/compare.json``: the run's own ``compare.json`` plus ``machine``, ``torch``,
  ``threads``, ``date``, ``load_1min``, the command and its wall time with start-up;
* ``benchmarks/results/compare.md``: the table ``visattn compare`` printed (the one the README
  and docs/compare.md show between ``<!-- results:compare.md -->`` markers), the run's time and
  environment;
* ``docs/img/compare.png``: the run's plot.

    flock -x /work/cpu.lock python benchmarks/compare_main.py     # about 6-7 minutes, one thread
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _record import RESULTS, ROOT, stamp, stamp_line, write_bytes, write_json, write_text

RUN_ALL = {
    "args": [],
    "minutes": 7,
    "results": ["compare.json", "compare.md"],
    "check": ["train_img_s", "latency_ms", "peak_mib", ".mean", "total_time_s"],
}


def table_of(text: str) -> tuple[str, str]:
    """The first Markdown table (lines starting with ``|``) in ``text`` and the notes paragraph after it."""
    lines, table, notes = text.splitlines(), [], []
    for i, line in enumerate(lines):
        if line.startswith("|"):
            table.append(line.rstrip())
        elif table:
            for note in lines[i + 1 if not line.strip() else i :]:
                if not note.strip():
                    break
                notes.append(note.rstrip())
            break
    if len(table) < 3:
        raise SystemExit(f"compare_main: no table in the output of visattn compare:\n{text[-2000:]}")
    return "\n".join(table), "\n".join(notes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=RESULTS / "compare", help="results stem (default: %(default)s)")
    p.add_argument("--figure", type=Path, default=ROOT / "docs" / "img" / "compare.png")
    args, extra = p.parse_known_args(argv)  # the rest goes to `visattn compare` (e.g. --quick): not the recorded run
    args.extra = extra
    with tempfile.TemporaryDirectory(prefix="compare_main-") as tmp:
        out = Path(tmp) / "compare-out"
        cmd = [sys.executable, "-m", "visattn", "compare", *args.extra, "--output", str(out), "--no-progress"]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(x for x in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if x)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        print(proc.stdout, end="")
        if proc.returncode:
            print(proc.stderr[-4000:], file=sys.stderr)
            return proc.returncode
        doc = json.loads((out / "compare.json").read_text(encoding="utf-8"))
        figure = (out / "compare.png").read_bytes()
    table, notes = table_of(proc.stdout)
    s = stamp(threads=doc["config"]["threads"])
    shown = " ".join(["visattn compare", *args.extra]).strip()
    runs = len(doc["runs"])
    md = "\n".join(
        [
            f"# `{shown}`: the main job",
            "",
            f"`python benchmarks/compare_main.py{' ' + ' '.join(args.extra) if args.extra else ''}` "
            f"(`{shown} --output TMP --no-progress`). {stamp_line(s)}",
            "",
            f"{len(doc['rows'])} mechanisms x {len(doc['tasks'])} tasks x {len(doc['config']['seeds'])} seeds "
            f"({runs} training runs) in {doc['total_time_s']:.0f} s of runs, {wall:.0f} s wall with start-up "
            f"({int(wall // 60)} min {wall % 60:.0f} s).",
            "",
            table,
            "",
            notes,
            "",
        ]
    )
    doc = {**s, "command": shown, "wall_s": round(wall, 1), **doc}
    write_json(args.out.with_suffix(".json"), doc)
    write_text(args.out.with_suffix(".md"), md)
    if args.figure:
        write_bytes(args.figure, figure)
    print(f"wrote {args.out.with_suffix('.json')}, {args.out.with_suffix('.md')} and {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
