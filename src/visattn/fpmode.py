"""The process's floating-point mode for subnormal floats (issue 19).

Softmax probabilities of far keys (relpos' positional logits, large attention maps) fall in
float32's subnormal range (below ~1.2e-38), where CPU arithmetic is many times slower: relpos'
training step measured 5.8x ``mhsa`` with subnormals kept and 1.3x with them flushed
(docs/relpos.md). ``import visattn`` therefore flushes them to zero, as TensorFlow and XLA do on
the CPU by default, unless the environment sets ``VISATTN_KEEP_DENORMALS=1``: importing this
module (the first thing ``visattn/__init__.py`` does) applies that default.

A thread takes the mode from the thread that starts it, so the setting reaches torch's
intra-op threads only when it is made before torch starts its thread pool (its first parallel
operation): import visattn before running torch operations, or call :func:`flush_denormals`
first thing. Called later, it reaches the calling thread only. Flushing changes no value above
1.2e-38 (float32) / 2.2e-308 (float64).
"""

from __future__ import annotations

import os

import torch

KEEP_ENV = "VISATTN_KEEP_DENORMALS"


def flush_denormals(enabled: bool = True) -> bool:
    """Flush subnormal floats to zero in this thread and the threads it starts from now on
    (``torch.set_flush_denormal``); ``enabled=False`` keeps them. Returns False where the CPU
    cannot (no SSE3 denormals-are-zero), True otherwise."""
    return bool(torch.set_flush_denormal(enabled))


def keep_denormals_requested() -> bool:
    """True when the environment asks to keep subnormal floats (``VISATTN_KEEP_DENORMALS`` set
    to anything but "" or "0")."""
    return os.environ.get(KEEP_ENV, "").strip() not in ("", "0")


def apply_import_default() -> None:
    """What ``import visattn`` does: flush, unless ``VISATTN_KEEP_DENORMALS`` asks to keep."""
    if not keep_denormals_requested():
        flush_denormals(True)


apply_import_default()
