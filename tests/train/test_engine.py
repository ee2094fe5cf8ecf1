"""Training engine: schedule, CLI, metrics/plots, and a SIGKILL mid-epoch followed by an exact resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _tiny_model import ensure_registered, make_color_folder, unregister
from visattn.commands import train_cmd
from visattn.train import TrainConfig, latest_checkpoint, lr_factor, train


@pytest.fixture(autouse=True, scope="module")
def _unregister_tiny_model():
    yield
    unregister()


ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "_train_worker.py"


def test_lr_schedule_warmup_then_cosine():
    assert [lr_factor(s, 10, 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 10, 4) == 1.0
    assert abs(lr_factor(7, 10, 4) - 0.5) < 1e-12  # half-way through the cosine
    assert abs(lr_factor(10, 10, 4, min_ratio=0.1) - 0.1) < 1e-12
    assert lr_factor(0, 10, 0) == 1.0


def test_config_errors():
    with pytest.raises(ValueError, match="amp must be one of .*got 'fp8'"):
        TrainConfig(amp="fp8").validate()
    with pytest.raises(ValueError, match="epochs must be an int >= 1, got 0"):
        TrainConfig(epochs=0).validate()
    with pytest.raises(ValueError, match="--amp fp16 needs CUDA"):
        train(TrainConfig(model=ensure_registered(), amp="fp16", device="cpu", output=None, progress=False))


def test_cli_train_writes_metrics_weights_plot_and_learns(tmp_path, capsys):
    data = make_color_folder(tmp_path / "imgs")
    out = tmp_path / "run"
    rc = train_cmd.main(
        [
            "--model",
            ensure_registered(),
            "--data",
            data,
            "--image-size",
            "8",
            "--epochs",
            "3",
            "--batch-size",
            "8",
            "--lr",
            "0.01",
            "--output",
            str(out),
            "--no-progress",
            "--amp",
            "bf16",
            "--attn-kwargs",
            '{"kernel_size": 1}',
        ]
    )
    assert rc == 0
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3] and [r["step"] for r in lines] == [5, 10, 15]  # 39 train / 8
    assert lines[-1]["test_acc"] >= 0.8  # colours are easy; chance is 1/3
    assert lines[-1]["lr"] == 0.0 and all(r["images_per_s"] > 0 for r in lines)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["classes"] == ["class0", "class1", "class2"] and cfg["config"]["attn_kwargs"] == {"kernel_size": 1}
    w = load_file(str(out / "model.safetensors"))
    assert w["mixer.conv.weight"].shape == (8, 8, 1, 1)
    assert "test accuracy" in capsys.readouterr().out
    # a second run into the same folder must not silently overwrite it
    assert train_cmd.main(["--model", ensure_registered(), "--data", data, "--output", str(out), "--no-progress"]) == 2
    assert "pass --resume" in capsys.readouterr().err
    # resuming with other options is refused, naming them
    assert (
        train_cmd.main(
            [
                "--model",
                ensure_registered(),
                "--data",
                data,
                "--image-size",
                "8",
                "--epochs",
                "3",
                "--batch-size",
                "8",
                "--lr",
                "0.5",
                "--output",
                str(out),
                "--no-progress",
                "--attn-kwargs",
                '{"kernel_size": 1}',
                "--resume",
            ]
        )
        == 2
    )
    assert "cannot resume: the checkpoint was made with other options lr=0.01 (now 0.5)" in capsys.readouterr().err


def _args(data: str, out: Path) -> list[str]:
    return [
        "--model",
        ensure_registered(),
        "--data",
        data,
        "--image-size",
        "8",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--lr",
        "0.01",
        "--save-every",
        "3",
        "--deterministic",
        "--seed",
        "1",
        "--output",
        str(out),
        "--no-progress",
    ]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    data = make_color_folder(tmp_path / "imgs")  # 39 train images / batch 8 -> 5 steps per epoch
    # Killed run: blocks after the checkpoint of step 9 (epoch 2, batch 4 of 5), then SIGKILL.
    killed = tmp_path / "killed"
    marker = tmp_path / "ckpt-written"
    # bit-exact needs the same thread count in both processes (conftest sets this one's)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), "cli", "9", str(marker), "--"] + _args(data, killed),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "training subprocess never reached its checkpoint"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    ck = latest_checkpoint(killed)
    meta = json.loads((killed / "checkpoints" / "latest.json").read_text())
    assert ck.name == "step-00000009" and (meta["epoch"], meta["batch_in_epoch"]) == (1, 4)
    assert not (killed / "model.safetensors").exists()  # the run did not finish
    assert len((killed / "metrics.jsonl").read_text().splitlines()) == 1

    # Resume it (in this process) and run the same job uninterrupted.
    assert train_cmd.main(_args(data, killed) + ["--resume"]) == 0
    full = tmp_path / "full"
    assert train_cmd.main(_args(data, full)) == 0

    a, b = load_file(str(killed / "model.safetensors")), load_file(str(full / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma = [json.loads(s) for s in (killed / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(s) for s in (full / "metrics.jsonl").read_text().splitlines()]
    for key in ("epoch", "step", "train_loss", "train_acc", "test_loss", "test_acc", "lr"):
        assert [r[key] for r in ma] == [r[key] for r in mb], key


def test_precise_bn_recomputes_exact_statistics_without_changing_training(tmp_path):
    from visattn.data import load_data, normalize

    data = make_color_folder(tmp_path / "imgs")
    kw = dict(
        model=ensure_registered(),
        model_kwargs={"bn": True},
        data=data,
        image_size=8,
        epochs=1,
        batch_size=8,
        output=None,
        progress=False,
        verbose=False,
        device="cpu",
    )
    plain = train(TrainConfig(**kw))
    precise = train(TrainConfig(precise_bn=2, **kw))
    for (k, a), b in zip(plain.model.state_dict().items(), precise.model.state_dict().values()):
        if "bn.running" not in k and "num_batches" not in k:
            assert torch.equal(a, b), k  # training itself is untouched
    # running stats = average over the first 2 training batches (8 images each) of the batch statistics
    bundle = load_data(data, image_size=8)
    m = precise.model
    with torch.no_grad():
        feats = [
            m.stem(normalize(bundle.train.batch(torch.arange(i, i + 8))[0], bundle.mean, bundle.std)) for i in (0, 8)
        ]
    mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(m.bn.running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m.bn.running_var, var, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(plain.model.bn.running_var, var, rtol=1e-2)


def test_trains_on_the_pytest_device(tmp_path, device):
    """`pytest --device cuda` trains on the GPU: the model ends there and its saved weights load back equal."""
    if device.index not in (None, 0):
        pytest.skip("the engine picks cuda:LOCAL_RANK (0 in one process)")
    import visattn

    data = make_color_folder(tmp_path / "data")
    res = train(
        TrainConfig(
            model=ensure_registered(),
            data=data,
            epochs=1,
            batch_size=8,
            output=str(tmp_path / "run"),
            device=device.type,
            progress=False,
            plot=False,
        )
    )
    assert {p.device.type for p in res.model.parameters()} == {device.type}
    assert [r["step"] for r in res.history] == [5]  # 39 training images / batch 8
    fresh = visattn.create_model(ensure_registered(), num_classes=res.num_classes)
    visattn.load_weights(fresh, tmp_path / "run" / "model.safetensors")
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, res.model.state_dict()[k].cpu()), k
