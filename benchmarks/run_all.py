"""Re-run every recorded benchmark, rewrite benchmarks/results/ and the README's tables (issue 19).

A benchmark is *recorded* when its script under ``benchmarks/`` has a top-level literal

    RUN_ALL = {
        "args": ["--threads", "2"],     # argv: the script runs as `python benchmarks/X.py *args`
        "minutes": 5,                   # rough wall time on the project's 2-core machine
        "results": ["X.json", "X.md"],  # files it (re)writes under benchmarks/results/
        "check": ["ratio"],             # substrings of flattened JSON key paths that --check compares
    }

found by parsing the scripts with ``ast`` (nothing is imported); scripts without one are listed
as "not recorded". The scripts run one at a time, each in its own subprocess with this Python
and this tree's ``src/`` first on ``PYTHONPATH``; each one's wall time and exit status are
recorded in ``benchmarks/results/run_all.json``. A script that fails, or exits 0 without
rewriting every file it lists, gets its listed result files back as they were and does not
stop the others; the exit status is then 1. After the runs, every block

    <!-- results:X.md -->  ...  <!-- /results:X.md -->

in README.md and docs/**/*.md is replaced with the Markdown table in ``benchmarks/results/X.md``
(``X.md#2``: its second table), written atomically.

``--check`` runs the same scripts but keeps the recorded files: it compares each fresh JSON
with the recorded one, lists every checked figure that moved by more than 25% (``--tolerance``)
and each figure's noise band where the JSON reports one (a key ``NAME_band`` = [low, high] or
``NAME_rounds`` = per-round values beside ``NAME``), leaves the fresh files in a folder of
their own and puts every file under benchmarks/results/ and docs/img/ back as it was; exit
status 1 when anything moved or failed.

    python benchmarks/run_all.py --list                 # what is recorded, minutes, results
    python benchmarks/run_all.py --quick --dry-run      # what would run (scripts of <= 3 minutes)
    flock -x /work/cpu.lock python benchmarks/run_all.py --only scaling segment_step
    python benchmarks/run_all.py --check --quick        # fresh run against the recorded figures
    python benchmarks/run_all.py --tables               # only refresh the README blocks
"""

from __future__ import annotations

import argparse
import ast
import collections
import datetime
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:  # imported from elsewhere (tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import _record

ROOT = Path(__file__).resolve().parents[1]
SPEC_KEYS = {"args": "a list of strings", "minutes": "a positive number", "results": "a list of file names",
             "check": "a list of strings"}  # fmt: skip
QUICK_MINUTES = 3.0
LABEL_KEYS = ("name", "case", "label", "task", "mechanism", "model", "size", "resolution", "mode", "seed")
BLOCK = re.compile(r"^<!-- results:(?P<ref>[^\s>]+) -->\n(?P<body>.*?)^<!-- /results:(?P=ref) -->$", re.S | re.M)
START = re.compile(r"^<!-- results:(?P<ref>[^\s>]+) -->$", re.M)  # markers sit on lines of their own


class RunAllError(Exception):
    """Bad input to run_all (one line for the command line)."""


# ---------------------------------------------------------------------------
# Discovery
# ---------------------------------------------------------------------------


@dataclass
class Script:
    name: str
    path: Path
    about: str = ""
    spec: dict[str, Any] | None = None
    error: str = ""  # a RUN_ALL that is present but not valid

    @property
    def recorded(self) -> bool:
        return self.spec is not None and not self.error


def validate_spec(spec: Any) -> str:
    """'' when ``spec`` is a valid RUN_ALL literal, else what is wrong with it."""
    if not isinstance(spec, dict):
        return f"RUN_ALL must be a dict, got {type(spec).__name__}"
    missing, unknown = sorted(set(SPEC_KEYS) - set(spec)), sorted(set(spec) - set(SPEC_KEYS))
    if missing or unknown:
        return "RUN_ALL " + "; ".join(
            ([f"lacks {', '.join(missing)}"] if missing else []) + ([f"has unknown {', '.join(unknown)}"] if unknown else [])
        ) + f" (expected keys: {', '.join(SPEC_KEYS)})"  # fmt: skip
    for key in ("args", "results", "check"):
        v = spec[key]
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            return f"RUN_ALL['{key}'] must be {SPEC_KEYS[key]}, got {v!r}"
    m = spec["minutes"]
    if isinstance(m, bool) or not isinstance(m, (int, float)) or not m > 0:
        return f"RUN_ALL['minutes'] must be a positive number, got {m!r}"
    if not spec["results"]:
        return "RUN_ALL['results'] must name at least one file under benchmarks/results/"
    for r in spec["results"]:
        p = Path(r)
        if not r or p.is_absolute() or ".." in p.parts:
            return f"RUN_ALL['results'] entries are paths inside benchmarks/results/, got {r!r}"
    return ""


