"""`visattn compare`: tasks x seeds, spreads and near-best marks, table, JSON, plot, and output-folder safety."""

import json
import re

import pytest
import torch

import visattn
from _tiny_model import ensure_registered, make_color_folder, unregister
from visattn.cli import main
from visattn.compare import (
    RUN_MARKER,
    TASKS,
    CompareReport,
    RunResult,
    Task,
    compare,
    format_table,
    reach,
    sees_position,
    summarize,
)
from visattn.flops import count_flops


@pytest.fixture(autouse=True, scope="module")
def _unregister_tiny_model():
    yield
    unregister()


def _cli(tmp_path, out, *extra):
    name = ensure_registered()
    data = (
        make_color_folder(tmp_path / "imgs", per_class=6)
        if not (tmp_path / "imgs").exists()
        else f"folder:{tmp_path / 'imgs'}"
    )
    return main(
        [
            "compare",
            "--model",
            name,
            "--data",
            data,
            "--image-size",
            "8",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--output",
            str(out),
            "--no-progress",
            "--threads",
            "1",
            *extra,
        ]
    )


def test_compare_seeds_table_json_png_and_failure_row(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = _cli(
        tmp_path,
        out,
        "-m",
        "conv",
        "mhsa",
        "external",
        "--seeds",
        "2",
        "--attn-kwargs",
        '{"external": {"no_such_option": 1}}',
    )
    assert rc == 0
    text = capsys.readouterr().out
    header = text.splitlines()[0]
    for col in (
        "mechanism",
        "reach",
        "sees position",
        "folder top-1 %",
        "params (folder)",
        "MFLOPs/img",
        "train img/s",
        "latency ms (batch 1)",
        "peak MiB",
        "error",
    ):
        assert f" {col} " in header, col
    assert "failed: external" in text and "no_such_option" in text
    assert "mean ± half the range over 2 seed(s)" in text

    doc = json.loads((out / "compare.json").read_text())
    assert doc["config"]["seeds"] == [0, 1] and doc["config"]["threads"] == 1
    runs = [(r["mechanism"], r["seed"]) for r in doc["runs"]]
    assert runs == [("conv", 0), ("mhsa", 0), ("external", 0), ("conv", 1), ("mhsa", 1), ("external", 1)]
    rows = {r["mechanism"]: r for r in doc["rows"]}
    assert rows["external"]["tasks"]["folder"]["error"].startswith("TypeError")
    assert rows["mhsa"]["sees_position"] == "no" and rows["conv"]["sees_position"] == "yes"
    for mech in ("conv", "mhsa"):
        st = rows[mech]["tasks"]["folder"]
        accs = [r["top1"] for r in doc["runs"] if r["mechanism"] == mech]
        assert st["accs"] == accs and st["mean"] == pytest.approx(sum(accs) / 2)
        assert st["spread"] == pytest.approx(abs(accs[0] - accs[1]) / 2)
        for r in doc["runs"]:
            if r["mechanism"] == mech:
                assert r["error"] == "" and len(r["history"]) == 1 and r["history"][0]["step"] == 2
                assert r["top1"] == r["history"][0]["test_acc"]
        fresh = visattn.create_model(ensure_registered(), num_classes=3, attention=mech).eval()
        assert st["params"] == sum(p.numel() for p in fresh.parameters())
        with torch.no_grad():
            assert st["flops"] == count_flops(fresh, torch.randn(1, 3, 8, 8))
        assert st["latency_ms"] > 0 and st["peak_mib"] > 0 and st["train_img_s"] > 0
        cell = f"{100 * st['mean']:.1f} ± {100 * st['spread']:.1f}"
        assert re.search(rf"\| {mech} .*\| {re.escape(cell)}( \*)? ", text), cell
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = out / "runs" / "folder" / "conv" / "seed1"
    assert (run / "metrics.jsonl").is_file() and (run / RUN_MARKER).is_file()
    assert not (run / "checkpoints").exists()


def _row_report(accs: dict[str, list[float]]) -> CompareReport:
    task = Task("t", "digits", 8, 1, 1, 0.1, "")
    runs = [RunResult("t", m, s, top1=a, train_img_s=100.0) for m, v in accs.items() for s, a in enumerate(v)]
    rows = summarize(runs, {}, list(accs), [task])
    return CompareReport(rows, runs, [task], {"seeds": [0, 1], "latency_batch": 1}, 1.0)


def test_spread_and_near_best_marks():
    rep = _row_report({"conv": [0.90, 0.80], "local": [0.84, 0.82], "mhsa": [0.70, 0.72], "swin": [0.79, 0.79]})
    st = {r.mechanism: r.tasks["t"] for r in rep.rows}
    assert st["conv"].mean == pytest.approx(0.85) and st["conv"].spread == pytest.approx(0.05)
    assert st["conv"].best and not st["local"].best
    # best interval [0.80, 0.90]: local [0.82, 0.84] overlaps, swin [0.79, 0.79] does not, mhsa does not
    assert [st[m].near_best for m in ("conv", "local", "mhsa", "swin")] == [True, True, False, False]
    table = format_table(rep)
    assert "| 85.0 ± 5.0 * " in table and "| 83.0 ± 1.0 * " in table and "| 71.0 ± 1.0 " in table
    assert "| 79.0 ± 0.0 " in table


def test_reach_and_position_columns():
    assert [sees_position(m) for m in ("conv", "mhsa", "efficient", "sra", "external", "relpos", "swin")] == [
        "yes",
        "no",
        "no",
        "no",
        "no",
        "yes",
        "yes",
    ]
    assert sees_position("mhsa", pos_embed=True) == "conv PE" and sees_position("conv", pos_embed=True) == "yes"
    assert [reach(m) for m in ("conv", "local", "slide", "swin", "lambda", "mhsa", "external")] == [
        "local",
        "local",
        "local",
        "local",
        "global",
        "global",
        "global",
    ]


def test_pos_embed_adds_one_depthwise_conv_per_mechanism_and_breaks_permutation_equivariance():
    from visattn.models.pos_embed import ConvPosEmbed

    plain = visattn.create_model("resnet_tiny", num_classes=2, attention="mhsa", depths=[1, 1], widths=[16, 32])
    pe = visattn.create_model(
        "resnet_tiny", num_classes=2, attention="mhsa", depths=[1, 1], widths=[16, 32], pos_embed=True
    )
    pes = [m for m in pe.modules() if isinstance(m, ConvPosEmbed)]
    assert len(pes) == 2
    extra = sum(p.numel() for p in pe.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == (16 * 9 + 16) + (32 * 9 + 32)  # depthwise 3x3 + bias, widths 16 and 32
    # x + dwconv(x): with a zero kernel it is the identity
    layer = ConvPosEmbed(4)
    torch.nn.init.zeros_(layer.proj.weight)
    torch.nn.init.zeros_(layer.proj.bias)
    x = torch.randn(2, 4, 5, 7)
    assert torch.equal(layer(x), x)
    with pytest.raises(ValueError, match="kernel_size must be an odd int >= 1, got 4"):
        ConvPosEmbed(4, kernel_size=4)


def test_default_tasks_and_budget_settings():
    assert list(TASKS) == ["digits", "longrange"]
    assert TASKS["digits"].chance == 0.1 and TASKS["longrange"].chance == 0.5
    assert all(t.quick_epochs <= t.epochs for t in TASKS.values())


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"seeds": 0}, "seeds must be an int >= 1, got 0"),
        ({"tasks": ["digits", "nope"]}, "unknown task(s) ['nope']; expected names from ['digits', 'longrange']"),
        ({"data": "digits"}, "a custom data spec ('digits') needs image_size and epochs"),
        (
            {"data": "digits", "tasks": ["digits"], "image_size": 8, "epochs": 1},
            "give either tasks ['digits'] or a data spec 'digits', not both",
        ),
        ({"epochs": 0}, "epochs must be an int >= 1, got 0"),
        ({"image_size": 0}, "image_size must be an int >= 1, got 0"),  # was silently replaced by the tasks' sizes
    ],
)
def test_bad_options_fail_before_training(kw, msg, tmp_path, monkeypatch):
    import visattn.train

    monkeypatch.setattr(visattn.train, "train", lambda *a, **k: pytest.fail("trained despite bad options"))
    with pytest.raises(ValueError, match=re.escape(msg)):
        compare(["conv"], output=tmp_path / "o", progress=False, **kw)
    assert not (tmp_path / "o").exists()


