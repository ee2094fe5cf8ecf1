"""The default built-in GAN run (issue 23): ``visattn train --task generate`` on its default built-in data.

Trains the task's defaults (``shapepairs``: mirrored shape pairs since issue 23's shape-pairs change;
``sagan32_g`` / ``sagan32_d`` at width 16, SAGAN's one-head attention block at 16x16, TTUR 2e-4 / 4e-4,
batch 32, 10 epochs over 6,000 images, EMA of G) with FID / KID every 2 epochs on the fallback feature network (a ``resnet_tiny`` trained on the same data into
``OUT/feature_net``: the numbers are NOT comparable to published FIDs), then measures the FID / KID
of the *untrained* generator (same seed, same samples, same features) for contrast, and writes:

* ``benchmarks/results/gan_digitpairs.{json,md}``: wall time, per-epoch FID / KID / losses, the
  untrained FID, machine, torch, threads and date;
* ``docs/img/generation_samples.png``: 64 EMA samples of the lowest-FID epoch (``visattn sample
  RUN -n 64 --seed 0``).

    PYTHONPATH=src python benchmarks/gan_digitpairs.py [--threads 2] [--out runs/gan_digitpairs]
    PYTHONPATH=src python benchmarks/gan_digitpairs.py --from-run DIR   # record a finished run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from _record import write_json, write_text

ROOT = Path(__file__).resolve().parents[1]

RUN_ALL = {
    "args": ["--threads", "2"],
    "minutes": 10,
    "results": ["gan_digitpairs.json", "gan_digitpairs.md"],
    "check": ["wall_s", "best_fid"],
}


def main(argv=None) -> int:
    from visattn.train.gan_metrics import generation_metrics
    from visattn.train.generate import (
        GenTrainConfig,
        build_gan,
        load_generator,
        sample_images,
        save_grid,
        train_generate,
    )

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default="runs/gan_digitpairs")
    p.add_argument("--from-run", default=None, metavar="DIR", help="record this finished default run instead")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "gan_digitpairs"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    wall = None
    if args.from_run is None:
        out = Path(args.out)
        if out.exists():
            shutil.rmtree(out)
        t0 = time.perf_counter()
        train_generate(GenTrainConfig(output=str(out), progress=False))
        wall = time.perf_counter() - t0
    else:
        out = Path(args.from_run)
    info = json.loads((out / "config.json").read_text())
    history = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    cfg = GenTrainConfig(**{k: v for k, v in info["config"].items() if k in GenTrainConfig.__dataclass_fields__})
    cfg.betas = tuple(cfg.betas)  # type: ignore[assignment]

    # The untrained generator: the run's initial weights (the engine seeds with cfg.seed), same samples.
    from visattn.data.generation import load_gen_data

    bundle = load_gen_data(cfg.data, cfg.image_size, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    gan = build_gan(cfg, bundle.image_size, bundle.num_classes)
    real = bundle.test.batch(torch.arange(min(cfg.fid_samples, len(bundle.test))))[0]
    fake = sample_images(gan.sampler, cfg.fid_samples, seed=cfg.seed + 1)
    from visattn.train.gan_metrics import feature_network

    untrained = generation_metrics(real, fake, feature_network(info["fid_features"]), seed=cfg.seed)

    final, best = history[-1], info.get("best") or {}
    meta = {
        "command": "visattn train --task generate (defaults) == GenTrainConfig()",
        "wall_s": wall,
        "train_time_s": sum(h["train_time_s"] for h in history),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "cpus": os.cpu_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_1min": round(os.getloadavg()[0], 2),
        "features": info["fid_features"],
        "note": info.get("fid_note"),
    }
    summary = {
        "wall_s": wall,
        "untrained_fid": untrained["fid"],
        "best_fid": best.get("fid"),
        "best_epoch": best.get("epoch"),
        "final_fid": final["fid"],
    }
    res = {
        **{k: meta[k] for k in ("machine", "torch", "threads", "date")},
        "summary": summary,
        "meta": meta,
        "untrained": untrained,
        "history": history,
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(args.results + ".json"), res)
    lines = [
        f"# Default built-in GAN run: `{cfg.data}` (mirrored pairs), 32x32, SAGAN (mhsa, 1 head) at 16x16",
        "",
        f"{meta['date']}, torch {meta['torch']}, {meta['machine']} ({meta['cpus']} CPUs), {meta['threads']} thread(s). "
        + (f"Wall time {wall:.0f} s; " if wall else "")
        + f"training {meta['train_time_s']:.0f} s (the epochs' train_time_s). Features: {meta['features']} - "
        "FID / KID on these are NOT comparable to published FIDs.",
        "",
        "| epoch | D loss | G loss | FID | KID |",
        "| --- | --- | --- | --- | --- |",
        f"| untrained G | - | - | {untrained['fid']:.2f} | {untrained['kid']:.4f} |",
    ]
    for h in history:
        fid = "-" if h.get("fid") is None else f"{h['fid']:.2f}"
        kid = "-" if h.get("kid") is None else f"{h['kid']:.4f}"
        lines.append(f"| {h['epoch']} | {h['d_loss']:.3f} | {h['g_loss']:.3f} | {fid} | {kid} |")
    lines += [
        "",
        f"Best FID {summary['best_fid']:.2f} (epoch {summary['best_epoch']}, kept in best.safetensors and sampled by "
        f"`visattn sample`), final {final['fid']:.2f}, untrained generator {untrained['fid']:.2f}. "
        f"Load average {meta['load_1min']} at the end.",
    ]
    write_text(Path(args.results + ".md"), "\n".join(lines) + "\n")
    # The README's picture: what `visattn sample RUN -n 80 --nrow 10 --seed 0` draws (the best-FID epoch's
    # G-EMA; a class-conditional run draws the classes in turn, so each column is one class).
    g = load_generator(out)
    k = int(getattr(g, "num_classes", 0))
    n, nrow = (8 * k, k) if 0 < k <= 16 else (64, None)
    save_grid(sample_images(g, n, seed=0), ROOT / "docs" / "img" / "generation_samples.png", nrow=nrow)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
