"""docs/weights.md is what the converter tables generate; the README's loading lines name real sources."""

from __future__ import annotations

import re
from pathlib import Path

from visattn.docs_weights import render
from visattn.models.convert import IMAGENET_MEAN, IMAGENET_STD, SOURCES

ROOT = Path(__file__).resolve().parents[2]


def test_weights_doc_matches_the_tables():
    text = (ROOT / "docs" / "weights.md").read_text(encoding="utf-8")
    assert text == render(), "regenerate with `python -m visattn.docs_weights --write docs/weights.md`"
    # the page states one mean / std for every entry
    assert all((s.preprocess.mean, s.preprocess.std) == (IMAGENET_MEAN, IMAGENET_STD) for s in SOURCES.values())


def test_readme_loading_lines_name_table_entries():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    names = re.findall(r'(?:pretrained|backbone_pretrained)="([^"]+)"', readme)
    names += re.findall(r"--pretrained (\S+)", readme)
    assert len(names) >= 10, names
    unknown = [n for n in names if n not in SOURCES and not n.startswith(("hf-hub:", "https://", "/", "."))]
    assert not unknown, unknown
