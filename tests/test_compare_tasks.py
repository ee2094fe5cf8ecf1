"""The one compare and the one CLI task table: tasks are plug-ins, and their results never overwrite each other."""

import json

import pytest
import torch

import visattn
import visattn.compare.core as core
import visattn.compare.plugin as plugin_api
from _seg_fixtures import make_seg_folder
from _tiny_model import ensure_registered, make_color_folder, unregister
from _tiny_seg_model import ensure_registered as ensure_seg_registered
from _tiny_seg_model import unregister as unregister_seg
from visattn.cli import main
from visattn.commands import tasks as cli_tasks
from visattn.compare import Metric, Task, TaskPlugin, list_tasks, register_task
from visattn.flops import count_flops
from visattn.train.checkpoint import RunLock


@pytest.fixture(autouse=True, scope="module")
def _unregister_tiny_models():
    yield
    unregister()
    unregister_seg()


def _compare_cli(out, task: str, data: str, model: str, *extra: str) -> int:
    return main(
        ["compare", "--task", task, "-m", "conv", "--model", model, "--data", data, "--image-size", "8"]
        + ["--epochs", "1", "--batch-size", "8", "--output", str(out), "--no-progress", *extra]
    )


def test_two_tasks_into_one_output_keep_both_results(tmp_path, capsys):
    """issue 21: `compare` and `compare --task segment` into the same (default) output folder."""
    out = tmp_path / "compare-out"
    cls_data = make_color_folder(tmp_path / "imgs", per_class=6)
    seg_data = make_seg_folder(tmp_path / "seg", n=12)
    assert _compare_cli(out, "classify", cls_data, ensure_registered(), "--seeds", "1") == 0
    classify_files = {p: p.read_bytes() for p in (out / "compare.json", out / "compare.png")}
    # a classify compare holding its lock does not keep segment out: each task has its own folder and lock
    with RunLock(out):
        assert _compare_cli(out, "segment", seg_data, ensure_seg_registered()) == 0
    assert {p: p.read_bytes() for p in classify_files} == classify_files
    seg = out / "segment"
    seg_files = {p: p.read_bytes() for p in (seg / "compare.json", seg / "compare.png")}
    assert _compare_cli(out, "classify", cls_data, ensure_registered(), "--seeds", "1", "--seed", "1") == 0
    assert {p: p.read_bytes() for p in seg_files} == seg_files
    capsys.readouterr()

    cls_doc = json.loads((out / "compare.json").read_text())
    seg_doc = json.loads((seg / "compare.json").read_text())
    assert (cls_doc["config"]["task"], cls_doc["config"]["seeds"]) == ("classify", [1])
    assert (seg_doc["config"]["task"], seg_doc["config"]["seeds"]) == ("segment", [0])
    assert [r["top1"] is not None for r in cls_doc["runs"]] == [True] and "miou" not in cls_doc["runs"][0]
    assert [r["miou"] is not None for r in seg_doc["runs"]] == [True] and "top1" not in seg_doc["runs"][0]
    assert (out / "runs" / "folder" / "conv" / "seed1" / "metrics.jsonl").is_file()
    assert (seg / "runs" / "segfolder" / "conv" / "seed0" / "metrics.jsonl").is_file()
    assert not (out / "runs" / "segfolder").exists() and not (seg / "runs" / "folder").exists()


