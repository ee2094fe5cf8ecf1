"""Registry and CLI list/info."""

from __future__ import annotations

import json

import pytest

import visattn
from visattn.cli import main


def test_create_attention_by_name():
    m = visattn.create_attention("mhsa", 16, 24, num_heads=4)
    assert isinstance(m, visattn.SpatialAttention)
    assert (m.dim, m.dim_out, m.num_heads) == (16, 24, 4)


def test_unknown_names_suggest_close_matches():
    with pytest.raises(ValueError, match=r"unknown attention mechanism 'mhsaa'.*did you mean 'mhsa'"):
        visattn.create_attention("mhsaa", 8)
    with pytest.raises(ValueError, match=r"unknown model 'nope'"):
        visattn.create_model("nope")
    with pytest.raises(TypeError, match="attention name must be a str, got int"):
        visattn.create_attention(3, 8)


def test_unknown_kwarg_is_a_type_error():
    with pytest.raises(TypeError, match="unexpected keyword argument 'kernel'"):
        visattn.create_attention("local", 8, kernel=3)


def test_duplicate_registration_rejected():
    with pytest.raises(ValueError, match="'mhsa' is already registered"):
        visattn.register_attention(
            "mhsa", title="x", paper="x", cost="linear", receptive_field="global", positional="none"
        )(type("X", (), {}))


def test_cli_list_and_info(capsys):
    assert main(["list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["attention"] == visattn.list_attention()
    assert main(["info", "external", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cost"] == "linear" and info["class"] == "visattn.layers.external.ExternalAttention"
    assert main(["info", "nothing"]) == 2
    assert "'nothing' is neither a mechanism" in capsys.readouterr().err


def test_create_model_keeps_the_builders_class_count_by_default():
    assert visattn.create_model("san_quadratic").head.out_features == 10  # CIFAR-10 model
    assert visattn.create_model("resnet_tiny").head.out_features == 1000
    assert visattn.create_model("san_quadratic", num_classes=7).head.out_features == 7
