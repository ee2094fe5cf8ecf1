"""visattn bench: measurement helpers, FLOP checks, slopes, CLI outputs (no timing assertions)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import visattn
from visattn.bench import bench_mechanism, peak_memory_bytes, scaling_slopes
from visattn.bench.core import BenchResult, bench_cases
from visattn.cli import main


def test_peak_memory_counts_live_tensors():
    def fn():
        a = torch.empty(1000, 1000)  # 4,000,000 bytes
        b = torch.empty(500, 1000)  # 2,000,000 bytes while a is alive
        del a, b
        c = torch.empty(100, 1000)  # 400,000 bytes after both are freed
        return c

    assert peak_memory_bytes(fn) == 6_000_000


def test_scaling_slopes_of_known_power_laws():
    rs = []
    for s in (8, 16, 32):
        n = s * s
        rs.append(
            BenchResult(
                "q",
                "mhsa",
                {},
                s,
                n,
                8,
                1,
                fwd_ms=1e-3 * n**2,
                fwdbwd_ms=2e-3 * n**2,
                mem_fwd_mib=0.5 * n,
                mem_train_mib=n,
            )
        )
    slopes = scaling_slopes(rs)["q"]
    assert slopes["fwd_ms"] == pytest.approx(2.0, abs=1e-9)
    assert slopes["fwdbwd_ms"] == pytest.approx(2.0, abs=1e-9)
    assert slopes["mem_fwd_mib"] == pytest.approx(1.0, abs=1e-9)


def test_bench_case_fields_and_flops():
    (r,) = bench_mechanism("external", {"memory_size": 16}, resolutions=[6], dim=8, batch=2, min_time=0.0)
    assert r.error == ""
    m = visattn.create_attention("external", 8, memory_size=16)
    assert r.params == sum(p.numel() for p in m.parameters())
    assert r.flops_match
    assert r.flops == m.analytic_flops(6, 6, 2) == 2 * 2 * 36 * 16 * 8 * 2
    assert r.fwd_ms > 0 and r.fwdbwd_ms > 0 and r.mem_train_mib > 0


def test_local_flops_add_the_elementwise_part():
    (r,) = bench_mechanism(
        "local", {"num_heads": 2, "kernel_size": 3}, resolutions=[5], dim=8, batch=1, min_time=0.0, backward=False
    )
    assert r.flops_match
    assert r.flops - r.flops_counter == 2 * 2 * 25 * 8 * 9
    assert math.isnan(r.fwdbwd_ms)


def test_bench_records_errors_instead_of_raising():
    (r,) = bench_mechanism("mhsa", {"num_heads": 3}, resolutions=[4], dim=8, min_time=0.0)
    assert "divisible by num_heads=3" in r.error


def test_bench_cases_include_variants_on_request():
    plain = bench_cases(["local"], variants=False)
    assert [c[0] for c in plain] == ["local"]
    labels = [c[0] for c in bench_cases(["local"], variants=True)]
    assert labels == ["local", *visattn.attention_info("local").bench_variants]
    with pytest.raises(ValueError, match="unknown attention mechanism 'nope'"):
        bench_cases(["nope"])


def test_bench_cli_writes_table_json_and_plot(tmp_path, capsys):
    rc = main(
        [
            "bench",
            "-m",
            "external",
            "efficient",
            "-r",
            "4",
            "6",
            "--dim",
            "8",
            "--batch",
            "1",
            "--min-time",
            "0",
            "-o",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "| external" in out and "| efficient" in out and "slope fwd time" in out
    data = json.loads((tmp_path / "bench.json").read_text())
    assert {(r["label"], r["resolution"]) for r in data["results"]} == {
        ("external", 4),
        ("external", 6),
        ("efficient", 4),
        ("efficient", 6),
    }
    assert all(r["flops_match"] for r in data["results"])
    assert set(data["slopes"]) == {"external", "efficient"}
    from PIL import Image

    with Image.open(tmp_path / "bench.png") as im:
        assert im.size == (1600, 500)


def test_bench_cli_errors(capsys):
    assert main(["bench", "-m", "nope", "--no-progress"]) == 2
    assert "unknown attention mechanism 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse's own error path: usage + one error line
        main(["bench", "-r", "0", "--no-progress"])
    assert e.value.code == 2
    assert "argument --resolutions/-r: expected an integer >= 1, got '0'" in capsys.readouterr().err


def test_bench_json_is_strict_json_with_null_for_missing_values(tmp_path):
    # one resolution: no slope can be fitted (used to be written as a bare NaN, which is not JSON)
    assert (
        main(
            [
                "bench",
                "-m",
                "conv",
                "-r",
                "4",
                "--dim",
                "4",
                "--batch",
                "1",
                "--min-time",
                "0",
                "--no-backward",
                "-o",
                str(tmp_path),
                "--no-progress",
            ]
        )
        == 0
    )

    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    data = json.loads((tmp_path / "bench.json").read_text(), parse_constant=refuse)
    assert data["slopes"]["conv"]["fwd_ms"] is None and data["results"][0]["fwdbwd_ms"] is None


def test_bench_measures_on_the_pytest_device(device):
    """`pytest --device cuda` measures on the GPU: same parameter and FLOP figures as on CPU."""
    (r,) = bench_mechanism(
        "external", {"memory_size": 16}, resolutions=[6], dim=8, batch=2, device=device, min_time=0.0
    )
    assert r.error == ""
    assert r.params == sum(p.numel() for p in visattn.create_attention("external", 8, memory_size=16).parameters())
    assert r.flops == 2 * 2 * 36 * 16 * 8 * 2 and r.flops_match
    assert r.fwd_ms > 0 and r.mem_train_mib > 0
