"""SAGAN's G and D (visattn.models.gan): shapes, the attention block's place, spectral norm and the
hinge loss against their definitions, one G and D step with every registered mechanism,
parameter counts against docs/generation.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import visattn
from visattn.layers.base import SpatialAttention
from visattn.models.gan import AttentionBlock, hinge_d_loss, hinge_g_loss

GEN = visattn.list_models(task="generate")
DOC = Path(__file__).resolve().parents[2] / "docs" / "generation.md"


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_registered_generate_models():
    assert GEN == ["sagan32_d", "sagan32_g", "sagan64_d", "sagan64_g"]
    assert not set(GEN) & set(visattn.list_models(task="classify") + visattn.list_models(task="segment"))


@pytest.mark.parametrize("side", [32, 64])
def test_shapes_and_attention_resolution(side):
    g = visattn.create_model(f"sagan{side}_g", ch=8, num_classes=5)
    d = visattn.create_model(f"sagan{side}_d", ch=8, num_classes=5)
    seen = {}

    def hook(name):
        return lambda mod, inp, out: seen.__setitem__(name, tuple(inp[0].shape))

    g.attention.register_forward_hook(hook("g"))
    d.attention.register_forward_hook(hook("d"))
    y = torch.tensor([0, 4, 2])
    x = g(torch.randn(3, 128), y)
    assert x.shape == (3, 3, side, side) and float(x.detach().abs().max()) <= 1.0
    assert d(x, y).shape == (3,)
    # SAGAN's place: the side/2 map in both networks (32x32 at 64 px, 16x16 at 32 px)
    assert seen["g"][2:] == (side // 2, side // 2) and seen["d"][2:] == (side // 2, side // 2)
    assert g.attention_resolution == d.attention_resolution == side // 2


def test_attention_block_is_residual_with_gamma_zero_at_start():
    blk = AttentionBlock(8, "external", {"memory_size": 4}, 8, "test")
    x = torch.randn(2, 8, 8, 8)
    assert float(blk.gamma) == 0.0 and torch.equal(blk(x), x)
    with torch.no_grad():
        blk.gamma.fill_(0.5)
    torch.testing.assert_close(blk(x), x + 0.5 * blk.attn(x))


def test_swap_by_name():
    g = visattn.create_model("sagan32_g", ch=8, attention="external", attn_kwargs={"memory_size": 16})
    ((name, mix),) = g.named_mixers()
    assert name == "attention.attn" and type(mix).registry_name == "external"
    default = visattn.create_model("sagan32_d", ch=8)
    assert type(default.mixers()[0]).registry_name == "mhsa" and default.mixers()[0].num_heads == 1


def test_spectral_norm_against_its_definition():
    """Every Conv2d / Linear of G and D (mechanism layers included) carries spectral norm; after the
    power iterations converge, each effective weight W / sigma(W) has largest singular value 1."""
    torch.manual_seed(0)
    d = visattn.create_model("sagan32_d", ch=8, num_classes=3)
    layers = [m for m in d.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert layers and all(hasattr(m, "parametrizations") for m in layers)
    d.train()
    with torch.no_grad():
        for m in layers + [d.embed]:  # converge the power iteration (one per training forward otherwise)
            m.parametrizations.weight[0].n_power_iterations = 100
            m.weight  # noqa: B018 - computing the weight in training mode runs the iterations
    d.eval()
    for m in layers + [d.embed]:
        w = m.weight  # the normalised weight
        w_orig = m.parametrizations.weight.original
        sigma = torch.linalg.matrix_norm(w_orig.flatten(1), ord=2)
        torch.testing.assert_close(w, w_orig / sigma, rtol=1e-3, atol=1e-5)
        assert abs(float(torch.linalg.matrix_norm(w.flatten(1), ord=2)) - 1.0) < 1e-3


def test_hinge_loss_against_its_definition():
    real = torch.tensor([2.0, 0.5, -1.0, 1.0])
    fake = torch.tensor([-2.0, -0.5, 0.3, 1.5])
    # E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]
    want_d = (0 + 0.5 + 2.0 + 0) / 4 + (0 + 0.5 + 1.3 + 2.5) / 4
    assert abs(float(hinge_d_loss(real, fake)) - want_d) < 1e-6
    assert abs(float(hinge_g_loss(fake)) - (-(-2.0 - 0.5 + 0.3 + 1.5) / 4)) < 1e-6


def test_unconditional_d_refuses_nothing_and_conditional_needs_labels():
    d = visattn.create_model("sagan32_d", ch=8, num_classes=4)
    with pytest.raises(ValueError, match=r"class-conditional \(4 classes\): pass labels y"):
        d(torch.randn(2, 3, 32, 32))
    g = visattn.create_model("sagan32_g", ch=8)
    with pytest.raises(ValueError, match=r"SAGANGenerator expects z \(B, 128\), got \(2, 64\)"):
        g(torch.randn(2, 64))
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['depth'\]; expected GANConfig fields"):
        visattn.create_model("sagan32_g", depth=3)
    with pytest.raises(ValueError, match="img_size must be one of"):
        from visattn.models.gan import GANConfig, SAGANGenerator

        SAGANGenerator(GANConfig(img_size=48))


def test_projection_discriminator_adds_the_class_term():
    torch.manual_seed(0)
    d = visattn.create_model("sagan32_d", ch=8, num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    h = {}
    d.linear.register_forward_hook(lambda m, i, o: h.__setitem__("h", i[0]))
    out0, out1 = d(x, torch.tensor([0, 0])), d(x, torch.tensor([1, 1]))
    e = d.embed.weight
    torch.testing.assert_close(out1 - out0, (h["h"] * (e[1] - e[0])).sum(1), rtol=1e-4, atol=1e-5)


def test_conditional_generator_takes_the_class_one_hot_next_to_z():
    """The class enters G's first layer as a one-hot next to z (and the CBNs, whose gains start at 0):
    at initialisation the first layer's output for class k is W [z; e_k] + b, so two classes differ by
    W's columns z_dim + k."""
    torch.manual_seed(0)
    g = visattn.create_model("sagan32_g", ch=4, z_dim=16, num_classes=3).eval()
    assert g.linear.in_features == 16 + 3
    h = {}
    g.linear.register_forward_hook(lambda m, i, o: h.__setitem__(len(h), o))
    z = torch.randn(2, 16)
    with torch.no_grad():
        a, b = g(z, torch.tensor([0, 0])), g(z, torch.tensor([2, 2]))
        w = g.linear.weight  # the spectrally normalised weight the forward used
    assert a.shape == b.shape == (2, 3, 32, 32) and not torch.allclose(a, b)
    torch.testing.assert_close(h[1] - h[0], (w[:, 18] - w[:, 16]).expand(2, -1), rtol=1e-4, atol=1e-5)
    from visattn.train.generate import sample_images

    s = sample_images(g, 6, seed=1, labels=torch.full((6,), 2))  # the requested labels, one image each
    assert s.shape == (6, 3, 32, 32)
    z6 = torch.randn(6, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(s, (g(z6, torch.full((6,), 2)) * 0.5 + 0.5).clamp(0, 1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("mechanism", visattn.list_attention())
def test_one_g_and_d_step_with_every_mechanism(mechanism):
    """A hinge D step and G step at 32 px with the mechanism in both attention blocks: finite losses,
    every parameter of the stepped network gets a gradient, and the step changes the weights."""
    from visattn.registry import attention_info

    torch.manual_seed(0)
    kw = dict(attention_info(mechanism).test_kwargs)
    g = visattn.create_model("sagan32_g", ch=4, attention=mechanism, attn_kwargs=kw, num_classes=2)
    d = visattn.create_model("sagan32_d", ch=4, attention=mechanism, attn_kwargs=kw, num_classes=2)
    for m in (g, d):
        assert [type(x).registry_name for x in m.mixers()] == [mechanism]
        with torch.no_grad():
            m.attention.gamma.fill_(0.5)  # so the mechanism's own parameters get a gradient
    opt = torch.optim.Adam(
        [{"params": g.parameters(), "lr": 1e-4}, {"params": d.parameters(), "lr": 4e-4}], betas=(0.0, 0.9)
    )
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.tensor([0, 1])
    z = torch.randn(2, 128)
    with torch.no_grad():
        fake = g(z, y)
    d_loss = hinge_d_loss(d(x, y), d(fake, y))
    d_loss.backward()
    assert torch.isfinite(d_loss)
    assert not [n for n, p in d.named_parameters() if p.grad is None]
    assert all(p.grad is None for p in g.parameters())
    before = [p.detach().clone() for p in d.parameters()]
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, d.parameters()))
    opt.zero_grad(set_to_none=True)
    g_loss = hinge_g_loss(d(g(z, y), y))
    g_loss.backward()
    assert torch.isfinite(g_loss)
    assert not [n for n, p in g.named_parameters() if p.grad is None]


def test_every_mechanism_is_a_spatial_attention_in_the_block():
    g = visattn.create_model("sagan32_g", ch=8)
    assert isinstance(g.attention.attn, SpatialAttention)


def test_parameter_counts_stated_in_docs():
    """docs/generation.md states the parameter count of every registered G and D at its defaults."""
    text = DOC.read_text()
    rows = dict(re.findall(r"^\| `(sagan\d+_[gd])` \| [^|]+\| ([\d,]+) \|", text, flags=re.M))
    assert sorted(rows) == GEN
    for name in GEN:
        for ch in (64,):
            m = visattn.create_model(name, ch=ch)
            assert int(rows[name].replace(",", "")) == n_params(m), name


def test_auxiliary_classifier_head_of_d():
    """aux_classifier: D's class logits are a linear map of the same pooled features as its logit;
    without the head, asking for classes is refused."""
    torch.manual_seed(0)
    d = visattn.create_model("sagan32_d", ch=4, num_classes=3, aux_classifier=True).eval()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    h = {}
    d.linear.register_forward_hook(lambda m, i, o: h.__setitem__("h", i[0]))
    logits, classes = d(x, y, with_classes=True)
    assert logits.shape == (2,) and classes.shape == (2, 3)
    torch.testing.assert_close(logits, d(x, y))
    torch.testing.assert_close(classes, h["h"] @ d.aux.weight.T + d.aux.bias)
    assert not hasattr(d.aux, "parametrizations") and hasattr(d.linear, "parametrizations")  # no spectral norm
    plain = visattn.create_model("sagan32_d", ch=4, num_classes=3)
    with pytest.raises(ValueError, match="with_classes needs a discriminator built with aux_classifier=True"):
        plain(x, y, with_classes=True)
