"""The authors' formats (EAMLP, EANet, PVT v1, Slide-Swin): their published key layouts and forwards
(functional references in _authors.py) against visattn after conversion, through the public path
(a file in the authors' wrapper -> ``create_model(..., pretrained=)``), in float32, with a negative
control per format (a plausible wrong mapping fails) and a check that the random weights move the
output through every tensor except those that provably cannot (CHECKPOINTS.md section F)."""

from __future__ import annotations

import argparse
import re

import _authors as A
import numpy as np
import pytest
import torch
from _wutil import inert_tensors, rel_err

import visattn
from visattn.models.convert import FORMATS
from visattn.models.pretrained import load_backbone_pretrained

TOL = 1e-5  # relative, float32


def _save(path, obj) -> str:
    torch.save(obj, path)
    return str(path)


@pytest.mark.slow
@torch.no_grad()
def test_eamlp_authors(tmp_path):
    # The timm-0.3 checkpoint of the release: EMA weights under state_dict_ema (the 71.7% ones),
    # other weights under state_dict, the training args as an argparse.Namespace, numpy metrics.
    ema, raw = A.eamlp_state(img=64, seed=0), A.eamlp_state(img=64, seed=1)
    path = _save(
        tmp_path / "model_best.pth.tar",
        {
            "state_dict": raw,
            "state_dict_ema": ema,
            "args": argparse.Namespace(model="T2t_vit_7", img_size=384, model_ema=True),
            "epoch": 309,
            "version": 2,
            "metric": np.float64(71.658),
        },
    )
    model = visattn.create_model("eamlp_7", pretrained=path).eval()  # class_token=True set from the keys
    assert model.cfg.class_token and model.global_pool == "token"
    x = torch.randn(2, 3, 64, 64)
    err = rel_err(model(x), A.eamlp_forward(ema, x))
    assert err < TOL, err
    assert rel_err(model(x), A.eamlp_forward(raw, x)) > 0.1  # the EMA weights were read
    # Without the class token the function is another one (the token joins every softmax).
    assert rel_err(model(x), A.eamlp_forward(ema, x, with_cls=False)) > 0.1
    # Negative control: the authors' construction-time tie M_v = M_k^T instead of the trained M_v.
    tied = visattn.create_model("eamlp_7", pretrained=path).eval()
    for blk in tied.blocks:
        blk.mixer.memory_value.copy_(blk.mixer.memory_key)
    assert rel_err(tied(x), A.eamlp_forward(ema, x)) > 1e-2
    # Every tensor moves the output but M_k's bias and what only feeds it (a constant over positions
    # before the softmax over positions cancels): norm1.bias, trans_dims.bias, linear_0.bias of the blocks.
    small = A.eamlp_state(img=48)  # 3 x 3 tokens: one forward per tensor stays cheap
    probe = {k: v for k, v in small.items() if k != "pos_embed"}
    x1 = x[:1, :, :48, :48]
    inert = inert_tensors(lambda: A.eamlp_forward(small, x1), probe)
    expected = {
        f"blocks.{i}.{n}" for i in range(7) for n in ("norm1.bias", "attn.trans_dims.bias", "attn.linear_0.bias")
    }
    assert set(inert) == expected, sorted(set(inert) ^ expected)


def test_eamlp_refuses_a_changed_position_table(tmp_path):
    sd = A.eamlp_state(img=64)
    sd["pos_embed"] = sd["pos_embed"] + 0.01
    path = _save(tmp_path / "m.pth", {"state_dict_ema": sd})
    with pytest.raises(ValueError, match="pos_embed is not the fixed sinusoid"):
        visattn.create_model("eamlp_7", pretrained=path)


@pytest.mark.slow
@torch.no_grad()
def test_eanet_authors(tmp_path, caplog):
    sd = A.eanet_state(layers=(3, 4, 6, 3))
    path = _save(tmp_path / "eanet.pth", {"net": sd, "step": 45000})
    model = visattn.create_model("eanet_r50", pretrained=path).eval()  # multi_grid=(1, 2, 4) from the format
    assert model.backbone.model.cfg.multi_grid == (1, 2, 4)
    x = torch.randn(1, 3, 65, 65)
    ref = A.eanet_forward(sd, x)
    err = rel_err(model(x), ref)
    assert err < TOL, err
    # Negative controls: visattn's dilations without the multi-grid (loads, warns, differs), and the
    # value memory tied to the key memory as the authors' code constructs it (not as it was trained).
    plain = visattn.create_model("eanet_r50", pretrained=path, multi_grid=None).eval()
    assert "trained with multi_grid=(1, 2, 4)" in caplog.text
    assert rel_err(plain(x), ref) > 0.05
    tied = visattn.create_model("eanet_r50", pretrained=path).eval()
    att = tied.decode_head.ea.attention
    att.memory_value.copy_(att.memory_key)
    assert rel_err(tied(x), ref) > 1e-3


@pytest.mark.slow
@torch.no_grad()
def test_eanet_every_tensor_matters():
    # A short network (the authors' code at one block per layer) so that a forward per tensor is cheap:
    # only conv1's bias of the EA module cancels (a constant in the softmax over positions).
    layers = (1, 1, 1, 1)
    sd = A.eanet_state(layers=layers)
    x = torch.randn(1, 3, 17, 17)
    inert = inert_tensors(lambda: A.eanet_forward(sd, x, layers=layers), sd)
    assert inert == ["linu.conv1.bias"], inert


