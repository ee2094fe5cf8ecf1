"""A/B check that ``impl="auto"`` is as fast as a baseline source tree (issue 11, item 2).

Times every registered mechanism's benchmark configurations (``bench_kwargs`` and
``bench_variants`` at C = 64, batch 2) in this tree and in a baseline tree (for example
the main checkout before the change), inference (no grad, eval) and a training step
(forward + backward, train mode), one thread. The two trees run in alternating
subprocesses, round after round; the figure is the median over rounds of the per-round
ratio this / baseline (below 1: faster here). A ratio within about 0.85-1.15 is noise on
a shared machine. Configurations a tree cannot build (renamed arguments) are reported
as such, naming the tree. ``_reparameterize`` in a benchmark variant means what it means to
``visattn bench``: build, then ``visattn.reparameterize`` the module.

    python benchmarks/auto_path_ab.py --baseline /work/main/src            # ~3-6 minutes
    python benchmarks/auto_path_ab.py --baseline /work/main/src --size 28 --rounds 5 --only lambda relpos
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1] / "src"

_CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(1)
import visattn
cases, size = json.loads(sys.argv[1]), int(sys.argv[2])
out = []
for name, kw, train in cases:
    kw = dict(kw)
    reparam = kw.pop("_reparameterize", False)  # a benchmark-only flag (as visattn.bench reads it)
    try:
        torch.manual_seed(0)
        m = visattn.create_attention(name, 64, **kw)
        if reparam:
            visattn.reparameterize(m.eval())
        m.train(train)
    except (TypeError, ValueError) as e:
        out.append(None)
        continue
    x = torch.randn(2, 64, size, size, requires_grad=train)
    def step():
        if train:
            m(x).sum().backward()
        else:
            with torch.no_grad():
                m(x)
    for _ in range(2):
        step()
    ts = []
    for _ in range(7):
        t = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t)
    out.append(sorted(ts)[3])
print(json.dumps(out))
"""


def cases(only: list[str] | None) -> list[tuple[str, dict, bool]]:
    sys.path.insert(0, str(HERE))
    import visattn

    out = []
    for name in visattn.list_attention():
        if only and name not in only:
            continue
        info = visattn.attention_info(name)
        for kw in [info.bench_kwargs, *info.bench_variants.values()]:
            for train in (False, True):
                out.append((name, dict(kw), train))
    return out


def run(tree: str, todo: list, size: int) -> list:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=tree)
    p = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(todo), str(size)], env=env, capture_output=True, text=True
    )
    if p.returncode:
        raise SystemExit(f"auto_path_ab: the run in {tree} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, help="the baseline tree's src/ folder (holds visattn/)")
    ap.add_argument("--size", type=int, default=28, help="map side H = W (default 28)")
    ap.add_argument("--rounds", type=int, default=4, help="alternating rounds (default 4)")
    ap.add_argument("--only", nargs="*", help="mechanism names (default: all registered)")
    args = ap.parse_args(argv)
    if not (Path(args.baseline) / "visattn").is_dir():
        raise SystemExit(f"auto_path_ab: --baseline must be a src/ folder holding visattn/, got {args.baseline}")
    todo = cases(args.only)
    ratios: list[list[float]] = [[] for _ in todo]
    unbuilt: list[set[str]] = [set() for _ in todo]  # which trees could not build a case
    for r in range(args.rounds):
        order = [str(HERE), args.baseline] if r % 2 == 0 else [args.baseline, str(HERE)]
        got = {tree: run(tree, todo, args.size) for tree in order}
        for i, (a, b) in enumerate(zip(got[str(HERE)], got[args.baseline])):
            if a is None:
                unbuilt[i].add("this tree")
            if b is None:
                unbuilt[i].add("the baseline")
            if a is not None and b is not None:
                ratios[i].append(a / b)
    for (name, kw, train), rs, no in zip(todo, ratios, unbuilt):
        mode = "train" if train else "infer"
        fig = f"{statistics.median(rs):.3f}" if rs else f"{' and '.join(sorted(no, reverse=True))} cannot build it"
        print(f"{name:10s} {mode:5s} {json.dumps(kw):70s} this/baseline {fig}")


if __name__ == "__main__":
    main()
