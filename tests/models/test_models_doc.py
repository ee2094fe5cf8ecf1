"""docs/models.md is the table the registry generates (so the page cannot drift from the code).

Parameters, layout, families, inputs and published figures are regenerated for every model
(models built on the meta device: cheap). MACs at the default size cost a real forward pass per
model, so they are re-measured for one model (eamlp_7) and taken from the page for the others.
"""

from __future__ import annotations

from pathlib import Path

import torch

import visattn
from visattn.docs_models import HEADER, documented_models, model_rows, parse_table, render
from visattn.flops import count_flops

DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"
REGEN = "regenerate with `python -m visattn.docs_models --write docs/models.md`"


def test_models_doc_matches_the_registry():
    text = DOC.read_text(encoding="utf-8")
    committed = parse_table(text)
    elsewhere = {
        n for t in ("generate", "detect", "points", "partseg") for n in visattn.list_models(task=t)
    }  # own pages
    assert documented_models() == sorted(set(visattn.list_models()) - elsewhere)
    assert [r[0] for r in committed] == [f"`{n}`" for n in documented_models()], REGEN
    macs = HEADER.index("MACs (G)")
    rows = model_rows(flops=False)
    for row, old in zip(rows, committed):
        row[macs] = old[macs]
    assert render(rows) == text, REGEN


def test_models_doc_macs_for_one_model():
    row = {r[0]: r for r in parse_table(DOC.read_text(encoding="utf-8"))}["`eamlp_7`"]
    model = visattn.create_model("eamlp_7").eval()
    with torch.no_grad():
        macs = count_flops(model, torch.randn(1, 3, 224, 224)) / 2e9
    assert row[HEADER.index("MACs (G)")] == f"{macs:.2f}" == "1.46"
