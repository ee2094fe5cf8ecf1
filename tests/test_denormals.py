"""The ``visattn`` program flushes subnormal floats to zero in every thread (issue 19).

Softmax probabilities of far keys fall in float32's subnormal range (below ~1.2e-38), where CPU
arithmetic is up to ~10x slower; the CLI sets ``torch.set_flush_denormal(True)`` before torch
starts its thread pool. Called as a function (``main([...])``, as tests do) it leaves the
process's floating-point mode alone.
"""

from __future__ import annotations

import subprocess
import sys

PROBE = (
    "import sys, torch\n"
    "from visattn.cli import main\n"
    "sys.argv = ['visattn'] + sys.argv[1:]\n"
    "{call}\n"
    "torch.set_num_threads(2)\n"
    "x = torch.full((1 << 16,), 1e-38) * 0.5\n"  # 5e-39: subnormal unless flushed
    "print(int((x == 0).sum()), x.numel())\n"
)


def _zeros(call: str) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(call=call), "list"], capture_output=True, text=True, check=True
    ).stdout.split()
    return int(out[-2]), int(out[-1])


def test_the_program_flushes_subnormals_in_every_thread():
    zeros, n = _zeros("main()")
    assert zeros == n  # all flushed, the elements the pool's other thread computed too


def test_main_called_with_arguments_leaves_subnormals_alone():
    zeros, _ = _zeros("main(['list'])")
    assert zeros == 0
