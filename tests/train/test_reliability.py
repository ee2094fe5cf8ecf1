"""Training never loses data or silently goes wrong: run-folder lock, resume without latest.json,
no overwritten step folders, stale temporary folders removed, validated options and checkpoint
state, a non-finite loss stops the run, metrics are strict JSON, bounded waits under torchrun."""

import errno
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from _tiny_model import ensure_registered, make_color_folder, unregister
from visattn.commands import train_cmd
from visattn.errors import NonFiniteLoss, RunFolderLocked
from visattn.train import TrainConfig, latest_checkpoint, save_checkpoint, train
from visattn.train import checkpoint as ck

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def _unregister_tiny_model():
    yield
    unregister()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_color_folder(tmp_path_factory.mktemp("imgs"))  # 39 train images: 5 steps of 8 per epoch


def _args(data, out, *extra):
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
        "--output",
        str(out),
        "--no-progress",
        *extra,
    ]


class _StopAfter:
    """Simulates a kill right after the checkpoint of optimizer step ``step``."""

    def __init__(self, step):
        self.step = step

    def after_checkpoint(self, trainer, folder):
        if trainer.step == self.step:
            raise KeyboardInterrupt


def _cfg(data, out, **kw):
    base = dict(
        model=ensure_registered(),
        data=data,
        image_size=8,
        epochs=2,
        batch_size=8,
        lr=0.01,
        output=str(out),
        progress=False,
        verbose=False,
        plot=False,
        device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, data):
    """A run stopped after the checkpoint of step 5 (end of epoch 1 of 2)."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(data, out), callbacks=[_StopAfter(5)])
    assert latest_checkpoint(out).name == "step-00000005"
    return out


def _copy(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


# -- data loss ------------------------------------------------------------------------


def test_second_run_on_a_locked_folder_refuses_naming_folder_and_pid(tmp_path, data, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with ck.RunLock(out):  # the first run, still going
        assert train_cmd.main(_args(data, out)) == 2
        err = capsys.readouterr().err
        assert err == (
            f"visattn train: error: run folder {str(out)!r} is in use by another visattn process (pid "
            f"{os.getpid()}, lock {str(out / '.lock')!r}); wait for it to finish or choose another "
            "--output\n"
        )
        assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
    # a lock held by another process
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; sys.path.insert(0, sys.argv[1]);"
            "from visattn.train.checkpoint import RunLock; RunLock(sys.argv[2]).acquire();"
            "print('locked', flush=True); time.sleep(60)",
            str(ROOT / "src"),
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderLocked, match=f"in use by another visattn process \\(pid {holder.pid},"):
            train(_cfg(data, out, epochs=1))
    finally:
        holder.kill()
        holder.wait()
    # released when the holder is gone: the run goes through
    assert train(_cfg(data, out, epochs=1)).final["epoch"] == 1


def test_resume_without_latest_json_uses_newest_complete_step(tmp_path, data, stopped_run):
    run = _copy(stopped_run, tmp_path)
    (run / "checkpoints" / "latest.json").unlink()
    # a newer but incomplete step folder (a save killed before its rename would be a .tmp; this one lost a file)
    (run / "checkpoints" / "step-00000007").mkdir()
    shutil.copy(run / "checkpoints" / "step-00000005" / "model.safetensors", run / "checkpoints" / "step-00000007")
    assert latest_checkpoint(run) == run / "checkpoints" / "step-00000005"
    with pytest.raises(ValueError, match=r"already holds a checkpoint \(step-00000005\); pass --resume"):
        train(_cfg(data, run))
    res = train(_cfg(data, run, resume=True))
    assert [h["epoch"] for h in res.history] == [1, 2] and res.final["step"] == 10
    first = json.loads((stopped_run / "metrics.jsonl").read_text().splitlines()[0])
    assert res.history[0] == first


def test_existing_step_folder_is_never_overwritten(tmp_path):
    m = nn.Linear(2, 2)
    folder = save_checkpoint(tmp_path, m, state={"step": 3})
    (folder / "user-note.txt").write_text("mine")
    before = (folder / "model.safetensors").read_bytes()
    with torch.no_grad():
        m.weight.add_(1)
    with pytest.raises(FileExistsError) as e:
        save_checkpoint(tmp_path, m, state={"step": 3})
    assert e.value.filename == str(folder) and "refusing to overwrite it" in str(e.value)
    assert (folder / "model.safetensors").read_bytes() == before and (folder / "user-note.txt").exists()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if ".tmp-" in p.name] == []


def test_stale_tmp_folders_are_removed_and_a_failed_save_removes_its_own(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    root.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for pid in (dead.pid, os.getpid(), 1):  # dead, ours (an earlier failed save), alive (init: not ours)
        (root / f".step-00000002.tmp-{pid}").mkdir()
        (root / f".step-00000002.tmp-{pid}" / "model.safetensors").write_bytes(b"half")
    save_checkpoint(tmp_path, nn.Linear(2, 2), state={"step": 4})
    assert sorted(p.name for p in root.iterdir()) == [".step-00000002.tmp-1", "latest.json", "step-00000004"]

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck, "save_file", full)
    with pytest.raises(OSError) as e:
        save_checkpoint(tmp_path, nn.Linear(2, 2), state={"step": 6})
    assert e.value.errno == errno.ENOSPC
    assert str(e.value).startswith("[Errno 28] cannot write checkpoint step-00000006 (No space left on device)")
    assert sorted(p.name for p in root.iterdir()) == [".step-00000002.tmp-1", "latest.json", "step-00000004"]


# -- silently wrong ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "opt,value,msg",
    [
        ("--grad-clip", "-1", "expected a finite number > 0, got '-1'"),
        ("--grad-clip", "0", "expected a finite number > 0, got '0'"),
        ("--lr", "inf", "expected a finite number, got 'inf'"),
        ("--lr", "nan", "expected a finite number, got 'nan'"),
        ("--lr", "0", "expected a finite number > 0, got '0'"),
        ("--epochs", "0", "expected an integer >= 1, got '0'"),
        ("--batch-size", "-4", "expected an integer >= 1, got '-4'"),
        ("--keep", "0", "expected an integer >= 1, got '0'"),
        ("--weight-decay", "-0.1", "expected a finite number >= 0, got '-0.1'"),
        ("--save-every", "-1", "expected an integer >= 0, got '-1'"),
        ("--image-size", "8192", "expected an integer in 1..1024 (images are held in memory), got '8192'"),
        ("--dist-timeout", "0", "expected a number of seconds in 1..2592000 (30 days), got '0'"),
        ("--label-smoothing", "1", "expected a number in [0, 1), got '1'"),
        ("--seed", "-1", "expected an integer in 0..4294967295, got '-1'"),  # was "expected non-negative integer"
        ("--seed", "99999999999999999999", "expected an integer in 0..4294967295"),  # was "Overflow when unpacking"
    ],
)
def test_bad_numeric_options_are_refused_by_argparse(tmp_path, data, capsys, opt, value, msg):
    with pytest.raises(SystemExit) as e:
        train_cmd.main(_args(data, tmp_path / "run", opt, value))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"visattn train: error: argument {opt}: {msg}" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "field,value,msg",
    [
        ("grad_clip", -1.0, "grad_clip must be a finite number > 0, got -1.0"),
        ("lr", math.inf, "lr must be a finite number > 0, got inf"),
        ("lr", math.nan, "lr must be a finite number > 0, got nan"),
        ("weight_decay", -1.0, "weight_decay must be a finite number >= 0, got -1.0"),
        ("keep", 0, "keep must be an int >= 1, got 0"),
        ("image_size", 8192, "image_size must be None or an int in 1..1024"),
        ("dist_timeout", 0, "dist_timeout must be a finite number > 0, got 0"),
        ("seed", -1, "seed must be an int in 0..4294967295, got -1"),
    ],
)
def test_config_validation(field, value, msg):
    with pytest.raises(ValueError, match=msg.replace(".", r"\.").replace("(", r"\(")):
        TrainConfig(**{field: value}).validate()


class _PoisonAfter:
    def __init__(self, step):
        self.step = step

    def after_step(self, trainer):
        if trainer.step == self.step:
            with torch.no_grad():
                trainer.model.stem.weight.fill_(math.nan)


def test_non_finite_loss_stops_the_run_before_the_step(tmp_path, data):
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLoss) as e:
        train(_cfg(data, out, save_every=2), callbacks=[_PoisonAfter(3)])
    assert str(e.value) == (
        "the training loss became non-finite (nan) at epoch 1, step 4 (batch 4 of 5); stopped "
        "before that optimizer step. Lower --lr, set --grad-clip or check the data; the last "
        f"good checkpoint is {out / 'checkpoints' / 'step-00000002'}"
    )
    assert latest_checkpoint(out).name == "step-00000002" and not (out / "model.safetensors").exists()


def test_cli_lr_1e9_exits_non_zero_with_message_and_strict_metrics(tmp_path, data, capsys):
    out = tmp_path / "run"
    assert train_cmd.main(_args(data, out, "--lr", "1e9")) == 1
    err = capsys.readouterr().err
    assert err.startswith("visattn train: error: the training loss became non-finite (nan) at epoch 1, step ")
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert (out / "metrics.jsonl").read_text() == ""  # nothing half-written, no bare NaN


def test_metrics_lines_and_curves_are_strict_json_with_nulls(tmp_path):
    from visattn.train.engine import _json_line, plot_curves

    rec = {"epoch": 1, "train_loss": math.nan, "test_loss": math.inf, "test_acc": 0.5, "nested": [1.0, -math.inf]}
    line = _json_line(rec)
    assert line == '{"epoch": 1, "train_loss": null, "test_loss": null, "test_acc": 0.5, "nested": [1.0, null]}'
    json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    hist = [
        {"epoch": 1, "train_loss": None, "test_loss": 1.0, "train_acc": 0.2, "test_acc": None},
        {"epoch": 2, "train_loss": 0.5, "test_loss": 0.7, "train_acc": 0.4, "test_acc": 0.6},
    ]
    plot_curves(hist, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _edit_state(run, edit):
    path = latest_checkpoint(run) / "train_state.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["json"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(meta, tensors)
    save_file(tensors, str(path), metadata={"json": json.dumps(meta)})


def _set(key, value):
    def edit(meta, tensors):
        meta["state"][key] = value

    return edit


def _drop(key):
    def edit(meta, tensors):
        del meta["state"][key]

    return edit


def _shape(meta, tensors):
    k = next(k for k in tensors if k.endswith(".exp_avg"))
    tensors[k] = torch.zeros(3)


def _nan_opt(meta, tensors):
    k = next(k for k in tensors if k.endswith(".exp_avg_sq"))
    tensors[k] = torch.full_like(tensors[k], math.nan)


def _lr(meta, tensors):
    meta["optimizer"]["param_groups"][0]["lr"] = -1


@pytest.mark.parametrize(
    "edit,msg",
    [
        (_set("epoch", -3), "checkpoint field 'epoch' must be an int in 0..2, got -3"),
        (_set("epoch", 10**18), "checkpoint field 'epoch' must be an int in 0..2, got 1000000000000000000"),
        (_set("epoch", "1"), "checkpoint field 'epoch' must be an int in 0..2, got '1'"),
        (_set("step", -5), "checkpoint field 'step' must be an int in 0..10, got -5"),
        (_set("step", 4), "checkpoint field 'step' must be epoch x 5 steps per epoch + batch_in_epoch = 5, got 4"),
        (_set("batch_in_epoch", 2.5), "checkpoint field 'batch_in_epoch' must be an int in 0..5, got 2.5"),
        (_set("running", [1.0, "x", 3.0]), "checkpoint field 'running' must be a list of 3 finite numbers >= 0"),
        (_set("history", []), "checkpoint field 'history' must be a list of 1 epoch records"),
        (_drop("step"), "checkpoint field 'step' is missing"),
        (
            _shape,
            re.compile(
                r"optimizer tensor 'optim\.\d+\.exp_avg' has shape \(3,\), "
                r"parameter \d+ has shape \(8, 3, 3, 3\)"
            ),
        ),
        (_nan_opt, re.compile(r"optimizer tensor 'optim\.\d+\.exp_avg_sq' holds NaN or infinite values")),
        (_lr, "optimizer param_groups[0] field 'lr' must be a finite number >= 0, got -1"),
    ],
)
def test_hand_edited_checkpoint_state_is_refused_naming_the_field(tmp_path, data, stopped_run, capsys, edit, msg):
    run = _copy(stopped_run, tmp_path)
    _edit_state(run, edit)
    assert train_cmd.main(_args(data, run, "--resume")) == 2
    err = capsys.readouterr().err
    assert err.startswith("visattn train: error: ") and "Traceback" not in err
    assert msg.search(err) if isinstance(msg, re.Pattern) else msg in err, err


# -- bounded waits under torchrun ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_frozen_peer_under_torchrun_fails_within_dist_timeout_naming_the_rank(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        str(ROOT / "tests" / "_train_worker.py"),
        "freeze",
        str(tmp_path / "run"),
        "3",
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    assert r.returncode != 0
    line = next(s for s in r.stderr.splitlines() if s.startswith("visattn train: error:"))
    assert line.startswith(
        "visattn train: error: rank 0: a collective with the other processes failed within 3 s "
        "(--dist-timeout): rank 1 stopped answering at step 2 (this rank is at step 3). torch: "
    )


@pytest.mark.slow
def test_under_torchrun_every_rank_stops_when_rank_0_cannot_open_the_run_folder(tmp_path):
    taken = tmp_path / "file"
    taken.write_text("not a folder")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        str(ROOT / "tests" / "_train_worker.py"),
        "freeze",
        str(taken),
        "30",
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    assert r.returncode != 0
    # The two ranks write to one stderr at once: their lines may interleave, so look for each message.
    err = r.stderr
    assert err.count("visattn train: error:") == 2
    assert f"visattn train: error: --output must be a directory, but it is a file: {str(taken)!r}" in err
    assert f"visattn train: error: rank 0 could not open the run folder {str(taken)!r}; see its message" in err
    assert taken.read_text() == "not a folder"


def test_resume_after_a_kill_between_step_rename_and_pointer_write(tmp_path, data):
    # save_every=2: checkpoints at steps 2, 4, 5 (end of epoch 1); stop after the one of step 5
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(data, out, save_every=2), callbacks=[_StopAfter(5)])
    root = out / "checkpoints"
    # the kill came after step-00000005 was renamed into place, before latest.json moved to it
    (root / "latest.json").write_text(
        json.dumps({"dir": "step-00000004", "format": ck.FORMAT, "epoch": 0, "step": 4, "batch_in_epoch": 4})
    )
    assert latest_checkpoint(out) == root / "step-00000005"
    res = train(_cfg(data, out, save_every=2, resume=True))  # used to fail: "step-00000005 already exists"
    assert [h["epoch"] for h in res.history] == [1, 2] and res.final["step"] == 10


def test_resume_with_another_batch_size_names_the_option_not_a_bad_field(tmp_path, data, stopped_run):
    run = _copy(stopped_run, tmp_path)
    # used to blame the checkpoint: "checkpoint field 'step' must be epoch x 10 steps per epoch + ..."
    with pytest.raises(
        ValueError,
        match=r"^cannot resume: the checkpoint was made with other options "
        r"batch_size=8 \(now 4\)$",
    ):
        train(_cfg(data, run, batch_size=4, resume=True))


def test_stale_tmp_files_of_atomic_writes_are_removed(tmp_path):
    # a kill while the final weights, config, metrics, curves or latest.json were being written
    (tmp_path / "checkpoints").mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = [
        ".model.safetensors.tmp-{}",
        ".config.json.tmp-{}",
        ".metrics.jsonl.tmp-{}",
        ".curves.png.tmp-{}.png",
        "checkpoints/.latest.json.tmp-{}",
    ]
    for pid in (dead.pid, 1):  # dead, alive (init: not ours)
        for n in names:
            (tmp_path / n.format(pid)).write_bytes(b"half")
    (tmp_path / ".mine.tmp-1").write_bytes(b"x")  # not visattn's: left alone
    ck.remove_stale_tmp(tmp_path)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == sorted([".mine.tmp-1"] + [n.format(1) for n in names])
