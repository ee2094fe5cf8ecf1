"""Strict JSON (RFC 8259) for files visattn writes: non-finite floats become ``null``."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["strict"]


def strict(obj: Any) -> Any:
    """``obj`` with every non-finite float (a missing measurement, a NaN loss) replaced by None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj
