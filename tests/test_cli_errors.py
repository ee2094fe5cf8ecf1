"""User mistakes and environment faults end as one line `visattn <command>: error: ...` with exit
code 2 (no traceback); Ctrl-C ends with 130; real bugs keep their traceback. The library draws on
matplotlib Figures and never switches the caller's backend."""

from __future__ import annotations

import errno
import os
import pathlib
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest

from _tiny_model import ensure_registered, make_color_folder, unregister
from visattn.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _unregister_tiny_model():
    yield
    unregister()


def _one_error_line(err: str, command: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"visattn {command}: error: ")
    return lines[0][len(f"visattn {command}: error: ") :]


def _argparse_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return next(s for s in err.splitlines() if ": error: " in s)


# -- the handler itself ---------------------------------------------------------------------


def test_handler_maps_user_errors_interrupts_and_keeps_tracebacks_for_bugs(capsys):
    from visattn.cli import run_command

    def raiser(exc):
        def f(_):
            raise exc

        return f

    assert run_command("x", raiser(ValueError("bad value")), None) == 2
    assert capsys.readouterr().err == "visattn x: error: bad value\n"
    assert run_command("x", raiser(PermissionError(errno.EACCES, "Permission denied", "/ro/run")), None) == 2
    assert capsys.readouterr().err == "visattn x: error: Permission denied: '/ro/run'\n"
    assert run_command("x", raiser(TypeError("multi\nline")), None) == 2
    assert capsys.readouterr().err == "visattn x: error: multi line\n"
    assert run_command("x", raiser(KeyboardInterrupt()), None) == 130
    assert capsys.readouterr().err == "visattn x: interrupted\n"
    with pytest.raises(ZeroDivisionError):  # a bug: the traceback stays
        run_command("x", lambda _: 1 / 0, None)


def test_real_entry_point_prints_one_line_and_exit_2(tmp_path):
    f = tmp_path / "taken"
    f.write_text("x")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "visattn.cli",
            "bench",
            "-m",
            "conv",
            "-r",
            "4",
            "--no-progress",
            "--min-time",
            "0",
            "-o",
            str(f),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1"),
    )
    assert r.returncode == 2
    assert r.stderr == (
        f"visattn bench: error: --output must be a directory (results go to bench.json and "
        f"bench.png inside it), but it is a file: {str(f)!r}\n"
    )
    assert r.stdout == "" and f.read_text() == "x"


# -- bench -----------------------------------------------------------------------------------


def test_bench_bad_device_and_threads_fail_in_argparse(capsys):
    assert _argparse_error(capsys, ["bench", "--device", "banana"]) == (
        "visattn bench: error: argument --device: expected a device such as 'cpu', 'cuda' or 'cuda:0', got 'banana'"
    )
    assert _argparse_error(capsys, ["bench", "--threads", "-1"]) == (
        "visattn bench: error: argument --threads: expected an integer >= 1, got '-1'"
    )
    if not __import__("torch").cuda.is_available():
        assert _argparse_error(capsys, ["bench", "--device", "cuda"]) == (
            "visattn bench: error: argument --device: 'cuda' was given but CUDA is not available here (use 'cpu')"
        )


def test_bench_output_is_checked_before_measuring(tmp_path, capsys, monkeypatch):
    import visattn.commands.bench_cmd as bench_cli

    calls = []
    monkeypatch.setattr(bench_cli, "bench_case", lambda *a, **k: calls.append(a))
    taken = tmp_path / "file"
    taken.write_text("keep me")
    assert main(["bench", "-m", "conv", "-r", "4", "--no-progress", "-o", str(taken)]) == 2
    assert _one_error_line(capsys.readouterr().err, "bench").endswith(f"but it is a file: {str(taken)!r}")
    (tmp_path / "out" / "bench.json").mkdir(parents=True)
    assert main(["bench", "-m", "conv", "-r", "4", "--no-progress", "-o", str(tmp_path / "out")]) == 2
    assert _one_error_line(capsys.readouterr().err, "bench") == (
        f"a directory is in the way of a result file: {str(tmp_path / 'out' / 'bench.json')!r}"
    )
    assert calls == [] and taken.read_text() == "keep me"


