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

__all__ = ["build_default", "stage_of", "mechanisms_by_stage", "summarize", "named_mixers", "check_model_size"]

# A class count above this is checked like a model option (the head grows with it).
_MANY_CLASSES = 100_000


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


def check_model_size(
    name: str,
    num_classes: int | None = None,
    attention: str | None = None,
    attn_kwargs: dict | None = None,
    **kwargs,
) -> None:
    """Refuse, before anything is allocated, options that make model ``name`` hold more parameter
    bytes than :func:`visattn.work_limit`'s ``max_bytes`` (16 GiB by default), as mechanisms are bounded.

    The model is built on the meta device (no memory) to count its parameters; that is done only
    when options or mechanism arguments are given (or over 100,000 classes): the registered
    defaults have known sizes. A model that cannot be built on the meta device is not checked.
    """
    from visattn.layers.base import check_work
    from visattn.registry import create_model

    if not kwargs and not attn_kwargs and (num_classes or 0) <= _MANY_CLASSES:
        return
    try:
        with torch.device("meta"):
            model = create_model(name, num_classes=num_classes, attention=attention, attn_kwargs=attn_kwargs, **kwargs)
    except (NotImplementedError, RuntimeError):
        return
    n = sum(p.numel() for p in model.parameters())
    opts = {**kwargs, **({"attn_kwargs": attn_kwargs} if attn_kwargs else {})}
    if num_classes is not None and num_classes > _MANY_CLASSES:
        opts["num_classes"] = num_classes
    itemsize = torch.empty((), dtype=torch.get_default_dtype()).element_size()
    check_work(name, f"building it with {opts} ({n:.3g} parameters)", nbytes=n * itemsize, nbytes_what="of parameters")


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
