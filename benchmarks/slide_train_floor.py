"""Where a k=3 deformed slide training step goes, against the 0.5x-im2col target (issue 19).

Times, side by side in alternating rounds (C=64, 4 heads, batch 4, float32, input requiring grad,
forward + backward, no optimizer step), per map side:

* ``local``: im2col local attention k=3 (the reference); ``slide``: the deformed slide layer
  (training form, ``impl="inplace"``, the default);
* ``projections``: the 1x1 q/k/v and output convolutions alone, forward + backward with the
  layers' shapes (both layers pay them);
* ``merged-kernel GEMMs``: the contractions with the merged shift kernel alone, as the training
  kernels run them (per offset, batched over batch x heads): 2 in the forward (logits, output
  weights) and 5 in the backward (attention-weight gradient, two weight gradients, the two
  per-offset kernels seen from the output) — k^4 multiply-adds per channel and pixel each, which
  the training form cannot avoid (the one-hot shifts merge into the learned kernel, but the
  learned kernel's gradient needs both contractions);
* ``neighbour products``: the element-wise passes over the k*k shifted slices the training
  kernels make (forward: 9 products + 9 multiply-adds; backward: 18 products + 27 multiply-adds).

``floor`` = projections + GEMMs + products: the kernels the training step runs besides softmax
and bookkeeping; ``floor / local`` against the 0.5 target says whether it can be met with these
kernels on this CPU.

    PYTHONPATH=src python benchmarks/slide_train_floor.py [--threads 1] [--rounds 7] [--sides 28 56]

Writes benchmarks/results/slide_train_floor.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import visattn
from _record import RESULTS, stamp, stamp_line, write_json, write_text

RUN_ALL = {
    "args": ["--threads", "1", "--rounds", "7"],
    "minutes": 2,
    "results": ["slide_train_floor.json", "slide_train_floor.md"],
    "check": ["_vs_local"],
}

DIM, HEADS, BATCH, KS = 64, 4, 4, 3


def _layer_step(m, x, g):
    def run():
        xi = x.detach().requires_grad_(True)
        m(xi).backward(g)

    return run


def _projections(x, g, train: bool = True):
    """The 1x1 q/k/v and output convolutions; forward + backward (``train``), else forward alone."""
    c = x.shape[1]
    wq = torch.randn(3 * c, c, 1, 1, requires_grad=True)
    wp = torch.randn(c, c, 1, 1, requires_grad=True)
    b3, bp = torch.zeros(3 * c, requires_grad=True), torch.zeros(c, requires_grad=True)

    def run():
        xi = x.detach().requires_grad_(True)
        qkv = F.conv2d(xi, wq, b3)
        o = qkv[:, :c] + 0  # stands in for the attention output (one pass, as cheap as it gets)
        F.conv2d(o, wp, bp).backward(g)

    def run_inference():
        with torch.inference_mode():
            qkv = F.conv2d(x, wq, b3).contiguous()
            F.conv2d(qkv[:, :c] + 0, wp, bp)

    return run if train else run_inference


def _gemms(side, dim=DIM, heads=HEADS, batch=BATCH, train: bool = True):
    """The merged-kernel contractions: 7 passes over the k*k offsets in training, 2 in inference
    (the forward's logits and output weights)."""
    d, kk, bh, n = dim // heads, KS * KS, batch * heads, side * side
    p_logits, p_out, p_dw = (2, 3, 2) if train else (1, 1, 0)
    lhs_l = [torch.randn(kk, d).expand(bh, kk, d) for _ in range(kk)]  # W[:, :, j]^T
    lhs_o = [torch.randn(d, kk).expand(bh, d, kk) for _ in range(kk)]  # W[:, :, j]
    prod = torch.randn(bh, d, n)
    attn = torch.randn(bh, kk, n)
    logits = torch.empty(bh, kk, n)
    out = torch.empty(bh, d, n)
    dw = torch.zeros(bh, d, kk)
    at = attn.transpose(1, 2)

    def run():
        for _ in range(p_logits):  # forward logits; backward attention-weight gradient
            logits.zero_()
            for j in range(kk):
                torch.baddbmm(logits, lhs_l[j], prod, out=logits)
        for _ in range(p_out):  # forward output weights G_j; backward G_j and H_j
            for j in range(kk):
                torch.bmm(lhs_o[j], attn, out=out)
        for _ in range(p_dw):  # the two weight gradients
            for _j in range(kk):
                dw.baddbmm_(prod, at)

    return run


def _products(side, dim=DIM, heads=HEADS, batch=BATCH, train: bool = True):
    """The element-wise passes over the k*k shifted slices: 3 products and 4 multiply-adds per
    offset in training, 1 and 1 in inference."""
    d, kk = dim // heads, KS * KS
    shape = (batch, heads, d, side, side)
    p_mul, p_add = (3, 4) if train else (1, 1)
    a = torch.randn(shape)
    pad = F.pad(torch.randn(shape), (1, 1, 1, 1))
    out, acc = torch.empty(shape), torch.zeros(shape)
    shifts = [(j // KS, j % KS) for j in range(kk)]

    def run():
        for _ in range(p_mul):  # forward q * K_j; backward gout * V_j and q * K_j
            for dy, dx in shifts:
                torch.mul(a, pad[..., dy : dy + side, dx : dx + side], out=out)
        for _ in range(p_add):  # forward out += G_j V_j; backward dV, dq, dK
            for dy, dx in shifts:
                acc.addcmul_(out, pad[..., dy : dy + side, dx : dx + side])

    return run


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_side(side: int, rounds: int) -> dict:
    torch.manual_seed(0)
    x = torch.randn(BATCH, DIM, side, side)
    g = torch.randn_like(x)
    local = visattn.create_attention("local", DIM, num_heads=HEADS, kernel_size=KS).train()
    slide = visattn.create_attention("slide", DIM, num_heads=HEADS, kernel_size=KS).train()
    cases = {
        "local": _layer_step(local, x, g),
        "slide": _layer_step(slide, x, g),
        "projections": _projections(x, g),
        "merged-kernel GEMMs": _gemms(side),
        "neighbour products": _products(side),
    }
    for fn in cases.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for k, fn in cases.items():
            times[k].append(_timed(fn))
    floor = [
        sum(times[k][i] for k in ("projections", "merged-kernel GEMMs", "neighbour products")) for i in range(rounds)
    ]
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    ms["floor"] = 1e3 * statistics.median(floor)
    return {
        "side": side,
        "ms": ms,
        "slide_vs_local": statistics.median(a / b for a, b in zip(times["slide"], times["local"])),
        "floor_vs_local": statistics.median(a / b for a, b in zip(floor, times["local"])),
        "target": 0.5,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--sides", type=int, nargs="+", default=[28, 56])
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = [run_side(s, a.rounds) for s in a.sides]
    doc = {**stamp(a.threads), "batch": BATCH, "dim": DIM, "heads": HEADS, "rounds": a.rounds, "sides": rows}
    write_json(RESULTS / "slide_train_floor.json", doc)
    lines = [
        f"# Slide k3 deformed training step: floor against im2col ({a.threads} thread(s), C={DIM}, "
        f"batch {BATCH}, {a.rounds} alternating rounds, medians)",
        "",
        "| side | local ms | slide ms | projections ms | merged-kernel GEMMs ms | neighbour products ms "
        "| floor ms | slide / local | floor / local | target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["ms"]
        lines.append(
            f"| {r['side']} | {m['local']:.1f} | {m['slide']:.1f} | {m['projections']:.1f} | "
            f"{m['merged-kernel GEMMs']:.1f} | {m['neighbour products']:.1f} | {m['floor']:.1f} | "
            f"{r['slide_vs_local']:.2f} | {r['floor_vs_local']:.2f} | <= 0.5 |"
        )
    lines += [
        "",
        "Forward + backward with an input requiring grad; floor = projections + GEMMs + products "
        "(the kernels the step runs besides softmax and bookkeeping).",
        stamp_line(doc),
    ]
    text = "\n".join(lines) + "\n"
    write_text(RESULTS / "slide_train_floor.md", text)
    print(text)


if __name__ == "__main__":
    main()
