"""visattn._io: the one atomic-write helper (temporary file beside the target, rename, cleanup on
error), and the one weights writer (run folders and checkpoints write through save_weights)."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch
from torch import nn

from visattn import _io


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_text_and_bytes_replace_the_file_and_leave_no_temporary(tmp_path):
    p = tmp_path / "a.json"
    p.write_text("old")
    _io.atomic_write_text(p, '{"x": 1}')
    assert p.read_text() == '{"x": 1}'
    _io.atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01", fsync=True)
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert _names(tmp_path) == ["a.json", "b.bin"]


def test_a_failed_write_keeps_the_old_file_removes_its_temporary_and_names_the_target(tmp_path):
    p = tmp_path / "curves.png"
    p.write_bytes(b"old")
    seen = []
    with pytest.raises(OSError) as e, _io.atomic_path(p, suffix=".png") as tmp:
        seen.append(tmp.name)
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # write() fails: no file name
    assert seen == [f".curves.png.tmp-{os.getpid()}.png"]  # the name remove_stale_tmp knows
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(p))
    assert p.read_bytes() == b"old" and _names(tmp_path) == ["curves.png"]

    with pytest.raises(KeyError), _io.atomic_path(p) as tmp:  # any error: cleaned up, re-raised as is
        tmp.write_bytes(b"half")
        raise KeyError("x")
    assert _names(tmp_path) == ["curves.png"]


def test_atomic_folder_renames_when_complete_and_removes_itself_on_error(tmp_path):
    final = tmp_path / "step-00000002"
    with _io.atomic_folder(final) as tmp:
        assert tmp.name == f".step-00000002.tmp-{os.getpid()}"
        (tmp / "a").write_text("1")
    assert _names(tmp_path) == ["step-00000002"] and (final / "a").read_text() == "1"

    with pytest.raises(RuntimeError, match="boom"), _io.atomic_folder(tmp_path / "step-00000004") as tmp:
        (tmp / "a").write_text("1")
        raise RuntimeError("boom")
    assert _names(tmp_path) == ["step-00000002"]

    with pytest.raises(OSError), _io.atomic_folder(final) as tmp:  # an existing folder is never replaced
        (tmp / "b").write_text("2")
    assert _names(final) == ["a"] and _names(tmp_path) == ["step-00000002"]


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)
        self.b.weight = self.a.weight


def test_checkpoint_and_run_weights_are_written_by_save_weights(tmp_path):
    from safetensors import safe_open

    import visattn
    from visattn.train.checkpoint import load_weights as load_run_weights
    from visattn.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    m = _Tied()
    folder = save_checkpoint(tmp_path, m, state={"step": 3})
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        keys, meta = sorted(f.keys()), f.metadata()
    # save_weights' layout: the tied weight stored once, its second name recorded as an alias
    assert keys == ["a.bias", "a.weight", "b.bias"]
    assert json.loads(meta["visattn.aliases"]) == {"b.weight": "a.weight"}
    assert meta["format"] == "visattn-checkpoint-1"
    assert _names(folder) == ["model.safetensors", "train_state.safetensors"]
    m2 = _Tied()
    load_run_weights(m2, tmp_path)  # a run folder resolves to its latest checkpoint
    assert m2.b.weight is m2.a.weight and torch.equal(m2.a.weight, m.a.weight) and torch.equal(m2.b.bias, m.b.bias)

    # the old layout (safetensors.torch.save_model, used by runs before the one writer) still loads
    from safetensors.torch import save_model

    save_model(m, str(tmp_path / "old.safetensors"))
    m3 = _Tied()
    visattn.load_weights(m3, tmp_path / "old.safetensors")
    assert torch.equal(m3.a.weight, m.a.weight) and torch.equal(m3.b.bias, m.b.bias)


def test_checkpoints_and_run_metadata_are_flushed_to_disk(tmp_path, monkeypatch):
    # fsync where the writers before visattn._io had it: every checkpoint file, the checkpoint
    # folder and its parent, latest.json and its folder; run metadata (atomic_write_text's default)
    from visattn.train.checkpoint import save_checkpoint

    files, dirs = [], []
    monkeypatch.setattr(_io, "fsync_file", lambda p: files.append(os.path.basename(p)))
    monkeypatch.setattr(_io, "fsync_dir", lambda p: dirs.append(os.path.basename(os.path.normpath(p))))
    m = _Tied()
    save_checkpoint(tmp_path, m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1), state={"step": 1})
    assert sorted(files) == sorted(["model.safetensors", "train_state.safetensors", f".latest.json.tmp-{os.getpid()}"])
    assert dirs == [f".step-00000001.tmp-{os.getpid()}", "checkpoints", "checkpoints"]
    files.clear(), dirs.clear()
    _io.atomic_write_text(tmp_path / "config.json", "{}")
    assert (files, dirs) == ([f".config.json.tmp-{os.getpid()}"], [tmp_path.name])
    files.clear(), dirs.clear()
    _io.atomic_write_text(tmp_path / "bench.json", "{}", fsync=False)  # results: no fsync, as before
    assert (files, dirs) == ([], [])
