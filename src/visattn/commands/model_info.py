"""``visattn info MODEL``: parameters, FLOPs at the default size, mechanism per stage."""

from __future__ import annotations

import json

import torch

from visattn.flops import count_flops
from visattn.registry import create_model, model_entry


def summarize(name: str) -> dict:
    entry = model_entry(name)
    model = create_model(name).eval()
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(1, *entry.default_input)
    with torch.no_grad():
        flops = count_flops(model, x)
    mixers = {}
    for mod_name, m in model.named_modules():
        reg = getattr(type(m), "registry_name", "")
        if reg:
            mixers[mod_name] = reg
    return {
        "name": name,
        "family": entry.family,
        "input": list(entry.default_input),
        "params": params,
        "flops": flops,
        "macs": flops // 2,
        "published": entry.published,
        "mixers": mixers,
    }


def run(name: str, as_json: bool = False) -> int:
    s = summarize(name)
    if as_json:
        print(json.dumps(s, indent=2))
        return 0
    print(f"{name} ({s['family']}), input {tuple(s['input'])}")
    print(f"  parameters: {s['params'] / 1e6:.2f}M")
    print(f"  FLOPs: {s['flops'] / 1e9:.2f}G (= {s['macs'] / 1e9:.2f}G multiply-adds)")
    if s["published"]:
        print(f"  published: {s['published']}")
    print("  mechanisms:")
    for k, v in s["mixers"].items():
        print(f"    {k}: {v}")
    return 0
