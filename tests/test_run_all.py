"""benchmarks/run_all.py: discovery of RUN_ALL literals, runs and failures, --check, README blocks,
atomic writes (issue 19). The benchmarks are fake scripts in a temporary tree: nothing is timed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


run_all = _load("run_all")
record = sys.modules["_record"]

GOOD = '''
"""A fake benchmark that records a ratio read from value.txt."""
import json, pathlib, sys
RUN_ALL = {"args": ["--x", "1"], "minutes": 0.1, "results": ["good.json", "good.md"], "check": ["ratio"]}
root = pathlib.Path(__file__).resolve().parents[1]
v = float((root / "value.txt").read_text())
assert sys.argv[1:] == ["--x", "1"], sys.argv
out = root / "benchmarks" / "results"
doc = {"machine": "m", "torch": "t", "threads": 1, "date": "d",
       "rows": [{"case": "a", "ratio": v, "ratio_rounds": [v * 0.9, v, v * 1.1]}, {"case": "b", "ratio": 2.0}],
       "time_s": 99.0 * v}
(out / "good.json").write_text(json.dumps(doc))
(out / "good.md").write_text(f"# good\\n\\nprose\\n\\n| case | ratio |\\n| --- | --- |\\n| a | {v:.2f} |\\n")
print("good done")
'''

BAD = '''
"""A fake benchmark that writes half a file, then fails."""
import pathlib
RUN_ALL = {"args": [], "minutes": 5, "results": ["bad.json"], "check": []}
out = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "results"
(out / "bad.json").write_text('{"half": ')
raise SystemExit(3)
'''

PLAIN = '''"""A GPU-only script without RUN_ALL."""
print("never run")
'''


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    bench = tmp_path / "benchmarks"
    (bench / "results").mkdir(parents=True)
    (bench / "good.py").write_text(GOOD)
    (bench / "bad.py").write_text(BAD)
    (bench / "gpu_only.py").write_text(PLAIN)
    (bench / "_helper.py").write_text("RUN_ALL = 1\n")  # helpers are not benchmarks
    (bench / "results" / "bad.json").write_text('{"recorded": 1}\n')
    (tmp_path / "value.txt").write_text("1.0")
    (tmp_path / "README.md").write_text(
        "# x\n\nbefore\n<!-- results:good.md -->\n| stale |\n|---|\n<!-- /results:good.md -->\nafter\n"
    )
    return tmp_path


def test_discovery_reads_literals_without_importing(tree: Path) -> None:
    (tree / "benchmarks" / "broken.py").write_text('RUN_ALL = {"args": [], "minutes": 1}\n')
    (tree / "benchmarks" / "computed.py").write_text("RUN_ALL = dict(args=[])\n")
    scripts = {s.name: s for s in run_all.discover(tree / "benchmarks")}
    assert sorted(scripts) == ["bad", "broken", "computed", "good", "gpu_only"]
    assert scripts["good"].recorded and scripts["good"].spec["results"] == ["good.json", "good.md"]
    assert scripts["good"].about == "A fake benchmark that records a ratio read from value.txt."
    assert not scripts["gpu_only"].recorded and scripts["gpu_only"].error == ""
    assert scripts["broken"].error == ("RUN_ALL lacks check, results (expected keys: args, minutes, results, check)")
    assert scripts["computed"].error.startswith("RUN_ALL is not a plain literal")
    assert run_all.validate_spec({"args": [], "minutes": 0, "results": ["a"], "check": []}) == (
        "RUN_ALL['minutes'] must be a positive number, got 0"
    )
    assert "paths inside benchmarks/results/" in run_all.validate_spec(
        {"args": [], "minutes": 1, "results": ["../a"], "check": []}
    )
    quick = run_all.select(list(scripts.values()), None, [], 3)
    assert [s.name for s in quick] == ["good"]  # bad takes 5 minutes; broken, computed, gpu_only are not recorded


def test_run_records_results_tables_and_failures(tree: Path, capsys) -> None:
    rc = run_all.main(["--root", str(tree), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 1  # bad failed; good still ran
    assert "not recorded: gpu_only" in out and "never run" not in out
    assert "bad.json" in out and "exit status 3; put back bad.json as recorded" in out
    assert (tree / "benchmarks" / "results" / "bad.json").read_text() == '{"recorded": 1}\n'
    assert json.loads((tree / "benchmarks" / "results" / "good.json").read_text())["rows"][0]["ratio"] == 1.0
    assert (tree / "README.md").read_text() == (
        "# x\n\nbefore\n<!-- results:good.md -->\n| case | ratio |\n| --- | --- |\n| a | 1.00 |\n"
        "<!-- /results:good.md -->\nafter\n"
    )
    log = json.loads((tree / "benchmarks" / "results" / "run_all.json").read_text())
    assert {"machine", "torch", "date"} <= set(log)
    assert log["runs"]["good"]["ok"] and log["runs"]["good"]["exit_status"] == 0
    assert log["runs"]["bad"]["exit_status"] == 3 and not log["runs"]["bad"]["ok"]
    assert sorted(log["runs"]) == ["bad", "good"]


@pytest.mark.parametrize(("value", "moved"), [(1.3, True), (1.1, False), (0.7, True)])
def test_check_lists_moves_over_25_percent_and_keeps_the_record(tree: Path, capsys, value: float, moved: bool) -> None:
    assert run_all.main(["--root", str(tree), "--quiet", "--only", "good"]) == 0
    recorded = (tree / "benchmarks" / "results" / "good.json").read_text()
    readme = (tree / "README.md").read_text()
    (tree / "value.txt").write_text(str(value))
    capsys.readouterr()
    rc = run_all.main(["--root", str(tree), "--quiet", "--only", "good.py", "--check", "--check-dir", str(tree / "c")])
    out = capsys.readouterr().out
    assert rc == (1 if moved else 0)
    assert (tree / "benchmarks" / "results" / "good.json").read_text() == recorded  # the record is kept
    assert (tree / "README.md").read_text() == readme
    assert json.loads((tree / "c" / "good.json").read_text())["rows"][0]["ratio"] == value  # fresh files kept aside
    band = f"noise band recorded [0.9, 1.1], fresh [{0.9 * value:.4g}, {1.1 * value:.4g}]"
    line = f"good.json: rows[a].ratio: recorded 1, fresh {value:.4g} ({100 * (value - 1):+.0f}%); {band}"
    if moved:
        assert f"    MOVED {line}" in out.splitlines()
        assert "2 figure(s) compared, 1 moved by more than 25%" in out  # rows[b].ratio stayed; time_s not checked
    else:
        assert f"    within {line}" in out.splitlines()
        assert "MOVED" not in out


def test_compare_docs_labels_and_bands() -> None:
    old = {"r": [{"mechanism": "conv", "resolution": 28, "ratio": 2.0}, {"mechanism": "conv", "resolution": 56}]}
    new = {"r": [{"mechanism": "conv", "resolution": 28, "ratio": 2.4, "ratio_band": [2.3, 2.6]}], "ratio_x": 1}
    moves = run_all.compare_docs(old, new, ["ratio"])
    assert [(m.key, m.old, m.new, m.band_new) for m in moves] == [
        ("r[conv@28].ratio", 2.0, 2.4, (2.3, 2.6)),
        ("ratio_x", None, 1.0, None),
    ]
    assert moves[0].change == pytest.approx(0.2) and not moves[0].moved(0.25) and moves[1].moved(0.25)
    # elements that their name-like keys cannot tell apart are labelled by index
    assert run_all.figures({"r": [{"case": "a", "v": 1}, {"case": "a", "v": 2}]}, ["v"])[0] == {
        "r[0].v": 1,
        "r[1].v": 2,
    }


def test_readme_blocks_known_answer(tmp_path: Path) -> None:
    (tmp_path / "x.md").write_text("# x\n| a |\n|---|\n| 1 |\n\ntext\n\n| b | c |\n|---|---|\n| 2 | 3 |\n")
    text = (
        "<!-- results:x.md -->\nold\n<!-- /results:x.md -->\nmid\n<!-- results:x.md#2 -->\n<!-- /results:x.md#2 -->\n"
        "<!-- results:y.md -->\nkeep\n<!-- /results:y.md -->\n<!-- results:x.md#3 -->\n<!-- /results:x.md#3 -->\n"
        "<!-- results:z.md -->\nno end\nin prose `<!-- results:x.md -->` is not a marker\n"
    )
    new, done, problems = run_all.replace_blocks(text, tmp_path)
    assert new == (
        "<!-- results:x.md -->\n| a |\n|---|\n| 1 |\n<!-- /results:x.md -->\nmid\n"
        "<!-- results:x.md#2 -->\n| b | c |\n|---|---|\n| 2 | 3 |\n<!-- /results:x.md#2 -->\n"
        "<!-- results:y.md -->\nkeep\n<!-- /results:y.md -->\n<!-- results:x.md#3 -->\n<!-- /results:x.md#3 -->\n"
        "<!-- results:z.md -->\nno end\nin prose `<!-- results:x.md -->` is not a marker\n"
    )
    assert done == ["x.md", "x.md#2"]
    assert problems == [
        "results:z.md: no closing <!-- /results:z.md --> after it",
        f"results:y.md: no file {tmp_path / 'y.md'}",
        "results:x.md#3: x.md has 2 table(s), block asks for table 3",
    ]


def test_atomic_write_keeps_the_old_file_on_error(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "r.json"
    run_all.atomic_write(path, "old\n")
    real = Path.write_text

    def half(self, data, *a, **k):
        real(self, data[:3], *a, **k)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half)
    with pytest.raises(OSError, match="No space left"):
        record.write_json(path, {"new": 1})
    monkeypatch.undo()
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_cli_errors_and_dry_run(tree: Path, capsys) -> None:
    assert run_all.main(["--root", str(tree), "--only", "nope"]) == 2
    assert (
        capsys.readouterr().err
        == "run_all.py: error: no benchmark script 'nope'; expected one of: bad, good, gpu_only\n"
    )
    assert run_all.main(["--root", str(tree), "--only", "gpu_only"]) == 2
    assert "gpu_only is not a recorded benchmark (it has no RUN_ALL literal)" in capsys.readouterr().err
    assert run_all.main(["--root", str(tree), "--quick", "--dry-run"]) == 1  # the README names a missing file
    out = capsys.readouterr().out
    assert "would run: python benchmarks/good.py --x 1   (~0.1 min -> good.json, good.md)" in out
    assert (
        "left out: bad" in out
        and f"README.md: results:good.md: no file {tree / 'benchmarks' / 'results' / 'good.md'}" in out
    )
    assert (tree / "README.md").read_text().count("| stale |") == 1  # nothing written
    assert run_all.main(["--root", str(tree), "--list"]) == 0
    assert "gpu_only" in capsys.readouterr().out


def test_the_projects_benchmarks_and_readme_blocks_are_consistent() -> None:
    scripts = run_all.discover(ROOT / "benchmarks")
    assert [s.name for s in scripts if s.error] == []
    for s in scripts:
        if s.recorded:
            for r in s.spec["results"]:
                path = ROOT / "benchmarks" / "results" / r
                assert path.is_file(), f"{s.name}: {r} not recorded"
                if r.endswith(".json"):
                    stamp = {"machine", "torch", "threads", "date"} - set(json.loads(path.read_text()))
                    assert not stamp, f"{r} lacks {sorted(stamp)}"
    said, problems = run_all.refresh_tables(ROOT, ROOT / "benchmarks" / "results", write=False)
    assert problems == []
    assert [line for line in said if "rewritten" in line] == []  # README/docs tables equal the results files


def test_check_without_a_recorded_file_says_so(tree: Path, capsys) -> None:
    rc = run_all.main(["--root", str(tree), "--quiet", "--only", "good", "--check", "--check-dir", str(tree / "c")])
    assert rc == 1
    assert "    MOVED good.json: no recorded file to compare with" in capsys.readouterr().out.splitlines()
    assert not (tree / "benchmarks" / "results" / "good.json").exists()  # still not recorded
