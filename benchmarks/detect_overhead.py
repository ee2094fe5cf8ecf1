"""Adapter overhead of visattn's detectors: the same engine, so any gap is ours.

1. visattn ``maskrcnn`` on ``resnet50`` (its weights copied from torchvision's model, so both do the
   same work) against torchvision's ``maskrcnn_resnet50_fpn``: a training step (forward + backward,
   images that require grad, 3 random boxes + masks per image) and inference, 512 x 512, batch 2
   (``min_size=max_size=512``: no resize). Target: within 1.05x.
2. Mask R-CNN on ``slide_pvt_t`` against ``pvt_t`` (81 classes, torchvision's heads): a training
   step at 512 x 512, batch 2.

Alternating rounds, median of the per-round ratios (ours / torchvision, slide / pvt), threads as
given. Writes ``benchmarks/results/detect_overhead.{json,md}``.

    python benchmarks/detect_overhead.py --threads 2 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from _record import write_text

ROOT = Path(__file__).resolve().parents[1]

RUN_ALL = {
    "args": ["--threads", "2", "--rounds", "3"],
    "minutes": 3,
    "results": ["detect_overhead.json", "detect_overhead.md"],
    "check": ["ratio"],
}
SIZE, BATCH = 512, 2


def _inputs(seed: int):
    from visattn.data.detection import random_det_batch

    xs, ts = random_det_batch(BATCH, SIZE, 81, min_side=32, seed=seed)
    return [x.requires_grad_() for x in xs], ts


def _step(model, seed: int) -> float:
    xs, ts = _inputs(seed)
    model.train()
    torch.manual_seed(seed)  # the same proposal sampling for both models
    t = time.perf_counter()
    sum(model(xs, ts).values()).backward()
    dt = time.perf_counter() - t
    model.zero_grad(set_to_none=True)
    return dt


@torch.no_grad()
def _infer(model, seed: int) -> float:
    xs, _ = _inputs(seed)
    model.eval()
    t = time.perf_counter()
    model([x.detach() for x in xs])
    return time.perf_counter() - t


def _pair(a, b, fn, rounds: int) -> dict:
    fn(a, 0), fn(b, 0)  # warm-up
    ta, tb, ratios = [], [], []
    for r in range(1, rounds + 1):
        first, second = (a, b) if r % 2 else (b, a)
        t1, t2 = fn(first, r), fn(second, r)
        x, y = (t1, t2) if r % 2 else (t2, t1)
        ta.append(x)
        tb.append(y)
        ratios.append(x / y)
    return {"a_s": statistics.median(ta), "b_s": statistics.median(tb), "ratio": statistics.median(ratios)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    import torchvision

    import visattn
    from visattn.models.convert import split_detector

    torch.manual_seed(0)
    size = {"min_size": SIZE, "max_size": SIZE}
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, **size)
    ours = visattn.create_model("maskrcnn", backbone="resnet50", num_classes=91, **size)
    ours.load_state_dict(split_detector(tv.state_dict(), "backbone.body.model."), strict=True)
    step = _pair(ours, tv, _step, args.rounds)
    infer = _pair(ours, tv, _infer, args.rounds)
    del tv, ours
    pvt = visattn.create_model("maskrcnn_pvt_t", **size)
    slide = visattn.create_model("maskrcnn_slide_pvt_t", **size)
    sp = _pair(slide, pvt, _step, args.rounds)

    doc = {
        "machine": platform.node() or platform.machine(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "threads": torch.get_num_threads(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": f"{BATCH} x 3 x {SIZE} x {SIZE}",
        "rounds": args.rounds,
        "resnet50": {
            "train_step": {"visattn_s": step["a_s"], "torchvision_s": step["b_s"], "ratio": step["ratio"]},
            "inference": {"visattn_s": infer["a_s"], "torchvision_s": infer["b_s"], "ratio": infer["ratio"]},
        },
        "slide_vs_pvt": {"slide_pvt_t_s": sp["a_s"], "pvt_t_s": sp["b_s"], "step_ratio": sp["ratio"]},
    }
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    write_text(results / "detect_overhead.json", json.dumps(doc, indent=2, allow_nan=False))
    r = doc["resnet50"]
    md = (
        "| Mask R-CNN, 2 x 512 x 512 | visattn s | reference s | ratio (median of rounds) |\n"
        "| --- | --- | --- | --- |\n"
        f"| R-50-FPN train step vs torchvision `maskrcnn_resnet50_fpn` | {r['train_step']['visattn_s']:.2f} | "
        f"{r['train_step']['torchvision_s']:.2f} | {r['train_step']['ratio']:.3f} |\n"
        f"| R-50-FPN inference vs torchvision | {r['inference']['visattn_s']:.2f} | "
        f"{r['inference']['torchvision_s']:.2f} | {r['inference']['ratio']:.3f} |\n"
        f"| `maskrcnn_slide_pvt_t` train step vs `maskrcnn_pvt_t` | {sp['a_s']:.2f} | {sp['b_s']:.2f} | "
        f"{sp['ratio']:.3f} |\n\n"
        f"{args.rounds} alternating rounds, {doc['threads']} threads, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}.\n"
    )
    write_text(results / "detect_overhead.md", md)
    print(md)


if __name__ == "__main__":
    main()