def parse_script(path: Path) -> Script:
    """The script's RUN_ALL literal (read with ``ast``, never imported) and docstring's first line."""
    s = Script(path.stem, path)
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError) as e:
        s.error = f"cannot be parsed: {e}"
        return s
    doc = ast.get_docstring(tree) or ""
    s.about = doc.strip().splitlines()[0] if doc.strip() else ""
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
        if isinstance(node, ast.AnnAssign):
            target = node.target
        if isinstance(target, ast.Name) and target.id == "RUN_ALL" and node.value is not None:
            try:
                s.spec = ast.literal_eval(node.value)
            except ValueError as e:
                s.spec, s.error = {}, f"RUN_ALL is not a plain literal ({e})"
                return s
            s.error = validate_spec(s.spec)
    return s


def discover(bench_dir: Path) -> list[Script]:
    """Every ``*.py`` script in ``bench_dir`` (not ``_*.py``, not run_all itself), by name."""
    return [
        parse_script(p)
        for p in sorted(bench_dir.glob("*.py"))
        if not p.name.startswith("_") and p.name != Path(__file__).name
    ]


def select(scripts: list[Script], only: list[str] | None, skip: list[str], max_minutes: float | None) -> list[Script]:
    """The recorded scripts to run: ``only`` (names, ``.py`` optional) minus ``skip``, within ``max_minutes``."""
    by_name = {s.name: s for s in scripts}
    for n in [*(only or []), *skip]:
        n = n.removesuffix(".py")
        if n not in by_name:
            raise RunAllError(f"no benchmark script {n!r}; expected one of: {', '.join(by_name)}")
        if not by_name[n].recorded:
            why = by_name[n].error or "it has no RUN_ALL literal"
            raise RunAllError(f"{n} is not a recorded benchmark ({why})")
    wanted = {n.removesuffix(".py") for n in only} if only else None
    skipped = {n.removesuffix(".py") for n in skip}
    out = []
    for s in scripts:
        if not s.recorded or s.name in skipped or (wanted is not None and s.name not in wanted):
            continue
        assert s.spec is not None
        if max_minutes is not None and s.spec["minutes"] > max_minutes:
            continue
        out.append(s)
    return out


# ---------------------------------------------------------------------------
# Figures: flatten a result JSON, compare two of them
# ---------------------------------------------------------------------------


def _labels(items: list) -> list[str]:
    """A readable, unique label per list element (``conv@28`` from its name-like keys), else indices."""
    labels = []
    for i, v in enumerate(items):
        parts: list[str] = []
        if isinstance(v, dict):
            for k in LABEL_KEYS:
                x = v.get(k)
                if isinstance(x, (str, int)) and not isinstance(x, bool) and str(x) not in parts:
                    parts.append(str(x))
        labels.append("@".join(parts) or str(i))
    return labels if len(set(labels)) == len(labels) else [str(i) for i in range(len(items))]


