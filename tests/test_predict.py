"""visattn predict: the mask drawn over the image from a trained run; errors for bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from _seg_fixtures import COLOURS, make_seg_folder
from _tiny_seg_model import ensure_registered, unregister
from visattn.cli import main
from visattn.data.segmentation import load_seg_data, read_image
from visattn.predict import draw_prediction, load_segmenter, predict_mask
from visattn.train.segment import SegTrainConfig, train_segment


@pytest.fixture(autouse=True, scope="module")
def _unregister_tiny_model():
    yield
    unregister()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pred")
    data = load_seg_data(make_seg_folder(root / "d", n=30), image_size=12)
    cfg = SegTrainConfig(
        model=ensure_registered(),
        epochs=6,
        batch_size=8,
        lr=0.02,
        output=str(root / "run"),
        progress=False,
        verbose=False,
        image_size=12,
        seed=1,
    )
    train_segment(cfg, data=data)
    return root


def test_predict_cli_draws_the_mask(run_dir, capsys):
    img = np.zeros((10, 14, 3), np.uint8) + COLOURS[0].astype(np.uint8)
    img[2:6, 3:9] = COLOURS[1]
    img[6:, 10:] = COLOURS[2]
    Image.fromarray(img).save(run_dir / "probe.png")
    out = run_dir / "pred.png"
    rc = main(
        [
            "predict",
            ensure_registered(),
            "--weights",
            str(run_dir / "run"),
            "--image",
            str(run_dir / "probe.png"),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert Image.open(out).format == "PNG"
    net, info = load_segmenter(ensure_registered(), run_dir / "run" / "model.safetensors")
    assert info["classes"] == ["0", "1", "2"]
    pred = predict_mask(net, read_image(run_dir / "probe.png"), info["mean"], info["std"])
    truth = torch.zeros(10, 14, dtype=torch.int64)
    truth[2:6, 3:9] = 1
    truth[6:, 10:] = 2
    assert float((pred == truth).float().mean()) >= 0.9  # the trained net segments clean colour regions
    n = torch.bincount(pred.flatten(), minlength=3)
    expected = ", ".join(f"{c} {100 * int(k) / 140:.1f}%" for c, k in zip("012", n) if k)
    assert capsys.readouterr().out.splitlines() == [expected, str(out)]


def test_draw_prediction_panels_and_legend():
    img = torch.zeros(3, 8, 8, dtype=torch.uint8)
    pred = torch.zeros(8, 8, dtype=torch.int64)
    pred[:4] = 2
    truth = pred.clone()
    truth[0] = 255
    fig = draw_prediction(img, pred, ["background", "a", "b"], truth, ignore_index=255)
    assert len(fig.axes) == 3 and [a.get_title() for a in fig.axes] == ["image", "ground truth", "prediction"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["b"]
    shown = fig.axes[1].get_images()[0].get_array()
    assert np.allclose(shown[0], 1.0) and np.allclose(shown[7], 0.0)  # ignored row white, background untouched


def test_predict_errors(run_dir, capsys):
    args = ["predict", ensure_registered(), "--weights", str(run_dir / "run"), "--out", str(run_dir / "x.png")]
    assert main([*args, "--image", str(run_dir / "nope.png")]) == 2
    assert "nope.png" in capsys.readouterr().err
    (run_dir / "junk.png").write_bytes(b"junk")
    assert main([*args, "--image", str(run_dir / "junk.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("visattn predict: error: cannot read '") and "junk.png' as an image" in err
    assert main(["predict", "resnet_tiny", "--weights", str(run_dir / "run"), "--image", "x.png"]) == 2
    assert f"the weights were trained as model '{ensure_registered()}'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="pass the number of classes"):
        load_segmenter(ensure_registered(), run_dir / "d" / "masks" / "s000.png")


def test_predict_without_run_config(run_dir, tmp_path):
    """A bare model.safetensors: classes from --num-classes, normalisation mean = std = 0.5."""
    import shutil

    shutil.copy(run_dir / "run" / "model.safetensors", tmp_path / "w.safetensors")
    net, info = load_segmenter(ensure_registered(), tmp_path / "w.safetensors", num_classes=3)
    assert info["classes"] == ["0", "1", "2"] and info["mean"] == (0.5,) * 3 and info["std"] == (0.5,) * 3
    img = read_image(run_dir / "d" / "images" / "s000.png")
    from visattn.data import normalize

    with torch.no_grad():
        ref = net(normalize(img.float()[None] / 255, (0.5,) * 3, (0.5,) * 3)).argmax(1)[0]
    assert torch.equal(predict_mask(net, img, info["mean"], info["std"]), ref)
    with pytest.raises(ValueError, match="3 class names for 4 classes"):
        load_segmenter(ensure_registered(), run_dir / "run", num_classes=4)


def test_digit_scene_truth_uses_the_runs_ignore_index():
    # A run trained with --ignore-index 254: the ground truth of digitscenes:K marks its rim with
    # 254 (drawn white), as the run's data did; it used to carry 255 (drawn as plain image).
    from visattn.predict import read_input_image

    info = {"data": "digitscenes", "image_size": 16, "seed": 0, "ignore_index": 254}
    _, truth, _ = read_input_image("digitscenes:1", info)
    values = set(truth.unique().tolist())
    assert 254 in values and 255 not in values
    _, truth, _ = read_input_image("digitscenes:1", {"data": "digitscenes", "image_size": 16, "seed": 0})
    assert 255 in set(truth.unique().tolist())


def test_predict_out_must_be_png(run_dir, capsys):
    # --out x.jpg used to get PNG bytes under a .jpg name; now a one-line error before any work
    args = [
        "predict",
        ensure_registered(),
        "--weights",
        str(run_dir / "run"),
        "--image",
        str(run_dir / "d" / "images" / "s000.png"),
    ]
    assert main([*args, "--out", str(run_dir / "x.jpg")]) == 2
    assert "must be a .png file" in capsys.readouterr().err and not (run_dir / "x.jpg").exists()
    assert main([*args, "--out", str(run_dir / "x.PNG")]) == 0
    assert (run_dir / "x.PNG").read_bytes()[:4] == b"\x89PNG"
