"""Reliability, round 3 (issue 21), training side: a finished run is never replaced, rotation
removes only the run's own checkpoints, the lock file is never followed, a closed stdout does not
stop a run, a full disk (a real, small tmpfs) ends in one line, and user mistakes (an empty
--output, a segmentation model without --task segment, an absurd --dist-timeout, a last batch of
one image under BatchNorm) are refused or handled before they cost a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

from _tiny_model import ensure_registered, make_color_folder, unregister
from visattn.cli import main
from visattn.train import TrainConfig, latest_checkpoint, save_checkpoint, train
from visattn.train import checkpoint as ck

ROOT = Path(__file__).resolve().parents[2]
# The CLI with the tiny test model registered, for tests that need a real process (pipes, mounts).
_CLI = (
    "import sys; sys.path.insert(0, {tests!r}); from _tiny_model import ensure_registered; "
    "ensure_registered(); from visattn.cli import main; sys.exit(main(sys.argv[1:]))"
).format(tests=str(ROOT / "tests"))


@pytest.fixture(autouse=True, scope="module")
def _unregister_tiny_model():
    yield
    unregister()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_color_folder(tmp_path_factory.mktemp("imgs"))  # 39 train images: 5 steps of 8 per epoch


def _argv(data, out, *extra, epochs=1):
    return [
        "train",
        "--model",
        ensure_registered(),
        "--data",
        data,
        "--image-size",
        "8",
        "--epochs",
        str(epochs),
        "--batch-size",
        "8",
        "--output",
        str(out),
        "--no-progress",
        *extra,
    ]


def _cfg(data, out, **kw) -> TrainConfig:
    base = dict(model=ensure_registered(), data=data, image_size=8, epochs=1, batch_size=8, output=out)
    base.update(progress=False, verbose=False, plot=False, device="cpu")
    return TrainConfig(**{**base, **kw})


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("visattn train: error: "), err
    return lines[0][len("visattn train: error: ") :]


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")


# -- a finished run is never replaced ------------------------------------------------------------


def test_a_new_run_into_a_finished_run_folder_without_checkpoints_is_refused(tmp_path, data, capsys):
    out = tmp_path / "run"
    assert main(_argv(data, out)) == 0
    capsys.readouterr()
    shutil.rmtree(out / "checkpoints")  # used to be enough for a new run to replace every result
    before = {n: (out / n).read_bytes() for n in ("model.safetensors", "metrics.jsonl", "config.json", "curves.png")}
    for extra in ((), ("--resume",)):
        assert main(_argv(data, out, *extra, "--seed", "5")) == 2
        msg = _one_error_line(capsys.readouterr().err)
        assert msg.startswith(f"{str(out)!r} holds a finished or started run (config.json, curves.png, ")
        assert "--overwrite to replace it" in msg
    assert {n: (out / n).read_bytes() for n in before} == before
    # --overwrite replaces it; a file of the user's in the folder stays
    (out / "notes.txt").write_text("mine")
    assert main(_argv(data, out, "--overwrite", "--seed", "5")) == 0
    assert json.loads((out / "config.json").read_text())["config"]["seed"] == 5
    assert (out / "notes.txt").read_text() == "mine"
    capsys.readouterr()
    assert main(_argv(data, out, "--overwrite", "--resume")) == 2
    assert _one_error_line(capsys.readouterr().err) == "--resume and --overwrite exclude each other; give one"


def test_a_run_with_checkpoints_names_both_ways_out(tmp_path, data):
    out = tmp_path / "run"
    train(_cfg(data, str(out)))
    with pytest.raises(ValueError, match=r"already holds a checkpoint \(step-00000005\); pass --resume .*--overwrite"):
        train(_cfg(data, str(out)))
    res = train(_cfg(data, str(out), overwrite=True))
    assert res.final["step"] == 5 and sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "latest.json",
        "step-00000005",
    ]


# -- rotation removes only the run's own checkpoints ------------------------------------------------


def test_rotation_removes_only_the_step_folders_the_run_wrote(tmp_path):
    root = tmp_path / "checkpoints"
    root.mkdir()
    (root / "step-00000020.bak").mkdir()  # the user's copy
    (root / "step-00000020.bak" / "note.txt").write_text("mine")
    (root / "step-00000001").mkdir()  # a folder of the same shape that this run did not write
    m = nn.Linear(2, 2)
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, m, state={"step": step}, keep=2)
    assert sorted(p.name for p in root.iterdir()) == [
        "latest.json",
        "step-00000001",
        "step-00000020",
        "step-00000020.bak",
        "step-00000030",
    ]
    assert json.loads((root / "latest.json").read_text())["written"] == ["step-00000020", "step-00000030"]
    # a pointer that names a folder outside the checkpoints is not trusted for deletion
    info = json.loads((root / "latest.json").read_text())
    info["written"] = ["../important", "step-00000020.bak", "step-00000030"]
    (root / "latest.json").write_text(json.dumps(info))
    (tmp_path / "important").mkdir()
    save_checkpoint(tmp_path, m, state={"step": 40}, keep=1)
    assert (tmp_path / "important").is_dir() and (root / "step-00000020.bak" / "note.txt").is_file()
    assert not (root / "step-00000030").exists() and latest_checkpoint(tmp_path) == root / "step-00000040"


def test_resume_does_not_take_a_users_step_copy_for_a_broken_checkpoint(tmp_path, data):
    out = tmp_path / "run"
    (out / "checkpoints" / "step-00000099.bak").mkdir(parents=True)  # not a step folder
    res = train(
        _cfg(data, str(out), epochs=2, resume=True)
    )  # used to refuse: "holds step folders but none is complete"
    assert res.final["step"] == 10 and (out / "checkpoints" / "step-00000099.bak").is_dir()


# -- the lock file is never followed -------------------------------------------------------------


def test_a_symlinked_lock_file_is_refused_and_its_target_kept(tmp_path, data, capsys):
    out = tmp_path / "run"
    out.mkdir()
    precious = tmp_path / "precious.txt"
    precious.write_text("do not truncate")
    (out / ".lock").symlink_to(precious)
    assert main(_argv(data, out)) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        f"the run folder's lock {str(out / '.lock')!r} is a symbolic link, not a regular file; "
        "refusing to follow it (remove it if no run uses the folder)"
    )
    assert precious.read_text() == "do not truncate"
    (out / ".lock").unlink()
    os.mkfifo(out / ".lock")  # anything but a regular file
    with pytest.raises(ValueError, match=r"lock .* is a FIFO, not a regular file"):
        ck.RunLock(out).acquire()


# -- a closed stdout does not stop a run ------------------------------------------------------------


def test_a_closed_stdout_does_not_stop_training_and_the_log_is_in_the_run_folder(tmp_path, data):
    out = tmp_path / "run"
    p = subprocess.Popen(
        [sys.executable, "-c", _CLI, *_argv(data, out, epochs=3)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    p.stdout.close()  # `visattn train ... | head`: the reader goes away
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 0, err  # was 141 with nothing saved
    assert err == ""
    assert (out / "model.safetensors").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) == 3
    log = (out / "train.log").read_text().splitlines()
    assert [s.split(":")[0] for s in log if s.startswith("epoch")] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]


def test_an_empty_output_is_refused(tmp_path, data, capsys):
    with pytest.raises(SystemExit):
        main(_argv(data, "", epochs=1))
    assert "argument --output/-o: expected a folder name, got ''" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"output must be None \(write nothing\) or a folder name, got ''"):
        TrainConfig(output="").validate()


# -- a full disk ends in one line --------------------------------------------------------------------


def _mount_cmd(mnt: Path, size: str) -> list[str] | None:
    """A command prefix that runs the rest in a private mount namespace with a tmpfs of ``size``
    on ``mnt`` (root, or an unprivileged user namespace); None where this machine allows neither."""
    if shutil.which("unshare") is None:
        return None
    for flags in ("-m", "-rm"):
        probe = subprocess.run(
            ["unshare", flags, "sh", "-c", f"mount -t tmpfs -o size={size} tmpfs {mnt} && touch {mnt}/x"],
            capture_output=True,
        )
        if probe.returncode == 0:
            return ["unshare", flags, "sh", "-c", f'mount -t tmpfs -o size={size} tmpfs {mnt} && exec "$@"', "sh"]
    return None


def test_disk_full_during_a_checkpoint_on_a_real_small_filesystem(tmp_path, data):
    mnt = tmp_path / "small"
    mnt.mkdir()
    prefix = _mount_cmd(mnt, "16k")  # 4 pages: lock, log and metrics fit, the first checkpoint does not
    if prefix is None:
        pytest.skip("cannot mount a tmpfs here (neither root nor unprivileged user namespaces)")
    r = subprocess.run(
        [*prefix, sys.executable, "-c", _CLI, *_argv(data, mnt / "run")],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert r.returncode == 2, r.stderr  # was a SafetensorError traceback
    msg = _one_error_line(r.stderr)
    assert msg.startswith(
        f"cannot write checkpoint step-00000005 (No space left on device): "
        f"'{mnt / 'run' / 'checkpoints' / '.step-00000005.tmp-'}"
    ), msg


# -- user mistakes: refused before the work -----------------------------------------------------------


def test_a_segmentation_model_without_task_segment_is_refused_before_loading_data(tmp_path, capsys, monkeypatch):
    import visattn.train.engine as engine

    monkeypatch.setattr(engine, "load_data", lambda *a, **k: pytest.fail("data loaded before the model was checked"))
    assert main(["train", "--model", "fpn_resnet_tiny", "--epochs", "1", "-o", str(tmp_path / "r")]) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        "'fpn_resnet_tiny' is a segment model, not a classify model; train it with --task segment"
    )


@pytest.mark.parametrize("value", ["0.001", "1e300"])
def test_an_absurd_dist_timeout_is_refused_by_argparse(tmp_path, data, capsys, value):
    with pytest.raises(SystemExit):
        main(_argv(data, tmp_path / "r", "--dist-timeout", value))
    err = capsys.readouterr().err
    assert f"argument --dist-timeout: expected a number of seconds in 1..2592000 (30 days), got {value!r}" in err
    with pytest.raises(ValueError, match=r"dist_timeout must be a number of seconds in 1\.\.2592000"):
        TrainConfig(dist_timeout=float(value)).validate()


@pytest.mark.slow  # a process that waits --dist-timeout for a peer that never comes
def test_a_process_group_that_does_not_form_within_dist_timeout_is_one_line(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = (
        "import sys; from visattn.cli import run_command; from visattn.train import distributed as D; "
        "sys.exit(run_command('train', lambda _: D.setup('cpu', 1.0), None))"
    )
    env = dict(_env(), WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr  # was a DistStoreError traceback from init_process_group
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith(
        f"visattn train: error: rank 0: the 2 processes did not all join the process group at 127.0.0.1:{port} "
        "within 1 s (--dist-timeout): "
    )


def test_a_last_batch_of_one_image_under_batchnorm_is_merged_into_the_one_before(tmp_path, data):
    # 39 training images in batches of 38: the last batch holds one image, and resnet_tiny's last
    # BatchNorm at 8x8 input sees a 1x1 map: "Expected more than 1 value per channel when training"
    res = train(_cfg(data, None, model="resnet_tiny", batch_size=38, precise_bn=2))
    assert res.final["step"] == 1 and res.final["train_acc"] is not None
    from visattn.data import EpochBatches, load_data

    b = load_data(data, 8)
    batches = EpochBatches(b.train, 38, 0, 0, merge_single_last=True)
    assert len(batches) == 1 and batches.get(0)[0].shape[0] == 39
    assert len(EpochBatches(b.train, 38, 0, 0)) == 2  # models without BatchNorm keep it


def test_the_run_log_holds_what_was_printed(tmp_path, data):
    out = tmp_path / "run"
    train(_cfg(data, str(out), epochs=2))
    lines = (out / "train.log").read_text().splitlines()
    assert [s.split(":")[0] for s in lines if s.startswith("epoch")] == ["epoch 1/2", "epoch 2/2"]
