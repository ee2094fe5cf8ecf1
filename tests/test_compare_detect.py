"""``visattn compare --task detect``: one small Mask R-CNN per mechanism, through the one compare core."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")


def test_compare_task_detect_cli(tmp_path, capsys, monkeypatch):
    import visattn.compare.detect as det
    from visattn.cli import main

    monkeypatch.setattr(det, "DET_SCENES", (12, 4))  # the built-in data set, cut for a test
    n = torch.get_num_threads()
    argv = ["compare", "--task", "detect", "--mechanisms", "conv", "external", "--seeds", "2", "--epochs", "1"]
    try:
        rc = main([*argv, "--output", str(tmp_path), "--no-progress"])
    finally:
        torch.set_num_threads(n)
    assert rc == 0
    out = capsys.readouterr().out
    assert "box AP" in out and "mask AP" in out
    doc = json.loads((tmp_path / "detect" / "compare.json").read_text())
    runs = doc["runs"]
    assert sorted((r["mechanism"], r["seed"]) for r in runs) == [
        ("conv", 0),
        ("conv", 1),
        ("external", 0),
        ("external", 1),
    ]
    for r in runs:
        assert not r.get("error"), r["error"]
        assert 0.0 <= r["box_ap"] <= 1.0 and 0.0 <= r["mask_ap"] <= 1.0
    assert doc["config"]["data"]["digitscenes"]["train_size"] == 13  # 12 scenes + 1 empty
    assert (tmp_path / "detect" / "compare.png").read_bytes()[:4] == b"\x89PNG"
