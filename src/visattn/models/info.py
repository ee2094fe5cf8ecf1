"""What a registered model is made of: its default build, its mechanisms per stage, its size.

The library side of ``visattn info MODEL`` (:mod:`visattn.commands.model_info` prints it) and of
the generated ``docs/models.md`` (:mod:`visattn.docs_models`).
"""

from __future__ import annotations

import torch
from torch import nn

from visattn.flops import count_flops
from visattn.models.blocks import find_mixers
from visattn.registry import model_entry

__all__ = ["build_default", "stage_of", "mechanisms_by_stage", "summarize", "named_mixers"]


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


def named_mixers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``model.named_mixers()`` for a visattn model (classification or segmentation), else
    :func:`~visattn.models.blocks.find_mixers` (the same rule) on any module."""
    method = getattr(model, "named_mixers", None)
    return method() if callable(method) else find_mixers(model)


def stage_of(module_name: str) -> str:
    """The stage a module belongs to, from its dotted name.

    ``stages.2.blocks.1.mixer`` -> ``stages.2`` (a numbered stage holding numbered blocks);
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


def _mechanism(m: nn.Module) -> str:
    return getattr(type(m), "registry_name", "") or type(m).__name__


def mechanisms_by_stage(model: nn.Module) -> dict[str, list[dict]]:
    """stage -> [{"mechanism", "count", "config"}], in model order; equal configs are merged."""
    stages: dict[str, list[dict]] = {}
    for name, m in named_mixers(model):
        groups = stages.setdefault(stage_of(name), [])
        mech, config = _mechanism(m), m.extra_repr()
        for g in groups:
            if g["mechanism"] == mech and g["config"] == config:
                g["count"] += 1
                break
        else:
            groups.append({"mechanism": mech, "count": 1, "config": config})
    return stages


def summarize(name: str) -> dict:
    """Registered model ``name`` at its defaults: parameters, FLOPs / MACs at the default input,
    published figures, mechanisms per stage and per module (a JSON-ready dict)."""
    entry = model_entry(name)
    model = build_default(name)
    params = sum(p.numel() for p in model.parameters())
    example = getattr(model, "example_input", None)  # a generator takes noise, not images
    x = example(1) if callable(example) else torch.randn(1, *entry.default_input)
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
        "mixers": {n: _mechanism(m) for n, m in named_mixers(model)},
    }
