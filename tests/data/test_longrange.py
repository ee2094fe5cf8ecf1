"""The built-in long-range task (same-different colour marks far apart): determinism, balance, ground truth."""

import re

import numpy as np
import pytest
import torch

from visattn.data import load_data
from visattn.data.longrange import PALETTE, make_same_different, mark_slots, render_pair


def _mark_color(img: np.ndarray, row: int, col: int, mark: int) -> np.ndarray:
    """Mean RGB (0..1) over a mark's pixels; img (3, S, S) uint8."""
    return img[:, row : row + mark, col : col + mark].reshape(3, -1).mean(1) / 255.0


def test_same_seed_same_images_other_seed_other_images():
    a = make_same_different(64, 16, seed=3)
    b = make_same_different(64, 16, seed=3)
    c = make_same_different(64, 16, seed=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert all(np.array_equal(a[2][k], b[2][k]) for k in ("colors", "rows", "cols"))
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (64, 3, 16, 16) and a[0].dtype == torch.uint8 and a[1].dtype == torch.int64


def test_labels_balanced_and_colours_uniform_in_both_classes():
    _, y, t = make_same_different(4000, 16, seed=0, num_colors=4)
    assert int(y.sum()) == 2000  # exactly half "same"
    colors = t["colors"]
    for label in (0, 1):
        sel = colors[y.numpy() == label]
        for side in range(2):
            freq = np.bincount(sel[:, side], minlength=4) / len(sel)
            assert np.abs(freq - 0.25).max() < 0.03, (label, side, freq)  # ~500 per colour, sd ~ 0.01
    # label is "same colour" by construction; "different" pairs never share a colour
    assert np.array_equal(y.numpy(), (colors[:, 0] == colors[:, 1]).astype(np.int64))


def test_odd_count_and_load_data_splits():
    _, y, _ = make_same_different(7, 16, seed=1)
    assert int(y.sum()) in (3, 4)
    b = load_data("longrange", 16, seed=0)
    assert (len(b.train), len(b.test)) == (2000, 1000) and b.classes == ["different", "same"]
    assert int(b.train.labels.sum()) == 1000 and int(b.test.labels.sum()) == 500
    assert b.augment == "none" and b.image_size == 16
    # train and test come from independent streams: no test image appears in train
    tr = {bytes(x.numpy().tobytes()) for x in b.train.images}
    assert not any(bytes(x.numpy().tobytes()) in tr for x in b.test.images)
    assert not torch.equal(load_data("longrange", 16, seed=1).test.images, b.test.images)


def test_marks_drawn_where_and_as_recorded_and_far_apart():
    s, mark = 16, 2
    x, y, t = make_same_different(300, s, seed=5, mark=mark)
    left, right = mark_slots(s, mark)
    imgs = x.numpy()
    for i in range(300):
        for side, slots in enumerate((left, right)):
            r, c = t["rows"][i, side], t["cols"][i, side]
            assert c in slots and 1 <= r <= s - mark - 1
            # the mark's pixels carry its palette colour exactly (uint8 rounding)
            np.testing.assert_allclose(_mark_color(imgs[i], r, c, mark), PALETTE[t["colors"][i, side]], atol=0.5 / 255)
        gap = t["cols"][i, 1] - (t["cols"][i, 0] + mark)  # columns strictly between the marks
        assert gap >= s // 2
        same = np.allclose(
            _mark_color(imgs[i], t["rows"][i, 0], t["cols"][i, 0], mark),
            _mark_color(imgs[i], t["rows"][i, 1], t["cols"][i, 1], mark),
        )
        assert same == bool(y[i])


def test_render_pair_known_instances():
    same = render_pair(16, 2, 2, (3, 1), (10, 13))
    diff = render_pair(16, 0, 3, (3, 1), (10, 13))
    np.testing.assert_array_equal(same[:, 3, 1], PALETTE[2])
    np.testing.assert_array_equal(same[:, 11, 14], PALETTE[2])
    np.testing.assert_array_equal(diff[:, 4, 2], PALETTE[0])
    np.testing.assert_array_equal(diff[:, 10, 13], PALETTE[3])
    assert same.sum() == pytest.approx(8 * PALETTE[2].sum())  # two 2x2 marks, nothing else
    assert float(diff[:, 5:10].sum()) == 0.0


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"num_colors": 1}, "num_colors must be in 2..6, got 1"),
        ({"image_size": 10}, "image_size must be >= 4 * mark + 4 = 12 for marks of side 2, got 10"),
        ({"mark": 0}, "mark must be >= 1"),
        ({"n": 0}, "n must be an int >= 1, got 0"),
        ({"clutter": -1}, "clutter must be >= 0, got -1"),
    ],
)
def test_bad_arguments_are_refused(kw, msg):
    args = {"n": 4, "image_size": 16, "seed": 0, **kw}
    n, size, seed = args.pop("n"), args.pop("image_size"), args.pop("seed")
    with pytest.raises(ValueError, match=re.escape(msg)):
        make_same_different(n, size, seed, **args)


def test_local_features_are_capped_at_75_percent():
    from visattn.data.longrange import best_additive_accuracy

    # exhaustive over every rule "same iff g(left) + h(right) > t"
    assert [best_additive_accuracy(k) for k in (2, 3, 4)] == [pytest.approx(0.75)] * 3
    # the rule that attains it: "same" when the right colour does not come after the left one
    _, y, t = make_same_different(4000, 16, seed=2)
    pred = (t["colors"][:, 1] <= t["colors"][:, 0]).astype(np.int64)
    assert abs(float((pred == y.numpy()).mean()) - 0.75) < 0.02  # sd of the estimate ~ 0.007
    with pytest.raises(ValueError, match="num_colors must be in 2..5 for the exhaustive search, got 6"):
        best_additive_accuracy(6)
