"""``visattn bench``: latency, peak memory, parameters, FLOPs and scaling per mechanism.

For each registered mechanism (built with its ``AttentionInfo.bench_kwargs``, plus its
``bench_variants`` on request) and each square resolution, it measures:

* median forward latency (eval mode, no grad) and forward+backward latency (train mode);
* peak memory of the forward (no grad) and of forward+backward (CPU: profiler events;
  CUDA: allocator statistics);
* parameters; FLOPs counted by ``torch.utils.flop_counter`` and the mechanism's analytic
  formula (checked equal on the counted part), with the elementwise multiply-adds the
  counter cannot see added from the formula;
* the log-log slope of time and memory against n = H*W.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import visattn
from visattn.bench.measure import median_time, peak_memory_bytes
from visattn.flops import count_flops
from visattn.layers.base import SpatialAttention

__all__ = ["BenchResult", "bench_case", "bench_mechanism", "bench_cases", "run_bench", "scaling_slopes"]

DEFAULT_RESOLUTIONS = (14, 28, 56)


@dataclass
class BenchResult:
    """One (case, resolution) measurement. Times in milliseconds, memory in MiB, FLOPs in units."""

    label: str
    mechanism: str
    kwargs: dict[str, Any]
    resolution: int
    n: int
    dim: int
    batch: int
    params: int = 0
    fwd_ms: float = math.nan
    fwdbwd_ms: float = math.nan
    mem_fwd_mib: float = math.nan
    mem_train_mib: float = math.nan
    flops: int = 0  # analytic total (2 x MACs), forward
    flops_counter: int = 0  # torch.utils.flop_counter, forward
    flops_match: bool = False  # counter == analytic counted part
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def bench_cases(mechanisms: Iterable[str] | None = None, variants: bool = False) -> list[tuple[str, str, dict]]:
    """(label, mechanism, kwargs) for each case: every mechanism's bench_kwargs, then its variants."""
    names = list(mechanisms) if mechanisms else visattn.list_attention()
    cases = []
    for name in names:
        info = visattn.attention_info(name)  # raises a helpful ValueError on unknown names
        cases.append((name, name, dict(info.bench_kwargs)))
        if variants:
            for label, kw in info.bench_variants.items():
                cases.append((label, name, dict(kw)))
    return cases


def _build(mechanism: str, dim: int, kwargs: dict, device, dtype) -> SpatialAttention:
    kw = dict(kwargs)
    reparam = kw.pop("_reparameterize", False)
    m = visattn.create_attention(mechanism, dim, **kw).to(device=device, dtype=dtype)
    if not isinstance(m, SpatialAttention):  # the contract: every registered mechanism is one
        raise TypeError(f"mechanism {mechanism!r} built a {type(m).__name__}, not a SpatialAttention")
    if reparam:
        m.eval()
        visattn.reparameterize(m)
    return m


def bench_case(
    label: str,
    mechanism: str,
    kwargs: dict,
    *,
    dim: int = 64,
    batch: int = 4,
    resolution: int = 28,
    device="cpu",
    dtype=torch.float32,
    backward: bool = True,
    min_time: float = 0.2,
) -> BenchResult:
    """Measure one case at one resolution. Errors are recorded in ``result.error``, not raised."""
    n = resolution * resolution
    r = BenchResult(
        label=label, mechanism=mechanism, kwargs=dict(kwargs), resolution=resolution, n=n, dim=dim, batch=batch
    )
    try:
        m = _build(mechanism, dim, kwargs, device, dtype)
        reparam = bool(kwargs.get("_reparameterize", False))
        r.params = sum(p.numel() for p in m.parameters())
        x = torch.randn(batch, dim, resolution, resolution, device=device, dtype=dtype)

        m.eval()
        with torch.no_grad():
            r.flops_counter = count_flops(m, x)
            f = m.flop_breakdown(resolution, resolution, batch)
            r.flops = int(f["counted"] + f["uncounted"])
            r.flops_match = int(f["counted"]) == r.flops_counter

            def fwd():
                return m(x)

            r.fwd_ms = 1e3 * median_time(fwd, device, min_time=min_time)
            r.mem_fwd_mib = peak_memory_bytes(fwd, device) / 2**20

        if backward and not reparam:
            m.train()
            xg = x.clone().requires_grad_(True)

            def fwdbwd():
                m(xg).sum().backward()
                m.zero_grad(set_to_none=True)
                xg.grad = None

            r.fwdbwd_ms = 1e3 * median_time(fwdbwd, device, min_time=min_time)
            r.mem_train_mib = peak_memory_bytes(fwdbwd, device) / 2**20
    except (RuntimeError, ValueError, TypeError, MemoryError) as e:  # recorded, the run goes on
        r.error = f"{type(e).__name__}: {e}".splitlines()[0][:200]
    return r


def bench_mechanism(
    mechanism: str,
    kwargs: dict | None = None,
    label: str | None = None,
    *,
    resolutions: Iterable[int] = DEFAULT_RESOLUTIONS,
    **kw,
) -> list[BenchResult]:
    """Measure one mechanism at each resolution."""
    if kwargs is None:
        kwargs = dict(visattn.attention_info(mechanism).bench_kwargs)
    return [bench_case(label or mechanism, mechanism, kwargs, resolution=s, **kw) for s in resolutions]


def scaling_slopes(results: list[BenchResult]) -> dict[str, dict[str, float]]:
    """Per label: least-squares slope of log(time) and log(memory) against log(n)."""
    out: dict[str, dict[str, float]] = {}
    labels = list(dict.fromkeys(r.label for r in results))
    for label in labels:
        rs = [r for r in results if r.label == label and not r.error]
        slopes = {}
        for key in ("fwd_ms", "fwdbwd_ms", "mem_fwd_mib", "mem_train_mib"):
            pts = [(r.n, getattr(r, key)) for r in rs if getattr(r, key) > 0 and math.isfinite(getattr(r, key))]
            if len(pts) >= 2 and len({p[0] for p in pts}) >= 2:
                xs, ys = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
                slopes[key] = float(np.polyfit(xs, ys, 1)[0])
            else:
                slopes[key] = math.nan
        out[label] = slopes
    return out


def run_bench(
    mechanisms: Iterable[str] | None = None,
    *,
    variants: bool = False,
    resolutions: Iterable[int] = DEFAULT_RESOLUTIONS,
    dim: int = 64,
    batch: int = 4,
    device="cpu",
    dtype=torch.float32,
    backward: bool = True,
    min_time: float = 0.2,
    progress=None,
) -> list[BenchResult]:
    """Measure every case at every resolution. ``progress`` is called with (label, resolution) before each."""
    resolutions = list(resolutions)
    for s in resolutions:
        if not isinstance(s, int) or s < 1:
            raise ValueError(f"resolutions must be ints >= 1, got {s!r}")
    results = []
    for label, mech, kw in bench_cases(mechanisms, variants):
        for s in resolutions:
            if progress is not None:
                progress(label, s)
            results.append(
                bench_case(
                    label,
                    mech,
                    kw,
                    dim=dim,
                    batch=batch,
                    resolution=s,
                    device=device,
                    dtype=dtype,
                    backward=backward,
                    min_time=min_time,
                )
            )
    return results
