"""Recorded segmentation run: fpn_resnet_tiny on the built-in digit scenes, one CPU thread.

The same run as

    OMP_NUM_THREADS=1 visattn train --task segment --model fpn_resnet_tiny --data digitscenes \
        --image-size 32 --epochs 15 --batch-size 16 --lr 5e-3 --label-smoothing 0 --output runs/seg-digitscenes

(2,000 train / 500 test scenes of 32 x 32, 11 classes). Writes
``benchmarks/results/segment_digitscenes.{json,md}`` (final mIoU, per-class IoU, per-epoch
history, wall time of data + training + evaluation, environment) and the figure
``docs/img/segment_predict.png`` (``visattn predict ... --image digitscenes:3``).

    python benchmarks/segment_digitscenes.py [--epochs 15] [--output runs/seg-digitscenes]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

from _record import RESULTS, ROOT, stamp, stamp_line, write_json, write_text

RUN_ALL = {
    "args": [],
    "minutes": 2.5,
    "results": ["segment_digitscenes.json", "segment_digitscenes.md"],
    "check": ["final.test_miou", "final.test_pixel_acc", "wall_time_s"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--output", default="runs/seg-digitscenes")
    p.add_argument("--scene", type=int, default=3, help="test scene drawn into docs/img/segment_predict.png")
    args = p.parse_args()

    from visattn.bench.report import environment
    from visattn.predict import predict_image
    from visattn.train.segment import SegTrainConfig, train_segment

    torch.set_num_threads(1)
    out = Path(args.output)
    if out.exists():
        shutil.rmtree(out)
    cfg = SegTrainConfig(
        model="fpn_resnet_tiny",
        data="digitscenes",
        image_size=32,
        epochs=args.epochs,
        batch_size=16,
        lr=5e-3,
        label_smoothing=0.0,
        output=str(out),
        progress=False,
    )
    t0 = time.perf_counter()
    res = train_segment(cfg)
    wall = time.perf_counter() - t0
    final = res.final
    fig_path, _, _ = predict_image(
        "fpn_resnet_tiny", out, f"digitscenes:{args.scene}", ROOT / "docs" / "img" / "segment_predict.png"
    )

    command = (
        "OMP_NUM_THREADS=1 visattn train --task segment --model fpn_resnet_tiny --data digitscenes "
        f"--image-size 32 --epochs {args.epochs} --batch-size 16 --lr 5e-3 --label-smoothing 0 "
        f"--output {args.output}"
    )
    rec = stamp(torch.get_num_threads())
    doc = {
        **rec,
        "command": command,
        "config": cfg.as_dict(),
        "wall_time_s": wall,
        "train_time_s": sum(h["train_time_s"] for h in res.history),
        "final": final,
        "history": res.history,
        "params": sum(p.numel() for p in res.model.parameters()),
        "environment": environment(),
    }
    write_json(RESULTS / "segment_digitscenes.json", doc)
    iou = "\n".join(f"| {k} | {'-' if v is None else f'{100 * v:.1f}'} |" for k, v in final["test_iou"].items())
    md = (
        f"# fpn_resnet_tiny on digit scenes (32 x 32, {args.epochs} epochs, 1 thread)\n\n"
        f"`{command}`\n\n{stamp_line(rec)}\n\n"
        f"test mIoU **{100 * final['test_miou']:.2f}%**, pixel accuracy {100 * final['test_pixel_acc']:.2f}%; "
        f"{doc['params'] / 1e3:.1f}k parameters; wall time {wall:.0f} s (data, training and evaluation; "
        f"training alone {doc['train_time_s']:.0f} s).\n\n"
        "mIoU per epoch: " + ", ".join(f"{100 * h['test_miou']:.1f}" for h in res.history) + "\n\n"
        "| class | IoU % |\n| --- | --- |\n" + iou + "\n"
    )
    write_text(RESULTS / "segment_digitscenes.md", md)
    print(md)
    print(f"figure: {fig_path}")


if __name__ == "__main__":
    main()
