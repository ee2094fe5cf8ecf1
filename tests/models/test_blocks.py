"""The model kit (visattn.models.blocks): one block, one init rule, one builder message, one
meaning of ``attention=``, per-stage and per-block mechanism overrides in every family."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import visattn
from visattn.models.blocks import (
    Block,
    DropPath,
    MixerOverride,
    Mlp,
    find_mixers,
    init_backbone_weights,
    plan_mixers,
    remap_legacy_keys,
)
from visattn.registry import model_entry

# One model per config family, at its small test config.
FAMILY_MODELS = {"resnet": "resnet_tiny", "hierarchical": "swin_t", "transformer": "san_quadratic", "eamlp": "eamlp_7"}


def build(name, **kw):
    return visattn.create_model(name, **{**model_entry(name).test_kwargs, **kw})


def kinds(model):
    return [type(m).registry_name for m in model.mixers()]


# ---------------------------------------------------------------------------
# Block, Mlp, DropPath
# ---------------------------------------------------------------------------


def _reference_block(blk, t, hw, norm_first):
    """The block's equations written out (float64)."""
    c = t.shape[-1]

    def mix(u):
        y = blk.mixer(u.transpose(1, 2).reshape(u.shape[0], c, *hw)).flatten(2).transpose(1, 2)
        return F.linear(y, blk.mixer_proj.weight, blk.mixer_proj.bias)

    def mlp(u):
        return F.linear(F.gelu(F.linear(u, blk.mlp.fc1.weight, blk.mlp.fc1.bias)), blk.mlp.fc2.weight, blk.mlp.fc2.bias)

    def ln(u, n):
        return F.layer_norm(u, (c,), n.weight, n.bias, n.eps)

    if norm_first:
        t = t + mix(ln(t, blk.norm1))
        return t + mlp(ln(t, blk.norm2))
    t = ln(t + mix(t), blk.norm1)
    return ln(t + mlp(t), blk.norm2)


@pytest.mark.parametrize("norm_first", [True, False])
def test_block_equals_its_equations(norm_first):
    torch.manual_seed(0)
    mixer = visattn.create_attention("mhsa", 8, num_heads=2)
    blk = Block(8, mixer, 12, mixer_proj=True, norm_first=norm_first).double().eval()
    t = torch.randn(2, 15, 8, dtype=torch.float64)
    ref = _reference_block(blk, t, (3, 5), norm_first)
    assert (blk(t, (3, 5)) - ref).abs().max().item() < 1e-12


def test_mlp_and_drop_path():
    torch.manual_seed(0)
    mlp = Mlp(4, 6, dim_out=3)
    assert mlp(torch.randn(2, 5, 4)).shape == (2, 5, 3)
    dp = DropPath(0.5).train()
    x = torch.ones(20000, 3)
    y = dp(x)
    kept = (y[:, 0] > 0).float().mean().item()
    assert abs(kept - 0.5) < 0.02 and set(y.unique().tolist()) <= {0.0, 2.0}  # kept samples scaled by 1 / (1 - p)
    assert torch.equal(dp.eval()(x), x)
    with pytest.raises(ValueError, match=r"drop path probability must be in \[0, 1\), got 1.0"):
        DropPath(1.0)


def test_init_rule_leaves_mechanisms_alone():
    torch.manual_seed(0)
    mech = visattn.create_attention("mhsa", 8, num_heads=2)
    own = {k: v.clone() for k, v in mech.state_dict().items()}
    model = nn.Sequential(nn.Linear(128, 128), mech, nn.Conv2d(8, 64, 3))
    nn.init.constant_(model[0].bias, 1.0)
    init_backbone_weights(model, linear=True, conv=True)
    assert all(torch.equal(own[k], v) for k, v in mech.state_dict().items())  # untouched
    # truncated normal, std 0.02 (16384 samples: the estimate is within 3%); zero bias
    assert torch.equal(model[0].bias, torch.zeros(128)) and abs(model[0].weight.std().item() / 0.02 - 1) < 0.03
    fan_out = 64 * 9  # He normal, fan_out: std sqrt(2 / fan_out) (4608 samples: within 5%)
    assert abs(model[2].weight.std().item() / math.sqrt(2 / fan_out) - 1) < 0.05


# ---------------------------------------------------------------------------
# attention= means the same in every family
# ---------------------------------------------------------------------------


