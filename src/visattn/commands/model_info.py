"""``visattn info MODEL``: parameters, FLOPs at the default size, the mechanism in each stage,
and the published figures next to ours."""

from __future__ import annotations

import json

import torch
from torch import nn

from visattn.flops import count_flops
from visattn.registry import model_entry

__all__ = ["summarize", "mechanisms_by_stage", "stage_of", "run", "build_default"]


def build_default(name: str, meta: bool = False) -> nn.Module:
    """Model ``name`` at its builder's defaults, in eval mode.

    Unlike ``create_model(name)``, which always passes ``num_classes=1000``, this keeps the
    builder's own class count (e.g. 10 for CIFAR-10 models), which is what published parameter
    counts refer to. ``meta=True`` builds on the meta device (no memory; for counting), falling
    back to real tensors for a model that cannot be built there.
    """
    builder = model_entry(name).builder
    if meta:
        try:
            with torch.device("meta"):
                return builder().eval()
        except (NotImplementedError, RuntimeError):
            pass
    return builder().eval()


def stage_of(module_name: str) -> str:
    """The stage a module belongs to, from its dotted name.

    ``stages.2.blocks.1.attn`` -> ``stages.2`` (a numbered stage holding numbered blocks);
    ``blocks.3.mixer`` or ``layer1.0.conv2`` -> ``blocks`` / ``layer1`` (one sequence of blocks);
    ``stem.block1.ea`` -> ``stem``.
    """
    parts = module_name.split(".")
    idx = [i for i, p in enumerate(parts) if p.isdigit()]
    if len(idx) >= 2:
        return ".".join(parts[: idx[0] + 1])
    if len(idx) == 1 and idx[0] > 0:
        return ".".join(parts[: idx[0]])
    return parts[0]


def _mixers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Outermost registered mechanism modules (a mechanism inside a mechanism is not listed)."""
    found: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        if getattr(type(m), "registry_name", "") and not any(name.startswith(p + ".") for p, _ in found):
            found.append((name, m))
    return found


def mechanisms_by_stage(model: nn.Module) -> dict[str, list[dict]]:
    """stage -> [{"mechanism", "count", "config"}], in model order; equal configs are merged."""
    stages: dict[str, list[dict]] = {}
    for name, m in _mixers(model):
        groups = stages.setdefault(stage_of(name), [])
        mech, config = type(m).registry_name, m.extra_repr()
        for g in groups:
            if g["mechanism"] == mech and g["config"] == config:
                g["count"] += 1
                break
        else:
            groups.append({"mechanism": mech, "count": 1, "config": config})
    return stages


def summarize(name: str) -> dict:
    entry = model_entry(name)
    model = build_default(name)
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(1, *entry.default_input)
    with torch.no_grad():
        flops = count_flops(model, x)
    return {
        "name": name,
        "family": entry.family,
        "paper": entry.paper,
        "input": list(entry.default_input),
        "num_classes": model.num_classes,
        "params": params,
        "flops": flops,
        "macs": flops // 2,
        "published": entry.published,
        "stages": mechanisms_by_stage(model),
        "mixers": {n: type(m).registry_name for n, m in _mixers(model)},
    }


def _fmt(v, unit: str = "", digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}{unit}"


def run(name: str, as_json: bool = False) -> int:
    s = summarize(name)
    if as_json:
        print(json.dumps(s, indent=2))
        return 0
    pub = s["published"]
    print(f"{name} ({s['family']}), input {tuple(s['input'])}, {s['num_classes']} classes")
    if s["paper"]:
        print(f"  paper: {s['paper']}")
    print(f"  {'':<26}{'ours':>10}  {'published':>10}")
    print(f"  {'parameters (M)':<26}{_fmt(s['params'] / 1e6):>10}  {_fmt(pub.get('params_m')):>10}")
    print(f"  {'multiply-adds (G)':<26}{_fmt(s['macs'] / 1e9):>10}  {_fmt(pub.get('macs_g')):>10}")
    print(f"  {'FLOPs = 2 x MACs (G)':<26}{_fmt(s['flops'] / 1e9):>10}")
    if "top1" in pub:
        at = f" at {int(pub['top1_input'])} px" if "top1_input" in pub else ""
        print(f"  {'top-1 accuracy (%)':<26}{'-':>10}  {_fmt(pub['top1'], digits=1):>10}{at}")
    print("  mechanisms by stage:")
    if not s["stages"]:
        print("    none (no registered mechanism)")
    for stage, groups in s["stages"].items():
        for i, g in enumerate(groups):
            label = stage if i == 0 else ""
            print(f"    {label:<12} {g['mechanism']} x{g['count']}: {g['config']}")
    return 0
