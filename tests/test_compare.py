"""`visattn compare` end to end on a tiny setting: table, JSON figures, PNG, a failing mechanism."""

import json

import pytest
import torch

import visattn
from _tiny_model import ensure_registered, make_color_folder, unregister
from visattn.cli import main
from visattn.compare import HEADERS
from visattn.flops import count_flops


@pytest.fixture(autouse=True, scope="module")
def _unregister_tiny_model():
    yield
    unregister()


def test_compare_table_json_png_and_failure_row(tmp_path, capsys):
    name = ensure_registered()
    data = make_color_folder(tmp_path / "imgs", per_class=6)  # 15 train / 3 test images
    out = tmp_path / "cmp"
    rc = main(["compare", "--model", name, "--data", data, "--image-size", "8", "--epochs", "1", "--batch-size", "8",
               "-m", "conv", "mhsa", "external", "--attn-kwargs", '{"external": {"no_such_option": 1}}',
               "--output", str(out), "--no-progress", "--threads", "1"])
    assert rc == 0
    text = capsys.readouterr().out
    header = text.splitlines()[0]
    for col in HEADERS[:5] + ["latency ms (batch 1)", "peak MiB", "error"]:
        assert f" {col} " in header, col
    assert "failed: external" in text and "no_such_option" in text

    doc = json.loads((out / "compare.json").read_text())
    assert doc["config"]["model"] == name and doc["config"]["threads"] == 1
    rows = {r["mechanism"]: r for r in doc["results"]}
    assert list(rows) == ["conv", "mhsa", "external"]
    assert rows["external"]["error"].startswith("TypeError") and rows["external"]["top1"] is None
    for mech in ("conv", "mhsa"):
        r = rows[mech]
        assert r["error"] == "" and len(r["history"]) == 1 and r["history"][0]["step"] == 2
        assert 0.0 <= r["top1"] <= 1.0 and r["top1"] == r["history"][0]["test_acc"]
        fresh = visattn.create_model(name, num_classes=3, attention=mech).eval()
        assert r["params"] == sum(p.numel() for p in fresh.parameters())
        with torch.no_grad():
            assert r["flops"] == count_flops(fresh, torch.randn(1, 3, 8, 8))
        assert r["latency_ms"] > 0 and r["peak_mib"] > 0 and r["train_img_s"] > 0
    assert rows["conv"]["params"] != rows["mhsa"]["params"]
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "runs" / "conv" / "metrics.jsonl").is_file()
    assert not (out / "runs" / "conv" / "checkpoints").exists()


def test_compare_rejects_unknown_names(capsys):
    assert main(["compare", "-m", "conv", "nope", "--model", ensure_registered(), "--no-progress"]) == 2
    assert "unknown mechanism(s) ['nope']" in capsys.readouterr().err