def _walk(doc: Any, path: str, out: dict[str, float], bands: dict[str, tuple[float, float]]) -> None:
    if isinstance(doc, dict):
        for k, v in doc.items():
            _walk(v, f"{path}.{k}" if path else str(k), out, bands)
            for tail in ("_band", "_rounds"):
                base = str(k).removesuffix(tail)
                if base != str(k) and base in doc and isinstance(v, list):
                    nums = [float(x) for x in v if _is_number(x)]
                    if nums and (tail == "_rounds" or len(nums) == 2):
                        bands[f"{path}.{base}" if path else base] = (min(nums), max(nums))
    elif isinstance(doc, list):
        for label, v in zip(_labels(doc), doc):
            _walk(v, f"{path}[{label}]", out, bands)
    elif _is_number(doc):
        out[path] = float(doc)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def figures(doc: Any, check: list[str]) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """The numbers of ``doc`` whose flattened key path contains one of ``check``, and their noise bands.

    Paths join dict keys with ``.`` and label list elements ``[conv@28]`` by their name-like keys
    (``name``, ``case``, ``mechanism``, ``resolution``...; indices where those do not tell the
    elements apart). A band is ``NAME_band`` ([low, high]) or the range of ``NAME_rounds`` beside
    ``NAME`` in the same dict; the band and round values are not figures themselves.
    """
    out: dict[str, float] = {}
    bands: dict[str, tuple[float, float]] = {}
    _walk(doc, "", out, bands)
    keep = {
        k: v
        for k, v in out.items()
        if any(c in k for c in check) and not re.search(r"_(band|rounds)\[", k)
    }  # fmt: skip
    return keep, {k: b for k, b in bands.items() if k in keep}


@dataclass
class Move:
    key: str
    old: float | None
    new: float | None
    band_old: tuple[float, float] | None = None
    band_new: tuple[float, float] | None = None

    @property
    def change(self) -> float | None:
        if self.old is None or self.new is None:
            return None
        if self.old == 0:
            return 0.0 if self.new == 0 else math.inf
        return self.new / self.old - 1.0

    def moved(self, tolerance: float) -> bool:
        c = self.change
        return c is None or abs(c) > tolerance

    def text(self) -> str:
        def band(b):
            return f"[{b[0]:.4g}, {b[1]:.4g}]" if b else "-"

        if self.old is None and self.new is None:
            return f"{self.key}: no recorded file to compare with"
        if self.old is None:
            return f"{self.key}: not in the recorded file (fresh {self.new:.4g})"
        if self.new is None:
            return f"{self.key}: recorded {self.old:.4g}, missing from the fresh run"
        c = self.change
        pct = "inf" if c is None or math.isinf(c) else f"{100 * c:+.0f}%"
        bands = ""
        if self.band_old or self.band_new:
            bands = f"; noise band recorded {band(self.band_old)}, fresh {band(self.band_new)}"
        return f"{self.key}: recorded {self.old:.4g}, fresh {self.new:.4g} ({pct}){bands}"


def compare_docs(recorded: Any, fresh: Any, check: list[str]) -> list[Move]:
    """Every checked figure of either document, with its bands (key order of the recorded one)."""
    old, old_bands = figures(recorded, check)
    new, new_bands = figures(fresh, check)
    keys = list(old) + [k for k in new if k not in old]
    return [Move(k, old.get(k), new.get(k), old_bands.get(k), new_bands.get(k)) for k in keys]


# ---------------------------------------------------------------------------
# README / docs blocks
# ---------------------------------------------------------------------------


def md_tables(text: str) -> list[str]:
    """The Markdown tables of ``text``: runs of >= 2 consecutive lines starting with ``|``."""
    tables, cur = [], []
    for line in [*text.splitlines(), ""]:
        if line.lstrip().startswith("|"):
            cur.append(line.rstrip())
            continue
        if len(cur) >= 2:
            tables.append("\n".join(cur))
        cur = []
    return tables


def table_for(ref: str, results_dir: Path) -> str:
    """The table a block ``<!-- results:REF -->`` shows: ``X.md`` (its first table) or ``X.md#N``."""
    name, _, nth = ref.partition("#")
    path = results_dir / name
    if not path.is_file():
        raise RunAllError(f"results:{ref}: no file {path}")
    tables = md_tables(path.read_text(encoding="utf-8"))
    n = int(nth) if nth.isdigit() and int(nth) > 0 else (None if nth else 1)
    if n is None:
        raise RunAllError(f"results:{ref}: expected X.md or X.md#N (N >= 1) after 'results:'")
    if len(tables) < n:
        raise RunAllError(f"results:{ref}: {path.name} has {len(tables)} table(s), block asks for table {n}")
    return tables[n - 1]


