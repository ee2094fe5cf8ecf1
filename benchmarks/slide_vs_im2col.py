"""Slide attention against im2col local attention (issue 4's performance figures).

im2col reference: the ``"local"`` mechanism (``F.unfold`` of keys and values, multiply,
sum; the same q/k/v and output projections as ``"slide"``). Also the bare attention cores
(q, k, v given: unfold-multiply-sum versus slide's shift loop), global ``"mhsa"``, the
authors' formulation (materialised keys/values from a grouped depthwise conv,
``impl="reference"`` of ``"slide"``), and NATTEN's neighbourhood attention when importable.

C=64, 4 heads, batch 4, sides 28..112, float32, forward in eval mode under ``torch.no_grad``.
Time: the cases are interleaved over several rounds of a few calls and each case keeps its
fastest call (contention on a shared machine only adds time).
Memory: peak of the cumulative allocation curve recorded by ``torch.profiler``
(``visattn.bench.measure.peak_memory_bytes``), above what was allocated before the call.

    PYTHONPATH=src python benchmarks/slide_vs_im2col.py [--threads 1] [--rounds 3] [--sides 28 56 112]

Writes benchmarks/results/slide_vs_im2col.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time

import torch
import torch.nn.functional as F

import visattn
from _record import stamp
from visattn.bench.measure import peak_memory_bytes
from visattn.layers.slide_kernels import attend_inplace

RUN_ALL = {
    "args": ["--threads", "2", "--sides", "28", "56", "--rounds", "3"],
    "minutes": 4,
    "results": ["slide_vs_im2col.json", "slide_vs_im2col.md"],
    "check": ["ratios"],
}

DIM, HEADS, BATCH = 64, 4, 4


def module_cases(k3: bool = True):
    """label -> (mechanism, kwargs, reparameterize)."""
    return {
        "im2col k3 (local)": ("local", {"num_heads": HEADS, "kernel_size": 3}, False),
        "slide k3 deformed (training form)": ("slide", {"num_heads": HEADS, "kernel_size": 3}, False),
        "slide k3 deformed, re-parameterised": ("slide", {"num_heads": HEADS, "kernel_size": 3}, True),
        "slide k3 shifts only": ("slide", {"num_heads": HEADS, "kernel_size": 3, "deformed": False}, False),
        "im2col k7 (local)": ("local", {"num_heads": HEADS, "kernel_size": 7}, False),
        "slide k7 shifts only": ("slide", {"num_heads": HEADS, "kernel_size": 7, "deformed": False}, False),
        "slide k7 deformed, re-parameterised": ("slide", {"num_heads": HEADS, "kernel_size": 7}, True),
        "mhsa (global)": ("mhsa", {"num_heads": HEADS}, False),
    }


def im2col_core(q, k, v, ks):
    """Bare im2col local attention: unfold, multiply, sum. q, k, v: (B, C, H, W)."""
    b, c, h, w = q.shape
    n, d, r = h * w, c // HEADS, ks // 2
    keys = F.unfold(k, ks, padding=r).view(b, HEADS, d, ks * ks, n)
    vals = F.unfold(v, ks, padding=r).view(b, HEADS, d, ks * ks, n)
    attn = torch.softmax((q.reshape(b, HEADS, d, 1, n) * keys).sum(2), 2)
    return (attn.unsqueeze(2) * vals).sum(3)


def slide_core(q, k, v, ks):
    """Slide's in-place shift loop (pure shifts, no key bias) on the same q, k, v."""
    b, c, h, w = q.shape
    d = c // HEADS
    return attend_inplace(
        q.view(b, HEADS, d, h, w), k.view(b, HEADS, d, h, w), v.view(b, HEADS, d, h, w), ks, None, None, None, None
    )


