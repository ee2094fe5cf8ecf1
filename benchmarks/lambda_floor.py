"""Floor of the lambda layer's training step on small maps, against a 3x3 convolution (issue 19).

Target (issues 12 and 19): lambda (r=7 local position lambdas, 4 heads, k=16, u=1) training
(forward + backward, input requiring grad) <= 1.5x a 3x3 convolution's on 8 x 8 to 16 x 16 maps
(C=64, batch 4). This script times, side by side in alternating rounds (medians of per-round
ratios), the layer, the 3x3 conv, and the kernels no implementation of the layer avoids, each
forward + backward on inputs laid out for it (so their sum is a lower bound, not a path):

* ``projection``: the 1x1 convolution to q, k, v (C -> h k + k u + v u channels), input grad on;
* ``batchnorm``: BatchNorm of q and v in training mode;
* ``softmax``: the keys' softmax over positions;
* ``content``: the content lambda bmm (B: k x n @ n x v) and its two backward products;
* ``position GEMMs``: the lambda convolution as its three matrix products at MKL speed
  (forward (k x r^2) @ (r^2 x B v n), grad of the values, grad of the kernel) on prepared
  im2col matrices: the im2col / col2im memory traffic is left out, so this is below any path;
* ``query product``: y = sum_k q_k lam_k as a bmm over positions and its two backward products.

    PYTHONPATH=src python benchmarks/lambda_floor.py [--threads 1] [--rounds 15]

Writes benchmarks/results/lambda_floor.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import visattn
from _record import stamp, stamp_line, write_json, write_text

RUN_ALL = {
    "args": ["--threads", "1", "--rounds", "15"],
    "minutes": 1,
    "results": ["lambda_floor.json", "lambda_floor.md"],
    "check": ["_ratio"],
}

C, BATCH, HEADS, K, R = 64, 4, 4, 16, 7
V = C // HEADS


def _train_step(m, x, g):
    m.train()

    def run():
        xi = x.detach().requires_grad_(True)
        m.zero_grad(set_to_none=True)
        m(xi).backward(g)

    return run


def _floor_parts(s: int) -> dict:
    """name -> callable running that kernel's forward + backward once."""
    n, b = s * s, BATCH
    ch = HEADS * K + K + V
    x = torch.randn(b, C, s, s)
    wqkv = torch.randn(ch, C, 1, 1, requires_grad=True)
    gqkv = torch.randn(b, ch, s, s)
    q = torch.randn(b, HEADS * K, s, s, requires_grad=True)
    v = torch.randn(b, V, s, s, requires_grad=True)
    bn = [torch.ones(HEADS * K + V, requires_grad=True), torch.zeros(HEADS * K + V, requires_grad=True)]
    gq, gv = torch.randn_like(q), torch.randn_like(v)
    logits = torch.randn(b, K, n, requires_grad=True)
    glog = torch.randn(b, K, n)
    ks, vt = torch.randn(b, K, n, requires_grad=True), torch.randn(b, n, V, requires_grad=True)
    glc = torch.randn(b, K, V)
    wpos = torch.randn(K, R * R, requires_grad=True)
    cols = torch.randn(R * R, b * V * n, requires_grad=True)
    glam = torch.randn(K, b * V * n)
    qt, lt = torch.randn(b * n, HEADS, K, requires_grad=True), torch.randn(b * n, K, V, requires_grad=True)
    gy = torch.randn(b * n, HEADS, V)

    def projection():
        F.conv2d(x.requires_grad_(True), wqkv).backward(gqkv)
        x.grad = None

    def batchnorm():
        F.batch_norm(q, None, None, bn[0][: HEADS * K], bn[1][: HEADS * K], True).backward(gq)
        F.batch_norm(v, None, None, bn[0][HEADS * K :], bn[1][HEADS * K :], True).backward(gv)

    def softmax():
        torch.softmax(logits, -1).backward(glog)

    def content():
        torch.bmm(ks, vt).backward(glc)

    def position():
        torch.mm(wpos, cols).backward(glam)

    def query():
        torch.bmm(qt, lt).backward(gy)

    return {
        "projection": projection,
        "batchnorm": batchnorm,
        "softmax": softmax,
        "content": content,
        "position GEMMs": position,
        "query product": query,
    }


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run(sides, rounds: int) -> list[dict]:
    rows = []
    for s in sides:
        torch.manual_seed(0)
        x, g = torch.randn(BATCH, C, s, s), torch.randn(BATCH, C, s, s)
        lam = visattn.create_attention("lambda", C, num_heads=HEADS, key_dim=K, local_scope=R)
        fns = {
            "lambda r7": _train_step(lam, x, g),
            "conv 3x3": _train_step(visattn.create_attention("conv", C), x, g),
            **_floor_parts(s),
        }
        for fn in fns.values():  # warm-up
            fn()
            fn()
        t = {name: [] for name in fns}
        for _ in range(rounds):
            for name, fn in fns.items():
                t[name].append(_timed(fn))
        parts = [p for p in fns if p not in ("lambda r7", "conv 3x3")]
        floor = [sum(t[p][i] for p in parts) for i in range(rounds)]
        conv = t["conv 3x3"]
        rows.append(
            {
                "side": s,
                "impl": lam.select_impl(x),
                "median_ms": {name: 1e3 * statistics.median(v) for name, v in t.items()},
                "floor_ms": 1e3 * statistics.median(floor),
                "lambda_vs_conv_ratio": statistics.median(a / c for a, c in zip(t["lambda r7"], conv)),
                "floor_vs_conv_ratio": statistics.median(f / c for f, c in zip(floor, conv)),
                "target": 1.5,
            }
        )
        r = rows[-1]
        print(
            f"@{s}: lambda {r['median_ms']['lambda r7']:.2f} ms, conv {r['median_ms']['conv 3x3']:.2f} ms, "
            f"floor {r['floor_ms']:.2f} ms; lambda/conv {r['lambda_vs_conv_ratio']:.2f}, "
            f"floor/conv {r['floor_vs_conv_ratio']:.2f} (target <= 1.5)",
            flush=True,
        )
    return rows


