"""torchrun with 2 CPU processes (gloo) equals one process over the same global batch.

The test model has no BatchNorm: with BatchNorm each process would normalise with its own
half-batch statistics, which differ from the global batch's (use SyncBatchNorm for that).
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _tiny_model import ensure_registered, unregister
from _train_worker import SaveGrads, tiny_digits
from visattn.train import TrainConfig, train


@pytest.fixture(autouse=True, scope="module")
def _unregister_tiny_model():
    yield
    unregister()


ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_step(tmp_path):
    ddp_out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        str(ROOT / "tests" / "_train_worker.py"),
        "ddp",
        str(ddp_out),
        "16",
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]

    # One process, global batch 2 x 16 = the 32 images: one optimizer step, as in the DDP run.
    single_out = tmp_path / "single"
    cfg = TrainConfig(
        model=ensure_registered(),
        epochs=1,
        batch_size=32,
        warmup_steps=0,
        output=str(single_out),
        progress=False,
        verbose=False,
        plot=False,
        device="cpu",
        deterministic=True,
        seed=3,
    )
    res = train(cfg, data=tiny_digits(), callbacks=[SaveGrads(str(single_out / "grads.safetensors"))])
    assert res.final["step"] == 1

    g_ddp, g_one = load_file(str(ddp_out / "grads.safetensors")), load_file(str(single_out / "grads.safetensors"))
    assert g_ddp.keys() == g_one.keys() and len(g_one) == 8
    for k in g_one:
        assert float(g_one[k].abs().max()) > 0, k
        torch.testing.assert_close(g_ddp[k], g_one[k], rtol=0, atol=1e-6, msg=k)
    w_ddp, w_one = load_file(str(ddp_out / "model.safetensors")), load_file(str(single_out / "model.safetensors"))
    for k in w_one:
        torch.testing.assert_close(w_ddp[k], w_one[k], rtol=0, atol=1e-6, msg=k)
    # metrics were summed over both processes: 32 training images, 16 test images
    import json

    rec_ddp = json.loads((ddp_out / "metrics.jsonl").read_text())
    rec_one = json.loads((single_out / "metrics.jsonl").read_text())
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        assert abs(rec_ddp[key] - rec_one[key]) < 1e-6, key
    cfg_ddp = json.loads((ddp_out / "config.json").read_text())
    assert cfg_ddp["world_size"] == 2