@torch.no_grad()
def test_pvt_classifier_and_backbone(tmp_path):
    sd = A.pvt_state()
    path = _save(tmp_path / "pvt_tiny.pth", sd)
    model = visattn.create_model("pvt_t", pretrained=path).eval()  # norm_eps 1e-6, class_token from the format
    assert model.cfg.norm_eps == 1e-6 and model.cfg.class_token
    for side in (224, 128):  # 128: the position tables are resized bilinearly, as the authors do
        x = torch.randn(2, 3, side, side)
        err = rel_err(model(x), A.pvt_forward(sd, x))
        assert err < TOL, (side, err)
    # As fpn_pvt_t's backbone: no class token, the last table without its first entry (the authors'
    # segmentation backbone); norm_eps comes with the backbone weights.
    fpn = visattn.create_model("fpn_pvt_t", backbone_pretrained=path, num_classes=3).eval()
    assert fpn.backbone.model.cfg.norm_eps == 1e-6 and not fpn.backbone.model.cfg.class_token
    x = torch.randn(1, 3, 128, 128)
    for a, b in zip(fpn.backbone(x), A.pvt_forward(sd, x, classify=False)):
        assert rel_err(a, b) < TOL
    # Negative control: the position tables reshaped with rows and columns swapped.
    swapped = visattn.create_model("pvt_t", pretrained=path).eval()
    for st in swapped.stages:
        st.pos_embed.copy_(st.pos_embed.transpose(2, 3).clone())
    assert rel_err(swapped(x), A.pvt_forward(sd, x)) > 1e-3


@torch.no_grad()
def test_pvt_every_tensor_matters():
    cfg = {"dims": (16, 32, 40, 64), "heads": (1, 2, 5, 8)}
    sd = A.pvt_state(img=64, **cfg)
    x = torch.randn(1, 3, 64, 64)
    assert inert_tensors(lambda: A.pvt_forward(sd, x, img=64, **cfg), sd) == []
    # and the reduced network converts and loads exactly too
    model = visattn.create_model("pvt_t", pretrained=_save_tmp(sd), embed_dims=cfg["dims"], pos_embed_size=64).eval()
    assert rel_err(model(x), A.pvt_forward(sd, x, img=64, **cfg)) < TOL


def _save_tmp(obj) -> str:
    import tempfile

    f = tempfile.NamedTemporaryFile(suffix=".pth", delete=False)
    f.close()
    torch.save(obj, f.name)
    return f.name


@torch.no_grad()
def test_slide_swin_authors(tmp_path):
    # The Swin code base's checkpoint ({'model': ...}); reduced widths (32, heads 1-2-4-8) at 224, the
    # slide stages at 56 x 56 and 28 x 28, the window stages over the whole 14 x 14 and 7 x 7 maps.
    sd = A.slide_swin_state()
    path = _save(tmp_path / "slide_swin.pth", {"model": sd, "epoch": 299, "max_accuracy": 0.0})
    model = visattn.create_model("slide_swin_t", pretrained=path).eval()
    x = torch.randn(2, 3, 224, 224)
    ref = A.slide_swin_forward(sd, x)
    err = rel_err(model(x), ref)
    assert err < TOL, err
    assert rel_err(visattn.reparameterize(model)(x), ref) < TOL  # merged shift convs: the same function
    # Negative control: the qkv rows kept in the authors' per-head order.
    wrong = visattn.create_model("slide_swin_t", pretrained=path).eval()
    for i in range(2):
        p = f"layers.{i}.blocks.0.attn.qkv."
        mixer = wrong.stages[i].blocks[0].mixer
        mixer.qkv.weight.copy_(sd[p + "weight"])
        mixer.qkv.bias.copy_(sd[p + "bias"])
    assert rel_err(wrong(x), ref) > 1e-2
    # The slide-specific tensors each move the output (the shift convs' weights and biases, the table).
    probe = {
        k: v
        for k, v in sd.items()
        if re.search(r"attn\.(dep_conv1?\.bias|dep_conv1\.weight|relative_position_bias_table|qkv)", k)
        and k.startswith(("layers.0", "layers.1"))
    }
    assert inert_tensors(lambda: A.slide_swin_forward(sd, x[:1]), probe) == []


def test_every_author_format_is_detected_from_its_keys():
    cases = {
        "eamlp": A.eamlp_state(img=64),
        "eanet": A.eanet_state(),
        "pvt-v1": A.pvt_state(),
        "slide-swin": A.slide_swin_state(),
    }
    for name, sd in cases.items():
        matches = [f.name for f in FORMATS.values() if f.matches(sd)]
        assert matches[0] == name, (name, matches)


@torch.no_grad()
def test_pvt_backbone_into_a_features_only_model(tmp_path):
    sd = A.pvt_state()
    path = _save(tmp_path / "pvt_tiny.pth", sd)
    feats = visattn.create_model("pvt_t", features_only=True, out_indices=(0, 1), norm_eps=1e-6)
    report = load_backbone_pretrained(feats.eval(), path)
    assert any(k.startswith("stages.3.") for k in report.unused) and "cls_token" in report.unused
    x = torch.randn(1, 3, 96, 96)
    ref = A.pvt_forward(sd, x, classify=False)
    for a, b in zip(feats(x), ref[:2]):
        assert rel_err(a, b) < TOL
