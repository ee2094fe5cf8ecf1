"""EAMLP: the blocks equal the authors' equations, parameter counts reconcile with theirs and the
published figures, the stem's grid arithmetic, other input sizes and the tie option."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import visattn
from visattn.models.eamlp import EAMLP, T2TStem, sinusoid_positions
from visattn.registry import model_entry

SMALL = dict(model_entry("eamlp_7").test_kwargs)


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12)).item()


def authors_param_count(dim, depth, heads, mlp_ratio, img=224, num_classes=1000, token_dim=64, s_t2t=128, s=64):
    """Parameters of the authors' EAMLP (T2T-ViT code with their EA layers), from the layer shapes.

    Counts what ``sum(p.numel() for p in model.parameters())`` gives for their model, which
    includes the fixed position table (a Parameter with requires_grad=False) and the class token.
    """

    def linear(i, o, bias=True):
        return i * o + (o if bias else 0)

    def t2t_block(din, d):  # Token_performer with the EA attention
        return (
            2 * din
            + linear(din, d)
            + linear(d, s_t2t, bias=False)
            + linear(s_t2t, d)
            + linear(d, d)
            + 2 * d
            + linear(d, d)
            + linear(d, d)
        )

    inner, head_dim = 4 * dim, dim // heads
    hidden = int(dim * mlp_ratio)
    block = (
        2 * dim
        + linear(dim, inner)
        + linear(head_dim, s)
        + linear(s, head_dim)
        + linear(inner, dim)
        + 2 * dim
        + linear(dim, hidden)
        + linear(hidden, dim)
    )
    n = (img // 16) ** 2
    return (
        t2t_block(3 * 49, token_dim)
        + t2t_block(token_dim * 9, token_dim)
        + linear(token_dim * 9, dim)
        + dim
        + (n + 1) * dim
        + depth * block
        + 2 * dim
        + linear(dim, num_classes)
    )


CONFIGS = {"eamlp_7": (256, 7, 4, 2.0), "eamlp_14": (384, 14, 6, 3.0), "eamlp_19": (448, 19, 7, 3.0)}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_param_count_reconciles_exactly_with_the_authors_layers(name):
    dim, depth, heads, ratio = CONFIGS[name]
    with torch.device("meta"):
        model = visattn.create_model(name)
    ours = sum(p.numel() for p in model.parameters())
    theirs = authors_param_count(dim, depth, heads, ratio)
    head_dim = dim // heads
    # What we leave out, and why (module docstring): the class token (dim), the fixed position
    # table ((196 + 1) * dim, not learned), the key and value biases of the blocks' memories
    # (64 + head_dim per block: they cancel / fold into the output projection's bias) and the
    # value biases of the two T2T memories (64 each).
    left_out = dim + 197 * dim + depth * (64 + head_dim) + 2 * 64
    assert ours == theirs - left_out


@pytest.mark.parametrize("name", ["eamlp_14", "eamlp_19"])
def test_published_parameter_counts(name):
    # Published 30M / 55M (integers). The authors' layer count rounds to exactly the published
    # integer; ours (no class token / position table / redundant biases) is within 1.2%.
    dim, depth, heads, ratio = CONFIGS[name]
    published = model_entry(name).published["params_m"]
    assert round(authors_param_count(dim, depth, heads, ratio) / 1e6) == published
    with torch.device("meta"):
        ours = sum(p.numel() for p in visattn.create_model(name).parameters()) / 1e6
    assert abs(ours - published) / published < 0.012


def test_recorded_counts():
    # Our counts at the default config (1000 classes), recorded in docs/models.md.
    expected = {"eamlp_7": 6_094_926, "eamlp_14": 29_799_118, "eamlp_19": 54_467_790}
    for name, n in expected.items():
        with torch.device("meta"):
            assert sum(p.numel() for p in visattn.create_model(name).parameters()) == n, name


def _reference_block(blk, x, heads4, eps=1e-9):
    """The authors' EAMLP block equations, written out on tokens (B, N, C)."""
    ea = blk.mixer
    b, n, c = x.shape
    y = F.layer_norm(x, (c,), blk.norm1.weight, blk.norm1.bias)
    f = y @ ea.in_proj.weight[:, :, 0, 0].T + ea.in_proj.bias  # trans_dims: (B, N, 4C)
    f = f.view(b, n, heads4, -1).permute(0, 2, 1, 3)  # (B, 4h, N, d)
    attn = f @ ea.memory_key.T  # linear_0: (B, 4h, N, S)
    attn = attn.softmax(dim=-2)  # over the N tokens
    attn = attn / (eps + attn.sum(dim=-1, keepdim=True))  # L1 over the S units
    o = (attn @ ea.memory_value).permute(0, 2, 1, 3).reshape(b, n, -1)  # linear_1, heads concatenated
    o = o @ ea.proj.weight[:, :, 0, 0].T + ea.proj.bias  # proj
    x = x + o
    z = F.layer_norm(x, (c,), blk.norm2.weight, blk.norm2.bias)
    return x + blk.mlp.fc2(F.gelu(blk.mlp.fc1(z)))


