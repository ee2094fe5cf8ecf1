"""``visattn info MODEL``: parameters, FLOPs at the default size, the mechanism in each stage,
and the published figures next to ours."""

from __future__ import annotations

import json

from visattn.models.info import summarize

__all__ = ["run"]


def _fmt(v, unit: str = "", digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}{unit}"


def run(name: str, as_json: bool = False) -> int:
    from visattn.commands.convert_cmd import source_rows

    s = summarize(name)
    weights = source_rows(name)
    if as_json:
        print(json.dumps({**s, "weights": weights}, indent=2))
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
    print("  published weights (docs/weights.md):" if weights else "  published weights: none known")
    for w in weights:
        how = "backbone_pretrained" if w["part"] == "backbone" or name in w["backbone_of"] else "pretrained"
        print(f"    {how}={w['name']!r}: {w['num_classes']} classes, {w['license']}")
    return 0