# -- train -----------------------------------------------------------------------------------


def _train(data, out, *extra):
    return [
        "train",
        "--model",
        ensure_registered(),
        "--data",
        data,
        "--image-size",
        "8",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--output",
        str(out),
        "--no-progress",
        *extra,
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_color_folder(tmp_path_factory.mktemp("imgs"))


def test_train_output_that_is_a_file(tmp_path, data, capsys):
    f = tmp_path / "out.txt"
    f.write_text("notes")
    assert main(_train(data, f)) == 2
    assert _one_error_line(capsys.readouterr().err, "train") == (
        f"--output must be a directory, but it is a file: {str(f)!r}"
    )
    assert f.read_text() == "notes"


def test_train_read_only_output(tmp_path, data, capsys, monkeypatch):
    ro = tmp_path / "ro"
    real_mkdir = pathlib.Path.mkdir

    def mkdir(self, *a, **k):  # a read-only parent (chmod does not stop root, so simulate it)
        if self == ro / "run":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    assert main(_train(data, ro / "run")) == 2
    assert _one_error_line(capsys.readouterr().err, "train") == f"Permission denied: {str(ro / 'run')!r}"


def test_train_disk_full_during_checkpoint(tmp_path, data, capsys, monkeypatch):
    import visattn.train.checkpoint as ck

    def full(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ck, "save_file", full)
    out = tmp_path / "run"
    assert main(_train(data, out)) == 2
    msg = _one_error_line(capsys.readouterr().err, "train")
    assert msg.startswith(
        f"cannot write checkpoint step-00000005 (No space left on device): "
        f"'{out / 'checkpoints' / '.step-00000005.tmp-'}"
    )
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == []  # the half-written folder is gone


def test_train_corrupt_jpeg_is_named(tmp_path, capsys):
    make_color_folder(tmp_path / "imgs")
    bad = tmp_path / "imgs" / "class1" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 20)
    (tmp_path / "imgs" / "class2" / "._0.png").write_bytes(b"\x00\x05\x16\x07 resource fork")  # skipped
    assert main(_train(f"folder:{tmp_path / 'imgs'}", tmp_path / "run")) == 2
    msg = _one_error_line(capsys.readouterr().err, "train")
    assert msg.startswith(f"cannot read 1 of 49 image file(s): {bad} (")


def test_train_image_size_8192_and_negative_numbers(tmp_path, data, capsys):
    assert _argparse_error(capsys, _train(data, tmp_path / "r", "--image-size", "8192")) == (
        "visattn train: error: argument --image-size: expected an integer in 1..1024 (images are held in memory), "
        "got '8192'"
    )
    assert _argparse_error(capsys, _train(data, tmp_path / "r", "--grad-clip", "-1")) == (
        "visattn train: error: argument --grad-clip: expected a finite number > 0, got '-1'"
    )
    assert not (tmp_path / "r").exists()


def test_train_keyboard_interrupt_exits_130(tmp_path, data, capsys, monkeypatch):
    import visattn.train.engine as engine

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine.Trainer, "evaluate", interrupted)
    assert main(_train(data, tmp_path / "run")) == 130
    assert capsys.readouterr().err == "visattn train: interrupted\n"
    from visattn.train.checkpoint import RunLock

    assert (tmp_path / "run" / ".lock").read_text() == str(os.getpid())  # the file stays, the lock is released:
    with RunLock(tmp_path / "run"):  # taking it again succeeds
        pass


# -- viz ---------------------------------------------------------------------------------------


