"""Training-step time of the small segmentation model, per mechanism (issue 13's CPU budget).

One SGD step (forward, pixel cross-entropy with ignore_index 255, backward, update) of
``fpn_resnet_tiny`` (Semantic FPN on resnet_tiny, 11 classes) at batch 8, 64 x 64, with its
own 3x3 convolutions and with every registered mechanism in its four stages (each with its
``AttentionInfo.bench_kwargs``). Next to it, a ``resnet_tiny`` classification step at batch 8,
32 x 32 (the model ``visattn compare`` trains) for scale. The cases are interleaved over
``--rounds`` rounds; each keeps its median step (after 2 warm-up steps).

    PYTHONPATH=src python benchmarks/segment_step.py [--threads 1] [--rounds 5]

Writes benchmarks/results/segment_step.{json,md} (with the machine, torch version, threads and date).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

import visattn
from _record import stamp, stamp_line, write_json, write_text
from visattn.registry import attention_info

BATCH, SIDE, CLASSES = 8, 64, 11
RUN_ALL = {
    "args": ["--threads", "1"],
    "minutes": 1.5,
    "results": ["segment_step.json", "segment_step.md"],
    "check": ["median_s"],
}


def make_case(mechanism: str | None):
    torch.manual_seed(0)
    if mechanism == "classify":
        model = visattn.create_model("resnet_tiny", num_classes=10).train()
        x, y = torch.randn(BATCH, 3, 32, 32), torch.randint(0, 10, (BATCH,))
    else:
        kw = (
            {}
            if mechanism is None
            else {"attention": mechanism, "attn_kwargs": dict(attention_info(mechanism).bench_kwargs)}
        )
        model = visattn.create_model("fpn_resnet_tiny", num_classes=CLASSES, **kw).train()
        x, y = torch.randn(BATCH, 3, SIDE, SIDE), torch.randint(0, CLASSES, (BATCH, SIDE, SIDE))
        y[:, :4] = 255
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> float:
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y, ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "segment_step"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    labels = ["classify", "conv (own)"] + visattn.list_attention()
    cases = {lab: make_case(None if lab == "conv (own)" else lab) for lab in labels}
    times: dict[str, list[float]] = {lab: [] for lab in labels}
    for step in cases.values():
        step(), step()
    for _ in range(args.rounds):
        for lab, step in cases.items():
            times[lab].append(step())
    rows = [{"case": lab, "median_s": statistics.median(ts), "min_s": min(ts)} for lab, ts in times.items()]
    rec = stamp(args.threads)
    meta = {"batch": BATCH, "side": SIDE, "threads": args.threads, "rounds": args.rounds}
    write_json(args.out + ".json", {**rec, "meta": meta, "rows": rows})
    lines = [
        f"# fpn_resnet_tiny training step, batch {BATCH}, {SIDE} x {SIDE}, {args.threads} thread(s)",
        "",
        f"`python benchmarks/segment_step.py --threads {args.threads} --rounds {args.rounds}`. {stamp_line(rec)}",
        "",
        "`classify` is a resnet_tiny classification step at batch 8, 32 x 32, for scale.",
        "",
        "| case | median step (s) | fastest step (s) |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {r['case']} | {r['median_s']:.3f} | {r['min_s']:.3f} |" for r in rows]
    write_text(args.out + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
