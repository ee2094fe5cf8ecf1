"""Image generation: FID / KID known answers through visattn's entry point (torchmetrics underneath),
EMA, exact resume, seeded sampling, divergence stops, the data (digit pairs, mixed sizes, Tiny
ImageNet's layout) and ``visattn sample``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import visattn.train.generate as gen
from visattn.cli import main as cli_main
from visattn.data.generation import (
    _BACKGROUND,
    PAIR_COLOURS,
    SHAPES,
    load_digit_pairs,
    load_gen_data,
    load_shape_pairs,
    shape_mask,
)
from visattn.errors import NonFiniteLoss, TrainingDiverged
from visattn.train.gan_metrics import (
    ClassifierFeatures,
    InceptionFeatures,
    _Features,
    feature_network,
    generation_metrics,
)
from visattn.train.generate import GenTrainConfig, ema_decay_at, sample_images, train_generate, update_ema

# ---------------------------------------------------------------------------
# FID / KID
# ---------------------------------------------------------------------------


def _exact_gaussian(n: int, mean: torch.Tensor, cov: torch.Tensor, seed: int) -> torch.Tensor:
    """n samples whose sample mean and (unbiased) sample covariance are exactly ``mean`` and ``cov``."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, mean.numel(), generator=g, dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T  # white: cov(z) = I
    return z @ torch.linalg.cholesky(cov).T + mean


def test_fid_of_identical_feature_sets_is_zero():
    x = torch.randn(300, 16, dtype=torch.float64)
    m = generation_metrics(x, x.clone(), _Features(16), kid_subsets=3, kid_subset_size=300)
    assert abs(m["fid"]) < 1e-9 and (m["n_real"], m["n_fake"]) == (300, 300)