def natten_module(ks):
    """NATTEN's NeighborhoodAttention2D (channels-last tokens) wrapped to (B, C, H, W), or the reason
    there is none. NATTEN 0.21 on a CPU runs through PyTorch's FlexAttention without compilation."""
    try:
        import warnings

        import natten

        warnings.filterwarnings("ignore", module=r"natten|torch\.nn\.attention")
        m = natten.NeighborhoodAttention2D(embed_dim=DIM, num_heads=HEADS, kernel_size=ks).eval()
    except Exception as e:  # ImportError or a binary mismatch
        return None, f"not importable here ({type(e).__name__}: {str(e)[:120]})"
    return (lambda x: m(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)), (
        f"natten {natten.__version__} (libnatten: {natten.HAS_LIBNATTEN}; CPU path = uncompiled FlexAttention)"
    )


def best_of_rounds(fns: dict, rounds: int, calls: int) -> dict:
    """Fastest call of each case over ``rounds`` interleaved rounds of ``calls`` calls (after one
    warm-up call per round): on a loaded machine contention only adds time."""
    best = {key: float("inf") for key in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            fn()
            for _ in range(calls):
                t0 = time.perf_counter()
                fn()
                best[key] = min(best[key], time.perf_counter() - t0)
    return {key: 1e3 * v for key, v in best.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--sides", type=int, nargs="+", default=[28, 56, 112])
    ap.add_argument(
        "--natten-max-side",
        type=int,
        default=56,
        help="NATTEN's CPU path is dense FlexAttention math: O(n^2) memory, so only small maps",
    )
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "slide_vs_im2col"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    natten_note = natten_module(3)[1]
    rows = []
    for side in args.sides:
        x = torch.randn(BATCH, DIM, side, side)
        mods = {}
        for label, (name, kw, reparam) in module_cases().items():
            m = visattn.create_attention(name, DIM, **kw).eval()
            if reparam:
                visattn.reparameterize(m)
            mods[label] = m
        authors = mods["slide k3 deformed, re-parameterised"]
        q, k, v = (t.contiguous() for t in authors._qkv(x))
        fns = {label: (lambda m=m: m(x)) for label, m in mods.items()}
        authors_ref = copy.deepcopy(authors)
        authors_ref.impl = "reference"  # the literal definition: materialised keys from the grouped convs
        fns["slide k3, authors' form (grouped conv keys)"] = lambda: authors_ref(x)
        if side <= args.natten_max_side:
            for ks in (3, 7):
                na = natten_module(ks)[0]
                if na is not None:
                    fns[f"natten NA2D k{ks} (optional peer)"] = lambda na=na: na(x)
        for ks in (3, 7):
            fns[f"core im2col k{ks}"] = lambda ks=ks: im2col_core(q, k, v, ks)
            fns[f"core slide shifts k{ks}"] = lambda ks=ks: slide_core(q, k, v, ks)
        with torch.no_grad():
            times = best_of_rounds(fns, args.rounds, args.calls)
            mem = {label: peak_memory_bytes(fn) / 2**20 for label, fn in fns.items()}
        for label in fns:
            rows.append({"side": side, "case": label, "fwd_ms": times[label], "peak_mib": mem[label]})
        print(f"side {side}: " + ", ".join(f"{lab}={times[lab]:.1f}ms/{mem[lab]:.0f}MiB" for lab in fns), flush=True)

    def get(side, case, key):
        return next(r[key] for r in rows if r["side"] == side and r["case"] == case)

    ratios = []
    for side in args.sides:
        t3, t7 = get(side, "im2col k3 (local)", "fwd_ms"), get(side, "im2col k7 (local)", "fwd_ms")
        m3, m7 = get(side, "im2col k3 (local)", "peak_mib"), get(side, "im2col k7 (local)", "peak_mib")
        ratios.append(
            {
                "side": side,
                "reparam_k3_time": get(side, "slide k3 deformed, re-parameterised", "fwd_ms") / t3,
                "training_form_k3_time": get(side, "slide k3 deformed (training form)", "fwd_ms") / t3,
                "authors_form_k3_time": get(side, "slide k3, authors' form (grouped conv keys)", "fwd_ms") / t3,
                "shift_k3_time": get(side, "slide k3 shifts only", "fwd_ms") / t3,
                "shift_k7_time": get(side, "slide k7 shifts only", "fwd_ms") / t7,
                "shift_k3_mem": get(side, "slide k3 shifts only", "peak_mib") / m3,
                "shift_k7_mem": get(side, "slide k7 shifts only", "peak_mib") / m7,
                "shift_k7_vs_mhsa_time": get(side, "slide k7 shifts only", "fwd_ms")
                / get(side, "mhsa (global)", "fwd_ms"),
                "deformed_k7_time": get(side, "slide k7 deformed, re-parameterised", "fwd_ms") / t7,
                "core_shift_k3_time": get(side, "core slide shifts k3", "fwd_ms")
                / get(side, "core im2col k3", "fwd_ms"),
                "core_shift_k7_time": get(side, "core slide shifts k7", "fwd_ms")
                / get(side, "core im2col k7", "fwd_ms"),
            }
        )
    env = {
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.platform(),
        "cpus": os.cpu_count(),
        "load_avg_at_end": os.getloadavg(),
        "dim": DIM,
        "heads": HEADS,
        "batch": BATCH,
        "rounds": args.rounds,
        "calls": args.calls,
        "natten": natten_note,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump({**stamp(args.threads), "env": env, "rows": rows, "ratios": ratios}, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(
            f"# Slide attention vs im2col ({DIM} channels, {HEADS} heads, batch {BATCH}, float32, "
            f"{args.threads} thread(s), forward, no_grad)\n\n"
        )
        f.write(
            f"torch {torch.__version__}; {os.cpu_count()} CPUs shared with other jobs "
            f"(load average at the end {env['load_avg_at_end'][0]:.1f}); fastest call over {args.rounds} "
            f"interleaved rounds of {args.calls} calls. NATTEN: {natten_note}.\n\n"
        )
        f.write("## Ratios (ours / reference; < 1 is better)\n\n")
        cols = [
            ("reparam_k3_time", "k3 re-param / im2col (time, target <= 0.5)"),
            ("training_form_k3_time", "k3 deformed training form / im2col"),
            ("authors_form_k3_time", "k3 authors' grouped-conv form / im2col"),
            ("shift_k3_time", "k3 shifts / im2col (time, target <= 0.2)"),
            ("shift_k7_time", "k7 shifts / im2col (time, target <= 0.2)"),
            ("shift_k3_mem", "k3 shifts / im2col (peak mem, target <= 0.33)"),
            ("shift_k7_mem", "k7 shifts / im2col (peak mem, target <= 0.33)"),
            ("shift_k7_vs_mhsa_time", "k7 shifts / mhsa (time, target < 1 at >= 56)"),
            ("deformed_k7_time", "k7 deformed re-param / im2col k7"),
            ("core_shift_k3_time", "core only: shifts / im2col, k3"),
            ("core_shift_k7_time", "core only: shifts / im2col, k7"),
        ]
        f.write("| ratio | " + " | ".join(f"{r['side']}x{r['side']}" for r in ratios) + " |\n")
        f.write("|---|" + "---|" * len(ratios) + "\n")
        for key, title in cols:
            f.write(f"| {title} | " + " | ".join(f"{r[key]:.3f}" for r in ratios) + " |\n")
        f.write("\n## Raw figures (forward ms / peak MiB)\n\n")
        cases = list(dict.fromkeys(r["case"] for r in rows))
        f.write("| case | " + " | ".join(f"{s}x{s}" for s in args.sides) + " |\n")
        f.write("|---|" + "---|" * len(args.sides) + "\n")
        for case in cases:
            cells = []
            for s in args.sides:
                hit = [r for r in rows if r["side"] == s and r["case"] == case]
                cells.append(f"{hit[0]['fwd_ms']:.1f} / {hit[0]['peak_mib']:.1f}" if hit else "-")
            f.write(f"| {case} | " + " | ".join(cells) + " |\n")
    print(json.dumps(ratios, indent=1))


if __name__ == "__main__":
    main()