def _reference_t2t_block(blk, x, eps=1e-9):
    c = x.shape[-1]
    q = blk.q(F.layer_norm(x, (c,), blk.norm1.weight, blk.norm1.bias))
    attn = (q @ blk.ea.memory_key.T).softmax(dim=-2)
    attn = attn / (eps + attn.sum(dim=-1, keepdim=True))
    x = q + blk.proj(attn @ blk.ea.memory_value)
    return x + blk.mlp(blk.norm2(x))


def test_block_equals_the_authors_equations():
    torch.manual_seed(0)
    model = EAMLP(10, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, memory_size=16).double().eval()
    blk = model.blocks[0]
    assert blk.mixer.num_heads == 8 and blk.mixer.head_dim == 16 and blk.mixer.memory_size == 16
    x = torch.randn(2, 15, 32, dtype=torch.float64)
    assert rel_err(blk(x, (3, 5)), _reference_block(blk, x, 8)) < 1e-12


def test_t2t_block_equals_the_authors_equations():
    torch.manual_seed(0)
    stem = T2TStem(3, 32, token_dim=16, memory_size=24).double()
    x = torch.randn(2, 12, 147, dtype=torch.float64)
    assert rel_err(stem.block1(x, (3, 4)), _reference_t2t_block(stem.block1, x)) < 1e-12


def test_forward_is_stem_positions_blocks_norm():
    torch.manual_seed(0)
    model = EAMLP(0, **SMALL).eval()
    img = torch.randn(2, 3, 40, 56)
    t, hw = model.stem(img)
    t = t + sinusoid_positions(t.shape[1], model.embed_dim)
    for blk in model.blocks:
        t = blk(t, hw)
    feats = model.norm(t).mean(1)
    assert rel_err(model(img), feats) < 1e-6


@pytest.mark.parametrize(
    "hw,grid",
    [((224, 224), (14, 14)), ((384, 384), (24, 24)), ((3, 3), (1, 1)), ((37, 70), (3, 5)), ((33, 17), (2, 1))],
)
def test_grid_size(hw, grid):
    assert T2TStem.grid_size(*hw) == grid
    model = EAMLP(3, **SMALL).eval()
    f = model.forward_features(torch.randn(1, 3, *hw)) if hw[0] * hw[1] < 5000 else None
    if f is not None:
        assert f.shape == (1, SMALL["embed_dim"], *grid)


def test_sinusoid_matches_the_formula():
    t = sinusoid_positions(5, 6, offset=1, dtype=torch.float64)
    p, i = 3, 4  # row for position 4 (offset 1), channel 4 = sin(p / 10000^(4/6))
    assert t[p, i].item() == pytest.approx(torch.sin(torch.tensor(4.0, dtype=torch.float64) / 10000 ** (4 / 6)).item())
    assert t[p, i + 1].item() == pytest.approx(
        torch.cos(torch.tensor(4.0, dtype=torch.float64) / 10000 ** (4 / 6)).item()
    )


def test_tied_t2t_memories_are_one_parameter():
    untied = EAMLP(10, **SMALL)
    tied = EAMLP(10, tie_t2t_memories=True, **SMALL)
    s, d = SMALL["t2t_memory_size"], SMALL["token_dim"]
    n_untied = sum(p.numel() for p in untied.parameters())
    assert sum(p.numel() for p in tied.parameters()) == n_untied - 2 * s * d
    assert tied.stem.block1.ea.memory_value is tied.stem.block1.ea.memory_key


def test_swapped_mixer_is_used():
    model = visattn.create_model("eamlp_7", num_classes=4, attention="mhsa", attn_kwargs={"num_heads": 2}, **SMALL)
    assert [type(m).registry_name for m in model.mixers()] == ["external", "external", "mhsa"]  # stem, block
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4)


def test_bad_config_and_input_errors():
    with pytest.raises(ValueError, match="embed_dim=30 must be divisible by num_heads=4"):
        EAMLP(10, embed_dim=30, num_heads=4)
    with pytest.raises(TypeError, match="depth must be an int >= 1"):
        EAMLP(10, depth=2.0)
    # the builders' one unknown-option message, from the constructor too
    with pytest.raises(TypeError, match=r"^EAMLP: unknown option\(s\) \['depths'\]; expected EAMLPConfig fields \["):
        EAMLP(10, depths=2)
    with pytest.raises(ValueError, match="unknown attention mechanism 'nope'"):
        visattn.create_model("eamlp_7", attention="nope")
    model = EAMLP(10, **SMALL)
    with pytest.raises(ValueError, match=r"expects images \(B, 3, H, W\), got \(2, 32, 32\)"):
        model(torch.randn(2, 32, 32))
    with pytest.raises(ValueError, match="at least 3 x 3 pixels"):
        model(torch.randn(1, 3, 2, 8))
