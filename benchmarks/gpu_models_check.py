"""Every registered model on one device: a training step in float32 and under bf16 / fp16
autocast (finite loss and gradients), and the eval forward under autocast against float32.

    python benchmarks/gpu_models_check.py --device cuda --out DIR

Writes DIR/gpu_models_check.json; exit code 1 when any model fails a check. Small inputs
(batch 2, the model's default input capped at 64x64), so all models take well under a minute on a GPU.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

import visattn
from visattn.registry import model_entry


def check_model(name: str, device: torch.device, size: int) -> dict:
    torch.manual_seed(0)
    m = visattn.create_model(name, num_classes=10).to(device)
    c, h, w = model_entry(name).default_input
    h, w = min(h, size), min(w, size)  # the model's own input, at most size x size
    x = torch.randn(2, c, h, w, device=device)
    y = torch.tensor([1, 7], device=device)  # classification; segmentation models get dense targets below
    amp = (("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16))
    row = {"model": name, "input": [2, c, h, w]}
    # eval forwards first (a training step would move the BatchNorm running statistics)
    m.eval()
    outs = {}
    for label, dt in amp:
        with torch.no_grad(), torch.autocast(device.type, dtype=dt or torch.float32, enabled=dt is not None):
            outs[label] = m(x).float()
    ref = outs["fp32"]
    if ref.dim() == 4:  # segmentation: (B, classes, H', W') logits, one class index per pixel
        y = torch.randint(
            0,
            ref.shape[1],
            (ref.shape[0], *ref.shape[2:]),
            device=device,
            generator=torch.Generator(device).manual_seed(0),
        )
    for label, dt in amp:
        t0 = time.perf_counter()
        m.train()
        m.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dt or torch.float32, enabled=dt is not None):
            loss = F.cross_entropy(m(x).float(), y)
        # fp16 training needs loss scaling; a fixed scale of 1 may overflow a gradient, which a
        # GradScaler would skip: record it, do not fail on it
        loss.backward()
        grads_ok = all(torch.isfinite(p.grad).all().item() for p in m.parameters() if p.grad is not None)
        ref_ok = bool(torch.isfinite(ref).all().item())
        err = ((outs[label] - ref).norm() / ref.norm().clamp_min(1e-12)).item() if ref_ok else float("nan")
        r = {
            "loss": loss.item(),
            "loss_finite": bool(torch.isfinite(loss).item()),
            "grads_finite": grads_ok,
            "eval_finite": bool(torch.isfinite(outs[label]).all().item()),
            "eval_rel_err_vs_fp32": err,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        r["ok"] = (
            r["loss_finite"]
            and (grads_ok or label == "fp16")
            and r["eval_finite"]
            and (not ref_ok or err < (1e-5 if dt is None else 0.1))
        )
        row[label] = r
    row["ok"] = all(row[k]["ok"] for k, _ in amp)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--out", default=".")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for name in visattn.list_models():
        try:
            row = check_model(name, device, args.size)
        except Exception as e:
            row = {"model": name, "ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        rows.append(row)
        print(f"{name:24s} {'ok' if row['ok'] else 'FAIL'} {row.get('error', '')}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_models_check.json").write_text(json.dumps(rows, indent=2))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
