"""Training speed of the mechanisms with issue-12 targets, as ratios measured in one run.

For each map side, every case is timed in alternating rounds (case A, case B, ... then again),
and each target is the median over rounds of the per-round ratio (contention on a shared
machine moves both sides of a ratio alike). Measured per case, C=64, batch 4, float32:

* ``fwd``: forward in eval mode under ``torch.no_grad`` (the inference path);
* ``train``: forward + backward + SGD step in training mode, with an input that requires grad
  (as a layer inside a network receives it); the weights are put back to their initial values
  before every timed step, outside the timed region, so repeated steps on one random output
  gradient cannot drive them to inf/NaN (the lambda layer's did by the 8th step);
* ``mem``: peak bytes allocated during one training forward + backward
  (``visattn.bench.measure.peak_memory_bytes``, the profiler's allocation curve on CPU).

Targets (issue 12): slide (k=3, deformed) train <= 0.5x im2col ``local``, memory <= 1/3 of
local's, train <= 3x slide's own fwd; relpos with content train <= 1.3x mhsa at 28 and 56;
lambda train <= 1.5x conv 3x3 at 8 and 16.

    PYTHONPATH=src python benchmarks/training_speed.py [--threads 1] [--rounds 9] [--device cpu]
        [--only slide relpos lambda] [--tag NAME]

Writes benchmarks/results/training_speed[_TAG].{json,md}. About 6 minutes with the defaults on
one CPU thread (``--rounds 3 --sides-scale small`` checks the script in under a minute).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import visattn
from _record import stamp
from visattn.bench.measure import peak_memory_bytes, synchronize

RUN_ALL = {
    "args": ["--threads", "2", "--rounds", "5"],
    "minutes": 8,
    "results": ["training_speed.json", "training_speed.md"],
    "check": ["_vs_"],
}

DIM, BATCH = 64, 4

#: group -> (sides, reference case, [(label, mechanism, kwargs)], targets)
GROUPS = {
    "slide": (
        (28, 56, 112),
        "local k3 (im2col)",
        [
            ("local k3 (im2col)", "local", {"num_heads": 4, "kernel_size": 3}),
            ("slide k3 deformed", "slide", {"num_heads": 4, "kernel_size": 3}),
            ("slide k3 shifts", "slide", {"num_heads": 4, "kernel_size": 3, "deformed": False}),
        ],
    ),
    "relpos": (
        (28, 56),
        "mhsa",
        [
            ("mhsa", "mhsa", {"num_heads": 4}),
            ("relpos content quadratic", "relpos", {"num_heads": 4, "encoding": "quadratic", "content": True}),
            ("relpos content gaussian", "relpos", {"num_heads": 4, "encoding": "gaussian", "content": True}),
        ],
    ),
    "lambda": (
        (8, 16, 28),
        "conv 3x3",
        [
            ("conv 3x3", "conv", {}),
            ("lambda r7", "lambda", {"num_heads": 4, "key_dim": 16, "local_scope": 7}),
        ],
    ),
}
SMALL_SIDES = {"slide": (12,), "relpos": (12,), "lambda": (8,)}


def _case(mechanism, kwargs, device):
    m = visattn.create_attention(mechanism, DIM, **kwargs).to(device)
    opt = torch.optim.SGD(m.parameters(), lr=1e-3)
    return m, opt


def _fwd(m, x, device):
    m.eval()
    with torch.no_grad():
        m(x)
    synchronize(device)


def _train(m, opt, x, g, device):
    m.train()
    opt.zero_grad(set_to_none=True)
    m(x.detach().requires_grad_(True)).backward(g)
    opt.step()
    synchronize(device)


def _timed_train(m, opt, x, g, device, initial) -> float:
    m.load_state_dict(initial)  # untimed: every timed step starts from the same finite weights
    return _timed(lambda: _train(m, opt, x, g, device))


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_group(name: str, sides, rounds: int, device: str) -> list[dict]:
    _, ref_label, cases = GROUPS[name]
    rows = []
    for side in sides:
        torch.manual_seed(0)
        x = torch.randn(BATCH, DIM, side, side, device=device)
        g = torch.randn(BATCH, DIM, side, side, device=device)
        built = {label: _case(mech, kw, device) for label, mech, kw in cases}
        initial = {label: {k: v.clone() for k, v in m.state_dict().items()} for label, (m, _) in built.items()}
        for label, (m, opt) in built.items():  # warm-up
            _fwd(m, x, device)
            _timed_train(m, opt, x, g, device, initial[label])
        times = {label: {"fwd": [], "train": []} for label in built}
        for r in range(rounds):
            order = list(built.items()) if r % 2 == 0 else list(built.items())[::-1]
            for label, (m, opt) in order:
                times[label]["fwd"].append(_timed(lambda: _fwd(m, x, device)))
                times[label]["train"].append(_timed_train(m, opt, x, g, device, initial[label]))
        ref = times[ref_label]
        for label, (m, _opt) in built.items():
            t = times[label]
            m.train()
            mem = peak_memory_bytes(lambda: m(x.detach().requires_grad_(True)).backward(g), device)
            ref_m = built[ref_label][0].train()
            ref_mem = peak_memory_bytes(lambda: ref_m(x.detach().requires_grad_(True)).backward(g), device)
            rows.append(
                {
                    "group": name,
                    "side": side,
                    "case": label,
                    "reference": ref_label,
                    "fwd_ms": 1e3 * statistics.median(t["fwd"]),
                    "train_ms": 1e3 * statistics.median(t["train"]),
                    "train_vs_ref": statistics.median(a / b for a, b in zip(t["train"], ref["train"])),
                    "fwd_vs_ref": statistics.median(a / b for a, b in zip(t["fwd"], ref["fwd"])),
                    "train_vs_own_fwd": statistics.median(a / b for a, b in zip(t["train"], t["fwd"])),
                    "train_mem_mib": mem / 2**20,
                    "mem_vs_ref": mem / max(ref_mem, 1),
                }
            )
            print(
                f"{name:6s} {side:4d} {label:28s} fwd {rows[-1]['fwd_ms']:8.1f} ms  train "
                f"{rows[-1]['train_ms']:8.1f} ms  train/ref {rows[-1]['train_vs_ref']:.2f}  "
                f"train/fwd {rows[-1]['train_vs_own_fwd']:.2f}  mem/ref {rows[-1]['mem_vs_ref']:.2f}",
                flush=True,
            )
    return rows


def targets(rows: list[dict]) -> list[dict]:
    """The issue-12 targets, each with its measured value and whether it is met."""
    out = []

    def add(what, value, bound):
        out.append({"target": what, "measured": round(value, 3), "bound": bound, "met": value <= bound})

    for r in rows:
        s = r["side"]
        if r["case"] == "slide k3 deformed":
            add(f"slide train / local train @{s}", r["train_vs_ref"], 0.5)
            add(f"slide train memory / local's @{s}", r["mem_vs_ref"], 1 / 3)
            add(f"slide train / slide fwd @{s}", r["train_vs_own_fwd"], 3.0)
        elif r["case"].startswith("relpos content"):
            add(f"{r['case']} train / mhsa train @{s}", r["train_vs_ref"], 1.3)
        elif r["case"] == "lambda r7" and s <= 16:
            add(f"lambda train / conv 3x3 train @{s}", r["train_vs_ref"], 1.5)
    return out


def to_markdown(rows, met, config) -> str:
    lines = [
        f"# Training speed ({config['threads']} thread(s), {config['device']}, C={DIM}, batch {BATCH}, "
        f"{config['rounds']} alternating rounds, medians of per-round ratios)",
        "",
        "| group | side | case | fwd ms | train ms | train / ref | fwd / ref | train / own fwd | train MiB | mem / ref |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['group']} | {r['side']} | {r['case']} | {r['fwd_ms']:.1f} | {r['train_ms']:.1f} | "
            f"{r['train_vs_ref']:.2f} | {r['fwd_vs_ref']:.2f} | {r['train_vs_own_fwd']:.2f} | "
            f"{r['train_mem_mib']:.1f} | {r['mem_vs_ref']:.2f} |"
        )
    lines += [
        "",
        "ref = the group's first case (local k3 / mhsa / conv 3x3); train = forward + backward (input requiring "
        "grad) + SGD step, from the same initial weights every step; rounds alternate the case order.",
        "",
        "| target | measured | bound | met |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {t['target']} | {t['measured']:.2f} | {t['bound']:.2f} | {'yes' if t['met'] else 'no'} |" for t in met
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--device", default="cpu")
    p.add_argument("--only", nargs="+", choices=sorted(GROUPS), default=sorted(GROUPS))
    p.add_argument(
        "--sides-scale",
        choices=("full", "small"),
        default="full",
        help="'small': one tiny side per group, to check the script quickly",
    )
    p.add_argument("--tag", default="")
    p.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.only:
        sides = GROUPS[name][0] if args.sides_scale == "full" else SMALL_SIDES[name]
        rows += run_group(name, sides, args.rounds, args.device)
    met = targets(rows)
    config = {
        "threads": args.threads,
        "rounds": args.rounds,
        "device": args.device,
        "dim": DIM,
        "batch": BATCH,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "sides": args.sides_scale,
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = "training_speed" + (f"_{args.tag}" if args.tag else "")
    (out / f"{stem}.json").write_text(
        json.dumps({**stamp(args.threads), "config": config, "rows": rows, "targets": met}, indent=2)
    )
    (out / f"{stem}.md").write_text(to_markdown(rows, met, config))
    print(to_markdown(rows, met, config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
