"""Model-level speed: visattn's models against each other and against the timm models a user
would pick instead, inference and one training step, as ratios measured in one run.

Pairs (ours / reference):

* ``slide_swin_t`` / ``swin_t`` and ``slide_pvt_t`` / ``pvt_t`` (issue 12 targets: train step
  <= 1.15x, inference of the re-parameterised slide model <= 1.0x);
* with timm importable: ``resnet50`` / timm ``resnet50`` (sanity pair), ``swin_t`` and
  ``slide_swin_t`` / timm ``swin_tiny_patch4_window7_224``, ``pvt_t`` and ``slide_pvt_t`` /
  timm ``pvt_v2_b1``, ``lambda_resnet26`` and ``resnet26(attention="lambda", mixer_stages=(2, 3))``
  / timm ``lambda_resnet26t``, ``lambda_resnet50`` / timm ``lambda_resnet50ts``.

224x224, batch 4, float32, 10 classes (ours and timm's heads alike), random weights. Inference:
eval mode under ``torch.inference_mode`` (slide models re-parameterised, as deployed). Train step:
cross-entropy forward + backward + SGD step. Every model of a pair is timed in alternating
rounds; the ratio is the median over rounds of the per-round ratio.

timm needs torchvision, which does not import beside this machine's CPU torch; use a second
environment (see docs/benchmarks or the README)::

    python3 -m venv /work/wt/timmenv && /work/wt/timmenv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm
    /work/wt/timmenv/bin/pip install --no-deps -e .
    /work/wt/timmenv/bin/python benchmarks/models_vs_timm.py --threads 2 --rounds 5

Without timm (``--no-timm``, or when it does not import) only our own pairs run::

    PYTHONPATH=src python benchmarks/models_vs_timm.py --no-timm --threads 2 --rounds 5

Writes benchmarks/results/models_vs_timm[_TAG].{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import visattn
from _record import stamp
from visattn.bench.measure import synchronize

RUN_ALL = {
    "args": ["--threads", "2", "--rounds", "3"],
    "minutes": 2,
    "results": ["models_vs_timm.json", "models_vs_timm.md"],
    "check": ["ratio"],
}

NUM_CLASSES = 10

#: (ours, reference, reference is timm)
OWN_PAIRS = [("slide_swin_t", "swin_t"), ("slide_pvt_t", "pvt_t")]
TIMM_PAIRS = [
    ("resnet50", "resnet50"),
    ("swin_t", "swin_tiny_patch4_window7_224"),
    ("slide_swin_t", "swin_tiny_patch4_window7_224"),
    ("pvt_t", "pvt_v2_b1"),
    ("slide_pvt_t", "pvt_v2_b1"),
    ("lambda_resnet26", "lambda_resnet26t"),
    ("resnet26+lambda(2,3)", "lambda_resnet26t"),
    ("lambda_resnet50", "lambda_resnet50ts"),
]
TARGETS = {("slide_swin_t", "swin_t"): 1.15, ("slide_pvt_t", "pvt_t"): 1.15}


def build_ours(name: str) -> torch.nn.Module:
    if name == "resnet26+lambda(2,3)":
        return visattn.create_model("resnet26", num_classes=NUM_CLASSES, attention="lambda", mixer_stages=(2, 3))
    return visattn.create_model(name, num_classes=NUM_CLASSES)


def build_timm(name: str) -> torch.nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure_pair(ours: str, ref: str, ref_is_timm: bool, *, batch: int, size: int, rounds: int, device: str) -> dict:
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    models = {
        "ours": build_ours(ours).to(device),
        "ref": (build_timm(ref) if ref_is_timm else build_ours(ref)).to(device),
    }
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3) for k, m in models.items()}
    # inference copies of the same weights, eval mode, slide re-parameterised
    infer = {k: copy.deepcopy(m).eval() for k, m in models.items()}
    visattn.reparameterize(infer["ours"])
    if not ref_is_timm:
        visattn.reparameterize(infer["ref"])

    def train_step(k):
        m, o = models[k], opts[k]
        m.train()
        o.zero_grad(set_to_none=True)
        F.cross_entropy(m(x), y).backward()
        o.step()
        synchronize(device)

    def infer_step(k):
        with torch.inference_mode():
            infer[k](x)
        synchronize(device)

    for k in models:  # warm-up
        train_step(k)
        infer_step(k)
    t = {k: {"train": [], "infer": []} for k in models}
    for _ in range(rounds):
        for k in models:
            t[k]["train"].append(_timed(lambda: train_step(k)))
            t[k]["infer"].append(_timed(lambda: infer_step(k)))
    row = {"ours": ours, "reference": ("timm " if ref_is_timm else "") + ref}
    for phase in ("train", "infer"):
        row[f"{phase}_ms_ours"] = 1e3 * statistics.median(t["ours"][phase])
        row[f"{phase}_ms_ref"] = 1e3 * statistics.median(t["ref"][phase])
        row[f"{phase}_ratio"] = statistics.median(a / b for a, b in zip(t["ours"][phase], t["ref"][phase]))
    row["params_m_ours"] = sum(p.numel() for p in models["ours"].parameters()) / 1e6
    row["params_m_ref"] = sum(p.numel() for p in models["ref"].parameters()) / 1e6
    bound = TARGETS.get((ours, ref)) if not ref_is_timm else None
    if bound is not None:
        row["train_target"] = bound
        row["train_met"] = row["train_ratio"] <= bound
        row["infer_met"] = row["infer_ratio"] <= 1.0
    return row


def to_markdown(rows, config) -> str:
    lines = [
        f"# Models: train step and inference ({config['threads']} thread(s), {config['device']}, "
        f"{config['size']}x{config['size']}, batch {config['batch']}, {config['rounds']} alternating rounds, "
        f"torch {config['torch']}{', timm ' + config['timm'] if config['timm'] else ''})",
        "",
        "| ours | reference | train ms (ours / ref) | train ratio | inference ms (ours / ref) | inference ratio "
        "| params M (ours / ref) | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        target = ""
        if "train_target" in r:
            target = (
                f"train <= {r['train_target']}: {'met' if r['train_met'] else 'not met'}; "
                f"inference <= 1.0: {'met' if r['infer_met'] else 'not met'}"
            )
        lines.append(
            f"| {r['ours']} | {r['reference']} | {r['train_ms_ours']:.0f} / {r['train_ms_ref']:.0f} | "
            f"{r['train_ratio']:.2f} | {r['infer_ms_ours']:.0f} / {r['infer_ms_ref']:.0f} | "
            f"{r['infer_ratio']:.2f} | {r['params_m_ours']:.1f} / {r['params_m_ref']:.1f} | {target} |"
        )
    lines += [
        "",
        "Slide models are re-parameterised for inference; train = cross-entropy forward + backward + SGD step.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-timm", action="store_true", help="only our own pairs (slide vs its baseline)")
    p.add_argument("--only", nargs="+", help="only pairs whose 'ours' model is one of these")
    p.add_argument("--tag", default="")
    p.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    timm_version = None
    if not args.no_timm:
        try:
            import timm

            timm_version = timm.__version__
        except Exception as e:
            print(f"timm does not import ({type(e).__name__}: {e}); running our own pairs only")
    pairs = [(a, b, False) for a, b in OWN_PAIRS] + ([(a, b, True) for a, b in TIMM_PAIRS] if timm_version else [])
    if args.only:
        pairs = [pr for pr in pairs if pr[0] in args.only]
    rows = []
    for ours, ref, is_timm in pairs:
        r = measure_pair(ours, ref, is_timm, batch=args.batch, size=args.size, rounds=args.rounds, device=args.device)
        rows.append(r)
        print(
            f"{ours:22s} vs {r['reference']:34s} train {r['train_ratio']:.2f}  inference {r['infer_ratio']:.2f}",
            flush=True,
        )
    config = {
        "threads": args.threads,
        "rounds": args.rounds,
        "batch": args.batch,
        "size": args.size,
        "device": args.device,
        "torch": torch.__version__,
        "timm": timm_version,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = "models_vs_timm" + (f"_{args.tag}" if args.tag else "")
    (out / f"{stem}.json").write_text(json.dumps({**stamp(args.threads), "config": config, "rows": rows}, indent=2))
    (out / f"{stem}.md").write_text(to_markdown(rows, config))
    print(to_markdown(rows, config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
