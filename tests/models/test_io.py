"""save_weights / load_weights: round trip, ties, atomicity, clear errors."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from torch import nn

import visattn
from visattn.models import ExternalAttentionHead


def small():
    return visattn.create_model("eamlp_7", num_classes=5, **visattn.registry.model_entry("eamlp_7").test_kwargs)


def test_round_trip_gives_identical_output(tmp_path):
    torch.manual_seed(0)
    a = small().eval()
    torch.manual_seed(1)
    b = small().eval()
    x = torch.randn(2, 3, 32, 32)
    assert not torch.equal(a(x), b(x))
    path = tmp_path / "w.safetensors"
    visattn.save_weights(a, path)
    res = visattn.load_weights(b, path)
    assert res.missing == [] and res.unexpected == []
    assert torch.equal(a(x), b(x))


def test_tied_parameters_are_stored_once_and_stay_tied(tmp_path):
    from safetensors import safe_open

    a = ExternalAttentionHead(8, memory_size=4, tie_memories=True)
    path = str(tmp_path / "h.safetensors")
    visattn.save_weights(a, path)
    with safe_open(path, "pt") as f:
        keys = set(f.keys())
    assert "attention.memory_key" in keys and "attention.memory_value" not in keys
    b = ExternalAttentionHead(8, memory_size=4, tie_memories=True)
    visattn.load_weights(b, path)
    assert torch.equal(b.memory_key, a.memory_key) and b.memory_value is b.memory_key
    # An untied model reads the tied file with strict=False (M_v is not in it) and starts
    # with M_v = M_k, as the authors' code does; strict loading names the missing key.
    c = ExternalAttentionHead(8, memory_size=4)
    with pytest.raises(ValueError, match=r"missing from the file \(1\): attention.memory_value"):
        visattn.load_weights(c, path)
    assert visattn.load_weights(c, path, strict=False).missing == ["attention.memory_value"]
    assert torch.equal(c.memory_value, a.memory_key) and c.memory_value is not c.memory_key


def test_loads_files_written_by_safetensors_save_model(tmp_path):
    # visattn.train checkpoints use safetensors.torch.save_model, which drops tied duplicates
    # and records them in the metadata.
    from safetensors.torch import save_model

    a = ExternalAttentionHead(8, memory_size=4, tie_memories=True)
    path = str(tmp_path / "m.safetensors")
    save_model(a, path)
    b = ExternalAttentionHead(8, memory_size=4, tie_memories=True)
    assert visattn.load_weights(b, path) == ([], [])
    assert torch.equal(b.memory_key, a.memory_key) and b.memory_value is b.memory_key


def test_overlapping_views_are_saved_as_copies(tmp_path):
    class Views(nn.Module):
        def __init__(self):
            super().__init__()
            base = torch.arange(12.0)
            self.register_buffer("first", base[:6])
            self.register_buffer("second", base[6:])

    m = Views()
    path = tmp_path / "v.safetensors"
    visattn.save_weights(m, path)
    n = Views()
    n.first.zero_(), n.second.zero_()
    visattn.load_weights(n, path)
    assert torch.equal(n.first, torch.arange(6.0)) and torch.equal(n.second, torch.arange(6.0, 12.0))


def test_missing_unexpected_and_shape_errors(tmp_path):
    path = tmp_path / "w.safetensors"
    visattn.save_weights(nn.Linear(4, 3), path)
    with pytest.raises(
        ValueError,
        match=r"shape mismatch for 1 tensor\(s\) of Linear: weight: file \(3, 4\), "
        r"model \(3, 5\)",
    ):
        visattn.load_weights(nn.Linear(5, 3, bias=False), path)
    with pytest.raises(ValueError, match=r"unexpected in the file \(1\): bias"):
        visattn.load_weights(nn.Linear(4, 3, bias=False), path)
    seq = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"missing from the file \(2\): 0.bias, 0.weight"):
        visattn.load_weights(seq, path)
    m = nn.Linear(4, 3, bias=False)
    res = visattn.load_weights(m, path, strict=False)
    assert res.unexpected == ["bias"] and res.missing == []
    with pytest.raises(FileNotFoundError, match="no weights file"):
        visattn.load_weights(m, tmp_path / "absent.safetensors")
    with pytest.raises(TypeError, match="expected a torch.nn.Module, got dict"):
        visattn.save_weights({}, path)


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    import safetensors.torch

    path = tmp_path / "w.safetensors"
    visattn.save_weights(nn.Linear(2, 2), path)
    before = path.read_bytes()

    def boom(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        visattn.save_weights(nn.Linear(3, 3), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["w.safetensors"]  # no temporary file left behind


def test_missing_package_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ImportError, match=r"visattn\[cli\]"):
        visattn.save_weights(nn.Linear(2, 2), tmp_path / "w.safetensors")