def test_swap_into_swin_keeps_the_per_stage_heads():
    m = build("swin_t", attention="mhsa")
    assert kinds(m) == ["mhsa"] * 5
    assert [st.blocks[0].mixer.num_heads for st in m.stages] == list(model_entry("swin_t").test_kwargs["num_heads"])
    # the old mechanism's own arguments (window, shift) are dropped; attn_kwargs still win
    m = build("swin_t", attention="local", attn_kwargs={"kernel_size": 3})
    assert [b.mixer.num_heads for st in m.stages for b in st.blocks] == [1, 2, 2, 2, 4]
    m = build("swin_t", attention="mhsa", attn_kwargs={"num_heads": 1})
    assert {b.mixer.num_heads for st in m.stages for b in st.blocks} == {1}


def test_eamlp_swap_keeps_the_layout_heads():
    m = build("eamlp_7", attention="mhsa")  # test config: num_heads=2
    assert [b.mixer.num_heads for b in m.blocks] == [2]
    assert [type(x).registry_name for x in m.stem.modules() if isinstance(x, visattn.layers.SpatialAttention)] == [
        "external",
        "external",
    ]  # the stem's own mechanisms are not slots


@pytest.mark.parametrize(
    "name,img_size,expected",
    [
        ("resnet_tiny", 32, [32, 32, 16, 8]),  # the slot's input side (a strided block pools after it)
        ("swin_t", 64, [16, 8, 4, 4, 2]),  # ceil(img_size / (4 * 2^i)) per stage
        ("eamlp_7", 64, [4]),  # the T2T grid side at 64 px
        ("san_quadratic", 20, [10, 10]),  # img_size / patch_size
    ],
)
def test_every_family_fills_the_resolution_bound(name, img_size, expected):
    lam = {"key_dim": 4, "num_heads": 1, "local_scope": None}  # the global form: bounded by max_size
    m = build(name, img_size=img_size, attention="lambda", attn_kwargs=lam)
    assert [x.max_size for x in m.mixers() if type(x).registry_name == "lambda"] == [(s, s) for s in expected]
    # given explicitly, it is kept
    m = build(name, img_size=img_size, attention="lambda", attn_kwargs={**lam, "max_size": 40})
    assert {x.max_size for x in m.mixers() if type(x).registry_name == "lambda"} == {(40, 40)}


# ---------------------------------------------------------------------------
# Per-stage and per-block overrides
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family,overrides,expected",
    [
        (
            "resnet",
            [{"stage": 1, "mixer": "mhsa"}, MixerOverride(stage=3, block=0, mixer="conv", kwargs={"kernel_size": 5})],
            ["mhsa", "conv"],
        ),
        (
            "hierarchical",
            [{"stage": 0, "mixer": "slide", "kwargs": {"kernel_size": 3}}, {"stage": 2, "block": -1, "mixer": "mhsa"}],
            ["slide", "swin", "swin", "mhsa", "swin"],
        ),
        (
            "transformer",
            [{"stage": 0, "block": 1, "mixer": "external", "kwargs": {"memory_size": 4}}],
            ["relpos", "external"],
        ),
        ("eamlp", [{"stage": 0, "block": 0, "mixer": "conv"}], ["external", "external", "conv"]),
    ],
)
def test_overrides_in_every_family(family, overrides, expected):
    name = FAMILY_MODELS[family]
    m = build(name, mixer_overrides=overrides, num_classes=3)
    assert kinds(m) == expected
    x = torch.randn(2, *model_entry(name).test_input)
    assert m(x).shape == (2, 3)
    assert len(m.feature_info) == len(build(name).feature_info)


def test_override_arguments_and_the_layout():
    # kwargs only: update the slot's own mechanism; a new mechanism keeps the stage's heads
    m = build("swin_t", mixer_overrides=[{"stage": 1, "kwargs": {"window_size": 3}}, {"stage": 3, "mixer": "mhsa"}])
    assert [b.mixer.window_size for b in m.stages[1].blocks] == [3]
    assert m.stages[3].blocks[0].mixer.num_heads == 4
    # a block override refines a stage one, whatever the order they are given in
    ovs = [{"stage": 2, "block": 1, "kwargs": {"num_heads": 1}}, {"stage": 2, "mixer": "mhsa"}]
    m = build("swin_t", mixer_overrides=ovs)
    assert [b.mixer.num_heads for b in m.stages[2].blocks] == [2, 1]
    # attention= replaces every slot, overridden ones included
    m = build("swin_t", mixer_overrides=ovs, attention="local")
    assert kinds(m) == ["local"] * 5


