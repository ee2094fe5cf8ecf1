"""ExternalAttentionHead equals the plain EANet equations at any size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from visattn.models import ExternalAttentionHead


def reference(head, x, eps=1e-9):
    """EANet module written out: conv1x1 -> M_k -> softmax_n -> L1_S -> M_v -> conv1x1 + BN -> + x -> ReLU."""
    b, c, h, w = x.shape
    f = torch.einsum("oc,bchw->bohw", head.conv_in.weight[:, :, 0, 0], x) + head.conv_in.bias[:, None, None]
    f = f.reshape(b, c, h * w)
    a = torch.einsum("sc,bcn->bsn", head.memory_key, f)  # (B, S, n)
    a = a.softmax(dim=2)  # over the n positions, per unit
    a = a / (eps + a.sum(dim=1, keepdim=True))  # L1 over the S units, per position
    y = torch.einsum("sc,bsn->bcn", head.memory_value, a).reshape(b, c, h, w)
    y = torch.einsum("oc,bchw->bohw", head.conv_out.weight[:, :, 0, 0], y)
    bn = head.norm
    y = (y - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    y = y * bn.weight[:, None, None] + bn.bias[:, None, None]
    return F.relu(x + y)


@pytest.mark.parametrize("hw", [(1, 1), (5, 7), (16, 16), (3, 11)])
@pytest.mark.parametrize("tie", [False, True])
def test_equals_reference(hw, tie):
    torch.manual_seed(0)
    head = ExternalAttentionHead(12, memory_size=8, tie_memories=tie).double()
    with torch.no_grad():  # non-trivial BN statistics and affine
        head.norm.running_mean.uniform_(-1, 1)
        head.norm.running_var.uniform_(0.5, 2)
        head.norm.weight.uniform_(0.5, 2)
        head.norm.bias.uniform_(-1, 1)
    head.eval()
    x = torch.randn(3, 12, *hw, dtype=torch.float64)
    y = head(x)
    assert y.shape == x.shape
    assert torch.allclose(y, reference(head, x), rtol=0, atol=1e-12)


def test_tied_memories_are_one_parameter_and_train_together():
    head = ExternalAttentionHead(8, memory_size=4, tie_memories=True)
    untied = ExternalAttentionHead(8, memory_size=4)
    assert head.memory_value is head.memory_key
    assert sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in head.parameters()) == 4 * 8
    head(torch.randn(2, 8, 5, 5)).sum().backward()
    assert head.memory_key.grad is not None and head.memory_key.grad.abs().sum() > 0


def test_parameter_count():
    c, s = 512, 64  # EANet's setting
    head = ExternalAttentionHead(c, memory_size=s)
    # conv_in (C*C + C), M_k and M_v (2 S C), conv_out (C*C), BN (2C)
    assert sum(p.numel() for p in head.parameters()) == c * c + c + 2 * s * c + c * c + 2 * c


def test_bad_input_errors():
    head = ExternalAttentionHead(8)
    with pytest.raises(ValueError, match=r"expects \(B, C=8, H, W\)"):
        head(torch.randn(2, 4, 5, 5))
    with pytest.raises(TypeError, match="channels must be an int >= 1"):
        ExternalAttentionHead(8.0)
    with pytest.raises(ValueError, match="memory_size must be an int >= 1, got 0"):
        ExternalAttentionHead(8, memory_size=0)
