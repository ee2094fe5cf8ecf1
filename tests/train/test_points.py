"""Point-cloud training on the engine: metrics (ShapeNet mIoU rule), resume, the CLI and compare plug-in."""

import json

import pytest
import torch
from safetensors.torch import load_file

from visattn.cli import main
from visattn.data.points import load_point_data
from visattn.train.points import (
    PartSegTrainConfig,
    PointTrainConfig,
    class_accuracies,
    restrict_to_category,
    shape_ious,
    train_partseg,
    train_points,
)

CATS = [[0, 1], [2, 3, 4]]


def test_shape_iou_follows_the_shapenet_rule():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 3], [2, 2, 2, 2]])
    pred = torch.tensor([[0, 0, 1, 1], [2, 3, 2, 3], [2, 2, 2, 2]])
    cat = torch.tensor([0, 1, 1])
    ious = shape_ious(pred, target, cat, CATS)
    # shape 0: perfect. shape 1: part 2 {0,2} of {0,1,2} -> 2/3, part 3 {3} of {1,3} -> 1/2,
    # part 4 absent from both -> 1. shape 2: part 2 perfect, parts 3 and 4 absent from both -> 1.
    torch.testing.assert_close(ious, torch.tensor([1.0, (2 / 3 + 1 / 2 + 1) / 3, 1.0], dtype=torch.float64))
    # a part predicted but absent from the truth counts 0
    ious = shape_ious(torch.tensor([[0, 0, 0, 0]]), torch.tensor([[0, 0, 0, 1]]), torch.tensor([0]), CATS)
    torch.testing.assert_close(ious, torch.tensor([(3 / 4 + 0) / 2], dtype=torch.float64))


def test_prediction_is_restricted_to_the_category_and_class_accuracies():
    logits = torch.tensor([[[5.0], [1.0], [0.0], [9.0], [2.0]]])  # (1, 5 parts, 1 point); part 3 is another category's
    assert restrict_to_category(logits, torch.tensor([0]), CATS).tolist() == [[0]]
    assert restrict_to_category(logits, torch.tensor([1]), CATS).tolist() == [[3]]
    acc = class_accuracies(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), 4)
    assert acc.tolist() == [[1, 1, 1, 0], [1, 1, 2, 0]]


def _seg_cfg(out, **kw):
    base = dict(
        epochs=2,
        batch_size=8,
        num_points=64,
        data_size=6,
        lr=3e-3,
        output=str(out),
        progress=False,
        verbose=False,
        plot=False,
        deterministic=True,
        save_every=2,
    )
    return PartSegTrainConfig(**{**base, **kw})