def to_markdown(res: dict) -> str:
    rows = res["rows"]
    parts = [p for p in rows[0]["median_ms"] if p not in ("lambda r7", "conv 3x3")]
    lines = [
        f"Lambda r=7 (4 heads, k=16, u=1) training step against a 3x3 conv, C={C}, batch {BATCH}, "
        "forward + backward with an input requiring grad; floor = sum of the kernels every path runs "
        "(timed alone on prepared layouts, im2col traffic left out). Medians of per-round ratios.",
        "",
        "| side | impl | lambda ms | conv 3x3 ms | floor ms | "
        + " | ".join(f"{p} ms" for p in parts)
        + " | lambda / conv | floor / conv | target |",
        "|---" * (8 + len(parts)) + "|",
    ]
    for r in rows:
        m = r["median_ms"]
        lines.append(
            f"| {r['side']} | {r['impl']} | {m['lambda r7']:.2f} | {m['conv 3x3']:.2f} | {r['floor_ms']:.2f} | "
            + " | ".join(f"{m[p]:.2f}" for p in parts)
            + f" | {r['lambda_vs_conv_ratio']:.2f} | {r['floor_vs_conv_ratio']:.2f} | <= {r['target']} |"
        )
    lines += ["", stamp_line(res)]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--sides", type=int, nargs="+", default=[8, 12, 16])
    p.add_argument("--out", default="benchmarks/results/lambda_floor")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    res = {**stamp(args.threads), "rows": run(args.sides, args.rounds)}
    write_json(args.out + ".json", res)
    write_text(args.out + ".md", to_markdown(res))


if __name__ == "__main__":
    main()
