"""Does ``torch.compile`` pay for the slide, lambda and relpos layers (issue 19)?

For each layer (C=64, 4 heads, batch 4, 28x28, float32 CPU): eager against ``torch.compile``d,
training (forward + backward with an input that requires grad) and inference (no grad). The
compile time is the first compiled call's wall time (tracing, Inductor's C++ code generation
and compilation) minus an eager call; steady-state ratios are medians of per-round ratios over
alternating rounds. ``break_even_steps`` is how many steps the compile time takes to pay back
(never where compiled is not faster). Subnormal floats are flushed to zero, as the visattn CLI
does. Slide runs its ``"functional"`` implementation under compile (the in-place one cannot be
traced; ``auto`` picks it there).

    python benchmarks/compile_speed.py --threads 2

Writes benchmarks/results/compile_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

RUN_ALL = {
    "args": ["--threads", "2"],
    "minutes": 6,
    "results": ["compile_speed.json", "compile_speed.md"],
    "check": ["steady_ratio"],
}

LAYERS = {
    "slide k3 deformed": ("slide", {"num_heads": 4, "kernel_size": 3}),
    "lambda r7": ("lambda", {"num_heads": 4, "key_dim": 16, "local_scope": 7}),
    "relpos quadratic + content": ("relpos", {"num_heads": 4, "encoding": "quadratic", "content": True}),
}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(label, mech, kw, mode, side, batch, dim, rounds) -> dict:
    import visattn

    torch.manual_seed(0)
    eager = visattn.create_attention(mech, dim, **kw).train(mode == "train")
    x = torch.randn(batch, dim, side, side)
    g = torch.randn(batch, dim, side, side)
    torch._dynamo.reset()
    compiled = torch.compile(eager)

    def step(m):
        if mode == "train":
            xi = x.detach().requires_grad_(True)
            m(xi).backward(g)
        else:
            with torch.no_grad():
                m(x)

    _timed(lambda: step(eager))
    first = _timed(lambda: step(compiled))
    eager_t = _timed(lambda: step(eager))
    _timed(lambda: step(compiled))
    ratios, te, tc = [], [], []
    for _ in range(rounds):
        a, b = _timed(lambda: step(compiled)), _timed(lambda: step(eager))
        ratios.append(a / b)
        tc.append(a)
        te.append(b)
    ratio = statistics.median(ratios)
    eager_ms, comp_ms = 1e3 * statistics.median(te), 1e3 * statistics.median(tc)
    compile_s = max(0.0, first - eager_t)
    gain_s = (eager_ms - comp_ms) / 1e3
    return {
        "layer": label,
        "mode": mode,
        "size": side,
        "eager_ms": eager_ms,
        "compiled_ms": comp_ms,
        "steady_ratio": ratio,
        "compile_s": compile_s,
        "break_even_steps": compile_s / gain_s if gain_s > 0 else None,  # None: never
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--side", type=int, default=28)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", nargs="+", choices=sorted(LAYERS), default=sorted(LAYERS))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "compile_speed"))
    args = ap.parse_args()
    import visattn  # first: importing it flushes subnormal floats before torch's thread pool starts (fpmode)

    torch.set_num_threads(args.threads)
    rows = []
    for label in args.only:
        mech, kw = LAYERS[label]
        for mode in ("train", "infer"):
            try:
                r = measure(label, mech, kw, mode, args.side, args.batch, args.dim, args.rounds)
            except Exception as e:  # a layer that does not compile is a result, not a crash
                r = {"layer": label, "mode": mode, "size": args.side, "error": f"{type(e).__name__}: {e}"[:300]}
            rows.append(r)
            print(r, flush=True)

    from _record import stamp, stamp_line, write_json, write_text

    st = stamp(args.threads)
    write_json(
        args.out + ".json",
        {**st, "flush_denormal": not visattn.fpmode.keep_denormals_requested(), "config": vars(args), "rows": rows},
    )
    lines = [
        f"# torch.compile vs eager (C={args.dim}, batch {args.batch}, {args.side}x{args.side}, CPU, "
        f"{args.threads} thread(s))",
        "",
        stamp_line(st),
        "",
        "| layer | mode | eager ms | compiled ms | compiled / eager | compile s | break-even steps |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['layer']} | {r['mode']} | - | - | - | - | {r['error']} |")
            continue
        be = "never" if r["break_even_steps"] is None else f"{r['break_even_steps']:.0f}"
        lines.append(
            f"| {r['layer']} | {r['mode']} | {r['eager_ms']:.1f} | {r['compiled_ms']:.1f} | "
            f"{r['steady_ratio']:.2f} | {r['compile_s']:.1f} | {be} |"
        )
    lines += [
        "",
        "Train = forward + backward with an input that requires grad; ratios are medians of per-round",
        f"ratios over {args.rounds} alternating rounds. Compile s = the first compiled call minus an eager one.",
    ]
    write_text(args.out + ".md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
