"""Segmentation training: metrics, ignore_index, learning, metrics.jsonl, exact resume, CLI, torchrun."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _seg_fixtures import make_seg_folder
from _tiny_seg_model import ensure_registered, unregister
from visattn.commands import train_cmd
from visattn.data.segmentation import load_seg_data
from visattn.train.segment import SegTrainConfig, confusion_matrix, segmentation_metrics, train_segment

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def _unregister_tiny_model():
    yield
    unregister()


def _strict(line: str):
    return json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in metrics.jsonl"))


def test_confusion_matrix_and_metrics_by_hand():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 3]])
    conf = confusion_matrix(pred, target, 4)
    assert conf.tolist() == [[1, 1, 0, 0], [0, 2, 0, 1], [1, 0, 1, 0], [0, 0, 0, 0]]
    m = segmentation_metrics(conf, ["bg", "a", "b", "c"])
    # IoU: bg 1/(2+2-1)=1/3, a 2/(3+3-2)=1/2, b 1/(2+1-1)=1/2, c 0/(0+1-0)=0 -> mean 1/3
    assert m["iou"] == pytest.approx({"bg": 1 / 3, "a": 0.5, "b": 0.5, "c": 0.0}, abs=1e-12)
    assert m["miou"] == pytest.approx(1 / 3, abs=1e-12) and m["pixel_acc"] == pytest.approx(4 / 7, abs=1e-12)
    # a class absent from labels and predictions has no IoU and is left out of the mean
    m2 = segmentation_metrics(confusion_matrix(pred.clamp_max(2), target, 5))
    assert m2["iou"]["3"] is None and m2["iou"]["4"] is None
    with pytest.raises(ValueError, match="target value 7 is neither a class \\(0..3\\) nor the ignore index 255"):
        confusion_matrix(pred, torch.full_like(target, 7), 4)


def test_config_errors():
    with pytest.raises(
        ValueError, match="scale_range must be \\(min, max\\) with 0 < min <= max, both finite, got \\(2.0, 1.0\\)"
    ):
        SegTrainConfig(scale_range=(2.0, 1.0)).validate()
    for bad in ((1.0, float("inf")), (float("nan"), 1.0), (True, 2.0)):
        # an infinite scale used to end in an OverflowError traceback inside the augmentation
        with pytest.raises(ValueError, match="scale_range must be \\(min, max\\) with 0 < min <= max, both finite"):
            SegTrainConfig(scale_range=bad).validate()
    with pytest.raises(ValueError, match="ignore_index must be an int >= 0, got -1"):
        SegTrainConfig(ignore_index=-1).validate()
    with pytest.raises(ValueError, match="augment must be one of"):
        SegTrainConfig(augment="rotate").validate()
    with pytest.raises(
        ValueError,
        match=r"segmentation needs a segmentation model; 'resnet_tiny' is a classify model "
        r"\(segmentation models: .*fpn_resnet_tiny",
    ):
        train_segment(SegTrainConfig(model="resnet_tiny", output=None))


def test_default_model_on_digit_scenes(tmp_path):
    """The default configuration's model gives logits at input resolution and a consistent record."""
    from visattn.data.segmentation import load_digit_scenes

    data = load_digit_scenes(32, n_train=32, n_test=8)
    res = train_segment(
        SegTrainConfig(epochs=1, batch_size=16, output=None, progress=False, verbose=False, image_size=32), data=data
    )
    assert res.model(torch.zeros(1, 3, 23, 37)).shape == (1, 11, 23, 37)
    rec = res.final
    assert rec["step"] == 2 and set(rec["test_iou"]) == set(data.classes)
    present = [v for v in rec["test_iou"].values() if v is not None]
    assert rec["test_miou"] == pytest.approx(sum(present) / len(present), abs=1e-12)


def _cfg(out, **kw):
    base = dict(
        model=ensure_registered(),
        epochs=3,
        batch_size=8,
        lr=0.02,
        output=str(out) if out else None,
        progress=False,
        verbose=False,
        image_size=12,
        seed=1,
    )
    base.update(kw)
    return SegTrainConfig(**base)


