"""A built-in long-range task: are two far-apart marks the same colour? (data spec ``longrange``)

Each image is a dark canvas with faint noise and a few grey clutter dots, and two small
square *marks*, one near the left edge and one near the right edge, each painted in one of
``num_colors`` colours. The label is 1 ("same") when both marks have the same colour, 0
("different") otherwise; exactly half of every split is "same", and every mark's colour is
uniform over the palette in both classes. This is the same-different relation of the
Synthetic Visual Reasoning Test (Fleuret et al., PNAS 2011; problem 1) and of Kim, Ricci &
Serre, "Not-So-CLEVR: learning same-different relations strains feedforward neural
networks" (Interface Focus 2018), with the two items pinned far apart.

Why local mixers cannot solve it: the marks are at least ``image_size // 2`` columns apart
(edge to edge), so in a network whose receptive field is narrower than that gap plus 2
columns, no feature sees both. After global average pooling and a linear classifier the
decision is then a threshold on a sum ``g(left mark) + h(right mark) + (terms that do not
depend on the marks)``. Over ``K`` colours, uniform in both classes, the best rule of that
form is right 75% of the time (order the colours and answer "same" when the right mark's
colour does not come after the left one's: every "same" pair and half the "different"
ones; :func:`best_additive_accuracy` checks every such rule): a network of local features is
capped at 75%, and in practice stays near chance. A mechanism that mixes information across
the whole map (global attention, efficient or external attention, a lambda layer's content
lambda) can bring one mark's colour to the other and compare them: 100% is reachable.

Everything is drawn from ``numpy.random.default_rng(seed)``: the same arguments give the
same images, bit for bit; nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import torch

from visattn.data.datasets import DataBundle, ImageDataset, _channel_stats, _check_memory

__all__ = [
    "PALETTE",
    "make_same_different",
    "render_pair",
    "load_longrange_dataset",
    "mark_slots",
    "best_additive_accuracy",
]

#: Mark colours (RGB, 0..1): red, green, blue, yellow, magenta, cyan.
PALETTE = np.array(
    [(1.0, 0.1, 0.1), (0.1, 1.0, 0.1), (0.2, 0.3, 1.0), (1.0, 1.0, 0.1), (1.0, 0.1, 1.0), (0.1, 1.0, 1.0)],
    dtype=np.float32,
)

_CLUTTER = 0.5  # grey level of the clutter dots
_NOISE = 0.08  # amplitude of the uniform background noise


def _check(image_size: int, mark: int, num_colors: int) -> None:
    for name, v in (("image_size", image_size), ("mark", mark), ("num_colors", num_colors)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if not 2 <= num_colors <= len(PALETTE):
        raise ValueError(f"num_colors must be in 2..{len(PALETTE)}, got {num_colors}")
    if mark < 1:
        raise ValueError(f"mark must be >= 1 (side of a mark in pixels), got {mark}")
    if image_size < 4 * mark + 4:
        raise ValueError(
            f"image_size must be >= 4 * mark + 4 = {4 * mark + 4} for marks of side {mark}, got {image_size}"
        )


def mark_slots(image_size: int, mark: int = 2) -> tuple[range, range]:
    """Left column range and right column range a mark's left edge is drawn from.

    A mark's left edge lies in ``range(1, q - mark + 1)`` (left) or ``range(S - q, S - mark)``
    (right) with ``q = S // 4`` (at least ``mark + 1``), so the marks are at least ``S - 2q``
    >= ``S // 2`` columns apart, edge to edge, and one pixel from the border.
    """
    q = max(image_size // 4, mark + 1)
    return range(1, q - mark + 1), range(image_size - q, image_size - mark)


def render_pair(
    image_size: int, color_a: int, color_b: int, pos_a: tuple[int, int], pos_b: tuple[int, int], mark: int = 2
) -> np.ndarray:
    """One clean image (3, S, S) float32: marks of palette colours ``color_a`` at ``pos_a = (row, col)``
    (top-left corner) and ``color_b`` at ``pos_b`` on a black canvas, no noise or clutter."""
    img = np.zeros((3, image_size, image_size), dtype=np.float32)
    for c, (r, x) in ((color_a, pos_a), (color_b, pos_b)):
        img[:, r : r + mark, x : x + mark] = PALETTE[c][:, None, None]
    return img


def make_same_different(
    n: int, image_size: int = 16, seed: int = 0, *, num_colors: int = 4, mark: int = 2, clutter: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, dict[str, np.ndarray]]:
    """``n`` images of the same-different task (module docstring), half of them "same".

    Args:
        n: number of images (even n: exactly n/2 of each label).
        image_size: canvas side S.
        seed: everything is drawn from ``numpy.random.default_rng(seed)``.
        num_colors: palette size K (2..6).
        mark: side of a mark in pixels.
        clutter: grey dots per image, drawn anywhere except on the marks (default S // 4).

    Returns:
        images (n, 3, S, S) uint8, labels (n,) int64 (1 = same colour), and the ground
        truth as arrays: ``colors`` (n, 2) palette indices of the left and right marks,
        ``rows`` (n, 2) and ``cols`` (n, 2) of their top-left corners.
    """
    _check(image_size, mark, num_colors)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    clutter = image_size // 4 if clutter is None else clutter
    if clutter < 0:
        raise ValueError(f"clutter must be >= 0, got {clutter}")
    rng = np.random.default_rng(seed)
    s = image_size
    labels = np.zeros(n, dtype=np.int64)
    labels[: n // 2] = 1
    if n % 2:
        labels[-1] = rng.integers(0, 2)
    rng.shuffle(labels)
    first = rng.integers(0, num_colors, n)
    # different: the second colour is any other one, uniformly (so each mark's colour is uniform in both classes)
    second = np.where(labels == 1, first, (first + rng.integers(1, num_colors, n)) % num_colors)
    swap = rng.random(n) < 0.5  # which side gets the first colour
    colors = np.stack([np.where(swap, second, first), np.where(swap, first, second)], axis=1)
    left, right = mark_slots(s, mark)
    cols = np.stack([rng.integers(left.start, left.stop, n), rng.integers(right.start, right.stop, n)], axis=1)
    rows = rng.integers(1, s - mark, (n, 2))

    images = rng.uniform(0.0, _NOISE, (n, 3, s, s)).astype(np.float32)
    # clutter: grey single pixels (drawn first, the marks are painted over them)
    if clutter:
        cy = rng.integers(0, s, (n, clutter))
        cx = rng.integers(0, s, (n, clutter))
        idx = np.repeat(np.arange(n), clutter)
        images[idx, :, cy.ravel(), cx.ravel()] = _CLUTTER
    dy, dx = np.meshgrid(np.arange(mark), np.arange(mark), indexing="ij")
    for side in range(2):
        rr = rows[:, side, None, None] + dy  # (n, m, m)
        cc = cols[:, side, None, None] + dx
        ii = np.broadcast_to(np.arange(n)[:, None, None], rr.shape)
        col = PALETTE[colors[:, side]]  # (n, 3)
        for ch in range(3):
            images[ii, ch, rr, cc] = np.broadcast_to(col[:, ch, None, None], rr.shape)
    images_u8 = torch.from_numpy(np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8))
    truth = {"colors": colors, "rows": rows, "cols": cols}
    return images_u8, torch.from_numpy(labels), truth


def load_longrange_dataset(
    image_size: int = 16,
    seed: int = 0,
    *,
    train_size: int = 2000,
    test_size: int = 1000,
    num_colors: int = 4,
    mark: int = 2,
) -> DataBundle:
    """The same-different task as a :class:`DataBundle` (``load_data("longrange")``).

    Train and test images come from independent streams of ``seed`` (test from
    ``seed + 1_000_003``). No augmentation by default: a random crop could push a mark
    closer to the other one's side, and a flip only swaps the two marks.
    """
    _check(image_size, mark, num_colors)
    _check_memory(train_size + test_size, image_size, 1, "longrange")
    tr_x, tr_y, tr_t = make_same_different(train_size, image_size, seed, num_colors=num_colors, mark=mark)
    te_x, te_y, te_t = make_same_different(test_size, image_size, seed + 1_000_003, num_colors=num_colors, mark=mark)
    train, test = ImageDataset(tr_x, tr_y), ImageDataset(te_x, te_y)
    mean, std = _channel_stats(train.images)
    return DataBundle(
        "longrange",
        train,
        test,
        ["different", "same"],
        image_size,
        mean,
        std,
        augment="none",
        extra={"train_truth": tr_t, "test_truth": te_t, "num_colors": num_colors, "mark": mark},
    )


def best_additive_accuracy(num_colors: int = 4) -> float:
    """Best accuracy on the task of any rule "same iff g(left colour) + h(right colour) > t".

    The sets of colour pairs such rules pick are exactly the Ferrers relations (each row's set
    of columns nested in the next one's), so enumerating nested chains of column sets covers
    them all. ``num_colors`` up to 5 (the search is exhaustive: (2^K)^K candidate chains).
    """
    import itertools

    if not 2 <= num_colors <= 5:
        raise ValueError(f"num_colors must be in 2..5 for the exhaustive search, got {num_colors}")
    k = num_colors
    p_same, p_diff = 0.5 / k, 0.5 / (k * (k - 1))
    best = 0.0
    for rows in itertools.product(range(1 << k), repeat=k):
        if any((a & b) not in (a, b) for a, b in itertools.combinations(rows, 2)):
            continue  # not nested: no threshold of a sum picks this set
        acc = sum(p_same if (rows[a] >> a) & 1 else 0.0 for a in range(k))
        acc += sum(p_diff for a in range(k) for b in range(k) if a != b and not (rows[a] >> b) & 1)
        best = max(best, acc)
    return best
