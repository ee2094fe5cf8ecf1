"""Recorded detection run: Mask R-CNN on resnet_tiny (maskrcnn_resnet_tiny) on the digit scenes.

The same run as

    OMP_NUM_THREADS=1 visattn train --task detect --model maskrcnn_resnet_tiny --data digitscenes \
        --epochs 3 --batch-size 8 --lr 2e-3 --weight-decay 1e-4 --output runs/det-digitscenes

(2,040 train / 510 test scenes of 64 x 64 with 2-5 digits each, 1-in-50 empty; 10 categories).
Writes ``benchmarks/results/detect_digitscenes.{json,md}`` (held-out COCO box and mask AP per epoch,
wall time of data + training + evaluation, environment) and ``docs/img/detect_predict.png`` (four
test scenes with the detections scoring >= 0.5 drawn by ``visattn predict --task detect``'s code).

    python benchmarks/detect_digitscenes.py --threads 1 [--epochs 3] [--output runs/det-digitscenes]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from _record import write_text

ROOT = Path(__file__).resolve().parents[1]

RUN_ALL = {
    "args": ["--threads", "1"],
    "minutes": 6,
    "results": ["detect_digitscenes.json", "detect_digitscenes.md"],
    "check": ["wall_time_s"],
}


def _figure(model, bundle, scenes, path: Path) -> None:
    from PIL import Image

    from visattn.train.detect import draw_detections, predict_batches

    ds = bundle.test
    outs = predict_batches(model, [ds.item(k)[0] for k in scenes], len(scenes), "cpu")
    tiles = []
    for k, o in zip(scenes, outs):
        keep = o["scores"] >= 0.5
        tiles.append(draw_detections(ds.images[k], {n: v[keep] for n, v in o.items()}, bundle.classes, scale=4))
    gap = torch.full((3, tiles[0].shape[1], 8), 255, dtype=torch.uint8)
    row = torch.cat([t for tile in tiles for t in (tile, gap)][:-1], 2)
    Image.fromarray(row.permute(1, 2, 0).numpy()).save(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--output", default="runs/det-digitscenes")
    args = p.parse_args()

    from visattn.train.detect import DetTrainConfig, train_detect

    torch.set_num_threads(args.threads)
    out = Path(args.output)
    if out.exists():
        shutil.rmtree(out)
    cfg = DetTrainConfig(
        model="maskrcnn_resnet_tiny",
        data="digitscenes",
        epochs=args.epochs,
        batch_size=8,
        lr=2e-3,
        weight_decay=1e-4,
        output=str(out),
        progress=False,
    )
    t0 = time.perf_counter()
    res = train_detect(cfg)
    wall = time.perf_counter() - t0
    f = res.final
    from visattn.data.detection import load_digit_instances

    fig = ROOT / "docs" / "img" / "detect_predict.png"
    _figure(res.model, load_digit_instances(64, seed=0), [0, 1, 2, 3], fig)
    command = (
        f"OMP_NUM_THREADS={args.threads} visattn train --task detect --model maskrcnn_resnet_tiny --data digitscenes "
        f"--epochs {args.epochs} --batch-size 8 --lr 2e-3 --weight-decay 1e-4 --output {args.output}"
    )
    doc = {
        "command": command,
        "config": cfg.as_dict(),
        "machine": platform.node() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": wall,
        "train_time_s": sum(h["train_time_s"] for h in res.history),
        "final": f,
        "history": res.history,
        "params": sum(p.numel() for p in res.model.parameters()),
    }
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    write_text(results / "detect_digitscenes.json", json.dumps(doc, indent=2, allow_nan=False))

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    rows = "\n".join(
        f"| {h['epoch']} | {pct(h['test_box_ap'])} | {pct(h['test_box_ap50'])} | {pct(h['test_box_ap75'])} | "
        f"{pct(h['test_mask_ap'])} | {pct(h['test_mask_ap50'])} | {h['train_time_s']:.0f} |"
        for h in res.history
    )
    md = (
        "| epoch | box AP | box AP50 | box AP75 | mask AP | mask AP50 | epoch train s |\n"
        "| --- | --- | --- | --- | --- | --- | --- |\n" + rows + "\n\n"
        f"maskrcnn_resnet_tiny ({doc['params'] / 1e6:.2f}M parameters), held-out digit scenes (COCOeval, %), "
        f"{args.threads} thread(s), torch {torch.__version__}; wall time {wall:.0f} s (data, training and "
        f"evaluation). `{command}`\n"
    )
    write_text(results / "detect_digitscenes.md", md)
    print(md)
    print(f"figure: {fig}")


if __name__ == "__main__":
    main()
