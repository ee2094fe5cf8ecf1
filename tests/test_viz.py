"""``visattn viz``: real PNGs of per-head attention / gradient receptive fields."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

import visattn
from visattn.commands import viz_cmd
from visattn.viz import layer_maps, visualize

CELL_PX = 160  # 1.6 inches at 100 dpi


def parse(argv):
    p = argparse.ArgumentParser()
    viz_cmd.add_parser(p.add_subparsers(dest="command"))
    return p.parse_args(argv)


def check_png(path, rows, cols):
    with Image.open(path) as im:
        assert im.size == (cols * CELL_PX, rows * CELL_PX)
        a = np.asarray(im.convert("RGB"), dtype=np.float64)
    assert a.std() > 20  # not blank


def test_san_quadratic_attention_grid_on_the_default_photograph(tmp_path):
    out = visualize("san_quadratic", out=str(tmp_path / "san.png"), query=(200, 260))
    check_png(out, rows=6, cols=1 + 9)  # 6 layers x (image + 9 heads)


def test_attention_maps_drawn_are_the_layer_probabilities():
    torch.manual_seed(0)
    m = visattn.create_model("san_quadratic", num_classes=10, depth=2)
    x = torch.randn(1, 3, 32, 32)
    layers = layer_maps(m, x, (0.3, 0.7))
    assert [lm.kind for lm in layers] == ["attention", "attention"]
    qy, qx = layers[0].query
    assert (qy, qx) == (4, 11)  # 16 x 16 tokens
    # position-only: the row of the (input-independent) probability table for the query token
    ref = m.blocks[1].mixer.attention_maps(torch.zeros(1, 400, 16, 16))[0, :, qy * 16 + qx].reshape(9, 16, 16)
    assert np.allclose(layers[1].maps, ref.detach().numpy(), atol=1e-6)
    assert np.allclose(layers[1].maps.sum((1, 2)), 1.0, atol=1e-5)


def test_gradient_receptive_field_of_a_3x3_conv_is_its_window():
    torch.manual_seed(0)
    conv = visattn.create_attention("conv", 8, kernel_size=3)
    layers = layer_maps(conv, torch.randn(1, 8, 9, 9), (0.5, 0.5))
    (lm,) = layers
    assert lm.kind == "gradient" and lm.maps.shape == (1, 9, 9)
    nz = np.argwhere(lm.maps[0] > 0)
    assert len(nz) == 9 and nz.min(0).tolist() == [3, 3] and nz.max(0).tolist() == [5, 5]


def test_cli_with_local_image_weights_and_swapped_mechanism(tmp_path):
    from safetensors.torch import save_file

    rng = np.random.default_rng(0)
    img = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "in.jpg")
    torch.manual_seed(1)
    model = visattn.create_model("san_learned", num_classes=10, attention="external")
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    args = parse(
        [
            "viz",
            "san_learned",
            "--image",
            str(tmp_path / "in.jpg"),
            "--query",
            "10",
            "50",
            "--weights",
            str(tmp_path / "w.safetensors"),
            "--attention",
            "external",
            "--out",
            str(tmp_path / "ext.png"),
        ]
    )
    assert args.func(args) == 0
    check_png(tmp_path / "ext.png", rows=6, cols=2)  # gradient receptive field: one panel per layer


def test_bare_mechanism(tmp_path):
    out = visualize("relpos", out=str(tmp_path / "r.png"), attn_kwargs={"num_heads": 4}, dim=16, size=12)
    check_png(out, rows=1, cols=5)


def test_errors(tmp_path):
    with pytest.raises(ValueError, match=r"query pixel \(y=600, x=3\) is outside the 512 x 512 image"):
        visualize("san_quadratic", out=str(tmp_path / "a.png"), query=(600, 3))
    with pytest.raises(FileNotFoundError, match=r"image file not found: '.*nope.png'"):
        visualize("san_quadratic", out=str(tmp_path / "a.png"), image=str(tmp_path / "nope.png"))
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"cannot read .*bad.png' as an image with Pillow"):
        visualize("san_quadratic", out=str(tmp_path / "a.png"), image=str(tmp_path / "bad.png"))
    with pytest.raises(FileNotFoundError, match=r"no weights file at .*w.safetensors"):
        visualize("san_quadratic", out=str(tmp_path / "a.png"), weights=str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match=r"unknown model or mechanism 'san_quadratik'"):
        visualize("san_quadratik", out=str(tmp_path / "a.png"))
    from safetensors.torch import save_file

    save_file(visattn.create_model("san_quadratic", num_classes=100).state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(
        ValueError,
        match=r"shape mismatch for 2 tensor\(s\).*head.weight: file \(100, \d+\), model \(10, \d+\).*check --num-classes",
    ):
        visualize("san_quadratic", out=str(tmp_path / "a.png"), weights=str(tmp_path / "w.safetensors"))
    args = parse(["viz", "relpos", "--attn-kwargs", "[1]"])
    with pytest.raises(ValueError, match=r"--attn-kwargs must be a JSON object"):
        args.func(args)


def test_load_image_16bit_png_by_value_and_oversized_image_is_a_value_error(tmp_path, monkeypatch):
    from visattn.viz import load_image

    Image.fromarray(np.full((6, 6), 32768, dtype=np.uint16)).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    assert load_image(str(tmp_path / "g16.png")).mean() == 128  # used to be 255 (white)
    Image.new("RGB", (40, 40)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1600 pixels > 2 x 100: a decompression bomb
    with pytest.raises(ValueError, match=r"cannot read .*big.png' as an image with Pillow"):
        load_image(str(tmp_path / "big.png"))  # used to be a DecompressionBombError traceback