def test_partseg_run_records_mious_and_resumes_to_the_same_weights(tmp_path):
    data = load_point_data("parts", 64, seed=0, task="partseg", size=6)
    full = train_partseg(_seg_cfg(tmp_path / "full"), data=data)
    f = full.final
    assert set(f["test_category_iou"]) == {"mushroom", "table", "rocket", "mug"}
    per = [v for v in f["test_category_iou"].values() if v is not None]
    assert f["test_category_miou"] == pytest.approx(sum(per) / len(per))
    assert 0 < f["test_instance_miou"] <= 1 and 0 < f["test_acc"] <= 1
    assert f["images_per_s"] < 1000  # counts clouds, not points

    class Stop(Exception):
        pass

    class StopAt:
        def after_step(self, trainer):
            if trainer.step == 3:
                raise Stop

    with pytest.raises(Stop):
        train_partseg(_seg_cfg(tmp_path / "cut"), data=data, callbacks=[StopAt()])
    assert json.loads((tmp_path / "cut" / "checkpoints" / "latest.json").read_text())["step"] == 2
    resumed = train_partseg(_seg_cfg(tmp_path / "cut", resume=True), data=data)
    a, b = (
        load_file(str(tmp_path / "full" / "model.safetensors")),
        load_file(str(tmp_path / "cut" / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.final["test_instance_miou"] == f["test_instance_miou"]


ARGS = [
    "train", "--task", "points", "--model", "spct", "--epochs", "2", "--batch-size", "8", "--num-points", "32",
    "--data-size", "3", "--save-every", "2", "--deterministic", "--no-progress",
]  # fmt: skip


def test_cli_points_run_resumes(tmp_path, capsys):
    from visattn.commands.tasks.points import config_from_args
    from visattn.commands.train_cmd import add_train_arguments

    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    assert main([*ARGS, "--output", full]) == 0
    assert "test accuracy" in capsys.readouterr().out
    import argparse

    p = argparse.ArgumentParser()
    add_train_arguments(p)
    cfg = config_from_args(p.parse_args([*ARGS[1:], "--output", cut]))
    assert isinstance(cfg, PointTrainConfig) and cfg.num_points == 32 and cfg.label_smoothing == 0.2

    class Stop(Exception):
        pass

    class StopAt:
        def after_step(self, trainer):
            if trainer.step == 3:
                raise Stop

    with pytest.raises(Stop):
        train_points(cfg, callbacks=[StopAt()])
    assert main([*ARGS, "--output", cut, "--resume"]) == 0
    a, b = load_file(f"{full}/model.safetensors"), load_file(f"{cut}/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rec = [json.loads(line) for line in open(f"{cut}/metrics.jsonl")]
    assert [r["epoch"] for r in rec] == [1, 2] and rec[-1]["test_mean_class_acc"] is not None


def test_cli_errors_are_one_line(tmp_path, capsys):
    import h5py
    import numpy as np

    for name in ("train0.h5", "test0.h5"):
        with h5py.File(tmp_path / name, "w") as f:
            d = np.zeros((3, 64, 3), np.float32)
            d[2, 5, 0] = np.inf if name == "test0.h5" else 0
            f.create_dataset("data", data=d)
            f.create_dataset("label", data=np.zeros((3, 1), np.uint8))
    assert main(["train", "--task", "points", "--data", f"modelnet40:{tmp_path}", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"visattn train: error: {tmp_path / 'test0.h5'}: cloud 2 has a non-finite (NaN or inf) coordinate"
    assert (
        main(["train", "--task", "points", "--num-points", "16", "--data-size", "1", "--output", str(tmp_path / "p")])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err == (
        "visattn train: error: shapes: cloud 0 (as every cloud) holds 16 points, too few for pct: the neighbour "
        "count k is 32 but only 4 points reach that stage; give more points (--num-points) or smaller samples/k"
    )
    assert main(["train", "--task", "segment", "--num-points", "16"]) == 2
    assert "--num-points belong(s) to --task points, not --task segment" in capsys.readouterr().err


def test_partseg_predict_draws_the_cloud(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        "--task",
        "partseg",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--num-points",
        "48",
        "--data-size",
        "2",
    ]
    assert main([*args, "--output", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    png = tmp_path / "cloud.png"
    assert (
        main(
            [
                "predict",
                "--task",
                "partseg",
                "--model",
                "pct_partseg",
                "--weights",
                str(out),
                "--image",
                "parts:1",
                "--out",
                str(png),
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == str(png) and png.stat().st_size > 10_000
    assert lines[0].startswith("table/")  # test object 1 is a table: only its parts are predicted


def test_compare_plugin_runs_the_set_capable_mechanisms():
    from visattn.compare import get_task

    plugin = get_task("points")
    assert plugin.default_mechanisms() == ["efficient", "external", "lambda", "mhsa", "sra"]
    bundle = load_point_data("shapes", 64, size=2)
    res = plugin.train(
        {"model": "spct", "attention": "external", "image_size": 64, "epochs": 1, "batch_size": 8, "output": None,
         "progress": False, "verbose": False, "precise_bn": 0, "data": "shapes"},
        bundle,
    )  # fmt: skip
    scores = plugin.scores(res)
    assert set(scores) == {"acc", "mean_class_acc"} and 0 <= scores["acc"] <= 1
    loss = plugin.cost_step(res.model.train(), plugin.datasets["shapes"], {"num_classes": 8}, 2, torch.device("cpu"))()
    assert loss.dim() == 0 and torch.isfinite(loss)