@pytest.fixture
def toy_task(tmp_path, monkeypatch):
    """A task plug-in written in the test: classification judged by its test loss (lower is better),
    with its own cost input (images at twice the training size) and one cost left out. It is
    registered with the compare core and the CLI table; no library code names it."""
    data = make_color_folder(tmp_path / "imgs", per_class=6)

    class LossTask(TaskPlugin):
        name = "toy_loss"
        about = "colour squares judged by test loss"
        metrics = (
            Metric(
                "loss",
                "test loss",
                "test cross-entropy",
                unit="",
                source="test_loss",
                scale=1.0,
                digits=3,
                higher_is_better=False,
                values_key="losses",
            ),
            Metric("acc", "acc", "test accuracy", source="test_acc"),
        )
        datasets = {"colors": Task("colors", data, 8, 1, 1, 0.0, "three colours")}
        defaults = {"model": ensure_registered(), "tasks": ("colors",), "seeds": 2, "batch_size": 8, "lr": 0.01}
        skip_costs = {"peak_mib": "not measured for the toy task"}

        def load_data(self, task, seed):
            from visattn.data import load_data

            return load_data(task.data, task.image_size, seed=seed)

        def train(self, config, bundle):
            return visattn.train.train(visattn.train.TrainConfig(**config), data=bundle)

        def cost_input(self, task, batch, device):
            return torch.randn(batch, 3, 2 * task.image_size, 2 * task.image_size, device=device)

    plugin = register_task(LossTask())
    monkeypatch.setitem(cli_tasks.table(), plugin.name, cli_tasks.CliTask(plugin.name, plugin.about, compare=True))
    yield plugin
    plugin_api._PLUGINS.pop(plugin.name, None)


