"""Package edges: one version source, py.typed in the built wheel, `python -m visattn` is the
`visattn` command, and the files a release carries (LICENSE, CHANGELOG)."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import visattn
from visattn.cli import main

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _pyproject() -> dict:
    """pyproject.toml parsed (tomllib: Python >= 3.11; only the tests that read it skip on 3.10)."""
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version_has_one_source():
    assert visattn.__version__ == importlib.metadata.version("visattn")
    project = _pyproject()["project"]
    assert "version" not in project and "version" in project["dynamic"]
    attr = _pyproject()["tool"]["setuptools"]["dynamic"]["version"]
    assert attr == {"attr": "visattn.__version__"}


def test_changelog_has_the_released_version_and_license_matches_pyproject():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog
    assert f"## [{visattn.__version__}] - " in changelog
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License\n")
    project = _pyproject()["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]


def test_built_wheel_ships_py_typed_and_the_module_entry(tmp_path):
    pytest.importorskip("setuptools")
    src = tmp_path / "proj"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path / "dist"
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "from setuptools import build_meta as b; "
            f"s = b.build_sdist({str(out)!r}); w = b.build_wheel({str(out)!r}); print('BUILT', s, w)",
        ],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=240,
        env=ENV,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    sdist_name, wheel_name = next(ln for ln in r.stdout.splitlines() if ln.startswith("BUILT ")).split()[1:]
    wheel = out / wheel_name
    assert wheel.name.startswith(f"visattn-{visattn.__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"visattn/py.typed", "visattn/__main__.py", "visattn/_io.py"} <= names
    assert f"visattn-{visattn.__version__}.dist-info/licenses/LICENSE" in names
    # the sdist carries them too (a wheel built from it has them)
    assert sdist_name == f"visattn-{visattn.__version__}.tar.gz"
    with tarfile.open(out / sdist_name) as tar:
        top = f"visattn-{visattn.__version__}/"
        assert {top + "LICENSE", top + "src/visattn/py.typed", top + "src/visattn/__main__.py"} <= set(tar.getnames())


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "visattn", *argv], capture_output=True, text=True, timeout=120, env=ENV
    )


@pytest.mark.slow
def test_python_m_visattn_is_the_visattn_command(capsys):
    # --help: same text and exit code 0 as the in-process command (which the console script runs)
    r = _cli("--help")
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert (r.returncode, e.value.code) == (0, 0)
    assert r.stdout == capsys.readouterr().out
    assert r.stdout.startswith("usage: visattn [-h] COMMAND ...")

    # a sub-command's output
    r = _cli("list", "--json")
    assert main(["list", "--json"]) == 0
    assert r.returncode == 0 and r.stdout == capsys.readouterr().out

    # a user mistake: one line, exit code 2, like the console script
    r = _cli("info", "no_such_thing")
    assert main(["info", "no_such_thing"]) == 2
    assert r.returncode == 2 and r.stderr == capsys.readouterr().err
    assert r.stderr.startswith("visattn info: error: 'no_such_thing' is neither a mechanism ")

    # argparse errors: exit 2 and the same usage line
    r = _cli("no-such-command")
    with pytest.raises(SystemExit) as e:
        main(["no-such-command"])
    assert (r.returncode, e.value.code) == (2, 2)
    assert r.stderr == capsys.readouterr().err
    assert "visattn: error: argument COMMAND: invalid choice: 'no-such-command'" in r.stderr


@pytest.mark.slow
def test_console_script_help_matches_python_m():
    script = Path(sys.executable).with_name("visattn")
    if not script.is_file():
        pytest.skip(f"no console script beside {sys.executable}")
    a = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120, env=ENV)
    b = _cli("--help")
    assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr) == (0, b.stdout, "")


def _unreleased() -> str:
    text = (ROOT / "CHANGELOG.md").read_text()
    return text.split("## [Unreleased]", 1)[1].split("\n## [", 1)[0]


def test_changelog_unreleased_names_every_rename_of_issue_11():
    # The renames are data in the code (renamed_args, renamed_keys, Block.LEGACY_KEYS): each old
    # and new name is in the changelog, on the line of its mechanism's entry.
    from visattn.models.blocks import Block
    from visattn.registry import attention_class, list_attention

    section = " ".join(_unreleased().split())  # lines joined: entries wrap
    for name in list_attention():
        cls = attention_class(name)
        for old, new in {**cls.renamed_args, **cls.renamed_keys}.items():
            assert f"`{old}" in section and f"`{new}" in section, (name, old, new)
    for old, new in Block.LEGACY_KEYS.items():
        assert f"`{old}`" in section and f"`{new}`" in section, (old, new)
    # the other parts of issue 11, each named
    for item in (
        "visattn.models.blocks",
        "mixer_overrides",
        "EAMLPConfig",
        "mixers()",
        'impl="auto"',
        "tests/layers/test_impls.py",
        "docs/contract.md",
        "per head",
        "reset_parameters()",
        'device="meta"',
        "docs/architecture.md",
        "python -m visattn",
        "py.typed",
        "visattn._io",
        "save_weights",
    ):
        assert item in section, item
