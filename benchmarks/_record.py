"""What every recorded benchmark result carries, and how it is written (issue 19).

Each JSON under ``benchmarks/results/`` carries ``machine``, ``torch``, ``threads`` and ``date``
at its top level (:func:`stamp`), each Markdown result states the same in one line
(:func:`stamp_line`), and both are written atomically (temporary file, then rename: a killed
run never leaves a half-written result). A benchmark script imports this module as
``from _record import ...`` (it runs as ``python benchmarks/X.py``, so ``benchmarks/`` is on
``sys.path``).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

__all__ = ["RESULTS", "machine", "save_figure", "stamp", "stamp_line", "write_bytes", "write_json", "write_text"]


def machine() -> str:
    """``x86_64, <CPU model>, N cores``: the architecture, the CPU's name where Linux reports it,
    and the core count."""
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [platform.machine() or "unknown", name or platform.processor(), f"{os.cpu_count()} cores"]
    return ", ".join(p for p in parts if p)


def stamp(threads: int | None = None) -> dict[str, Any]:
    """``machine``, ``torch``, ``threads`` (``torch.get_num_threads()`` unless given), ``date``
    (UTC, minutes), ``python`` and ``load_1min`` (the 1-minute load average when stamped: a
    figure above about 0.5 on this 2-core machine means something else ran beside it)."""
    import torch

    return {
        "machine": machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads() if threads is None else threads,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "load_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def stamp_line(s: dict[str, Any]) -> str:
    """One Markdown line stating a :func:`stamp`."""
    load = "" if s.get("load_1min") is None else f"; load average {s['load_1min']} at the end"
    return f"Recorded {s['date']} on {s['machine']}, torch {s['torch']}, {s['threads']} thread(s){load}."


def _io() -> Any:
    """``visattn._io`` of this tree (the project's atomic writes)."""
    sys.path.insert(0, str(ROOT / "src"))  # this tree's visattn, as run_all runs the scripts
    try:
        from visattn import _io
    finally:
        sys.path.remove(str(ROOT / "src"))
    return _io


def _atomic_write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        _io().atomic_write_bytes(path, data)
    else:
        _io().atomic_write_text(path, data, fsync=False)


def save_figure(fig: Any, path: str | os.PathLike, **kwargs: Any) -> Path:
    """``fig.savefig`` to ``path`` atomically (the temporary name keeps the suffix, so the format is kept)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _io().atomic_path(path, suffix=path.suffix) as tmp:
        fig.savefig(tmp, **kwargs)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (parent folders created)."""
    _atomic_write(Path(path), text)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (parent folders created): figures."""
    _atomic_write(Path(path), data)
    return Path(path)


def write_json(path: str | os.PathLike, doc: dict[str, Any]) -> Path:
    """Write ``doc`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(doc, indent=2) + "\n")