def test_a_task_plugin_written_in_a_test_runs_through_compare(toy_task, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["compare", "--task", "toy_loss", "-m", "conv", "mhsa", "external", "--output", str(out), "--no-progress"]
    rc = main([*argv, "--attn-kwargs", '{"external": {"no_such_option": 1}}'])
    text = capsys.readouterr().out
    assert rc == 0
    header = text.splitlines()[0]
    for col in ("colors test loss", "colors acc %", "params (colors)", "MFLOPs/img", "peak MiB", "error"):
        assert f" {col} " in header, col
    assert "test loss: test cross-entropy, mean ± half the range over 2 seed(s); * = the best (lowest)" in text
    assert "Not measured: peak_mib (not measured for the toy task)." in text
    assert "failed: external" in text and "no_such_option" in text

    folder = out / "toy_loss"
    doc = json.loads((folder / "compare.json").read_text())
    assert doc["config"]["task"] == "toy_loss" and doc["config"]["seeds"] == [0, 1]
    assert doc["config"]["costs_skipped"] == {"peak_mib": "not measured for the toy task"}
    runs = [(r["mechanism"], r["seed"]) for r in doc["runs"]]
    assert runs == [("conv", 0), ("mhsa", 0), ("external", 0), ("conv", 1), ("mhsa", 1), ("external", 1)]
    rows = {r["mechanism"]: r["tasks"]["colors"] for r in doc["rows"]}
    assert rows["external"]["error"].startswith("TypeError") and rows["external"]["mean"] is None
    assert [r["loss"] for r in doc["runs"] if r["mechanism"] == "external"] == [None, None]
    means = {m: rows[m]["mean"] for m in ("conv", "mhsa")}
    for mech in ("conv", "mhsa"):
        st = rows[mech]
        mine = [r for r in doc["runs"] if r["mechanism"] == mech]
        losses = [r["loss"] for r in mine]
        assert losses == [r["history"][-1]["test_loss"] for r in mine] and st["losses"] == losses
        assert st["mean"] == pytest.approx(sum(losses) / 2) and st["spread"] == pytest.approx(
            abs(losses[0] - losses[1]) / 2
        )
        accs = [r["acc"] for r in mine]
        assert st["others"]["acc"]["values"] == accs and st["others"]["acc"]["mean"] == pytest.approx(sum(accs) / 2)
        fresh = visattn.create_model(ensure_registered(), num_classes=3, attention=mech).eval()
        with torch.no_grad():  # the plug-in's cost input: 16 x 16 images
            assert (
                st["flops"]
                == count_flops(fresh, torch.randn(1, 3, 16, 16))
                != count_flops(fresh, torch.randn(1, 3, 8, 8))
            )
        assert st["peak_mib"] is None and st["latency_ms"] > 0
        cell = f"{st['mean']:.3f} ± {st['spread']:.3f}"
        assert f"| {cell}" in text
    best = min(means, key=means.get)  # lower is better: the lowest loss is the best, marked
    assert rows[best]["best"] and rows[best]["near_best"] and not rows[max(means, key=means.get)]["best"]
    assert f"| {rows[best]['mean']:.3f} ± {rows[best]['spread']:.3f} * " in text
    assert (folder / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (folder / "runs" / "colors" / "mhsa" / "seed1" / core.RUN_MARKER).is_file()
    assert not (out / "compare.json").exists()


def test_the_cli_table_and_the_compare_plugins_agree(capsys, monkeypatch):
    """Every compare plug-in has its CLI entry and every entry that compares names a plug-in."""
    monkeypatch.setenv("COLUMNS", "10000")  # help lines unwrapped
    assert cli_tasks.choices("compare") == list_tasks() == ["classify", "segment", "detect", "generate", "points"]
    assert cli_tasks.choices("train") == ["classify", "segment", "detect", "generate", "points", "partseg"]
    assert cli_tasks.choices("predict") == ["segment", "detect", "partseg"]
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = capsys.readouterr().out
    for name in list_tasks():  # `--task` choices and help come from the table and the plug-ins
        assert f"{name}: {plugin_api.get_task(name).about}" in text
    assert "--task {classify,segment,detect,generate,points}" in text
    with pytest.raises(SystemExit) as e:
        main(["compare", "--task", "nope"])
    assert e.value.code == 2
    assert (
        "argument --task: invalid choice: 'nope' (choose from 'classify', 'segment', 'detect', 'generate', 'points')"
        in capsys.readouterr().err
    )


def test_an_incomplete_plugin_is_refused_naming_what_is_missing():
    class Half(TaskPlugin):
        name = "half"
        metrics = (Metric("top1", "top-1", "test accuracy"),)
        datasets = {"d": Task("d", "digits", 8, 1, 1, 0.1, "")}
        defaults = {"model": "resnet_tiny", "tasks": ("d",), "batch_size": 8}
        skip_costs = {"speed": "?"}

    with pytest.raises(ValueError) as e:
        register_task(Half())
    assert str(e.value) == (
        "task plug-in Half: defaults lack ['lr'] / have unknown keys []; load_data() is not implemented; "
        "train() is not implemented; cost_step() is not implemented (or say why in skip_costs['peak_mib']); "
        "skip_costs keys must be from ('params', 'flops', 'latency_ms', 'peak_mib'), got ['speed']"
    )
    assert "half" not in list_tasks()
    with pytest.raises(ValueError, match="a task 'segment' is already registered; folder 'segment' is the folder"):
        register_task(type("Again", (type(plugin_api.get_task("segment")),), {})())


def test_an_option_of_another_task_is_refused(tmp_path, capsys):
    rc = main(["train", "--ignore-index", "3", "--output", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip() == "visattn train: error: --ignore-index belong(s) to --task segment, not --task classify"
    assert not (tmp_path / "r").exists()
    # a task without a predict runner is not a choice of predict
    with pytest.raises(SystemExit) as e:
        main(["predict", "--task", "classify", "--weights", "w", "--image", "i"])
    assert (
        e.value.code == 2
        and "invalid choice: 'classify' (choose from 'segment', 'detect', 'partseg')" in capsys.readouterr().err
    )


def test_every_task_is_in_the_task_table_of_docs_compare():
    import pathlib

    doc = (pathlib.Path(__file__).parents[1] / "docs" / "compare.md").read_text(encoding="utf-8")
    table = doc[doc.index("## Tasks") :]
    missing = [n for n in list_tasks() if f"| `--task {n}`" not in table]
    assert not missing, f"docs/compare.md 'Tasks' has no row for {missing}"
