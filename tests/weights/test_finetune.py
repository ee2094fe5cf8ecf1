"""Partial loads for fine-tuning and the preprocessing that travels with the weights: a classifier of
another size re-initialised (and said so), position tables resized as their authors do, backbone
weights into features_only and segmentation models, ``pretrained_cfg`` in run folders, used by
``visattn train --pretrained``, ``predict`` and ``viz``."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from _wutil import one_line_error

import visattn
from visattn.cli import main
from visattn.models.pretrained import convert_checkpoint, load_pretrained

SWIN_TINY = dict(embed_dims=(8, 16, 32, 64), depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4))
PVT_TINY = dict(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4))


def _visattn_file(tmp_path, name, **kw) -> tuple[str, torch.nn.Module]:
    model = visattn.create_model(name, **kw)
    path = tmp_path / f"{name}.safetensors"
    visattn.save_weights(model, path)
    return str(path), model


def test_head_reinitialised_and_said_so(tmp_path, caplog):
    path, src = _visattn_file(tmp_path, "resnet_tiny")
    caplog.set_level(logging.WARNING, "visattn.pretrained")
    m = visattn.create_model("resnet_tiny", pretrained=path, num_classes=10)
    assert (
        "head: the weights have 1000 classes, the model 10: the classifier keeps its fresh initialisation"
        in caplog.text
    )
    same = {k: v for k, v in src.state_dict().items() if not k.startswith("head.")}
    assert all(torch.equal(m.state_dict()[k], v) for k, v in same.items())
    assert m.head.weight.shape == (10, src.head.in_features)
    assert visattn.create_model("resnet_tiny", pretrained=path).num_classes == 1000  # None: the weights' count
    report = load_pretrained(visattn.create_model("resnet_tiny", num_classes=3), path)
    assert report.reinitialized == ["head.bias", "head.weight"] and report.loaded == len(same)


@torch.no_grad()
def test_backbone_weights_into_features_only(tmp_path):
    path, src = _visattn_file(tmp_path, "resnet_tiny")
    feats = visattn.create_model("resnet_tiny", features_only=True, out_indices=(1, 2), pretrained=path).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = src.eval().forward_intermediates(x, indices=(1, 2), intermediates_only=True)
    assert all(torch.equal(a, b) for a, b in zip(feats(x), ref))
    assert feats.pretrained_cfg["format"] == "visattn"


@torch.no_grad()
def test_swin_relative_tables_resized_bicubically(tmp_path, caplog):
    kw = dict(SWIN_TINY, mixer_kwargs=({"window_size": 3},) * 4)
    src = visattn.create_model("swin_t", **kw)
    for _, mixer in src.named_mixers():  # the table's value = the row offset (dy) of each entry
        t = mixer.relative_position_bias_table
        side = 2 * mixer.window_size - 1
        t.copy_(torch.arange(side, dtype=t.dtype).repeat_interleave(side)[:, None].expand_as(t))
    path = tmp_path / "swin.safetensors"
    visattn.save_weights(src, path)
    big = visattn.create_model(
        "swin_t", pretrained=str(path), **dict(SWIN_TINY, mixer_kwargs=({"window_size": 5},) * 4)
    )
    assert "resized (25, 1) -> (81, 1)" in caplog.text
    for _, mixer in big.named_mixers():
        grid = mixer.relative_position_bias_table[:, 0].reshape(9, 9)
        assert torch.allclose(grid, grid[:, :1].expand(9, 9), atol=1e-5)  # a function of the row only
        assert (grid[1:, 0] > grid[:-1, 0]).all()  # increasing down the rows: not transposed


@torch.no_grad()
def test_pvt_position_tables_resized_bilinearly(tmp_path):
    path, small = _visattn_file(tmp_path, "pvt_t", pos_embed_size=32, **PVT_TINY)
    big = visattn.create_model("pvt_t", pretrained=path, pos_embed_size=64, **PVT_TINY).eval()
    assert big.stages[0].pos_embed.shape[-2:] == (16, 16)
    # the authors resize at run time: the model built for 32 px run at 64 px computes the same
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(big(x), small.eval()(x), atol=1e-6)


@torch.no_grad()
def test_segmentation_backbone_pretrained(tmp_path, caplog):
    path, src = _visattn_file(tmp_path, "resnet_tiny")
    seg = visattn.create_model("fpn_resnet_tiny", backbone_pretrained=path, num_classes=4)
    back = seg.backbone.model.state_dict()
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in back.items())
    assert seg.pretrained_cfg["format"] == "visattn"
    with pytest.raises(ValueError, match="a classifier's / backbone's weights, not SemanticFPN's"):
        load_pretrained(seg, path)
    # a segmentation model's own file loads whole
    seg_path = tmp_path / "seg.safetensors"
    visattn.save_weights(seg, seg_path)
    again = visattn.create_model("fpn_resnet_tiny", pretrained=str(seg_path))
    assert again.num_classes == 4 and all(torch.equal(v, seg.state_dict()[k]) for k, v in again.state_dict().items())


def _converted(tmp_path, name, **kw) -> str:
    path, _ = _visattn_file(tmp_path, name, **kw)
    out = tmp_path / f"{name}-converted.safetensors"
    convert_checkpoint(path, out, model=name, model_kwargs={k: v for k, v in kw.items() if k != "num_classes"})
    return str(out)


@pytest.mark.slow
def test_train_with_pretrained_writes_and_uses_its_preprocessing(tmp_path, capsys, caplog):
    src = _converted(tmp_path, "resnet_tiny")
    out = tmp_path / "run"
    argv = ["train", "--model", "resnet_tiny", "--pretrained", src, "--epochs", "1", "--batch-size", "256"]
    assert main([*argv, "--image-size", "16", "-o", str(out), "--no-progress"]) == 0
    assert "the weights have 1000 classes, the model 10: the classifier keeps its fresh initialisation" in caplog.text
    assert "normalising with the weights' mean (0.485, 0.456, 0.406)" in capsys.readouterr().out
    info = json.loads((out / "config.json").read_text())
    assert info["config"]["pretrained"] == src
    assert info["pretrained_cfg"]["format"] == "visattn" and info["pretrained_cfg"]["model"] == "resnet_tiny"
    assert info["mean"] == [0.485, 0.456, 0.406] and info["std"] == [0.229, 0.224, 0.225]
    assert main([*argv, "-o", str(tmp_path / "bad"), "--pretrained", str(tmp_path / "absent.pth")]) == 2
    assert one_line_error(capsys, "train").startswith("no weights file")


def test_predict_reads_the_weights_preprocessing(tmp_path):
    from visattn.predict import load_segmenter

    path = _converted(tmp_path, "fpn_resnet_tiny", num_classes=3)
    net, info = load_segmenter("fpn_resnet_tiny", path)  # no config.json: the file's metadata
    assert info["mean"] == (0.485, 0.456, 0.406) and len(info["classes"]) == 3 and net.num_classes == 3


def test_viz_with_published_weights_uses_their_size_and_normalisation(tmp_path, monkeypatch):
    import visattn.viz as viz

    path = _converted(tmp_path, "san_quadratic", depth=2)
    seen = {}
    real = viz._to_input

    def spy(img, size, mean=viz._MEAN, std=viz._STD):
        seen.update(size=size, mean=tuple(mean), std=tuple(std))
        return real(img, size, mean, std)

    monkeypatch.setattr(viz, "_to_input", spy)
    out = viz.visualize("san_quadratic", out=str(tmp_path / "v.png"), weights=path)  # the file's classes and depth
    assert out.endswith("v.png")
    assert seen == {"size": (32, 32), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    assert viz._published(path) and not viz._published(_visattn_file(tmp_path, "resnet_tiny")[0])
