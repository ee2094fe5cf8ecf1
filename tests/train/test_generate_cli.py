"""``visattn train --task generate`` (the CLI task table) and ``visattn compare --task generate`` (the
one compare's plug-in)."""

from __future__ import annotations

import json

import pytest

import visattn.compare.generate as cg
from visattn.cli import build_parser
from visattn.cli import main as cli_main
from visattn.data.generation import load_digit_pairs


@pytest.fixture(scope="module")
def tiny_pairs():
    return load_digit_pairs(32, n_train=32, n_test=16, seed=0)


def test_train_generate_options_and_defaults():
    from visattn.commands.tasks.generate import config_from_args

    args = build_parser().parse_args(
        ["train", "--task", "generate", "--lr-d", "3e-4", "--n-critic", "2", "--diffaug", "translation"]
    )
    cfg = config_from_args(args)
    assert (cfg.model, cfg.data, cfg.epochs, cfg.lr, cfg.lr_d, cfg.n_critic, cfg.weight_decay) == (
        "auto",
        "shapepairs",
        10,
        2e-4,
        3e-4,
        2,
        0.0,
    )
    assert (cfg.conditional, cfg.batch_size, cfg.width, cfg.diffaug) == (True, 32, 16, "translation")
    off = config_from_args(build_parser().parse_args(["train", "--task", "generate", "--no-conditional"]))
    assert off.conditional is False and off.diffaug == ""
    typed = config_from_args(
        build_parser().parse_args(["train", "--task", "generate", "--lr", "2e-4", "--epochs", "3"])
    )
    assert (typed.lr, typed.epochs) == (2e-4, 3)
    # classification keeps its own defaults
    from visattn.commands.train_cmd import config_from_args as classify_config

    c = classify_config(build_parser().parse_args(["train"]))
    assert (c.lr, c.epochs) == (2e-3, 10)


def test_the_cli_defaults_are_the_library_defaults():
    """`visattn train --task generate` with nothing typed is GenTrainConfig() (the recorded run's
    command and the Python API agree)."""
    from visattn.commands.tasks.generate import config_from_args
    from visattn.train.generate import GenTrainConfig

    cli = config_from_args(build_parser().parse_args(["train", "--task", "generate"])).as_dict()
    assert cli == GenTrainConfig(output="runs/train").as_dict()


def test_a_generate_option_with_another_task_is_refused(capsys, tmp_path):
    assert cli_main(["train", "--n-critic", "2", "--output", str(tmp_path / "r"), "--no-progress"]) == 2
    assert "--n-critic belong(s) to --task generate, not --task classify" in capsys.readouterr().err


def test_a_bad_diffaug_policy_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["train", "--task", "generate", "--diffaug", "translation,flip"])
    assert e.value.code == 2
    assert "unknown DiffAugment transformation(s) ['flip'] in 'translation,flip'" in capsys.readouterr().err


def test_a_classification_model_for_generate_is_refused(capsys, tmp_path):
    argv = ["train", "--task", "generate", "--model", "resnet_tiny", "--output", str(tmp_path / "r"), "--no-progress"]
    assert cli_main(argv) == 2
    assert "needs a generate model for model; 'resnet_tiny' is a classify model" in capsys.readouterr().err


@pytest.mark.slow
def test_train_generate_cli_then_sample(tmp_path, monkeypatch, tiny_pairs, capsys):
    import visattn.train.generate as gen

    monkeypatch.setattr(gen, "load_gen_data", lambda spec, size, seed=0: tiny_pairs)
    out = tmp_path / "run"
    argv = ["train", "--task", "generate", "--epochs", "1", "--batch-size", "16", "--width", "4", "--z-dim", "8"]
    argv += ["--fid-every", "0", "--grid-size", "4", "--no-progress", "--output", str(out)]
    assert cli_main(argv) == 0
    assert "no FID after 1 epochs" in capsys.readouterr().out
    info = json.loads((out / "config.json").read_text())
    assert info["task"] == "generate" and info["generator"] == "sagan32_g" and info["discriminator"] == "sagan32_d"
    assert cli_main(["sample", str(out), "-n", "4", "--out", str(tmp_path / "g.png")]) == 0


@pytest.mark.slow
def test_compare_generate_two_mechanisms(tmp_path, monkeypatch, tiny_pairs):
    """One GAN per mechanism through the one compare: FID and KID per run on one shared feature
    network, G + D parameters and FLOPs of a G + D forward from noise, results in OUT/generate/."""
    import visattn
    from visattn.compare import compare

    monkeypatch.setattr(cg.GenerateTask, "load_data", lambda self, data, seed: tiny_pairs)
    trained = []
    real_train = cg.GenerateTask._shared_features

    def counting(self, bundle, config):
        trained.append(bundle.name) if (bundle.name, bundle.image_size) not in self._features else None
        return real_train(self, bundle, config)

    monkeypatch.setattr(cg.GenerateTask, "_shared_features", counting)
    compare(
        ["conv", "external"],
        task="generate",
        epochs=1,
        batch_size=16,
        model_kwargs={"ch": 4},
        attn_kwargs={"external": {"memory_size": 8}},
        output=tmp_path,
        progress=False,
    )
    out = json.loads((tmp_path / "generate" / "compare.json").read_text())
    runs = {r["mechanism"]: r for r in out["runs"]}
    assert set(runs) == {"conv", "external"}
    assert all(not r["error"] and r["fid"] > 0 and r["kid"] is not None for r in runs.values()), runs
    assert trained == ["digitpairs"]  # one feature network for both mechanisms (tiny_pairs: digit pairs)
    rows = {r["mechanism"]: r["tasks"]["shapepairs"] for r in out["rows"]}  # the task: the default data
    g = visattn.create_model("sagan32_g", ch=4, attention="conv", num_classes=10)  # conditional by default
    d = visattn.create_model("sagan32_d", ch=4, attention="conv", num_classes=10)
    assert rows["conv"]["params"] == sum(p.numel() for p in [*g.parameters(), *d.parameters()])
    assert rows["conv"]["fids"] == [runs["conv"]["fid"]] and rows["conv"]["flops"] > 0