def test_learns_colour_regions_and_writes_strict_metrics(tmp_path):
    data = load_seg_data(make_seg_folder(tmp_path / "d", n=30), image_size=12)
    res = train_segment(_cfg(tmp_path / "run", epochs=6), data=data)
    lines = [_strict(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(1, 7)) and lines[-1]["step"] == 18  # 24 train / 8 per step
    last = lines[-1]
    assert last["test_miou"] >= 0.95  # pixel colour gives the class (measured 0.98); chance is ~1/3
    assert set(last["test_iou"]) == {"0", "1", "2"} and last["test_pixel_acc"] == last["test_acc"]
    assert last["test_miou"] == pytest.approx(sum(last["test_iou"].values()) / 3, abs=1e-12)
    # images_per_s counts images (24 per epoch), not pixels
    assert last["images_per_s"] == pytest.approx(24 / last["train_time_s"], rel=1e-9)
    assert res.final == last and res.num_classes == 3
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["config"]["task"] == "segment" and cfg["config"]["ignore_index"] == 255
    assert cfg["classes"] == ["0", "1", "2"]
    w = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert w["classifier.weight"].shape == (3, 8, 1, 1)


def test_ignored_pixels_take_no_part(tmp_path):
    """With every class-2 pixel ignored, the loss is the cross-entropy of the other pixels alone."""
    data = load_seg_data(make_seg_folder(tmp_path / "d", n=10), image_size=12)
    model = ensure_registered()
    torch.manual_seed(0)
    import visattn

    net = visattn.create_model(model, num_classes=3)
    x, y = data.train.batch([0, 1])
    y_ign = y.clone()
    y_ign[y == 2] = 255
    loss = torch.nn.CrossEntropyLoss(ignore_index=255)(net(x), y_ign)
    logits = net(x).permute(0, 2, 3, 1)[y != 2]
    ref = torch.nn.functional.cross_entropy(logits, y[y != 2])
    torch.testing.assert_close(loss, ref, rtol=0, atol=1e-6)
    # and the trainer counts only labelled pixels in train_acc
    from visattn.train.distributed import DistContext
    from visattn.train.segment import GlobalPixelCrossEntropy, SegTrainer

    crit = GlobalPixelCrossEntropy(255, 0.0, DistContext())
    torch.testing.assert_close(crit(net(x), y_ign), ref, rtol=0, atol=1e-6)
    tr = SegTrainer(_cfg(None))
    tr.criterion = crit
    sums = tr._batch_sums(loss, net(x), y_ign)
    assert float(sums[2]) == float((y != 2).sum()) == crit.last_count
    assert float(sums[0]) == pytest.approx(float(ref.detach()) * crit.last_count, rel=1e-6)


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    data = load_seg_data(make_seg_folder(tmp_path / "d", n=30), image_size=12)
    full = train_segment(_cfg(tmp_path / "full", deterministic=True, save_every=2), data=data)

    class Stop(Exception):
        pass

    class StopAt:
        def after_step(self, trainer):
            if trainer.step == 5:
                raise Stop

    with pytest.raises(Stop):
        train_segment(_cfg(tmp_path / "cut", deterministic=True, save_every=2), data=data, callbacks=[StopAt()])
    assert json.loads((tmp_path / "cut" / "checkpoints" / "latest.json").read_text())["step"] == 4
    resumed = train_segment(_cfg(tmp_path / "cut", deterministic=True, save_every=2, resume=True), data=data)
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.final["test_miou"] == full.final["test_miou"]
    # resuming with another ignore index is refused, naming it
    with pytest.raises(ValueError, match="cannot resume: .*ignore_index=255 \\(now 254\\)"):
        train_segment(
            _cfg(tmp_path / "cut", deterministic=True, save_every=2, resume=True, ignore_index=254),
            data=load_seg_data(f"segfolder:{tmp_path / 'd'}", image_size=12, ignore_index=254),
        )


def test_cli_train_task_segment(tmp_path, capsys):
    spec = make_seg_folder(tmp_path / "d", n=20)
    out = tmp_path / "run"
    rc = train_cmd.main(
        [
            "--task",
            "segment",
            "--model",
            ensure_registered(),
            "--data",
            spec,
            "--image-size",
            "12",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--lr",
            "0.02",
            "--output",
            str(out),
            "--no-progress",
            "--scale-range",
            "0.8",
            "1.25",
            "--label-smoothing",
            "0",
            "--amp",
            "bf16",
        ]
    )
    assert rc == 0
    assert "test mIoU" in capsys.readouterr().out
    lines = [_strict(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and 0.0 <= lines[-1]["test_miou"] <= 1.0
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["scale_range"] == [0.8, 1.25] and cfg["label_smoothing"] == 0.0 and cfg["amp"] == "bf16"
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # bad data: one line naming the file, exit code 2
    bad = tmp_path / "bad"
    make_seg_folder(bad, n=4)
    (bad / "classes.txt").write_text("a\nb\n")
    assert (
        train_cmd.main(
            [
                "--task",
                "segment",
                "--model",
                ensure_registered(),
                "--data",
                f"segfolder:{bad}",
                "--output",
                str(tmp_path / "r2"),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "has value 2, which is neither a class (0..1) nor the ignore index 255" in capsys.readouterr().err


def test_cli_keeps_a_typed_classification_model_or_data(tmp_path, capsys):
    # --model resnet_tiny / --data digits typed with --task segment used to be silently replaced by
    # fpn_resnet_tiny / digitscenes (a whole run of another model); only the untyped defaults are.
    from visattn.commands.tasks.segment import config_from_args as seg_config_from_args

    p = __import__("argparse").ArgumentParser()
    train_cmd.add_train_arguments(p)
    cfg = seg_config_from_args(p.parse_args(["--task", "segment"]))
    assert (cfg.model, cfg.data) == ("fpn_resnet_tiny", "digitscenes")
    cfg = seg_config_from_args(p.parse_args(["--task", "segment", "--model", "resnet_tiny", "--data", "digits"]))
    assert (cfg.model, cfg.data) == ("resnet_tiny", "digits")
    assert train_cmd.main(["--task", "segment", "--model", "resnet_tiny", "--output", str(tmp_path / "r")]) == 2
    assert "segmentation needs a segmentation model; 'resnet_tiny' is a classify model" in capsys.readouterr().err
    assert train_cmd.main(["--task", "segment", "--data", "digits", "--output", str(tmp_path / "r")]) == 2
    assert "segmentation data spec must be 'digitscenes' or 'segfolder:PATH', got 'digits'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("*.safetensors"))
    # the classification defaults themselves are unchanged
    args = p.parse_args([])
    assert (args.model, args.data) == ("resnet_tiny", "digits") and train_cmd.config_from_args(
        args
    ).model == "resnet_tiny"
    # label smoothing not given: each task's own default (the Python configs'), given: kept
    assert train_cmd.config_from_args(args).label_smoothing == 0.1
    assert seg_config_from_args(p.parse_args(["--task", "segment"])).label_smoothing == 0.0
    assert seg_config_from_args(p.parse_args(["--task", "segment", "--label-smoothing", "0.2"])).label_smoothing == 0.2
    assert train_cmd.config_from_args(p.parse_args(["--label-smoothing", "0"])).label_smoothing == 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(tmp_path):
    spec = make_seg_folder(tmp_path / "d", n=20)  # 16 train: one step of global batch 16
    # each process holds a different number of labelled pixels; the loss is the global batch mean
    args = [
        "--task",
        "segment",
        "--model",
        ensure_registered(),
        "--data",
        spec,
        "--image-size",
        "12",
        "--epochs",
        "1",
        "--lr",
        "0.02",
        "--warmup-steps",
        "0",
        "--deterministic",
        "--no-progress",
        "--device",
        "cpu",
        "--seed",
        "2",
        "--scale-range",
        "0.5",
        "0.7",
    ]  # padded crops: ignored pixels
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        str(ROOT / "tests" / "_seg_worker.py"),
        *args,
        "--batch-size",
        "8",
        "--output",
        str(tmp_path / "ddp"),
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert train_cmd.main([*args, "--batch-size", "16", "--output", str(tmp_path / "one")]) == 0
    a = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    b = load_file(str(tmp_path / "one" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    ma = _strict((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()[0])
    mb = _strict((tmp_path / "one" / "metrics.jsonl").read_text().splitlines()[0])
    assert ma["step"] == mb["step"] == 1
    for key in ("train_loss", "train_acc", "test_loss", "test_miou", "test_pixel_acc"):
        assert ma[key] == pytest.approx(mb[key], abs=1e-5), key


def test_precise_bn_uses_whole_training_images(tmp_path):
    from visattn.data import normalize

    data = load_seg_data(make_seg_folder(tmp_path / "d", n=20), image_size=12)
    res = train_segment(_cfg(None, epochs=1, precise_bn=1, model_kwargs={"bn": True}), data=data)
    x, _ = data.train.batch(torch.arange(8))  # the first batch, whole images, no augmentation
    with torch.no_grad():
        f = res.model.stem(normalize(x, data.mean, data.std))
    torch.testing.assert_close(res.model.bn.running_mean, f.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res.model.bn.running_var, f.var((0, 2, 3)), rtol=1e-4, atol=1e-6)


def test_resuming_a_segmentation_run_as_classification_names_the_task(tmp_path):
    """The options are compared before the weights meet a model of another shape (it used to end
    in an optimizer/weights shape message)."""
    from visattn.train import TrainConfig, train

    data = load_seg_data(make_seg_folder(tmp_path / "d", n=16), image_size=12)
    train_segment(_cfg(tmp_path / "run", epochs=1), data=data)
    cfg = TrainConfig(model="resnet_tiny", data="digits", epochs=1, output=str(tmp_path / "run"), resume=True)
    cfg.progress, cfg.verbose = False, False
    with pytest.raises(ValueError) as e:
        train(cfg)
    msg = str(e.value)
    assert msg.startswith("cannot resume: the checkpoint was made with other options model=")
    assert "task='segment' (now None)" in msg and msg.endswith("(the run was trained with --task segment)")
