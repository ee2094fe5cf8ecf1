"""``import visattn`` flushes subnormal floats to zero in every thread (issue 19).

Softmax probabilities of far keys fall in float32's subnormal range (below ~1.2e-38), where CPU
arithmetic is many times slower (relpos' training step: 5.8x ``mhsa`` kept, 1.3x flushed).
Importing visattn sets ``torch.set_flush_denormal(True)`` before torch starts its thread pool,
so the pool's threads take the mode too; ``VISATTN_KEEP_DENORMALS=1`` keeps them, and
``visattn.flush_denormals`` sets either mode explicitly. Each probe runs in a fresh process,
since the mode is per thread and inherited when a thread starts.
"""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = (
    "import sys, torch\n"
    "{setup}\n"
    "torch.set_num_threads(2)\n"
    "x = torch.full((1 << 16,), 1e-38) * 0.5\n"  # 5e-39: subnormal unless flushed
    "print(int((x == 0).sum()), x.numel())\n"
)


def _zeros(setup: str, **env: str) -> tuple[int, int]:
    full_env = {k: v for k, v in os.environ.items() if k != "VISATTN_KEEP_DENORMALS"} | env
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(setup=setup)], capture_output=True, text=True, check=True, env=full_env
    ).stdout.split()
    return int(out[-2]), int(out[-1])


def test_plain_torch_keeps_subnormals():  # the probe can fail: without visattn nothing flushes
    assert _zeros("pass")[0] == 0


def test_import_visattn_flushes_subnormals_in_every_thread():
    zeros, n = _zeros("import visattn")
    assert zeros == n  # all flushed, the elements the pool's other thread computed too


def test_the_program_flushes_subnormals():
    zeros, n = _zeros("from visattn.cli import main\nmain(['list'])")
    assert zeros == n


def test_environment_keeps_subnormals():
    assert _zeros("import visattn", VISATTN_KEEP_DENORMALS="1")[0] == 0
    zeros, n = _zeros("import visattn", VISATTN_KEEP_DENORMALS="0")
    assert zeros == n


def test_flush_denormals_false_keeps_them():
    assert _zeros("import visattn\nvisattn.flush_denormals(False)")[0] == 0