def test_resnet_override_puts_a_mechanism_outside_mixer_stages():
    m = build("lambda_resnet26", mixer_stages=(3,), mixer_overrides=[{"stage": 0, "mixer": "mhsa"}])
    assert kinds(m) == ["mhsa", "lambda"]
    with pytest.raises(
        ValueError, match=r"gives arguments to stage 1 block 0, which has no mechanism; give mixer=NAME"
    ):
        build("resnet26", mixer_overrides=[{"stage": 1, "kwargs": {"num_heads": 2}}])


def test_override_errors():
    with pytest.raises(ValueError, match=r"mixer override stage must be in 0\.\.3, got 4"):
        build("swin_t", mixer_overrides=[{"stage": 4, "mixer": "mhsa"}])
    with pytest.raises(
        ValueError,
        match=r"mixer override block must be in -2\.\.1 \(stage 2 has 2 blocks; negative counts from the end\), got 2",
    ):
        build("swin_t", mixer_overrides=[{"stage": 2, "block": 2, "mixer": "mhsa"}])
    with pytest.raises(
        ValueError, match=r"a mixer override needs 'stage' and some of .*got keys \['mixer', 'stages'\]"
    ):
        build("swin_t", mixer_overrides=[{"stages": 2, "mixer": "mhsa"}])
    with pytest.raises(TypeError, match="a mixer override must be a MixerOverride or a dict, got str"):
        build("swin_t", mixer_overrides=["mhsa"])


def test_per_block_arguments_are_cycled():
    plan = plan_mixers((3,), ("swin",), ({"window_size": 7, "per_block": [{"shift_size": 0}, {"shift_size": 3}]},))
    assert plan == [[("swin", {"window_size": 7, "shift_size": s}) for s in (0, 3, 0)]]


# ---------------------------------------------------------------------------
# One builder message; one mixer rule
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("family,name", sorted(FAMILY_MODELS.items()))
def test_one_unknown_option_message(family, name):
    cfg_name = {"resnet": "ResNetConfig", "hierarchical": "HierarchicalConfig"}.get(
        family, {"transformer": "TransformerConfig", "eamlp": "EAMLPConfig"}.get(family)
    )
    with pytest.raises(TypeError, match=rf"^{name}: unknown option\(s\) \['nope'\]; expected {cfg_name} fields \["):
        visattn.create_model(name, nope=1)


def test_mixers_are_the_outermost_mechanisms_in_module_order():
    m = build("eamlp_7")
    names = [n for n, _ in m.named_mixers()]
    assert names == ["stem.block1.ea", "stem.block2.ea", "blocks.0.mixer"]
    assert m.mixers() == [m.get_submodule(n) for n in names]
    seg = visattn.create_model("eanet_r50", **model_entry("eanet_r50").test_kwargs)
    assert [n for n, _ in seg.named_mixers()] == ["decode_head.ea.attention"]
    mech = visattn.create_attention("mhsa", 8)
    assert find_mixers(mech) == [("", mech)]


# ---------------------------------------------------------------------------
# Saved weights of the replaced block classes keep loading
# ---------------------------------------------------------------------------


def _old_format(sd):
    """Keys as the replaced classes wrote them: hierarchical ``.attn.``; token transformer ``mlp.0`` / ``mlp.3``."""
    out = {}
    for k, v in sd.items():
        k = k.replace(".mixer.", ".attn.") if k.startswith("stages.") else k
        k = k.replace(".mlp.fc1.", ".mlp.0.").replace(".mlp.fc2.", ".mlp.3.") if k.startswith("blocks.") else k
        out[k] = v
    return out


@pytest.mark.parametrize("name", ["swin_t", "san_quadratic"])
def test_old_format_state_dict_loads(name, tmp_path):
    torch.manual_seed(0)
    a = build(name, num_classes=4).eval()
    torch.manual_seed(1)
    b = build(name, num_classes=4).eval()
    old = _old_format(a.state_dict())
    assert set(old) != set(a.state_dict())  # the old format differs
    assert remap_legacy_keys(b, old).keys() == a.state_dict().keys()
    b.load_state_dict(old)  # strict
    x = torch.randn(2, *model_entry(name).test_input)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    # through the safetensors reader too
    from safetensors.torch import save_file

    path = tmp_path / "old.safetensors"
    save_file({k: v.contiguous() for k, v in old.items()}, str(path))
    torch.manual_seed(2)
    c = build(name, num_classes=4).eval()
    visattn.load_weights(c, path)
    with torch.no_grad():
        assert torch.equal(a(x), c(x))


