"""visattn compare --task segment: one segmentation model per mechanism through the one compare: mIoU table, JSON, plot."""

import json

import pytest

from _seg_fixtures import make_seg_folder
from _tiny_seg_model import ensure_registered, unregister
from visattn.cli import main
from visattn.compare import compare, format_table


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
    assert " segfolder mIoU % " in header and " segfolder pixel acc % " in header and "top-1" not in header
    assert not (out / "compare.json").exists()  # the main job's place stays free
    folder = out / "segment"
    assert f"wrote {folder / 'compare.json'} and {folder / 'compare.png'}" in text
    doc = json.loads((folder / "compare.json").read_text())
    assert doc["config"]["task"] == "segment" and doc["config"]["seeds"] == [0]
    assert doc["config"]["data"]["segfolder"]["num_classes"] == 3
    assert doc["config"]["data"]["segfolder"]["ignore_index"] == 255
    runs = {r["mechanism"]: r for r in doc["runs"]}
    rows = {r["mechanism"]: r["tasks"]["segfolder"] for r in doc["rows"]}
    assert set(runs) == set(rows) == {"conv", "external"}
    for mech, r in runs.items():
        assert r["error"] == "" and 0.0 <= r["miou"] <= 1.0 and "top1" not in r
        assert r["miou"] == r["history"][-1]["test_miou"] and r["pixel_acc"] == r["history"][-1]["test_pixel_acc"]
        st = rows[mech]
        assert st["mious"] == [r["miou"]] and st["mean"] == r["miou"] and st["spread"] == 0.0
        assert st["others"]["pixel_acc"] == {"values": [r["pixel_acc"]], "mean": r["pixel_acc"], "spread": 0.0}
        assert st["params"] > 0 and st["flops"] > 0 and st["peak_mib"] > 0 and st["latency_ms"] > 0
        assert f"| {100 * r['miou']:.1f}" in text and f"| {100 * r['pixel_acc']:.1f} " in text
    # stem 3x3 (3 -> 8), conv mixer 3x3 (8 -> 8), 1x1 classifier (8 -> 3), all with biases
    assert rows["conv"]["params"] == (3 * 8 * 9 + 8) + (8 * 8 * 9 + 8) + (8 * 3 + 3)
    assert (folder / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert (folder / "runs" / "segfolder" / "external" / "seed0" / "metrics.jsonl").is_file()
    assert (folder / "runs" / "segfolder" / "external" / "seed0" / ".visattn-compare-run").is_file()
    # A folder compare did not create is refused before any training, and left alone.
    mine = folder / "runs" / "segfolder" / "conv" / "seed0"
    (mine / ".visattn-compare-run").unlink()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="compare did not create it"):
        compare(
            ["conv"],
            task="segment",
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
    rep = compare(
        ["conv"],
        task="segment",
        model=ensure_registered(),
        data=spec,
        image_size=12,
        epochs=1,
        batch_size=8,
        attn_kwargs={"conv": {"kernel_size": -1}},
        output=None,
        progress=False,
    )
    (run,) = rep.runs
    assert run.error.startswith("ValueError") and run.scores == {"miou": None, "pixel_acc": None}
    assert rep.rows[0].tasks["segfolder"].error == run.error
    assert "| conv " in format_table(rep) and "| failed " in format_table(rep)
    with pytest.raises(ValueError, match="unknown mechanism\\(s\\) \\['nope'\\]"):
        compare(["nope"], task="segment", model=ensure_registered(), data=spec, output=None)
    with pytest.raises(ValueError, match="segmentation needs a segmentation model; 'resnet_tiny' is a classify model"):
        compare(["conv"], task="segment", model="resnet_tiny", output=None)


def test_data_sets_of_another_task_are_refused(capsys):
    rc = main(["compare", "--task", "segment", "--tasks", "digits", "--no-progress", "--output", "/nonexistent/x"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip() == "visattn compare: error: unknown task(s) ['digits']; expected names from ['digitscenes']"


class _Captured(Exception):
    pass


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], {"task": "segment", "model": "fpn_resnet_tiny", "batch_size": 16, "lr": 5e-3, "seeds": None}),
        # given options are used as given, even when they equal the classification defaults (resnet_tiny, 64, 3e-3)
        (["--batch-size", "64", "--lr", "0.003"], {"batch_size": 64, "lr": 3e-3}),
        (["--batch-size", "8", "--lr", "0.01"], {"batch_size": 8, "lr": 0.01}),
        # the core's options hold for every task: seeds, quick, model options
        (["--seeds", "3", "--quick", "--model-kwargs", "{}"], {"seeds": 3, "quick": True, "model_kwargs": {}}),
    ],
)
def test_segment_options_given_are_used_as_given(argv, expected, monkeypatch):
    import visattn.compare as c

    def fake(mechanisms, **kw):
        raise _Captured(kw)

    monkeypatch.setattr(c, "compare", fake)
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
        (kw["task"], kw["model"], kw["batch_size"], kw["lr"])
        == ("classify", c.DEFAULTS["model"], c.DEFAULTS["batch_size"], c.DEFAULTS["lr"])
        == ("classify", "resnet_tiny", 64, 3e-3)
    )
