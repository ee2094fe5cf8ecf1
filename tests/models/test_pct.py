"""PCT, SPCT and the part-segmentation network: sizes, sampling, permutation symmetry, training steps."""

import pytest
import torch

import visattn
from visattn.layers.sets import set_capable
from visattn.models.pct import OffsetAttention, PCTSelfAttention
from visattn.models.point_ops import farthest_point_sample, knn, sample_and_group

SETS = set_capable()
N = 64


def _akw(name):
    if name is None:
        return None
    info = visattn.attention_info(name)
    return {**info.test_kwargs, **info.set_kwargs}


@pytest.mark.parametrize(
    "name, kwargs, count",
    [
        ("pct", {"pooling": "max"}, 2_876_136),  # the paper's 2.88M (the authors' classifier pools by max)
        ("spct", {"pooling": "max"}, 1_360_552),  # the paper's 1.36M
        ("pct", {}, 3_400_424),  # max+avg pooling: 2048 features into the classifier
        ("spct", {}, 1_884_840),
        ("pct_partseg", {}, 2_446_130),
    ],
)
def test_parameter_counts(name, kwargs, count):
    with torch.device("meta"):
        m = visattn.create_model(name, **kwargs)
    assert sum(p.numel() for p in m.parameters()) == count
    published = visattn.registry.model_entry(name).published.get("params_m")
    if published is not None and kwargs:
        assert round(count / 1e6, 2) == published


def test_external_attention_model_swaps_every_layer():
    m = visattn.create_model("pct", attention="external", attn_kwargs={"memory_size": 16})
    layers = [mod for mod in m.modules() if isinstance(mod, OffsetAttention)]
    assert len(layers) == 4
    assert all(type(layer.attn.mechanism).__name__ == "ExternalAttention" for layer in layers)
    assert not any(isinstance(mod, PCTSelfAttention) for mod in m.modules())
    assert len([mod for mod in visattn.create_model("pct").modules() if isinstance(mod, PCTSelfAttention)]) == 4


def test_farthest_point_sampling_matches_its_definition():
    torch.manual_seed(0)
    xyz = torch.randn(3, 50, 3)
    idx = farthest_point_sample(xyz, 12, impl="torch")
    for b in range(3):
        p = xyz[b].double()
        picked = [int(((p - p.mean(0)) ** 2).sum(1).argmax())]
        for _ in range(11):
            d = torch.stack([((p - p[j]) ** 2).sum(1) for j in picked]).min(0).values
            picked.append(int(d.argmax()))
        assert idx[b].tolist() == picked
    assert len(set(idx[0].tolist())) == 12


def test_the_fpsample_kernel_picks_what_the_torch_loop_picks():
    pytest.importorskip("fpsample")
    torch.manual_seed(3)
    xyz = torch.randn(4, 300, 3)
    assert torch.equal(farthest_point_sample(xyz, 64, impl="fpsample"), farthest_point_sample(xyz, 64, impl="torch"))
    assert torch.equal(farthest_point_sample(xyz, 64), farthest_point_sample(xyz, 64, impl="torch"))


def test_knn_matches_brute_force():
    torch.manual_seed(1)
    xyz, q = torch.randn(2, 40, 3), torch.randn(2, 7, 3)
    idx = knn(q, xyz, 5)
    for b in range(2):
        for s in range(7):
            d = [float(((q[b, s] - xyz[b, j]) ** 2).sum()) for j in range(40)]
            assert idx[b, s].tolist() == sorted(range(40), key=d.__getitem__)[:5]


def test_grouping_concatenates_offsets_and_centre():
    torch.manual_seed(2)
    xyz, f = torch.randn(1, 20, 3), torch.randn(1, 20, 4)
    centres, g = sample_and_group(5, 3, xyz, f)
    fps = farthest_point_sample(xyz, 5)[0]
    nn_idx = knn(xyz[:, fps], xyz, 3)[0]
    assert torch.equal(centres[0], xyz[0, fps])
    torch.testing.assert_close(g[0, :, :, 4:], f[0, fps][:, None].expand(5, 3, 4))
    torch.testing.assert_close(g[0, :, :, :4], f[0, nn_idx] - f[0, fps][:, None])


@pytest.mark.parametrize("model", ["pct", "spct"])
@pytest.mark.parametrize("attention", [None, *SETS])
def test_class_logits_are_permutation_invariant(model, attention):
    torch.manual_seed(0)
    m = visattn.create_model(model, num_classes=5, attention=attention, attn_kwargs=_akw(attention), k=8).eval()
    x = torch.randn(2, 3, N)
    perm = torch.randperm(N)
    with torch.no_grad():
        torch.testing.assert_close(m(x[:, :, perm]), m(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("attention", [None, *SETS])
def test_part_logits_are_permutation_equivariant(attention):
    torch.manual_seed(0)
    m = visattn.create_model(
        "pct_partseg", num_classes=6, num_categories=3, attention=attention, attn_kwargs=_akw(attention)
    ).eval()
    x, cat = torch.randn(2, 3, N), torch.tensor([0, 2])
    perm = torch.randperm(N)
    with torch.no_grad():
        y = m(x, cat)
        assert y.shape == (2, 6, N)
        torch.testing.assert_close(m(x[:, :, perm], cat), y[:, :, perm], atol=1e-4, rtol=1e-4)
        packed = torch.cat([x, cat.float()[:, None, None].expand(-1, 1, N)], dim=1)  # the training batches' layout
        torch.testing.assert_close(m(packed), y)


@pytest.mark.parametrize("attention", [None, *SETS])
def test_one_training_step_reaches_every_parameter(attention):
    torch.manual_seed(0)
    m = visattn.create_model("pct", num_classes=4, attention=attention, attn_kwargs=_akw(attention), k=8).train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    x, y = torch.randn(4, 3, N), torch.tensor([0, 1, 2, 3])
    loss = torch.nn.functional.cross_entropy(m(x), y)
    loss.backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    before = [p.detach().clone() for p in m.parameters()]
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, m.parameters()))
    assert torch.isfinite(loss)


def test_too_small_clouds_and_bad_inputs_are_refused():
    m = visattn.create_model("pct", num_classes=3).eval()
    with pytest.raises(
        ValueError,
        match=r"a point cloud of 8 points is smaller than the neighbour count k at the second grouping \(32\)",
    ):
        m(torch.randn(1, 3, 32))
    with pytest.raises(ValueError, match=r"PointCloudTransformer expects a point cloud \(B, 3, N\), got \(1, 64, 3\)"):
        m(torch.randn(1, 64, 3))
    seg = visattn.create_model("pct_partseg", num_classes=4, num_categories=2)
    with pytest.raises(ValueError, match=r"category indices of shape \(2,\), got \(2, 2\)"):
        seg(torch.randn(2, 3, 16), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="needs a \\(B, C, H, W\\) grid"):
        visattn.create_model("spct", attention="slide")