def test_a_slot_needs_a_mechanism_name():
    from visattn.models.blocks import make_mixer
    from visattn.models.hierarchical import CONFIGS, HierarchicalTransformer

    with pytest.raises(TypeError, match=r"a mixer slot needs a registered mechanism name \(a str\), got None"):
        make_mixer(None, 8, {})
    cfg = CONFIGS["pvt_t"].replace(mixers=("sra", None, "sra", "sra"), depths=(1, 1, 1, 1))
    with pytest.raises(TypeError, match="got None"):
        HierarchicalTransformer(cfg)


# ---------------------------------------------------------------------------
# Errors say which slot, what was expected and what was given
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"stage": "1", "mixer": "mhsa"}, r"mixer override stage must be an int \(0-based stage index\), got '1'"),
        ({"stage": True, "mixer": "mhsa"}, r"mixer override stage must be an int \(0-based stage index\), got True"),
        (
            {"stage": 1, "block": 0.5},
            r"mixer override block must be an int \(block index in the stage\) or None, got 0\.5",
        ),
        (
            {"stage": 1, "mixer": 3},
            r"mixer override mixer must be a registered mechanism name \(a str\) or None, got 3",
        ),
        ({"stage": 1, "mixer": "mhsa", "kwargs": None}, r"mixer override kwargs must be a dict .*, got None"),
        ({"stage": 1, "mixer": "mhsa", "kwargs": [1]}, r"mixer override kwargs must be a dict .*, got \[1\]"),
    ],
)
def test_override_field_types(fields, match):
    with pytest.raises(TypeError, match=match):
        build("swin_t", mixer_overrides=[fields])


#: (stage, the last block's index) of a slot in each family's test layout
LAST_SLOT = {"resnet": (2, 0), "hierarchical": (2, 1), "transformer": (0, 1), "eamlp": (0, 0)}


@pytest.mark.parametrize("family", sorted(FAMILY_MODELS))
def test_slot_errors_name_the_slot(family):
    name = FAMILY_MODELS[family]
    stage, block = LAST_SLOT[family]
    where = f"stage {stage} block {block}"
    ov = {"stage": stage, "block": -1}
    with pytest.raises(
        ValueError, match=rf"^{where} \('nope'\): unknown attention mechanism 'nope'; expected one of \["
    ):
        build(name, mixer_overrides=[{**ov, "mixer": "nope"}])
    with pytest.raises(
        TypeError,
        match=rf"^{where} \('mhsa'\): unknown argument\(s\) \['windw'\] for mechanism 'mhsa'; it takes \[.*'num_heads'",
    ):
        build(name, mixer_overrides=[{**ov, "mixer": "mhsa", "kwargs": {"windw": 3}}])
    with pytest.raises(ValueError, match=rf"^{where} \('mhsa'\): .*must be divisible by num_heads=7"):
        build(name, mixer_overrides=[{**ov, "mixer": "mhsa", "kwargs": {"num_heads": 7}}])


def test_layout_heads_that_do_not_divide_the_width_say_so():
    # swin_t's test layout: widths 8, 16, 32, 64; heads 5 in stage 0 do not divide 8
    with pytest.raises(
        ValueError,
        match=r"^stage 0 block 0 \('mhsa'\): dim=8 must be divisible by num_heads=5 \(num_heads=5 is the layout's "
        r"head count here; give the mechanism a num_heads argument to choose another\)",
    ):
        build("swin_t", num_heads=(5, 2, 2, 4), attention="mhsa")
    m = build("swin_t", num_heads=(5, 2, 2, 4), attention="mhsa", attn_kwargs={"num_heads": 2})
    assert {x.num_heads for x in m.mixers()} == {2}
    # a renamed argument keeps the registry's message
    with pytest.raises(TypeError, match=r"argument 'conv_impl' was renamed to 'impl'"):
        build("resnet_tiny", attention="lambda", attn_kwargs={"conv_impl": "fft"})


