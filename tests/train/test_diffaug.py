"""DiffAugment (visattn.train.diffaug): known answers of each transformation, differentiability,
the identity when disabled, and the policy's bad input."""

from __future__ import annotations

import pytest
import torch

from visattn.train.diffaug import cutout, diff_augment, parse_policy, translate


def test_translate_known_answer():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    got = translate(x, torch.tensor([[1, -1]]))  # down one row, left one column, zeros shifted in
    want = torch.tensor([[0.0, 0, 0, 0], [1, 2, 3, 0], [5, 6, 7, 0], [9, 10, 11, 0]])
    assert torch.equal(got[0, 0], want)
    # per image: the second image is not moved
    two = torch.stack([x[0], x[0] + 100])
    out = translate(two, torch.tensor([[0, 2], [0, 0]]))
    assert torch.equal(out[1], two[1]) and torch.equal(out[0, 0, :, 2:], x[0, 0, :, :2])
    assert torch.equal(out[0, 0, :, :2], torch.zeros(4, 2))


def test_cutout_known_answer_clips_at_the_border():
    x = torch.ones(2, 3, 4, 4)
    out = cutout(x, torch.tensor([[0, 3], [2, 2]]), 2)
    want0 = torch.ones(4, 4)
    want0[0, 2:] = 0  # rows -1..0, columns 2..3
    want1 = torch.ones(4, 4)
    want1[1:3, 1:3] = 0
    assert torch.equal(out[0, 1], want0) and torch.equal(out[1, 2], want1)


def test_disabled_is_the_identity_object():
    x = torch.randn(3, 3, 8, 8)
    assert diff_augment(x, "") is x and diff_augment(x, " , ") is x and diff_augment(x, ()) is x


def test_it_is_differentiable_and_the_gradient_is_the_mask():
    """translation + cutout move and zero pixels: d sum(out) / dx is 1 on the pixels that survive, 0 elsewhere."""
    torch.manual_seed(0)
    x = torch.randn(6, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(1)
    out = diff_augment(x, "translation,cutout")
    out.sum().backward()
    assert out.shape == x.shape and x.grad is not None
    assert set(x.grad.unique().tolist()) == {0.0, 1.0}
    # every surviving input pixel appears once in the output, so the output's sum is the kept inputs' sum
    assert torch.allclose(out.detach().sum(), (x.detach() * x.grad).sum())
    # gradcheck through fixed draws (the RNG reseeded before every evaluation)
    xs = x.detach()[:1, :1, :6, :6].clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda inp: (torch.manual_seed(2), diff_augment(inp, "translation,cutout,brightness"))[1], (xs,)
    )


def test_translation_stays_within_the_ratio_and_brightness_within_half():
    torch.manual_seed(0)
    x = torch.zeros(200, 1, 32, 32)
    x[:, :, 16, 16] = 1.0  # one bright pixel: where it lands is the shift
    out = diff_augment(x, "translation")
    pos = out.flatten(1).argmax(1)
    dr, dc = pos // 32 - 16, pos % 32 - 16
    assert int(dr.abs().max()) == 4 and int(dc.abs().max()) == 4  # round(32 / 8); all 9 values drawn
    assert len(set(dr.tolist())) == 9
    b = diff_augment(torch.zeros(500, 3, 4, 4), "brightness")
    assert float(b.min()) >= -0.5 and float(b.max()) < 0.5 and torch.equal(b, b[:, :1, :1, :1].expand_as(b))


def test_bad_policies_are_named():
    with pytest.raises(ValueError, match=r"unknown DiffAugment transformation\(s\) \['flip'\] in 'translation,flip'"):
        parse_policy("translation,flip")
    with pytest.raises(TypeError, match="must be a str"):
        parse_policy(3)  # type: ignore[arg-type]
    assert parse_policy(" cutout , translation") == ("cutout", "translation")
