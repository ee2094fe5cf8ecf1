"""Measuring one callable: median wall time and peak memory, on CPU or CUDA."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

__all__ = ["median_time", "peak_memory_bytes", "synchronize"]


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_time(
    fn: Callable[[], object],
    device="cpu",
    *,
    warmup: int = 2,
    min_repeats: int = 5,
    max_repeats: int = 50,
    min_time: float = 0.25,
) -> float:
    """Median seconds per call of ``fn``: ``warmup`` calls, then at least ``min_repeats`` timed
    calls and more until ``min_time`` seconds have passed (at most ``max_repeats``)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_repeats or (time.perf_counter() - start < min_time and len(times) < max_repeats):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence the profiler's native start/stop lines on file descriptor 2."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def peak_memory_bytes(fn: Callable[[], object], device="cpu") -> int:
    """Peak bytes allocated by torch while ``fn`` runs, above what was allocated before.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU (which keeps no allocator statistics):
    the profiler's allocation events, summed in time order; the peak of that curve.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    with _quiet_native_stderr():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return int(peak)