@pytest.mark.slow  # the CLI loads the digits data before it builds the model (~6 s)
def test_override_errors_through_the_cli(capsys):
    from visattn.cli import main

    bad = '{"mixer_overrides": [{"stage": 1, "mixer": "mhsa", "kwargs": {"num_heads": 3}}]}'
    with pytest.raises(SystemExit) as exc:
        rc = main(["train", "--model", "resnet_tiny", "--epochs", "1", "--model-kwargs", bad])
        raise SystemExit(rc)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "visattn train: error: stage 1 block 0 ('mhsa'): dim=32 must be divisible by num_heads=3"


@pytest.mark.parametrize(
    "name,option,match",
    [
        ("swin_t", {"depths": 2}, r"^swin_t: depths must be a list or tuple \(tuple\[int, \.\.\.\]\), got 2$"),
        (
            "swin_t",
            {"mixers": "mhsa"},
            r"^swin_t: mixers must be a list or tuple \(tuple\[str, \.\.\.\]\), got 'mhsa'$",
        ),
        ("swin_t", {"mixer_kwargs": ({}, None, {}, {})}, r"^swin_t: mixer_kwargs must hold one dict per stage"),
        ("resnet26", {"depths": 3}, r"^resnet26: depths must be a list or tuple"),
        ("lambda_resnet26", {"mixer_stages": 2}, r"^lambda_resnet26: mixer_stages must be a list or tuple"),
        ("lambda_resnet26", {"mixer_kwargs": None}, r"^lambda_resnet26: mixer_kwargs must be a dict .*got None$"),
        (
            "eamlp_7",
            {"mixer_kwargs": [1]},
            r"^eamlp_7: mixer_kwargs must be a dict \(dict\[str, Any\] \| None\), got \[1\]$",
        ),
        ("san_quadratic", {"mixer_kwargs": None}, r"^san_quadratic: mixer_kwargs must be a dict"),
    ],
)
def test_builder_options_of_the_wrong_kind(name, option, match):
    with pytest.raises(TypeError, match=match):
        visattn.create_model(name, **option)


def test_san_mixer_kwargs_replace_the_relpos_arguments():
    # was "_san() got multiple values for argument 'mixer_kwargs'"
    m = visattn.create_model("san_quadratic", depth=1, mixer_kwargs={"num_heads": 4, "key_dim": 8})
    (mixer,) = m.mixers()
    assert (type(mixer).registry_name, mixer.num_heads, mixer.key_dim) == ("relpos", 4, 8)


def test_override_indices_may_be_numpy_ints():
    import numpy as np

    o = MixerOverride(stage=np.int64(2), block=np.int32(-1), mixer="mhsa")
    assert (type(o.stage), type(o.block)) == (int, int)
    assert kinds(build("swin_t", mixer_overrides=[o])) == ["swin", "swin", "swin", "mhsa", "swin"]


def test_overrides_through_features_only_and_segmentation_models():
    ovs = [{"stage": 0, "mixer": "mhsa"}, {"stage": 2, "block": -1, "mixer": "local", "kwargs": {"kernel_size": 3}}]
    ext = build("swin_t", features_only=True, out_indices=(2,), mixer_overrides=ovs)
    assert kinds(ext.model) == ["mhsa", "swin", "swin", "local"]  # stage 3 pruned
    fpn = visattn.create_model("fpn_resnet_tiny", backbone_kwargs={"mixer_overrides": [{"stage": 2, "mixer": "mhsa"}]})
    assert [(n, type(m).registry_name) for n, m in fpn.named_mixers()] == [
        ("backbone.model.stages.2.0.conv2.0", "mhsa")
    ]
    eanet = visattn.create_model(
        "eanet_r50", mixer_overrides=[{"stage": 3, "mixer": "mhsa"}], **model_entry("eanet_r50").test_kwargs
    )
    assert [type(m).registry_name for m in eanet.mixers()] == ["mhsa", "external"]  # backbone slot, EA head
    with pytest.raises(ValueError, match=r"^stage 1 block 0 \('nope'\): unknown attention mechanism 'nope'"):
        build("swin_t", features_only=True, mixer_overrides=[{"stage": 1, "mixer": "nope"}])
    with pytest.raises(TypeError, match=r"^stage 2 block 0 \('mhsa'\): unknown argument\(s\) \['windw'\]"):
        visattn.create_model(
            "fpn_resnet_tiny",
            backbone_kwargs={"mixer_overrides": [{"stage": 2, "mixer": "mhsa", "kwargs": {"windw": 3}}]},
        )
