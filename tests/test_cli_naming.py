"""One option spelling across sub-commands: a model is `--model NAME` (train, compare, viz,
predict, info), a mechanism swapped into it `--attention MECH`; the older positional names of
viz, predict and info still work, and two different names given at once are a one-line error."""

from __future__ import annotations

import pytest

from visattn.cli import build_parser, main


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    prefix = f"visattn {command}: error: "
    assert err.startswith(prefix)
    return err[len(prefix) :].rstrip("\n")


@pytest.fixture
def drawn(monkeypatch):
    """Calls of visattn.viz.visualize as (target, attention, attn_kwargs), without drawing."""
    import visattn.viz

    calls = []

    def fake(target, **kw):
        calls.append((target, kw["attention"], kw["attn_kwargs"]))
        return "viz.png"

    monkeypatch.setattr(visattn.viz, "visualize", fake)
    return calls


def test_every_model_taking_command_parses_dash_dash_model():
    p = build_parser()
    for argv in (
        ["train", "--model", "resnet_tiny"],
        ["compare", "--model", "resnet_tiny"],
        ["viz", "--model", "resnet_tiny"],
        ["predict", "--model", "resnet_tiny", "--weights", "w", "--image", "i"],
        ["info", "--model", "resnet_tiny"],
        ["convert", "w.pth", "o.safetensors", "--model", "resnet_tiny"],
    ):
        assert p.parse_args(argv).model == "resnet_tiny", argv


def test_viz_model_positional_and_bare_mechanism(drawn, capsys):
    assert main(["viz", "--model", "resnet_tiny", "--attention", "lambda"]) == 0
    assert main(["viz", "resnet_tiny", "--attention", "lambda"]) == 0  # the older spelling
    assert main(["viz", "resnet_tiny", "--model", "resnet_tiny"]) == 0  # both, equal
    assert main(["viz", "--attention", "conv", "--attn-kwargs", '{"kernel_size": 5}']) == 0  # bare mechanism
    assert main(["viz", "conv"]) == 0  # a bare mechanism, older spelling
    assert drawn == [
        ("resnet_tiny", "lambda", None),
        ("resnet_tiny", "lambda", None),
        ("resnet_tiny", None, None),
        ("conv", None, {"kernel_size": 5}),
        ("conv", None, None),
    ]
    assert capsys.readouterr().out == "viz.png\n" * 5


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["viz", "resnet_tiny", "--model", "resnet26"],
            "two different models given: 'resnet_tiny' (positional) and --model 'resnet26'; give one",
        ),
        (
            ["viz"],
            "nothing to draw: name a model with --model NAME or a bare mechanism with --attention NAME "
            "(see `visattn list`)",
        ),
        (
            ["viz", "--model", "lambda"],
            "--model 'lambda' is a mechanism, not a model; draw it bare with --attention lambda",
        ),
        (
            ["viz", "lambda", "--attention", "mhsa"],
            "'lambda' is a bare mechanism; --attention 'mhsa' swaps a model's mixer and does not apply",
        ),
    ],
)
def test_viz_naming_errors(drawn, capsys, argv, message):
    assert main(argv) == 2
    assert _one_error_line(capsys, "viz") == message
    assert drawn == []


def test_viz_unknown_bare_mechanism_lists_the_registered_ones(drawn, capsys):
    from visattn import list_attention

    assert main(["viz", "--attention", "nope"]) == 2
    assert _one_error_line(capsys, "viz") == f"unknown mechanism --attention 'nope'; expected one of {list_attention()}"


def test_predict_model_option_and_positional(monkeypatch, capsys, tmp_path):
    import torch

    import visattn.predict

    seen = []

    def fake(model, weights, image, out, **kw):
        seen.append(model)
        return out, torch.zeros(2, 2, dtype=torch.long), ["background"]

    monkeypatch.setattr(visattn.predict, "predict_image", fake)
    common = ["--weights", "w", "--image", "i", "--out", str(tmp_path / "p.png")]
    assert main(["predict", "--model", "fpn_resnet_tiny", *common]) == 0
    assert main(["predict", "fpn_resnet_tiny", *common]) == 0
    assert seen == ["fpn_resnet_tiny", "fpn_resnet_tiny"]
    assert capsys.readouterr().out == f"background 100.0%\n{tmp_path / 'p.png'}\n" * 2

    assert main(["predict", "fpn_resnet_tiny", "--model", "fpn_pvt_t", *common]) == 2
    assert _one_error_line(capsys, "predict") == (
        "two different models given: 'fpn_resnet_tiny' (positional) and --model 'fpn_pvt_t'; give one"
    )
    assert main(["predict", *common]) == 2
    assert _one_error_line(capsys, "predict") == "no model given: name one with --model NAME (see `visattn list`)"
    assert len(seen) == 2


def test_info_model_and_attention_options(capsys):
    from visattn import list_attention, list_models

    assert main(["info", "lambda"]) == 0
    positional = capsys.readouterr().out
    assert main(["info", "--attention", "lambda"]) == 0
    assert capsys.readouterr().out == positional and "lambda" in positional
    assert main(["info", "lambda", "--attention", "lambda"]) == 0
    assert capsys.readouterr().out == positional

    for argv, message in [
        (
            ["info", "--model", "lambda"],
            f"--model 'lambda' is not a registered model {list_models()}; 'lambda' is a mechanism: use --attention lambda",
        ),
        (
            ["info", "--attention", "resnet_tiny"],
            f"--attention 'resnet_tiny' is not a registered mechanism {list_attention()}; 'resnet_tiny' is a model: use --model resnet_tiny",
        ),
        (
            ["info", "--model", "resnet_tiny", "--attention", "lambda"],
            "give --model or --attention, not both (got --model 'resnet_tiny' --attention 'lambda')",
        ),
        (
            ["info", "mhsa", "--attention", "lambda"],
            "two different names given: 'mhsa' (positional) and --attention 'lambda'; give one",
        ),
        (["info"], "no name given: `visattn info NAME`, `--model NAME` or `--attention MECH` (see `visattn list`)"),
    ]:
        assert main(argv) == 2, argv
        assert _one_error_line(capsys, "info") == message


def test_shared_spellings_of_batch_size_and_output():
    p = build_parser()
    assert p.parse_args(["bench", "--batch-size", "3"]).batch == 3
    assert p.parse_args(["bench", "--batch", "3"]).batch == 3  # the older spelling
    assert p.parse_args(["train", "-o", "runs/x"]).output == "runs/x"
    assert p.parse_args(["compare", "-o", "runs/x"]).output == "runs/x"
    assert p.parse_args(["bench", "-o", "runs/x"]).output == "runs/x"


def _subcommands() -> list[str]:
    import argparse

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


def test_the_subcommands_are_the_ones_these_tests_cover():
    assert _subcommands() == ["bench", "compare", "convert", "info", "list", "predict", "sample", "train", "viz"]


@pytest.mark.parametrize("command", _subcommands())
def test_every_subcommand_help_prints_its_options(capsys, command):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith(f"usage: visattn {command} [-h]")
    takes_model = {"train", "compare", "viz", "predict", "info", "convert"}
    assert ("--model" in out) == (command in takes_model), out