def test_compare_rejects_unknown_names(capsys):
    assert main(["compare", "-m", "conv", "nope", "--model", ensure_registered(), "--no-progress"]) == 2
    assert "unknown mechanism(s) ['nope']" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Output folder safety (issue 10): compare removes only what it created itself.
# ---------------------------------------------------------------------------


def test_output_that_is_a_file_fails_first_with_one_line(tmp_path, capsys, monkeypatch):
    import visattn.train

    monkeypatch.setattr(visattn.train, "train", lambda *a, **k: pytest.fail("measured before checking --output"))
    f = tmp_path / "taken.txt"
    f.write_text("mine")
    rc = main(["compare", "-m", "conv", "--output", str(f), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip() == (
        f"visattn compare: error: output {str(f)!r} is an existing file; expected a folder "
        "(it will hold compare.json, compare.png and runs/)"
    )
    assert f.read_text() == "mine"
    rc = main(["compare", "-m", "conv", "--output", str(f / "sub"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.startswith(f"visattn compare: error: cannot create the output folder {str(f / 'sub')!r}: ")


def test_foreign_files_in_run_folders_survive_and_own_runs_are_replaced(tmp_path, capsys):
    name = ensure_registered()
    data = make_color_folder(tmp_path / "imgs", per_class=6)
    out = tmp_path / "cmp"
    # an earlier `visattn train` run and a user's file where compare's run folder would go
    train_dir = out / "runs" / "folder" / "conv" / "seed0"
    assert (
        main(
            [
                "train",
                "--model",
                name,
                "--attention",
                "conv",
                "--data",
                data,
                "--image-size",
                "8",
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--output",
                str(train_dir),
                "--no-progress",
            ]
        )
        == 0
    )
    user = out / "runs" / "folder" / "mhsa" / "seed0" / "notes.txt"
    user.parent.mkdir(parents=True)
    user.write_text("my notes")
    old_layout = out / "runs" / "conv" / "notes.txt"  # where compare used to write (and delete)
    old_layout.parent.mkdir(parents=True)
    old_layout.write_text("keep")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    capsys.readouterr()
    rc = _cli(tmp_path, out, "-m", "conv", "mhsa")
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.startswith(
        f"visattn compare: error: {str(train_dir)!r}, {str(user.parent)!r} already exist(s) and "
        f"compare did not create it (no {RUN_MARKER} file)"
    )
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing touched
    assert user.read_text() == "my notes" and (train_dir / "model.safetensors").is_file()

    # compare's own runs: replaced on the next run; the user's files elsewhere stay
    out2 = tmp_path / "cmp2"
    (out2 / "runs" / "conv").mkdir(parents=True)
    (out2 / "runs" / "conv" / "notes.txt").write_text("keep")
    assert _cli(tmp_path, out2, "-m", "conv") == 0
    stale = out2 / "runs" / "folder" / "conv" / "seed0" / "stale.txt"
    stale.write_text("left by an earlier compare run")
    assert _cli(tmp_path, out2, "-m", "conv") == 0
    assert not stale.exists() and (stale.parent / "metrics.jsonl").is_file()
    assert (out2 / "runs" / "conv" / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--threads", "-1"], "argument --threads: expected an integer >= 0, got '-1'"),
        (["--seeds", "0"], "argument --seeds: expected an integer >= 1, got '0'"),
        (["--lr", "inf"], "argument --lr: expected a finite number, got 'inf'"),
        (["--epochs", "2.5"], "argument --epochs: expected an integer, got '2.5'"),
    ],
)
def test_bad_numeric_options_are_one_line_errors(argv, message, capsys):
    from visattn.cli import main

    with pytest.raises(SystemExit) as e:
        main(["compare", *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.strip().endswith(f"visattn compare: error: {message}")
    assert "Traceback" not in err


def test_a_file_on_the_runs_path_fails_first_with_one_line(tmp_path, capsys, monkeypatch):
    import visattn.train

    monkeypatch.setattr(visattn.train, "train", lambda *a, **k: pytest.fail("trained despite a blocked runs path"))
    out = tmp_path / "cmp"
    for blocker in (out / "runs", out / "runs" / "digits", out / "runs" / "digits" / "conv"):
        if (out / "runs").is_file():
            (out / "runs").unlink()
        blocker.parent.mkdir(parents=True, exist_ok=True)
        blocker.write_text("mine")
        rc = main(["compare", "-m", "conv", "--tasks", "digits", "--output", str(out), "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err
        assert err.strip() == (
            f"visattn compare: error: {str(blocker)!r} is an existing file where compare needs a "
            "folder for its runs: move it away or choose another output"
        )
        assert blocker.read_text() == "mine" and not (out / "compare.json").exists()
        blocker.unlink()


def test_every_task_is_loaded_before_any_training(tmp_path, capsys, monkeypatch):
    import visattn.train

    monkeypatch.setattr(visattn.train, "train", lambda *a, **k: pytest.fail("trained before loading every task"))
    # digits accepts 8x8, longrange needs >= 12: the mistake must show before the digits runs, not after them
    rc = main(["compare", "-m", "conv", "--image-size", "8", "--output", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip() == ("visattn compare: error: image_size must be >= 4 * mark + 4 = 12 for marks of side 2, got 8")


def _widest_feature_columns(mechanism: str) -> int:
    """How many input columns (of a 16-wide image) the most far-reaching pre-pooling feature of the
    default shallow backbone depends on (gradient footprint, eval mode, random weights)."""
    from visattn.compare import SHALLOW_TINY

    torch.manual_seed(0)
    model = visattn.create_model("resnet_tiny", num_classes=2, attention=mechanism, **SHALLOW_TINY).eval()
    x = torch.randn(1, 3, 16, 16, requires_grad=True)
    f = model.forward_features(x)
    widest = 0
    for j in range(f.shape[-1]):  # a column of features at a time: the union of their footprints
        (g,) = torch.autograd.grad(f[0, :, :, j].sum(), x, retain_graph=True)
        cols = (g.abs().sum(dim=(0, 1, 2)) > 0).nonzero().flatten()
        widest = max(widest, int(cols.max() - cols.min()) + 1)
    return widest


def test_local_receptive_fields_against_the_long_range_marks():
    """docs/compare.md: a feature needs at least 10 columns to touch both marks; the 75% cap is proven for
    features narrower than that. conv, local and slide: 9 columns. swin: its 7x7 windows tile the 16x16 map at
    0-6, 7-13, and the strided block's 3x3 average pool straddles two of them (a ReLU follows), so one feature can depend on
    both marks: the cap does not cover swin."""
    from visattn.data.longrange import mark_slots

    left, right = mark_slots(16)
    # closest marks (2 wide): a feature needs the left one's last column through the right one's first
    span = right.start - (left.stop - 1 + 1) + 1
    assert span == 10
    for mech in ("conv", "local", "slide"):
        assert _widest_feature_columns(mech) == 9 < span, mech
    assert _widest_feature_columns("swin") > span


def test_plot_shows_failed_mechanisms_inside_the_axes(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from visattn.compare import write_plot

    task = Task("digits", "digits", 8, 1, 1, 0.1, "")
    runs = [RunResult("digits", "conv", s, top1=a, train_img_s=1.0) for s, a in enumerate((0.97, 0.95))]
    runs += [RunResult("digits", "mhsa", s, error="RuntimeError: boom") for s in range(2)]
    rep = CompareReport(summarize(runs, {}, ["conv", "mhsa"], [task]), runs, [task], {"seeds": [0, 1]}, 1.0)
    figs = []
    real_savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (figs.append(self), real_savefig(self, *a, **k)))
    write_plot(rep, tmp_path / "p.png")
    (fig,) = figs
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    (label,) = [t for t in ax.texts if t.get_text() == "failed"]
    box, area = label.get_window_extent(renderer), ax.get_window_extent(renderer)
    assert area.y0 <= box.y0 and box.y1 <= area.y1, "the 'failed' label is drawn outside the visible y range"
    lo, hi = ax.get_xlim()
    assert lo <= -0.5 and hi >= 1.5, "the first and last mechanisms sit on the frame, half cut"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusals")
@pytest.mark.parametrize("task", ["classify", "segment"])
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--amp", "fp16"], "--amp fp16 needs CUDA (it relies on a GradScaler); on CPU use --amp bf16 or none"),
        (["--device", "cuda"], "device 'cuda' requested but torch.cuda.is_available() is False"),
    ],
)
def test_device_and_amp_mistakes_fail_first_with_one_line(task, argv, message, tmp_path, capsys, monkeypatch):
    import visattn.train
    import visattn.train.segment

    monkeypatch.setattr(visattn.train, "train", lambda *a, **k: pytest.fail("trained despite a bad device/amp"))
    monkeypatch.setattr(visattn.train.segment, "train_segment", lambda *a, **k: pytest.fail("trained"))
    out = tmp_path / "o"
    rc = main(["compare", "--task", task, "-m", "conv", "--output", str(out), "--no-progress", *argv])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip() == f"visattn compare: error: {message}"
    assert not out.exists()


def test_a_bare_string_for_names_is_a_type_error(tmp_path):
    with pytest.raises(
        TypeError, match=re.escape("mechanisms must be a list of names, got the string 'conv' (write ['conv'])")
    ):
        compare("conv", output=None, progress=False)
    with pytest.raises(TypeError, match=re.escape("tasks must be a list of names, got the string 'digits'")):
        compare(["conv"], tasks="digits", output=None, progress=False)
    with pytest.raises(TypeError, match=re.escape("mechanisms must be a list of names, got the string 'conv'")):
        compare("conv", task="segment", output=None, progress=False)


@pytest.mark.parametrize("task", ["classify", "segment"])
def test_a_second_compare_on_the_same_output_refuses_and_removes_nothing(task, tmp_path, capsys, monkeypatch):
    import visattn.train
    import visattn.train.segment
    from visattn.compare import task_folder
    from visattn.compare.core import _run_dir
    from visattn.train.checkpoint import RunLock

    monkeypatch.setattr(visattn.train, "train", lambda *a, **k: pytest.fail("trained into a locked output"))
    monkeypatch.setattr(visattn.train.segment, "train_segment", lambda *a, **k: pytest.fail("trained"))
    out = tmp_path / "o"
    folder = task_folder(out, task)  # classify: out itself; segment: out/segment
    # the first compare's run in progress: a marked run folder with its files
    run = _run_dir(folder, "digits" if task == "classify" else "digitscenes", "conv", 0)
    run.mkdir(parents=True)
    (run / RUN_MARKER).write_text("")
    (run / "metrics.jsonl").write_text("{}\n")
    with RunLock(folder):  # held by the first compare for its whole run
        rc = main(
            ["compare", "--task", task, "-m", "conv", "--output", str(out), "--no-progress"]
            + (["--tasks", "digits"] if task == "classify" else [])
        )
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.startswith(f"visattn compare: error: run folder {str(folder)!r} is in use by another visattn process")
    assert (run / "metrics.jsonl").read_text() == "{}\n"


@pytest.mark.parametrize(
    "kw", [{"pos_embed": True}, {"model_kwargs": {"depths": [1, 1], "widths": [16, 32], "pos_embed": True}}]
)
def test_position_column_follows_pos_embed_however_given(kw, monkeypatch):
    import visattn.compare.core as c

    seen = {}

    def fake(plugin, names, tasks, seeds, cfg, device, out, progress):
        seen.update(cfg)
        runs = [RunResult(t.name, n, s, top1=0.5) for t in tasks for n in names for s in seeds]
        return CompareReport(summarize(runs, {}, names, tasks, cfg["pos_embed"]), runs, tasks, cfg, 0.0)

    monkeypatch.setattr(c, "_compare", fake)
    rep = compare(["mhsa"], tasks=["digits"], output=None, progress=False, **kw)
    assert seen["model_kwargs"]["pos_embed"] is True and seen["pos_embed"] is True
    assert rep.rows[0].sees_position == "conv PE"


@pytest.mark.parametrize("task", ["classify", "segment"])
def test_repeated_mechanisms_are_refused(task, tmp_path, capsys, monkeypatch):
    import visattn.train
    import visattn.train.segment

    # a repeat would train twice into one run folder (the second replacing the first) and print two rows
    monkeypatch.setattr(visattn.train, "train", lambda *a, **k: pytest.fail("trained"))
    monkeypatch.setattr(visattn.train.segment, "train_segment", lambda *a, **k: pytest.fail("trained"))
    rc = main(
        ["compare", "--task", task, "-m", "conv", "mhsa", "conv", "--output", str(tmp_path / "o"), "--no-progress"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip() == "visattn compare: error: mechanisms must not repeat, got ['conv', 'mhsa', 'conv']"
