"""The attention block's share of a GAN training step, per mechanism, at 32 and 64 px (issue 23).

One GAN step as ``visattn train --task generate`` runs it: a hinge D step on real + generated
images (G forward without gradient, D forward and backward on both) and a hinge G step (G and D
forward, backward), with Adam updates, on the SAGAN models ``sagan{32,64}_g`` / ``_d`` at width
``--width`` (the task's default, 16), batch ``--batch``, unconditional (a class-conditional
run adds per-class BN gains and a projection term, no attention cost). Each mechanism fills both
attention blocks (``AttentionInfo.bench_kwargs``; ``mhsa`` with one head is SAGAN's own block).

The share is measured by difference, side by side in one run: for every mechanism the same
models (same weights) run the step as built and with the two mechanisms replaced by a zero-cost
identity; the rounds alternate between the two, and the share of a round is
``1 - t_without / t_with``; the table gives the median over ``--rounds`` rounds of that ratio
and the median step time with the block. Inputs require no grad beyond the networks' own (the
images are data; every weight trains).

    PYTHONPATH=src python benchmarks/gan_attention_share.py [--threads 2] [--rounds 5]   # as recorded

Writes benchmarks/results/gan_attention_share.{json,md} (machine, torch, threads and date inside).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time

import torch
from torch import nn

import visattn
from visattn.models.gan import hinge_d_loss, hinge_g_loss
from visattn.registry import attention_info

RUN_ALL = {
    "args": ["--threads", "2", "--rounds", "5"],
    "minutes": 2,
    "results": ["gan_attention_share.json", "gan_attention_share.md"],
    "check": ["attention_share"],
}


class _Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def make_step(side: int, mechanism: str, width: int, batch: int, with_attention: bool):
    torch.manual_seed(0)
    kw = dict(attention_info(mechanism).bench_kwargs)
    if mechanism == "mhsa":
        kw["num_heads"] = 1
    g = visattn.create_model(f"sagan{side}_g", ch=width, attention=mechanism, attn_kwargs=kw).train()
    d = visattn.create_model(f"sagan{side}_d", ch=width, attention=mechanism, attn_kwargs=kw).train()
    for net in (g, d):
        with torch.no_grad():
            net.attention.gamma.fill_(0.1)  # the block on (gamma 0 at init would still run it)
        if not with_attention:
            net.attention.attn = _Identity()
    opt = torch.optim.Adam(
        [{"params": g.parameters(), "lr": 1e-4}, {"params": d.parameters(), "lr": 4e-4}], betas=(0.0, 0.9)
    )
    x = torch.rand(batch, 3, side, side) * 2 - 1

    def step() -> float:
        t0 = time.perf_counter()
        z = torch.randn(batch, g.z_dim)
        with torch.no_grad():
            fake = g(z)
        logits = d(torch.cat([x, fake]))
        loss = hinge_d_loss(logits[:batch], logits[batch:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        g_loss = hinge_g_loss(d(g(torch.randn(batch, g.z_dim))))
        opt.zero_grad(set_to_none=True)
        g_loss.backward()
        for p in d.parameters():
            p.grad = None
        opt.step()
        return time.perf_counter() - t0

    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--sides", type=int, nargs="+", default=[32, 64])
    p.add_argument("--mechanisms", nargs="+", default=None, help="default: every registered mechanism")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "gan_attention_share"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    mechs = args.mechanisms or visattn.list_attention()
    rows = []
    for side in args.sides:
        for mech in mechs:
            on = make_step(side, mech, args.width, args.batch, True)
            off = make_step(side, mech, args.width, args.batch, False)
            on(), off()  # warm-up
            t_on, ratios = [], []
            for _ in range(args.rounds):  # alternating rounds
                a = on()
                b = off()
                t_on.append(a)
                ratios.append(1.0 - b / a)
            row = {
                "side": side,
                "attention_map": side // 2,
                "mechanism": mech,
                "median_step_s": statistics.median(t_on),
                "attention_share": statistics.median(ratios),
                "attention_share_rounds": ratios,  # the noise band of the share
            }
            rows.append(row)
            print(
                f"{side} px {mech:>10}: step {row['median_step_s']:.3f} s, attention {100 * row['attention_share']:.1f}%"
            )
    meta = {
        "width": args.width,
        "batch": args.batch,
        "threads": args.threads,
        "rounds": args.rounds,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "cpus": os.cpu_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_1min": round(os.getloadavg()[0], 2),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w", encoding="utf-8") as f:
        top = {k: meta[k] for k in ("machine", "torch", "threads", "date")}
        json.dump({**top, "meta": meta, "rows": rows}, f, indent=2)
    lines = [
        f"# Attention block's share of a GAN step (D step + G step), width {args.width}, batch {args.batch}",
        "",
        f"{meta['date']}, torch {meta['torch']}, {meta['machine']} ({meta['cpus']} CPUs), {args.threads} thread(s), "
        f"median of {args.rounds} alternating rounds, load average {meta['load_1min']} at the end. "
        "Share = 1 - t(step with the blocks replaced by identity) / t(step); the block sits on the side/2 map in G and D. Reproduce: "
        f"`PYTHONPATH=src python benchmarks/gan_attention_share.py --threads {args.threads} --rounds {args.rounds}`.",
        "",
        "| image | attention map | mechanism | median step (s) | attention share |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['side']}x{r['side']} | {r['attention_map']}x{r['attention_map']} | `{r['mechanism']}` | "
        f"{r['median_step_s']:.3f} | {100 * r['attention_share']:.1f}% |"
        for r in rows
    ]
    with open(args.out + ".md", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