def replace_blocks(text: str, results_dir: Path) -> tuple[str, list[str], list[str]]:
    """``text`` with every results block refreshed; (new text, refs refreshed, problems)."""
    done: list[str] = []
    problems: list[str] = []
    closed = {m.start() for m in BLOCK.finditer(text)}
    for m in START.finditer(text):
        if m.start() not in closed:
            problems.append(f"results:{m['ref']}: no closing <!-- /results:{m['ref']} --> after it")

    def sub(m: re.Match) -> str:
        try:
            table = table_for(m["ref"], results_dir)
        except RunAllError as e:
            problems.append(str(e))
            return m[0]
        done.append(m["ref"])
        return f"<!-- results:{m['ref']} -->\n{table}\n<!-- /results:{m['ref']} -->"

    return BLOCK.sub(sub, text), done, problems


def doc_files(root: Path) -> list[Path]:
    return [p for p in [root / "README.md", *sorted((root / "docs").rglob("*.md"))] if p.is_file()]


def refresh_tables(root: Path, results_dir: Path, write: bool = True) -> tuple[list[str], list[str]]:
    """Refresh the blocks of README.md and docs/**/*.md; (lines saying what changed, problems)."""
    said, problems = [], []
    for path in doc_files(root):
        text = path.read_text(encoding="utf-8")
        new, done, bad = replace_blocks(text, results_dir)
        problems += [f"{path.relative_to(root)}: {b}" for b in bad]
        if done:
            state = "rewritten" if new != text else "unchanged"
            said.append(f"{path.relative_to(root)}: {len(done)} block(s) {state} ({', '.join(done)})")
        if write and new != text:
            atomic_write(path, new)
    return said, problems


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``path`` atomically with the project's helper (temporary file, then rename)."""
    if isinstance(data, bytes):
        _record.write_bytes(path, data)
    else:
        _record.write_text(path, data)


def snapshot(paths: list[Path]) -> dict[Path, bytes | None]:
    return {p: p.read_bytes() if p.is_file() else None for p in paths}


def restore(saved: dict[Path, bytes | None]) -> list[Path]:
    """Put every saved file back as it was (a file that did not exist is removed); the paths changed."""
    changed = []
    for p, data in saved.items():
        now = p.read_bytes() if p.is_file() else None
        if now == data:
            continue
        if data is None:
            p.unlink()
        else:
            atomic_write(p, data)
        changed.append(p)
    return changed


def tree_files(*folders: Path) -> list[Path]:
    return [p for f in folders if f.is_dir() for p in sorted(f.rglob("*")) if p.is_file()]


@dataclass
class Outcome:
    name: str
    rc: int | None
    wall_s: float
    error: str = ""
    tail: list[str] = field(default_factory=list)
    load: tuple[float | None, float | None] = (None, None)

    @property
    def ok(self) -> bool:
        return not self.error


