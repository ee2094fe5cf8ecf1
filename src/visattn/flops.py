"""FLOP counting with ``torch.utils.flop_counter``, completed for the kernels it misses.

PyTorch's counter has no formula for the CPU flash-attention kernel that
``scaled_dot_product_attention`` dispatches to on CPU, so global attention would count
as zero there. Importing this module registers the standard SDPA formulas for those ops.
FLOPs are 2 x multiply-adds (the counter's convention); papers quoting "FLOPs" usually
mean multiply-adds: divide by 2 (:func:`count_macs`).
"""

from __future__ import annotations

import torch
from torch.utils import flop_counter as _fc
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops", "count_macs"]

_aten = torch.ops.aten


def _register_cpu_sdpa() -> None:
    fwd = getattr(_aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(_aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None and fwd.default not in _fc.flop_registry:

        @_fc.register_flop_formula(fwd)
        def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return _fc.sdpa_flop_count(query_shape, key_shape, value_shape)

    if bwd is not None and bwd.default not in _fc.flop_registry:

        @_fc.register_flop_formula(bwd)
        def _cpu_sdpa_bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return _fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


_register_cpu_sdpa()


def count_flops(fn, *args, **kwargs) -> int:
    """Run ``fn(*args, **kwargs)`` under ``FlopCounterMode`` and return total FLOPs (2 x MACs)."""
    with FlopCounterMode(display=False) as mode:
        fn(*args, **kwargs)
    return int(mode.get_total_flops())


def count_macs(fn, *args, **kwargs) -> int:
    """Multiply-adds (the convention most vision papers call "FLOPs")."""
    return count_flops(fn, *args, **kwargs) // 2