def test_viz_out_directory_writes_viz_png_inside_and_prints_it(tmp_path, capsys):
    img = tmp_path / "img.png"
    from PIL import Image

    Image.new("RGB", (16, 16), (100, 50, 200)).save(img)
    d = tmp_path / "figs"
    d.mkdir()
    argv = ["viz", "conv", "--image", str(img), "--dim", "4", "--size", "8"]
    assert main(argv + ["--out", str(d)]) == 0
    assert capsys.readouterr().out == f"{d / 'viz.png'}\n"
    assert (d / "viz.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not Path(f"{d}.png").exists()
    assert main(argv + ["--out", str(tmp_path / "new") + "/"]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'new' / 'viz.png'}\n"
    assert main(argv + ["--out", str(tmp_path / "plot")]) == 2
    assert _one_error_line(capsys.readouterr().err, "viz") == (
        f"--out must be a .png file or a directory, got {str(tmp_path / 'plot')!r} (for a new directory end it "
        f"with '/': {str(tmp_path / 'plot') + '/'!r})"
    )
    assert not (tmp_path / "plot.png").exists() and not (tmp_path / "plot").exists()


# -- no global state ----------------------------------------------------------------------------


@pytest.fixture
def pdf_backend():
    before = matplotlib.get_backend()
    matplotlib.use("pdf")
    yield
    matplotlib.use(before)


def test_plots_do_not_switch_the_matplotlib_backend(tmp_path, pdf_backend):
    import numpy as np

    from visattn.bench.core import BenchResult
    from visattn.bench.report import write_plot
    from visattn.train import plot_curves
    from visattn.viz import LayerMaps, draw_grid

    hist = [{"epoch": 1, "train_loss": 1.0, "test_loss": 1.1, "train_acc": 0.3, "test_acc": 0.2}]
    plot_curves(hist, tmp_path / "c.png")
    r = BenchResult("conv", "conv", {}, 8, 64, 4, 1, fwd_ms=1.0, fwdbwd_ms=2.0, mem_train_mib=1.0)
    write_plot([r], tmp_path / "b.png")
    lm = LayerMaps("m", "conv", "gradient", np.ones((1, 4, 4)), (4, 4), (1, 1))
    draw_grid(np.zeros((8, 8, 3), np.uint8), [lm], (2, 2), str(tmp_path / "v.png"))
    assert matplotlib.get_backend() == "pdf"
    for f in ("c.png", "b.png", "v.png"):
        assert (tmp_path / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f


def test_train_disk_full_on_metrics_names_the_file(tmp_path, data, capsys, monkeypatch):
    import builtins

    real_open = builtins.open
    metrics = tmp_path / "run" / "metrics.jsonl"

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fake_open(file, mode="r", *a, **k):
        f = real_open(file, mode, *a, **k)
        return Full(f) if str(file) == str(metrics) and mode == "a" else f

    monkeypatch.setattr(builtins, "open", fake_open)
    assert main(_train(data, tmp_path / "run")) == 2
    assert _one_error_line(capsys.readouterr().err, "train") == (
        f"cannot append to the metrics file (No space left on device): {str(metrics)!r}"
    )


def test_viz_and_train_leave_the_callers_rng_alone(tmp_path, data):
    import torch

    from visattn.train import TrainConfig, train
    from visattn.viz import visualize

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    visualize("conv", out=str(tmp_path / "v.png"), image=None, dim=4, size=8, seed=5)
    train(
        TrainConfig(
            model=ensure_registered(),
            data=data,
            image_size=8,
            epochs=1,
            batch_size=8,
            output=None,
            progress=False,
            verbose=False,
            device="cpu",
            seed=7,
        )
    )
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.slow
def test_output_into_a_closed_pipe_is_not_reported_as_an_error():
    # `visattn info resnet50 | head -0`: used to print "visattn info: error: [Errno 32] Broken pipe"
    p = subprocess.Popen(
        [sys.executable, "-m", "visattn.cli", "info", "resnet50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1"),
    )
    p.stdout.close()  # the reader goes away before the command writes
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141
    assert err == ""
