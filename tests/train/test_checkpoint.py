"""Checkpoints: exact round trip of model/optimizer/scheduler/RNG, atomic layout, no unpickling."""

import json
import pickle

import pytest
import torch
from torch import nn

from _tiny_model import ensure_registered, unregister
from visattn.commands import train_cmd
from visattn.train import latest_checkpoint, load_checkpoint, load_weights, save_checkpoint


@pytest.fixture(autouse=True, scope="module")
def _unregister_tiny_model():
    yield
    unregister()


def _setup(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    opt = torch.optim.AdamW(m.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return m, opt, sched


def _step(m, opt, sched):
    x = torch.randn(5, 4)  # from the global RNG: tests that its state is restored
    loss = m(x).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()


def test_round_trip_continues_exactly(tmp_path):
    m, opt, sched = _setup()
    for _ in range(3):
        _step(m, opt, sched)
    save_checkpoint(tmp_path, m, opt, sched, state={"epoch": 1, "step": 3, "note": "hi"})
    _step(m, opt, sched)
    _step(m, opt, sched)

    m2, opt2, sched2 = _setup(seed=123)  # different weights, fresh optimizer, other RNG state
    state = load_checkpoint(tmp_path, m2, opt2, sched2)
    assert (state["epoch"], state["step"], state["note"]) == (1, 3, "hi")
    assert sched2.last_epoch == 3 and opt2.param_groups[0]["lr"] == pytest.approx(0.01 / 4)
    assert opt2.param_groups[0]["betas"] == (0.9, 0.999)
    _step(m2, opt2, sched2)
    _step(m2, opt2, sched2)
    for (k, a), b in zip(m.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k


def test_layout_pointer_and_keep(tmp_path):
    m, opt, sched = _setup()
    for step in (2, 4, 6):
        save_checkpoint(tmp_path, m, opt, sched, state={"step": step}, keep=2)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest.json", "step-00000004", "step-00000006"]
    assert sorted(p.name for p in (root / "step-00000006").iterdir()) == [
        "model.safetensors",
        "train_state.safetensors",
    ]
    # a temporary folder left by a kill during a write is ignored
    (root / ".step-00000008.tmp-999").mkdir()
    assert latest_checkpoint(tmp_path) == root / "step-00000006"
    assert json.loads((root / "latest.json").read_text())["step"] == 6


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _poison(folder, marker):
    for name in ("model.safetensors", "train_state.safetensors"):
        with open(folder / name, "wb") as f:
            pickle.dump({"weights": _Evil(str(marker))}, f)


def test_pickle_in_checkpoint_is_refused_not_run(tmp_path, capsys):
    m, opt, sched = _setup()
    folder = save_checkpoint(tmp_path, m, opt, sched, state={"step": 1})
    marker = tmp_path / "pwned"
    _poison(folder, marker)
    with pytest.raises(ValueError, match="is not a safetensors file .*never loaded with pickle"):
        load_checkpoint(tmp_path, m, opt, sched)
    with pytest.raises(ValueError, match="is not a safetensors file"):
        load_weights(m, folder / "model.safetensors")
    assert not marker.exists()
    # the same through `visattn train --resume`
    run = tmp_path / "run"
    args = [
        "--model",
        ensure_registered(),
        "--data",
        "digits",
        "--image-size",
        "8",
        "--epochs",
        "1",
        "--output",
        str(run),
        "--no-progress",
        "--resume",
    ]
    folder = save_checkpoint(run, m, state={"step": 1})
    _poison(folder, marker)
    assert train_cmd.main(args) == 2
    assert "is not a safetensors file" in capsys.readouterr().err
    assert not marker.exists()


def test_weights_that_do_not_fit_are_named(tmp_path):
    m, opt, sched = _setup()
    folder = save_checkpoint(tmp_path, m, state={"step": 1})
    other = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8))
    with pytest.raises(ValueError, match=r"does not match Sequential: unexpected in the file \(2\): 2.bias, 2.weight"):
        load_weights(other, folder)