def test_fid_of_two_gaussians_is_the_closed_form():
    """Covariances R diag(a) R^T and R diag(b) R^T commute: FID = |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2."""
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    a = torch.tensor([1.0, 4.0, 9.0, 0.25, 2.0], dtype=torch.float64)
    b = torch.tensor([4.0, 1.0, 1.0, 1.0, 0.5], dtype=torch.float64)
    mu1 = torch.tensor([0.0, 1.0, -1.0, 2.0, 0.0], dtype=torch.float64)
    mu2 = torch.tensor([1.0, 1.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    real = _exact_gaussian(400, mu1, q @ torch.diag(a) @ q.T, seed=1)
    fake = _exact_gaussian(250, mu2, q @ torch.diag(b) @ q.T, seed=2)
    want = float(((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())
    got = generation_metrics(real, fake, _Features(5), kid_subsets=2, kid_subset_size=100)["fid"]
    assert abs(got - want) < 1e-6 * want, (got, want)


def _poly_mmd(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 with k(u, v) = (u.v / d + 1)^3 (Binkowski et al. 2018, eq. for KID)."""
    d, m = x.shape[1], x.shape[0]
    k = lambda u, v: (u @ v.T / d + 1.0) ** 3
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    off = lambda t: t.sum() - t.diagonal().sum()
    return float(off(kxx) / (m * (m - 1)) + off(kyy) / (m * (m - 1)) - 2 * kxy.sum() / m**2)


def test_kid_against_its_definition():
    """With subsets as large as the sets, every subset is the whole set: KID is the unbiased MMD^2.
    For identical sets it is not 0 but -2 (sum_i k(x_i, x_i) - sum_{i!=j} k(x_i, x_j) / (m - 1)) / m^2
    (the cross term keeps the diagonal); for independent sets of one distribution it is ~0."""
    torch.manual_seed(0)
    x = torch.randn(120, 8, dtype=torch.float64)
    y = torch.randn(120, 8, dtype=torch.float64) + 0.5
    got = generation_metrics(x, y, _Features(8), kid_subsets=4, kid_subset_size=120)
    assert abs(got["kid"] - _poly_mmd(x, y)) < 1e-9 and got["kid_std"] < 1e-12
    same = generation_metrics(x, x.clone(), _Features(8), kid_subsets=2, kid_subset_size=120)["kid"]
    assert abs(same - _poly_mmd(x, x)) < 1e-9 and same < 0


def test_metrics_refuse_too_few_samples_and_bad_specs():
    x = torch.randn(1, 4)
    with pytest.raises(ValueError, match="at least 2 real and 2 generated images, got 1 and 1"):
        generation_metrics(x, x, _Features(4))
    with pytest.raises(ValueError, match="feature network must be 'inception:PATH' or 'run:DIR', got 'inception'"):
        generation_metrics(x, x, "inception")
    with pytest.raises(FileNotFoundError, match="Inception weights file .* does not exist"):
        generation_metrics(x, x, "inception:/nonexistent/weights.pth")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_inception_weights_that_are_not_tensors_are_refused(tmp_path):
    import pickle

    bad = tmp_path / "evil.pth"
    bad.write_bytes(pickle.dumps(print))  # a global: the safe loader refuses it before torch-fidelity sees it
    with pytest.raises(ValueError, match=r"does not load with torch.load\(weights_only=True\)|not a weights file"):
        InceptionFeatures(bad)
    other = tmp_path / "other.pth"
    torch.save({"w": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not an InceptionV3 state dict of the FID network"):
        InceptionFeatures(other)


@pytest.mark.slow
def test_torchmetrics_inception_with_a_users_weights_file(tmp_path):
    """The Inception path: a weights file the test writes (torchvision's InceptionV3 layout with 1008
    classes = torch-fidelity's keys), nothing downloaded; 2048 features; FID of a set with itself 0."""
    pytest.importorskip("torch_fidelity")
    tv = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    path = tmp_path / "inception.pth"
    torch.save(tv.inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008).state_dict(), path)
    net = InceptionFeatures(path)
    x = torch.rand(3, 3, 32, 32)
    f = net(x)
    assert f.shape == (3, 2048) and torch.isfinite(f).all()
    m = generation_metrics(x, x.clone(), net, kid_subsets=1, kid_subset_size=3)
    assert abs(m["fid"]) < 1e-6 and m["features"] == f"inception:{path}"


# ---------------------------------------------------------------------------
# EMA and sampling
# ---------------------------------------------------------------------------


def test_ema_matches_its_recursion():
    torch.manual_seed(0)
    model, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    ema.load_state_dict(model.state_dict())
    want = model.weight.detach().clone()
    for t in range(5):
        with torch.no_grad():
            model.weight.add_(torch.randn(2, 3))
        decay = ema_decay_at(0.999, t)
        assert decay == min(0.999, (1 + t) / (10 + t))
        want = decay * want + (1 - decay) * model.weight.detach()
        update_ema(ema, model, decay)
    torch.testing.assert_close(ema.weight, want, rtol=0, atol=1e-6)
    assert ema_decay_at(0.999, 10**6) == 0.999


def test_seeded_sampling_and_the_global_rng():
    g = gen.create_model("sagan32_g", ch=4, num_classes=3)
    state = torch.get_rng_state()
    a, b = sample_images(g, 5, seed=7), sample_images(g, 5, seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # sampling draws from its own generator
    assert torch.equal(a, b) and a.shape == (5, 3, 32, 32) and 0 <= float(a.min()) <= float(a.max()) <= 1
    assert not torch.equal(a, sample_images(g, 5, seed=8))
    # batching does not change the samples
    torch.testing.assert_close(sample_images(g, 5, seed=7, batch_size=2), a, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"labels must be 5 class indices in 0..2"):
        sample_images(g, 5, labels=torch.tensor([0, 1, 2, 3, 0]))


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def test_digit_pairs_are_mirrored_and_deterministic():
    b = load_digit_pairs(32, n_train=40, n_test=10, seed=3)
    assert b.train.images.shape == (40, 3, 32, 32) and b.train.images.dtype == torch.uint8
    x = b.train.images.float()
    # the right half is the left half mirrored (up to the rounding of one uint8 step)
    assert float((x[..., :16] - x[..., 16:].flip(-1)).abs().max()) <= 1.0
    # one colour per image: every bright pixel is the background-to-colour blend of one palette entry
    assert b.num_classes == 10 and len(PAIR_COLOURS) == 4
    assert torch.equal(load_digit_pairs(32, n_train=40, n_test=10, seed=3).train.images, b.train.images)
    assert not torch.equal(load_digit_pairs(32, n_train=40, n_test=10, seed=4).train.images, b.train.images)


@pytest.mark.parametrize(
    ("shape", "area"),
    # fraction of the box each shape covers: pi 0.95^2 / 4; 1.6^2 / 4; (1.9 x 1.7 / 2) / 4; (2 x 0.6 x 1.9 - 0.6^2) / 4; 2 / 4
    [("circle", 0.708822), ("square", 0.64), ("triangle", 0.40375), ("cross", 0.48), ("diamond", 0.5)],
)
def test_shape_masks_cover_their_known_area_and_only_the_triangle_is_asymmetric(shape, area):
    k = SHAPES.index(shape)
    m = shape_mask(k, 40, supersample=8)
    assert m.shape == (40, 40) and float(m.min()) >= 0.0 and float(m.max()) == 1.0
    assert float(m.mean()) == pytest.approx(area, abs=0.004)
    assert np.array_equal(m, m[::-1])  # up-down symmetric, all of them
    assert np.array_equal(m, m[:, ::-1]) == (shape != "triangle")  # the triangle points right: its mirror differs
    if shape == "triangle":
        assert float(m[:, :20].sum()) > 2 * float(m[:, 20:].sum())
    with pytest.raises(ValueError, match=r"shape must be an index into \('circle'.* \(0..4\), got 5"):
        shape_mask(5, 10)


def test_shape_pairs_are_mirrored_deterministic_and_show_their_class():
    b = load_shape_pairs(32, n_train=30, n_test=10, seed=3)
    assert b.name == "shapepairs" and b.classes == list(SHAPES) and b.augment == "none"
    assert b.train.images.shape == (30, 3, 32, 32) and b.train.images.dtype == torch.uint8
    assert b.test.images.shape == (10, 3, 32, 32)
    assert torch.equal(load_shape_pairs(32, n_train=30, n_test=10, seed=3).train.images, b.train.images)
    assert torch.equal(load_shape_pairs(32, n_train=30, n_test=10, seed=3).test.labels, b.test.labels)
    assert not torch.equal(load_shape_pairs(32, n_train=30, n_test=10, seed=4).train.images, b.train.images)
    assert torch.equal(load_gen_data("shapepairs").train.images[:30], load_shape_pairs(32).train.images[:30])
    x = b.train.images.float()
    assert torch.equal(x[..., :16], x[..., 16:].flip(-1))  # the right half is the left half mirrored, exactly
    # Each image's left half is one shape of its label (side 12..15 px, centred +-2 px) in orange:
    # recover the coverage from the colour channel and find the one placement that re-draws it.
    bg = torch.from_numpy(_BACKGROUND * 255)[:, None, None]
    for img, label in zip(x, b.train.labels.tolist()):
        left = img[..., :16] - bg
        peak = left.flatten(1).abs().amax(1)
        c = int(peak.argmax())
        alpha = (left[c] / peak[c]).numpy()
        best = None
        for k in range(len(SHAPES)):
            for s in range(12, 16):
                m = shape_mask(k, s)
                for r in range((32 - s) // 2 - 2, (32 - s) // 2 + 3):
                    for col in range(16 - s + 1):
                        canvas = np.zeros((32, 16), np.float32)
                        canvas[r : r + s, col : col + s] = m
                        err = float(np.abs(canvas - alpha).max())
                        if best is None or err < best[0]:
                            best = (err, k)
        assert best[1] == label and best[0] < 0.02, (best, label)


def _write_images(folder, sizes):
    from PIL import Image

    for cls, (w, h), n in sizes:
        d = folder / cls
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((h, w, 3), 40 * i, dtype=np.uint8)).save(d / f"{w}x{h}_{i}.png")


def test_folder_with_mixed_sizes_is_refused_naming_them_or_resized(tmp_path):
    _write_images(tmp_path, [("a", (32, 32), 3), ("b", (32, 32), 2), ("b", (48, 40), 1)])
    with pytest.raises(ValueError, match=r"mixes image sizes \(32x32: 5 file\(s\), e.g. .*; 48x40: 1 file\(s\)"):
        load_gen_data(f"folder:{tmp_path}")
    b = load_gen_data(f"folder:{tmp_path}", 32)
    assert b.image_size == 32 and len(b.train) + len(b.test) == 6


def test_data_at_a_size_the_gan_cannot_make_is_refused(tmp_path):
    _write_images(tmp_path, [("a", (40, 40), 2), ("b", (40, 40), 2)])
    with pytest.raises(ValueError, match=r"generate 32 or 64 px images; .* gives 40x40: pass --image-size 32 or 64"):
        load_gen_data(f"folder:{tmp_path}")
    with pytest.raises(ValueError, match="generation data spec must be 'shapepairs', 'digitpairs'"):
        load_gen_data("digitscenes")


def test_tiny_imagenet_layout_read_as_is(tmp_path):
    from PIL import Image

    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819"]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("n01443537\tgoldfish, Carassius auratus\nn01629819\tEuropean fire salamander\n")
    ann = []
    for c, w in enumerate(wnids):
        d = root / "train" / w / "images"
        d.mkdir(parents=True)
        (root / "train" / w / f"{w}_boxes.txt").write_text("")
        for i in range(3):
            Image.fromarray(np.full((64, 64, 3), 100 * c + i, dtype=np.uint8)).save(d / f"{w}_{i}.JPEG")
        Image.fromarray(np.full((64, 64), 100 * c, dtype=np.uint8)).save(root / "val" / "images" / f"val_{c}.JPEG")
        ann.append(f"val_{c}.JPEG\t{w}\t0\t0\t10\t10")
    (root / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    b = load_gen_data(f"tinyimagenet:{tmp_path}")
    assert b.classes == ["goldfish", "European fire salamander"] and b.image_size == 64
    assert len(b.train) == 6 and b.test.labels.tolist() == [0, 1]
    assert b.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match="class 'n99999999' is not in wnids.txt"):
        load_gen_data(f"tinyimagenet:{root}")


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pairs():
    return load_digit_pairs(32, n_train=48, n_test=16, seed=0)


def _cfg(out, **kw) -> GenTrainConfig:
    base = dict(
        epochs=2,
        batch_size=16,
        width=4,
        z_dim=16,
        fid_every=0,
        grid_size=4,
        output=str(out),
        progress=False,
        verbose=False,
        deterministic=True,
        seed=3,
        conditional=True,
    )
    base.update(kw)
    return GenTrainConfig(**base)


class _StopAfter:
    def __init__(self, step: int):
        self.step = step

    def after_step(self, trainer):
        if trainer.step == self.step:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_resume_is_exact_with_g_d_ema_and_the_optimizer(tmp_path, tiny_pairs):
    """3 steps per epoch, 2 epochs, n_critic 2, a checkpoint every 2 steps, DiffAugment drawing from
    the RNG: a run stopped after step 5 and resumed (from step 4) ends with the weights (G, D,
    G-EMA) of an uninterrupted run."""
    kw = dict(n_critic=2, save_every=2, diffaug="translation,cutout")
    with pytest.raises(KeyboardInterrupt):
        gen.GanTrainer(_cfg(tmp_path / "a", **kw), tiny_pairs, callbacks=[_StopAfter(5)]).run()
    assert json.loads((tmp_path / "a" / "checkpoints" / "latest.json").read_text())["step"] == 4
    train_generate(_cfg(tmp_path / "a", resume=True, **kw), tiny_pairs)
    train_generate(_cfg(tmp_path / "b", **kw), tiny_pairs)
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and {k.split(".")[0] for k in a} == {"g", "d", "g_ema"}
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ha = [json.loads(s) for s in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    hb = [json.loads(s) for s in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [(h["d_loss"], h["g_loss"]) for h in ha] == [(h["d_loss"], h["g_loss"]) for h in hb]
    # a grid per epoch, and the final one
    assert sorted(p.name for p in (tmp_path / "b" / "samples").iterdir()) == ["epoch-001.png", "epoch-002.png"]
    with pytest.raises(
        ValueError, match=r"cannot resume: the checkpoint was made with other options n_critic=2 \(now 1\)"
    ):
        train_generate(_cfg(tmp_path / "a", resume=True, save_every=2, diffaug="translation,cutout"), tiny_pairs)


def test_ttur_one_optimizer_is_two_adams(tmp_path, tiny_pairs):
    """The two-group Adam of a run equals two separate Adams: D at lr_d, G at lr, moments per parameter."""
    t = gen.GanTrainer(_cfg(tmp_path / "c", epochs=1, lr=1e-4, lr_d=4e-4), tiny_pairs)
    t.run()
    groups = t.optimizer.param_groups
    assert [g["lr"] for g in groups] == [1e-4, 4e-4] and all(g["betas"] == (0.0, 0.9) for g in groups)
    n_g, n_d = len(list(t.model.g.parameters())), len(list(t.model.d.parameters()))
    assert [len(g["params"]) for g in groups] == [n_g, n_d]
    # every parameter was stepped 3 times (3 batches, n_critic 1): Adam's per-parameter step count
    steps = {float(s["step"]) for s in t.optimizer.state.values()}
    assert steps == {3.0}


def test_non_finite_loss_stops_naming_epoch_and_step(tmp_path, tiny_pairs, monkeypatch):
    monkeypatch.setattr(gen, "hinge_d_loss", lambda r, f: (r.mean() + f.mean()) * math.nan)
    with pytest.raises(NonFiniteLoss, match=r"non-finite \(nan\) at epoch 1, step 1 \(batch 1 of 3\)"):
        train_generate(_cfg(tmp_path / "n"), tiny_pairs)


def test_exploding_g_loss_stops_naming_epoch_and_step(tmp_path, tiny_pairs, monkeypatch):
    monkeypatch.setattr(gen, "hinge_g_loss", lambda f: 100.0 - f.mean())
    with pytest.raises(
        TrainingDiverged, match=r"diverged at epoch 2, step 4 \(batch 1 of 3\): G's hinge loss stayed above 25 for 4"
    ):
        train_generate(_cfg(tmp_path / "x", diverge_patience=4), tiny_pairs)


def test_config_errors():
    with pytest.raises(ValueError, match="n_critic must be an int >= 1, got 0"):
        GenTrainConfig(n_critic=0).validate()
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\)"):
        GenTrainConfig(ema_decay=1.0).validate()
    with pytest.raises(ValueError, match="needs a generate model for model; 'resnet_tiny' is a classify model"):
        GenTrainConfig(model="resnet_tiny").validate()


@pytest.mark.slow
def test_run_with_fallback_features_then_sample_cli(tmp_path, tiny_pairs, capsys):
    """FID / KID each epoch on the fallback classifier trained into the run, config.json records the
    features and the not-comparable note, and `visattn sample` writes a seeded grid."""
    out = tmp_path / "run"
    res = train_generate(_cfg(out, fid_every=1, fid_samples=16, feature_epochs=1, deterministic=False), tiny_pairs)
    assert all(h["fid"] is not None and h["fid"] > 0 and h["kid"] is not None for h in res.history)
    info = json.loads((out / "config.json").read_text())
    assert info["fid_features"] == f"run:{out / 'feature_net'}" and "not comparable" in info["fid_note"]
    net = feature_network(info["fid_features"])
    assert isinstance(net, ClassifierFeatures) and net(torch.rand(2, 3, 32, 32)).shape == (2, net.num_features)
    for name in ("one.png", "two.png"):
        assert cli_main(["sample", str(out), "-n", "9", "--out", str(tmp_path / name), "--seed", "5"]) == 0
    assert (tmp_path / "one.png").read_bytes() == (tmp_path / "two.png").read_bytes()
    from PIL import Image

    with Image.open(tmp_path / "one.png") as im:  # 3 x 3 grid of 32 px with 2 px gaps, doubled
        assert im.size == (2 * (3 * 34 + 2), 2 * (3 * 34 + 2))
    assert "9 samples (seed 5) written to" in capsys.readouterr().out


def test_sample_cli_errors(tmp_path, capsys):
    assert cli_main(["sample", str(tmp_path / "none")]) == 2
    assert "visattn sample: error: run folder" in capsys.readouterr().err
    (tmp_path / "checkpoints").mkdir()
    assert cli_main(["sample", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not a finished generation run" in err and "the run has not finished" in err


def test_the_lowest_fid_epoch_is_kept_and_sampled_by_default(tmp_path, tiny_pairs, monkeypatch, capsys):
    """FIDs 5, 3, 4 over three epochs (scripted): best.safetensors holds the networks after epoch 2,
    config.json names it, load_generator / `visattn sample` use it, and best=False / --last the last epoch."""
    fids, seen = iter([5.0, 3.0, 4.0]), []

    def scripted(self):
        seen.append({k: v.clone() for k, v in self.model.g_ema.state_dict().items()})
        fid = next(fids)
        return {"fid": fid, "kid": fid / 10, "kid_std": 0.0}

    monkeypatch.setattr(gen.GanTrainer, "metrics", scripted)
    out = tmp_path / "best"
    res = train_generate(_cfg(out, epochs=3, fid_every=1, deterministic=False), tiny_pairs)
    info = json.loads((out / "config.json").read_text())
    assert info["best"] == {"epoch": 2, "fid": 3.0, "kid": 0.3, "weights": "best.safetensors"}
    kept = load_file(str(out / "best.safetensors"))
    assert {k.split(".")[0] for k in kept} == {"g", "d", "g_ema"}
    for k, v in seen[1].items():
        assert torch.equal(kept[f"g_ema.{k}"], v), k
    g_best, g_last = gen.load_generator(out), gen.load_generator(out, best=False)
    assert all(torch.equal(v, seen[1][k]) for k, v in g_best.state_dict().items())
    assert all(torch.equal(v, res.model.g_ema.state_dict()[k]) for k, v in g_last.state_dict().items())
    assert not all(torch.equal(v, g_last.state_dict()[k]) for k, v in g_best.state_dict().items())
    for name, extra in (("best.png", []), ("last.png", ["--last"])):
        assert cli_main(["sample", str(out), "-n", "4", "--out", str(tmp_path / name), *extra]) == 0
    assert (tmp_path / "best.png").read_bytes() != (tmp_path / "last.png").read_bytes()
    capsys.readouterr()


def test_auxiliary_classifier_loss_is_added_to_both_steps(tmp_path, tiny_pairs, monkeypatch):
    """aux_weight > 0 (AC-GAN): D's loss is its hinge loss + w * CE(D's classes of the real images, their
    labels) and G's is its hinge loss + w * CE(D's classes of its samples, the requested labels)."""
    import torch.nn.functional as F

    from visattn.models import gan as gan_models

    seen = []
    real_ce = F.cross_entropy

    def spy(logits, target, *a, **k):
        out = real_ce(logits, target, *a, **k)
        seen.append((logits.shape, target.clone(), float(out.detach())))
        return out

    d_losses, g_losses = [], []
    real_d, real_g = gan_models.hinge_d_loss, gan_models.hinge_g_loss
    monkeypatch.setattr(gen, "hinge_d_loss", lambda r, f: d_losses.append(real_d(r, f)) or d_losses[-1])
    monkeypatch.setattr(gen, "hinge_g_loss", lambda f: g_losses.append(real_g(f)) or g_losses[-1])
    monkeypatch.setattr(gen.F, "cross_entropy", spy)
    t = gen.GanTrainer(_cfg(tmp_path / "aux", epochs=1, aux_weight=0.5), tiny_pairs)
    t.run()
    assert t.model.d.aux is not None and t.model.d.aux.out_features == 10
    assert len(seen) == 2 * 3 and len(d_losses) == len(g_losses) == 3  # 48 images / batch 16: 3 D and 3 G steps
    assert all(shape == (16, 10) for shape, _, _ in seen)
    rec = json.loads((tmp_path / "aux" / "metrics.jsonl").read_text().splitlines()[0])
    want_d = sum(float(h.detach()) + 0.5 * ce for h, (_, _, ce) in zip(d_losses, seen[0::2], strict=True)) / 3
    want_g = sum(float(h.detach()) + 0.5 * ce for h, (_, _, ce) in zip(g_losses, seen[1::2], strict=True)) / 3
    assert rec["d_loss"] == pytest.approx(want_d, rel=1e-6) and rec["g_loss"] == pytest.approx(want_g, rel=1e-6)
    assert json.loads((tmp_path / "aux" / "config.json").read_text())["config"]["aux_weight"] == 0.5
    gen.load_generator(tmp_path / "aux")  # the run's D (with its head) loads back
