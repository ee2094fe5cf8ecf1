"""Where Slide-Swin-T / Slide-PVT-T lose to Swin-T / PVT-T, and the floor of the model targets (issue 19).

Targets: train step <= 1.15x, re-parameterised inference <= 1.0x the original model. For each
pair, side by side in alternating rounds (224 x 224, batch 4, 10 classes, float32, random
weights), per model:

* the whole step (train: cross-entropy forward + backward + SGD step; inference: eval,
  ``torch.inference_mode``, slide re-parameterised, as models_vs_timm times them);
* each stage alone on the input the model gives it (train: forward + backward, an interior
  stage's input requiring grad), so the step splits into stages and the rest (stem norm, head,
  optimizer step);
* the mixers of the slide stages alone (the attention layers slide replaces, on their inputs);
* for the slide model, the slide layers' unavoidable kernels at those shapes
  (``slide_train_floor``'s kernels: the 1x1 projections, the merged-kernel GEMMs and the
  neighbour products; training: forward + backward, inference: forward).

``floor`` = the slide model's step with its slide mixers replaced by those kernels (step -
slide mixers + kernels, per round); ``floor / ref`` against the target says whether the target
can be met by any slide kernel on this CPU. ``slide stages as ref`` = the step with the slide
stages costing what the reference's stages cost (what the other stages alone leave).

    PYTHONPATH=src python benchmarks/slide_model_floor.py --threads 2 --rounds 3

Writes benchmarks/results/slide_model_floor.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

import visattn
from _record import RESULTS, stamp, stamp_line, write_json, write_text
from slide_train_floor import _gemms, _products, _projections
from visattn.models.hierarchical import CONFIGS

RUN_ALL = {
    "args": ["--threads", "2", "--rounds", "3"],
    "minutes": 2,
    "results": ["slide_model_floor.json", "slide_model_floor.md"],
    "check": ["_vs_ref"],
}

PAIRS = [("slide_swin_t", "swin_t"), ("slide_pvt_t", "pvt_t")]
TARGETS = {"train": 1.15, "infer": 1.0}
BATCH, SIZE, NUM_CLASSES = 4, 224, 10


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _capture(model, x):
    """Inputs of every stage and of every mixer of the model (eval forward, detached)."""
    stage_in: dict[int, torch.Tensor] = {}
    mixer_in: dict[tuple[int, int], torch.Tensor] = {}
    hooks = []
    for si, st in enumerate(model.stages):
        hooks.append(st.register_forward_pre_hook(lambda m, a, si=si: stage_in.__setitem__(si, a[0].detach())))
        for bi, blk in enumerate(st.blocks):
            hooks.append(
                blk.mixer.register_forward_pre_hook(lambda m, a, key=(si, bi): mixer_in.__setitem__(key, a[0].detach()))
            )
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return stage_in, mixer_in


def _train_module(mod, inp, needs_grad: bool):
    g = torch.randn_like(_first(mod(inp)))

    def run():
        mod.zero_grad(set_to_none=True)
        xi = inp.detach().requires_grad_(needs_grad)
        _first(mod(xi)).backward(g)

    return run


def _infer_module(mod, inp):
    def run():
        with torch.inference_mode():
            mod(inp)

    return run


def _cases(name: str, slide_stages: list[int], x, y) -> dict:
    """The timed closures of one model: {case: fn}."""
    torch.manual_seed(0)
    model = visattn.create_model(name, num_classes=NUM_CLASSES)
    infer = copy.deepcopy(model).eval()
    visattn.reparameterize(infer)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()
    stage_in, mixer_in = _capture(infer, x)

    def train_step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def infer_step():
        with torch.inference_mode():
            infer(x)

    cases = {"train step": train_step, "infer step": infer_step}
    for si in range(len(model.stages)):
        cases[f"train stage {si}"] = _train_module(model.stages[si], stage_in[si], si > 0)
        cases[f"infer stage {si}"] = _infer_module(infer.stages[si], stage_in[si])
    for si in slide_stages:
        for bi, blk in enumerate(model.stages[si].blocks):
            cases[f"train mixer {si}.{bi}"] = _train_module(blk.mixer, mixer_in[(si, bi)], True)
            cases[f"infer mixer {si}.{bi}"] = _infer_module(infer.stages[si].blocks[bi].mixer, mixer_in[(si, bi)])
            mix = blk.mixer
            if type(mix).__name__ != "SlideAttention":
                continue
            inp = mixer_in[(si, bi)].contiguous()
            side, dim, heads = inp.shape[-1], mix.dim, mix.num_heads
            assert inp.shape[-2] == side and mix.kernel_size == 3 and mix.deformed
            for phase, train in (("train", True), ("infer", False)):
                proj = _projections(inp, torch.randn_like(inp), train=train)
                gemms = _gemms(side, dim, heads, BATCH, train=train)
                prods = _products(side, dim, heads, BATCH, train=train)

                def kernels(proj=proj, gemms=gemms, prods=prods):
                    proj()
                    gemms()
                    prods()

                cases[f"{phase} kernels {si}.{bi}"] = kernels
    return cases


def measure_pair(ours: str, ref: str, rounds: int) -> dict:
    torch.manual_seed(0)
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    y = torch.randint(0, NUM_CLASSES, (BATCH,))
    cfg = CONFIGS[ours]
    slide_stages = [i for i, m in enumerate(cfg.mixers) if m == "slide"]
    cases = {"ours": _cases(ours, slide_stages, x, y), "ref": _cases(ref, slide_stages, x, y)}
    for side in cases.values():  # warm-up
        for fn in side.values():
            fn()
    t: dict[str, dict[str, list[float]]] = {k: {c: [] for c in v} for k, v in cases.items()}
    for _ in range(rounds):
        for k, side in cases.items():
            for c, fn in side.items():
                t[k][c].append(_timed(fn))

    def per_round(k, prefix):
        keys = [c for c in t[k] if c.startswith(prefix)]
        return [sum(t[k][c][i] for c in keys) for i in range(rounds)]

    def med(v):
        return 1e3 * statistics.median(v)

    row: dict = {"ours": ours, "reference": ref, "slide_stages": slide_stages, "phases": {}}
    for ph in ("train", "infer"):
        step_o, step_r = t["ours"][f"{ph} step"], t["ref"][f"{ph} step"]
        st_o = [sum(t["ours"][f"{ph} stage {s}"][i] for s in slide_stages) for i in range(rounds)]
        st_r = [sum(t["ref"][f"{ph} stage {s}"][i] for s in slide_stages) for i in range(rounds)]
        mix_o, mix_r = per_round("ours", f"{ph} mixer"), per_round("ref", f"{ph} mixer")
        kern = per_round("ours", f"{ph} kernels")
        floor = [step_o[i] - mix_o[i] + kern[i] for i in range(rounds)]
        as_ref = [step_o[i] - st_o[i] + st_r[i] for i in range(rounds)]
        nst = sum(1 for c in t["ours"] if c.startswith(f"{ph} stage "))
        row["phases"][ph] = {
            "ms": {
                "step_ours": med(step_o),
                "step_ref": med(step_r),
                **{f"stage{s}_ours": med(t["ours"][f"{ph} stage {s}"]) for s in range(nst)},
                **{f"stage{s}_ref": med(t["ref"][f"{ph} stage {s}"]) for s in range(nst)},
                "slide_mixers_ours": med(mix_o),
                "replaced_mixers_ref": med(mix_r),
                "slide_kernels": med(kern),
                "floor": med(floor),
            },
            "step_vs_ref": statistics.median(a / b for a, b in zip(step_o, step_r)),
            "slide_stages_vs_ref": statistics.median(a / b for a, b in zip(st_o, st_r)),
            "slide_mixers_vs_ref": statistics.median(a / b for a, b in zip(mix_o, mix_r)),
            "slide_stages_as_ref_vs_ref": statistics.median(a / b for a, b in zip(as_ref, step_r)),
            "floor_vs_ref": statistics.median(a / b for a, b in zip(floor, step_r)),
            "target": TARGETS[ph],
        }
    return row


def to_markdown(rows, doc) -> str:
    lines = [
        f"# Slide models against Swin-T / PVT-T: per-stage split and floor ({doc['threads']} thread(s), "
        f"{SIZE}x{SIZE}, batch {BATCH}, {doc['rounds']} alternating rounds, medians)",
        "",
        "| pair | phase | step ms (ours / ref) | step ratio | stage ms 1-4, ours | stage ms 1-4, ref "
        "| slide stages ratio | slide mixers / replaced ms | slide kernels ms | slide stages as ref: ratio "
        "| floor ratio | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for ph, p in r["phases"].items():
            m = p["ms"]
            n = sum(1 for k in m if k.startswith("stage") and k.endswith("_ours"))
            so = " / ".join(f"{m[f'stage{s}_ours']:.0f}" for s in range(n))
            sr = " / ".join(f"{m[f'stage{s}_ref']:.0f}" for s in range(n))
            verdict = "floor within it" if p["floor_vs_ref"] <= p["target"] else "floor above it: not reachable"
            lines.append(
                f"| {r['ours']} / {r['reference']} | {ph} | {m['step_ours']:.0f} / {m['step_ref']:.0f} | "
                f"{p['step_vs_ref']:.2f} | {so} | {sr} | {p['slide_stages_vs_ref']:.2f} | "
                f"{m['slide_mixers_ours']:.0f} / {m['replaced_mixers_ref']:.0f} | {m['slide_kernels']:.0f} | "
                f"{p['slide_stages_as_ref_vs_ref']:.2f} | {p['floor_vs_ref']:.2f} | "
                f"<= {p['target']:.2f}: {verdict} |"
            )
    lines += [
        "",
        "Slide stages: 1-2 in both models. Train = forward + backward (+ SGD step for the whole step; "
        "stages and mixers alone: forward + backward, an interior input requiring grad); inference = "
        "eval, inference_mode, slide re-parameterised. Slide kernels = the slide layers' 1x1 "
        "projections, merged-kernel GEMMs and neighbour products at the stage shapes "
        "(benchmarks/slide_train_floor.py); floor = step - slide mixers + slide kernels; "
        "slide stages as ref = step - slide stages + the reference's stages 1-2.",
        stamp_line(doc),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = [measure_pair(o, r, a.rounds) for o, r in PAIRS]
    doc = {**stamp(a.threads), "batch": BATCH, "size": SIZE, "rounds": a.rounds, "pairs": rows}
    write_json(RESULTS / "slide_model_floor.json", doc)
    text = to_markdown(rows, doc)
    write_text(RESULTS / "slide_model_floor.md", text)
    print(text)


if __name__ == "__main__":
    main()
