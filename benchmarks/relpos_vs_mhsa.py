"""Cost of "relpos" against "mhsa" at the same width (C=64, 4 heads, batch 4), forward (no grad)
and training (forward + backward with an input that requires grad), at 28x28 and 56x56 tokens.

Each round times every case (a few calls each, median) one after the other; a case's ratio is
the median over rounds of its per-round time / mhsa's. Targets (issue 19): relpos with content
<= 1.3x mhsa in training at 28 and 56.

Subnormal floats: the positional logits of far-away keys are large and negative, so softmax
probabilities of about e^-87..e^-103 are subnormal, and the CPU's arithmetic on them is slow
(SDPA's fused backward up to ~10x). The script flushes them to zero
(``torch.set_flush_denormal(True)``, before torch's thread pool starts, as ``import visattn``
does) and re-runs the content case in a child process with them kept, to show the difference.

    python benchmarks/relpos_vs_mhsa.py --threads 2

Writes benchmarks/results/relpos_vs_mhsa.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

RUN_ALL = {
    "args": ["--threads", "2", "--rounds", "7"],
    "minutes": 6,
    "results": ["relpos_vs_mhsa.json", "relpos_vs_mhsa.md"],
    "check": ["ratio"],
}

CASES = {
    "mhsa": ("mhsa", {"num_heads": 4}),
    "relpos (quadratic, position only)": ("relpos", {"num_heads": 4, "encoding": "quadratic", "content": False}),
    "relpos (learned, position only)": (
        "relpos",
        {"num_heads": 4, "encoding": "learned", "content": False, "max_offset": 55},
    ),
    "relpos (gaussian, position only)": ("relpos", {"num_heads": 4, "encoding": "gaussian", "content": False}),
    "relpos (quadratic + content)": ("relpos", {"num_heads": 4, "encoding": "quadratic", "content": True}),
    "relpos (gaussian + content)": ("relpos", {"num_heads": 4, "encoding": "gaussian", "content": True}),
}
CONTENT = ("mhsa", "relpos (quadratic + content)")


def _median_call(fn, calls: int) -> float:
    ts = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def measure(sides, cases, batch, dim, rounds, calls) -> list[dict]:
    import visattn
    from visattn.flops import count_flops

    rows = []
    for side in sides:
        torch.manual_seed(0)
        x = torch.randn(batch, dim, side, side)
        g = torch.randn(batch, dim, side, side)
        mods = {label: visattn.create_attention(name, dim, **kw).train() for label, (name, kw) in cases.items()}

        def fwd(m):
            with torch.no_grad():
                m(x)

        def train(m):
            xi = x.detach().requires_grad_(True)
            m(xi).backward(g)

        for m in mods.values():  # warm-up: first-call allocations, oneDNN primitives
            fwd(m)
            train(m)
        times = {label: {"fwd": [], "train": []} for label in mods}
        for _ in range(rounds):
            for label, m in mods.items():
                times[label]["fwd"].append(_median_call(lambda: fwd(m), calls))
                times[label]["train"].append(_median_call(lambda: train(m), calls))
        base = times["mhsa"]
        for label, m in mods.items():
            t = times[label]
            with torch.no_grad():
                flops = count_flops(m, x)
            rows.append(
                {
                    "size": f"{side}x{side}",
                    "case": label,
                    "fwd_ms": 1e3 * statistics.median(t["fwd"]),
                    "train_ms": 1e3 * statistics.median(t["train"]),
                    "fwd_ratio_vs_mhsa": statistics.median(a / b for a, b in zip(t["fwd"], base["fwd"])),
                    "train_ratio_vs_mhsa": statistics.median(a / b for a, b in zip(t["train"], base["train"])),
                    "counted_gflops": flops / 1e9,
                }
            )
            r = rows[-1]
            print(
                f"{side}x{side} {label:<36} fwd {r['fwd_ms']:8.2f} ms ({r['fwd_ratio_vs_mhsa']:.2f}x)  "
                f"train {r['train_ms']:8.2f} ms ({r['train_ratio_vs_mhsa']:.2f}x)",
                flush=True,
            )
    return rows


def sdpa_floor(sides, batch, dim, rounds, calls) -> list[dict]:
    """The unavoidable part of the content case's extra cost: SDPA itself at the fold width
    (key_dim + 3 positional dimensions, rounded up to 8, values padded to it) against SDPA at
    mhsa's head width, forward + backward. ``floor`` = 1 + (SDPA_D - SDPA_d) / mhsa's layer step:
    the ratio relpos would have if everything but the wider SDPA cost what mhsa's does."""
    import torch.nn.functional as F

    import visattn

    heads, out = 4, []
    layer = visattn.create_attention("relpos", dim, num_heads=heads, encoding="quadratic", content=True)
    d, wide = dim // heads, layer._fold_width()
    for side in sides:
        n = side * side
        torch.manual_seed(0)
        ins = {w: [torch.randn(batch, heads, n, w, requires_grad=True) for _ in range(3)] for w in (d, wide)}
        g = {w: torch.randn(batch, heads, n, w) for w in (d, wide)}

        def step(w):
            F.scaled_dot_product_attention(*ins[w]).backward(g[w])

        for w in ins:
            step(w)
        times = {w: [] for w in ins}
        for r in range(rounds):
            for w in ins if r % 2 == 0 else reversed(list(ins)):
                times[w].append(_median_call(lambda: step(w), calls))
        out.append(
            {
                "size": f"{side}x{side}",
                "sdpa_ms": {str(w): 1e3 * statistics.median(t) for w, t in times.items()},
                "sdpa_ratio": statistics.median(a / b for a, b in zip(times[wide], times[d])),
                "widths": [d, wide],
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--sides", type=int, nargs="+", default=[28, 56])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--keep-denormals", action="store_true", help="do not flush subnormal floats to zero")
    ap.add_argument("--child", action="store_true", help="print the content rows as JSON (internal)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "relpos_vs_mhsa"))
    args = ap.parse_args()
    torch.set_flush_denormal(not args.keep_denormals)  # before torch's thread pool starts
    torch.set_num_threads(args.threads)
    if args.child:
        cases = {k: CASES[k] for k in CONTENT}
        print(json.dumps(measure(args.sides, cases, args.batch, args.dim, args.rounds, args.calls)))
        return
    rows = measure(args.sides, CASES, args.batch, args.dim, args.rounds, args.calls)
    floor = sdpa_floor(args.sides, args.batch, args.dim, args.rounds, args.calls)
    for f in floor:
        mhsa_ms = next(r["train_ms"] for r in rows if r["size"] == f["size"] and r["case"] == "mhsa")
        d, wide = f["widths"]
        f["floor_vs_mhsa"] = 1 + (f["sdpa_ms"][str(wide)] - f["sdpa_ms"][str(d)]) / mhsa_ms
        print(
            f"  {f['size']} SDPA fwd+bwd width {wide} / {d}: {f['sdpa_ratio']:.2f}x; floor {f['floor_vs_mhsa']:.2f}x mhsa"
        )
    child = [sys.executable, __file__, "--child", "--keep-denormals", "--threads", str(args.threads)]
    child += ["--batch", str(args.batch), "--dim", str(args.dim), "--rounds", str(args.rounds)]
    child += ["--calls", str(args.calls), "--sides", *map(str, args.sides)]
    print("content case with subnormal floats kept (child process):", flush=True)
    env = {**os.environ, "VISATTN_KEEP_DENORMALS": "1"}  # import visattn keeps them too
    out = subprocess.run(child, check=True, capture_output=True, text=True, env=env).stdout
    kept = json.loads(out.splitlines()[-1])
    for r in kept:
        print(f"  {r['size']} {r['case']:<36} train {r['train_ms']:8.2f} ms ({r['train_ratio_vs_mhsa']:.2f}x)")

    from _record import stamp, stamp_line, write_json, write_text

    st = stamp(args.threads)
    config = {"batch": args.batch, "dim": args.dim, "heads": 4, "rounds": args.rounds, "calls": args.calls}
    doc = {**st, "flush_denormal": True, "config": config, "rows": rows, "denormals_kept": kept, "floor": floor}
    write_json(args.out + ".json", doc)
    lines = [
        f"# relpos vs mhsa (C={args.dim}, 4 heads, batch {args.batch}, CPU, {args.threads} thread(s))",
        "",
        stamp_line(st),
        "",
        "| size | case | fwd ms | fwd ratio | train ms | train ratio | counted GFLOPs |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['case']} | {r['fwd_ms']:.2f} | {r['fwd_ratio_vs_mhsa']:.2f} | "
            f"{r['train_ms']:.2f} | {r['train_ratio_vs_mhsa']:.2f} | {r['counted_gflops']:.4f} |"
        )
    lines += [
        "",
        "Train = forward + backward with an input that requires grad; ratios are medians of per-round",
        f"ratios over {args.rounds} alternating rounds. Subnormal floats flushed to zero (as import visattn",
        "does).",
        "",
        "Floor of the content case: the fold widens SDPA's queries, keys and values from mhsa's head width",
        "to key_dim + 3 positional dimensions rounded up to 8. SDPA alone at both widths (forward + backward,",
        "same batch and heads), and the ratio relpos would have against mhsa if everything else cost what",
        "mhsa's does (1 + the SDPA difference / mhsa's training step):",
        "",
        "| size | SDPA ms (mhsa width / fold width) | SDPA ratio | floor vs mhsa |",
        "| --- | ---: | ---: | ---: |",
    ]
    for f in floor:
        d, wide = f["widths"]
        lines.append(
            f"| {f['size']} | {f['sdpa_ms'][str(d)]:.2f} / {f['sdpa_ms'][str(wide)]:.2f} (d = {d} / {wide}) | "
            f"{f['sdpa_ratio']:.2f} | {f['floor_vs_mhsa']:.2f} |"
        )
    lines += [
        "",
        "With subnormal floats kept (a child process, same cases):",
        "",
        "| size | case | train ms | train ratio |",
        "| --- | --- | ---: | ---: |",
    ]
    lines += [f"| {r['size']} | {r['case']} | {r['train_ms']:.2f} | {r['train_ratio_vs_mhsa']:.2f} |" for r in kept]
    write_text(args.out + ".md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
