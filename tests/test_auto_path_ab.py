"""benchmarks/auto_path_ab.py builds every benchmark case it reports (no timing asserted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("auto_path_ab", ROOT / "benchmarks" / "auto_path_ab.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_reparameterized_variant_is_built_and_timed():
    # slide's bench variant {"_reparameterize": True} is a benchmark-only flag: passed to the
    # constructor it failed in both trees, and the report blamed the baseline.
    mod = _script()
    kw = {"num_heads": 4, "kernel_size": 3, "_reparameterize": True}
    times = mod.run(str(ROOT / "src"), [("slide", kw, False), ("slide", kw, True)], 3)
    assert all(isinstance(t, float) and t > 0 for t in times), times


def test_report_names_the_tree_that_cannot_build_a_case(monkeypatch, capsys, tmp_path):
    mod = _script()
    (tmp_path / "visattn").mkdir()
    base = str(tmp_path)
    monkeypatch.setattr(mod, "cases", lambda only: [("mhsa", {"a": 1}, False), ("mhsa", {"b": 2}, False)])
    monkeypatch.setattr(mod, "run", lambda tree, todo, size: [1.0, None] if tree == base else [None, 1.0])
    mod.main(["--baseline", base, "--rounds", "2"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("this tree cannot build it") and out[1].endswith("the baseline cannot build it"), out
