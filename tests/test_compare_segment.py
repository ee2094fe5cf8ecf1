"""visattn compare --task segment: one segmentation model per mechanism, mIoU table, JSON and plot."""

import json

import pytest

from _seg_fixtures import make_seg_folder
from _tiny_seg_model import ensure_registered, unregister
from visattn.cli import main
from visattn.compare_segment import compare_segment, format_seg_table


@pytest.fixture(autouse=True, scope="module")
def _unregister_tiny_model():
    yield
    unregister()


def test_compare_task_segment_cli(tmp_path, capsys):
    spec = make_seg_folder(tmp_path / "d", n=20)
    out = tmp_path / "cmp"
    rc = main(
        [
            "compare",
            "--task",
            "segment",
            "-m",
            "conv",
            "external",
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
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    header = text.splitlines()[0]
    assert "mIoU %" in header and "pixel acc %" in header and "top-1" not in header
    doc = json.loads((out / "compare.json").read_text())
    assert doc["config"]["task"] == "segment" and doc["config"]["num_classes"] == 3
    rows = {r["mechanism"]: r for r in doc["results"]}
    assert set(rows) == {"conv", "external"}
    for r in rows.values():
        assert r["error"] == "" and 0.0 <= r["miou"] <= 1.0 and "top1" not in r
        assert r["miou"] == r["history"][-1]["test_miou"] and r["params"] > 0 and r["flops"] > 0
        assert r["peak_mib"] > 0 and r["latency_ms"] > 0
        assert f"{100 * r['miou']:.1f}" in text
    # stem 3x3 (3 -> 8), conv mixer 3x3 (8 -> 8), 1x1 classifier (8 -> 3), all with biases
    assert rows["conv"]["params"] == (3 * 8 * 9 + 8) + (8 * 8 * 9 + 8) + (8 * 3 + 3)
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "runs" / "segment" / "external" / "seed0" / "metrics.jsonl").is_file()
    assert (out / "runs" / "segment" / "external" / "seed0" / ".visattn-compare-run").is_file()
    # A folder compare did not create is refused before any training, and left alone.
    mine = out / "runs" / "segment" / "conv" / "seed0"
    (mine / ".visattn-compare-run").unlink()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="compare did not create it"):
        compare_segment(
            ["conv"],
            model=ensure_registered(),
            data=spec,
            image_size=12,
            epochs=1,
            batch_size=8,
            output=out,
            progress=False,
        )
    assert (mine / "notes.txt").read_text() == "mine"


def test_compare_segment_failure_row_and_errors(tmp_path):
    spec = make_seg_folder(tmp_path / "d", n=12)
    res = compare_segment(
        ["conv"],
        model=ensure_registered(),
        data=spec,
        image_size=12,
        epochs=1,
        batch_size=8,
        attn_kwargs={"conv": {"kernel_size": -1}},
        output=None,
        progress=False,
    )
    assert res[0].error.startswith("ValueError") and res[0].miou is None
    assert "| conv " in format_seg_table(res)
    with pytest.raises(ValueError, match="unknown mechanism\\(s\\) \\['nope'\\]"):
        compare_segment(["nope"], model=ensure_registered(), data=spec, output=None)


def test_classification_only_options_are_refused_with_task_segment(capsys):
    rc = main(["compare", "--task", "segment", "--seeds", "3", "--quick", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip() == (
        "visattn compare: error: --seeds, --quick belong(s) to the classification comparison; "
        "--task segment trains one seed of one segmentation model per mechanism (choose it with "
        "--model, its data with --data)"
    )


class _Captured(Exception):
    pass


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], {"model": "fpn_resnet_tiny", "batch_size": 16, "lr": 5e-3}),
        # given options are used as given, even when they equal the classification defaults (resnet_tiny, 64, 3e-3)
        (["--batch-size", "64", "--lr", "0.003"], {"batch_size": 64, "lr": 3e-3}),
        (["--batch-size", "8", "--lr", "0.01"], {"batch_size": 8, "lr": 0.01}),
    ],
)
def test_segment_options_given_are_used_as_given(argv, expected, monkeypatch):
    import visattn.compare_segment as cs

    def fake(mechanisms, **kw):
        raise _Captured(kw)

    monkeypatch.setattr(cs, "compare_segment", fake)
    with pytest.raises(_Captured) as e:
        main(["compare", "--task", "segment", "--no-progress", *argv])
    kw = e.value.args[0]
    assert {k: kw[k] for k in expected} == expected


def test_classification_defaults_unchanged(monkeypatch):
    import visattn.compare as c

    def fake(mechanisms, **kw):
        raise _Captured(kw)

    monkeypatch.setattr(c, "compare", fake)
    with pytest.raises(_Captured) as e:
        main(["compare", "--no-progress"])
    kw = e.value.args[0]
    assert (
        (kw["model"], kw["batch_size"], kw["lr"])
        == (c.DEFAULTS["model"], c.DEFAULTS["batch_size"], c.DEFAULTS["lr"])
        == ("resnet_tiny", 64, 3e-3)
    )


def test_empty_model_kwargs_is_refused_with_task_segment_too(capsys):
    rc = main(["compare", "--task", "segment", "--model-kwargs", "{}", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.startswith("visattn compare: error: --model-kwargs belong(s) to the classification comparison")
