"""``visattn info MODEL``: stage grouping and the printed summary."""

from __future__ import annotations

import argparse
import json

import pytest

from visattn.commands import model_info, registry_cmds
from visattn.models import info


@pytest.mark.parametrize(
    "name,stage",
    [
        ("stages.2.blocks.1.mixer", "stages.2"),
        ("blocks.3.mixer", "blocks"),
        ("layer1.0.conv2", "layer1"),
        ("stem.block1.ea", "stem"),
        ("0.attn", "0"),
    ],
)
def test_stage_of(name, stage):
    assert info.stage_of(name) == stage


def test_info_prints_ours_next_to_published_and_mechanisms_by_stage(capsys):
    assert model_info.run("eamlp_7") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "eamlp_7 (eamlp), input (3, 224, 224), 1000 classes"
    assert out[2].split() == ["ours", "published"]
    assert out[3].split() == ["parameters", "(M)", "6.09", "-"]
    assert out[4].split() == ["multiply-adds", "(G)", "1.46", "-"]
    assert out[5].split() == ["FLOPs", "=", "2", "x", "MACs", "(G)", "2.92"]
    assert out[6].split() == ["top-1", "accuracy", "(%)", "-", "71.7", "at", "384", "px"]
    assert out[7] == "  mechanisms by stage:"
    assert out[8].split()[:3] == ["stem", "external", "x2:"] and "memory_size=128" in out[8]
    assert out[9].split()[:3] == ["blocks", "external", "x7:"] and "num_heads=16, expansion=4" in out[9]
    assert out[10] == "  published weights (docs/weights.md):"
    assert (
        out[11] == "    pretrained='eamlp/EAMLP_7_384': 1000 classes, not stated (the code is Clear BSD, from T2T-ViT)"
    )
    assert len(out) == 12


def test_info_json_through_the_command(capsys):
    rc = registry_cmds.run_info(argparse.Namespace(name="eamlp_7", json=True))
    assert rc == 0
    s = json.loads(capsys.readouterr().out)
    assert s["params"] == 6_094_926 and s["macs"] == s["flops"] // 2
    assert [(st, g[0]["mechanism"], g[0]["count"]) for st, g in s["stages"].items()] == [
        ("stem", "external", 2),
        ("blocks", "external", 7),
    ]
    assert s["published"] == {"top1": 71.7, "top1_input": 384}
