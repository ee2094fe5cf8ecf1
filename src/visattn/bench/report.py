"""Terminal table, JSON and PNG for benchmark results."""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path

import torch

from visattn._io import atomic_path, atomic_write_text
from visattn._strict_json import strict as _strict
from visattn.bench.core import BenchResult, scaling_slopes

__all__ = ["format_table", "format_slopes", "write_json", "write_plot"]


def _f(v, fmt="{:.2f}"):
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def format_table(results: list[BenchResult]) -> str:
    from tabulate import tabulate

    rows = []
    for r in results:
        if r.error:
            rows.append([r.label, f"{r.resolution}x{r.resolution}", "error: " + r.error] + [""] * 7)
            continue
        rows.append(
            [
                r.label,
                f"{r.resolution}x{r.resolution}",
                _f(r.fwd_ms),
                _f(r.fwdbwd_ms),
                _f(r.mem_fwd_mib, "{:.1f}"),
                _f(r.mem_train_mib, "{:.1f}"),
                _f(r.flops / 1e9, "{:.3f}"),
                "yes" if r.flops_match else "NO",
                f"{r.params / 1e3:.1f}k",
            ]
        )
    headers = ["case", "HxW", "fwd ms", "fwd+bwd ms", "fwd MiB", "train MiB", "GFLOPs", "counter=formula", "params"]
    return tabulate(rows, headers=headers, tablefmt="github")


def format_slopes(results: list[BenchResult]) -> str:
    from tabulate import tabulate

    rows = [
        [label, _f(s["fwd_ms"]), _f(s["fwdbwd_ms"]), _f(s["mem_fwd_mib"]), _f(s["mem_train_mib"])]
        for label, s in scaling_slopes(results).items()
    ]
    return tabulate(
        rows,
        headers=["case", "slope fwd time", "slope fwd+bwd time", "slope fwd mem", "slope train mem"],
        tablefmt="github",
    )


def environment() -> dict:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_json(results: list[BenchResult], path, config: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "config": config,
        "environment": environment(),
        "results": [r.as_dict() for r in results],
        "slopes": scaling_slopes(results),
    }
    atomic_write_text(path, json.dumps(_strict(data), indent=2, default=str, allow_nan=False), fsync=False)
    return path


def write_plot(results: list[BenchResult], path) -> Path:
    from matplotlib.figure import Figure  # no pyplot: the caller's backend stays as it is

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(16, 5))
    axes = fig.subplots(1, 3)
    labels = list(dict.fromkeys(r.label for r in results))
    panels = [
        ("fwd_ms", "forward latency (ms)"),
        ("fwdbwd_ms", "forward+backward latency (ms)"),
        ("mem_train_mib", "peak memory, forward+backward (MiB)"),
    ]
    for ax, (key, title) in zip(axes, panels):
        for label in labels:
            pts = [
                (r.n, getattr(r, key))
                for r in results
                if r.label == label and not r.error and math.isfinite(getattr(r, key))
            ]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("positions n = H*W")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return path