def _load() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def run_script(s: Script, root: Path, results_dir: Path, echo: bool = True) -> Outcome:
    """Run one recorded script; on failure its listed results are put back as they were."""
    assert s.spec is not None
    listed = [results_dir / r for r in s.spec["results"]]
    before = snapshot(listed)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root / "src"), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = [sys.executable, str(s.path), *s.spec["args"]]
    load0, t0, start_ns = _load(), time.perf_counter(), time.time_ns()
    tail: collections.deque[str] = collections.deque(maxlen=30)
    try:
        proc = subprocess.Popen(
            cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
    except OSError as e:
        return Outcome(s.name, None, 0.0, f"could not start: {e}")
    assert proc.stdout is not None
    for line in proc.stdout:
        tail.append(line.rstrip("\n"))
        if echo:
            print(f"  | {line}", end="", flush=True)
    rc = proc.wait()
    out = Outcome(s.name, rc, time.perf_counter() - t0, tail=list(tail), load=(load0, _load()))
    stale = [p.name for p in listed if not p.is_file() or p.stat().st_mtime_ns < start_ns]
    if rc != 0:
        out.error = f"exit status {rc}"
    elif stale:
        out.error = f"exit status 0 but did not write {', '.join(stale)}"
    if out.error:
        put_back = restore(before)
        if put_back:
            out.error += f"; put back {', '.join(p.name for p in put_back)} as recorded"
    return out


def write_log(path: Path, outcomes: list[Outcome], scripts: dict[str, Script], check: bool) -> None:
    """Merge this run's per-script wall times and statuses into ``run_all.json``."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        doc = {}
    runs = doc.get("runs", {}) if isinstance(doc.get("runs"), dict) else {}
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    for o in outcomes:
        spec = scripts[o.name].spec or {}
        runs[o.name] = {
            "date": date,
            "args": spec.get("args", []),
            "minutes_expected": spec.get("minutes"),
            "wall_s": round(o.wall_s, 1),
            "exit_status": o.rc,
            "ok": o.ok,
            "error": o.error,
            "load_1min_start": o.load[0],
            "load_1min_end": o.load[1],
            "mode": "check" if check else "record",
        }
    doc = {**_record.stamp(), "threads": None, "runs": dict(sorted(runs.items()))}
    atomic_write(path, json.dumps(doc, indent=2) + "\n")


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def _listing(scripts: list[Script]) -> str:
    rows = []
    for s in scripts:
        if s.error:
            rows.append(f"{s.name:24s} invalid: {s.error}")
        elif s.spec is None:
            rows.append(f"{s.name:24s} not recorded{(': ' + s.about) if s.about else ''}")
        else:
            rows.append(f"{s.name:24s} {s.spec['minutes']:>5g} min  {', '.join(s.spec['results'])}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="run_all.py", description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", metavar="NAME", help="run these scripts only (names, .py optional)")
    p.add_argument("--skip", nargs="+", default=[], metavar="NAME", help="leave these scripts out")
    p.add_argument("--max-minutes", type=float, metavar="N", help="only scripts whose RUN_ALL minutes <= N")
    p.add_argument("--quick", action="store_true", help=f"same as --max-minutes {QUICK_MINUTES:g}")
    p.add_argument("--list", action="store_true", help="list every script: minutes and results, or why not recorded")
    p.add_argument("--dry-run", action="store_true", help="say what would run and which blocks exist; run nothing")
    p.add_argument("--check", action="store_true", help="compare a fresh run with the recorded files; keep those")
    p.add_argument("--tolerance", type=float, default=0.25, help="--check: a move above this fraction is listed")
    p.add_argument("--check-dir", type=Path, help="--check: folder for the fresh files (default: a new temp folder)")
    p.add_argument("--tables", action="store_true", help="only refresh the README/docs blocks from the results")
    p.add_argument("--quiet", action="store_true", help="do not echo the scripts' output")
    p.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        return _main(args)
    except RunAllError as e:
        print(f"run_all.py: error: {e}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    root = args.root.resolve()
    bench, results_dir = root / "benchmarks", root / "benchmarks" / "results"
    if not bench.is_dir():
        raise RunAllError(f"expected a benchmarks/ folder in {root}")
    if not 0 < args.tolerance:
        raise RunAllError(f"--tolerance must be > 0, got {args.tolerance}")
    scripts = discover(bench)
    if args.list:
        print(_listing(scripts))
        return 0
    if args.tables:
        said, problems = refresh_tables(root, results_dir, write=not args.dry_run)
        print("\n".join(said + problems) or "no results blocks in README.md or docs/")
        return 1 if problems else 0
    max_minutes = QUICK_MINUTES if args.quick and args.max_minutes is None else args.max_minutes
    todo = select(scripts, args.only, args.skip, max_minutes)
    skipped = [s.name for s in scripts if s.recorded and s not in todo]
    not_recorded = [s.name for s in scripts if not s.recorded]
    total = sum(s.spec["minutes"] for s in todo if s.spec)
    print(f"run_all: {len(todo)} script(s), about {total:g} min" + (" (check)" if args.check else ""))
    if skipped:
        print(f"  left out: {', '.join(skipped)}")
    if not_recorded:
        print(f"  not recorded: {', '.join(not_recorded)}")
    invalid = [s for s in scripts if s.error]
    for s in invalid:
        print(f"  invalid: {s.name}: {s.error}")
    if args.dry_run:
        for s in todo:
            assert s.spec is not None
            cmd = " ".join([f"python benchmarks/{s.path.name}", *s.spec["args"]])
            print(f"  would run: {cmd}   (~{s.spec['minutes']:g} min -> {', '.join(s.spec['results'])})")
        said, problems = refresh_tables(root, results_dir, write=False)
        for line in said + problems:
            print(f"  {line}")
        return 1 if invalid or problems else 0

    check_dir: Path | None = None
    saved: dict[Path, bytes | None] = {}
    if args.check:
        check_dir = args.check_dir or Path(tempfile.mkdtemp(prefix="run_all-check-"))
        check_dir.mkdir(parents=True, exist_ok=True)
        saved = snapshot(tree_files(results_dir, root / "docs" / "img"))
    outcomes: list[Outcome] = []
    moves: dict[str, list[Move]] = {}
    try:
        for i, s in enumerate(todo, 1):
            assert s.spec is not None
            print(f"[{i}/{len(todo)}] {s.name} {' '.join(s.spec['args'])} (~{s.spec['minutes']:g} min)", flush=True)
            o = run_script(s, root, results_dir, echo=not args.quiet)
            outcomes.append(o)
            print(f"[{i}/{len(todo)}] {s.name}: {'ok' if o.ok else 'FAILED: ' + o.error} in {o.wall_s:.0f} s")
            if not o.ok and args.quiet:
                print("\n".join(f"  | {t}" for t in o.tail))
            if args.check and o.ok and check_dir is not None:
                moves[s.name] = _check_one(s, results_dir, check_dir, saved, o)
    finally:
        if args.check:  # every recorded file back as it was (new ones removed), also after Ctrl-C
            restore({**dict.fromkeys(tree_files(results_dir, root / "docs" / "img")), **saved})
    if outcomes:
        log = (check_dir if check_dir is not None else results_dir) / "run_all.json"
        write_log(log, outcomes, {s.name: s for s in scripts}, args.check)
    problems: list[str] = []
    if not args.check and any(o.ok for o in outcomes):
        said, problems = refresh_tables(root, results_dir)
        for line in said + problems:
            print(line)
    return _summary(outcomes, moves, args.tolerance, check_dir, invalid, problems)


def _check_one(s: Script, results_dir: Path, check_dir: Path, saved: dict, o: Outcome) -> list[Move]:
    """Copy the fresh results of ``s`` to ``check_dir``; compare its JSON files with the recorded ones."""
    assert s.spec is not None
    out: list[Move] = []
    for r in s.spec["results"]:
        fresh_path = results_dir / r
        dest = check_dir / r
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(fresh_path.read_bytes())
        if not r.endswith(".json"):
            continue
        recorded = saved.get(fresh_path)
        if recorded is None:
            out.append(Move(r, None, None))
            continue
        try:
            old, new = json.loads(recorded), json.loads(fresh_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            o.error = f"{r} is not JSON: {e}"
            continue
        out += [
            Move(f"{r}: {m.key}", m.old, m.new, m.band_old, m.band_new) for m in compare_docs(old, new, s.spec["check"])
        ]
    return out


def _summary(
    outcomes: list[Outcome],
    moves: dict[str, list[Move]],
    tolerance: float,
    check_dir: Path | None,
    invalid: list[Script],
    problems: list[str],
) -> int:
    print("\nrun_all summary:")
    for o in outcomes:
        load = "" if o.load[1] is None else f", load {o.load[0]} -> {o.load[1]}"
        print(
            f"  {o.name:24s} {'ok' if o.ok else 'FAILED':7s} {o.wall_s:7.0f} s{load}{'  ' + o.error if o.error else ''}"
        )
    bad = [o for o in outcomes if not o.ok]
    moved_total = 0
    if check_dir is not None:
        print(f"\n--check: fresh files in {check_dir}; recorded files kept as they were")
        for name, ms in moves.items():
            moved = [m for m in ms if m.moved(tolerance)]
            banded = [m for m in ms if not m.moved(tolerance) and (m.band_old or m.band_new)]
            moved_total += len(moved)
            print(f"  {name}: {len(ms)} figure(s) compared, {len(moved)} moved by more than {100 * tolerance:.0f}%")
            for m in moved:
                print(f"    MOVED {m.text()}")
            for m in banded:
                print(f"    within {m.text()}")
    failed = len(bad) + len(invalid) + len(problems)
    if failed or moved_total:
        print(f"\nrun_all: {len(bad)} failed, {len(invalid)} invalid RUN_ALL, {len(problems)} block problem(s), "
              f"{moved_total} moved figure(s)")  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
