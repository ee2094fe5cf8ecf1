"""Segmentation data: digit scenes, segfolder layouts (plain, split, VOC, palette masks), joint augmentation, errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from _seg_fixtures import make_seg_folder, make_voc_folder, save_mask, write_pairs
from visattn.data.segmentation import (
    IGNORE_INDEX,
    SegDataset,
    SegEpochBatches,
    augment_pair,
    load_digit_scenes,
    load_seg_data,
    read_mask,
    seg_augment_params,
)


def test_digit_scenes_deterministic_held_out_and_labelled():
    a = load_digit_scenes(32, n_train=40, n_test=10, seed=3)
    b = load_digit_scenes(32, n_train=40, n_test=10, seed=3)
    c = load_digit_scenes(32, n_train=40, n_test=10, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.train.images + a.test.masks, b.train.images + b.test.masks))
    assert not all(torch.equal(x, y) for x, y in zip(a.train.masks, c.train.masks))
    assert a.num_classes == 11 and a.classes[0] == "background" and a.classes[10] == "digit 9"
    assert len(a.train) == 40 and len(a.test) == 10 and a.image_size == 32
    # the held-out scans: the stratified 80/20 split of the 1,797 scans, disjoint by construction
    tr, te = set(a.extra["train_scans"]), set(a.extra["test_scans"])
    assert not tr & te and len(tr | te) == 1797 and 350 <= len(te) <= 370
    assert len(load_digit_scenes(32, n_train=1, n_test=1, seed=0).extra["test_scans"]) == 359
    for x, m in zip(a.train.images, a.train.masks):
        assert x.shape == (3, 32, 32) and x.dtype == torch.uint8 and m.shape == (32, 32)
        vals = set(m.unique().tolist())
        assert vals <= set(range(11)) | {IGNORE_INDEX} and 0 in vals
        assert len(vals - {0, IGNORE_INDEX}) >= 1  # at least one digit in every scene
        # labelled digit pixels are bright (>= 0.5 of full scale), background pixels dark (< 0.3)
        gray = x[0].float() / 255
        assert float(gray[(m >= 1) & (m <= 10)].min()) >= 0.5 - 1 / 255
        assert float(gray[m == 0].max()) < 0.3 + 1 / 255


def test_digit_scenes_errors():
    with pytest.raises(ValueError, match="digit scenes need image_size >= 16"):
        load_digit_scenes(8)
    with pytest.raises(ValueError, match="ignore_index 5 is a class of 'digitscenes' \\(classes 0..10\\)"):
        load_seg_data("digitscenes", 32, ignore_index=5)
    with pytest.raises(ValueError, match="must be 'digitscenes' or 'segfolder:PATH', got 'digits'"):
        load_seg_data("digits")


def test_augment_pair_identity_flip_scale_and_pad():
    x = torch.rand(3, 6, 8)
    m = torch.arange(48).view(6, 8) % 5
    x1, m1 = augment_pair(x, m, 1.0, (0.0, 0.0), False, 6)
    assert torch.equal(x1, x[:, :, :6]) and torch.equal(m1, m[:, :6])
    x2, m2 = augment_pair(x, m, 1.0, (0.0, 0.99), True, 6)  # crop at the right edge, then flip
    assert torch.equal(x2, x[:, :, 2:].flip(-1)) and torch.equal(m2, m[:, 2:].flip(-1))
    # scale 2: masks by nearest neighbour, so every pixel is one of the source's values, each doubled
    _, m3 = augment_pair(x, m, 2.0, (0.0, 0.0), False, 12)
    assert torch.equal(m3, m.repeat_interleave(2, 0).repeat_interleave(2, 1)[:12, :12])
    # scale 0.5 to 3x4, padded to 6x6: image 0 and mask = ignore index outside
    x4, m4 = augment_pair(x, m, 0.5, (0.5, 0.5), False, 6, ignore_index=77)
    assert x4.shape == (3, 6, 6) and m4.shape == (6, 6)
    assert torch.all(m4[3:] == 77) and torch.all(m4[:, 4:] == 77) and float(x4[:, 3:].abs().max()) == 0.0
    assert torch.equal(m4[:3, :4], m[1::2, 1::2])  # nearest-exact samples the centre of each 2x2 cell


def test_epoch_batches_depend_only_on_the_example():
    b = load_digit_scenes(32, n_train=12, n_test=2)
    kw = dict(augment="crop+flip", crop_size=24, scale_range=(0.5, 1.5), mean=b.mean, std=b.std)
    big = SegEpochBatches(b.train, 8, 2, 5, **kw)
    small = SegEpochBatches(b.train, 4, 2, 5, **kw)
    xb, mb = big.get(0)
    xs = torch.cat([small.get(0)[0], small.get(1)[0]])
    ms = torch.cat([small.get(0)[1], small.get(1)[1]])
    assert xb.shape == (8, 3, 24, 24) and mb.shape == (8, 24, 24)
    assert torch.equal(xb, xs) and torch.equal(mb, ms)
    again = SegEpochBatches(b.train, 8, 2, 5, **kw)
    assert torch.equal(again.get(1)[1], big.get(1)[1])
    p = seg_augment_params(1000, 0, 0, (0.5, 2.0), flip=True)
    assert 0.5 <= float(p.scales.min()) and float(p.scales.max()) <= 2.0
    assert abs(float(p.scales.log().mean())) < 0.05  # log-uniform around scale 1
    assert 400 < int(p.flips.sum()) < 600


def test_segfolder_plain_layout_with_index_and_palette_masks(tmp_path):
    spec = make_seg_folder(tmp_path / "plain", n=10, size=(16, 20), palette=False)
    b = load_seg_data(spec)
    assert b.classes == ["0", "1", "2"] and len(b.train) == 8 and len(b.test) == 2 and b.image_size == 128
    assert b.augment == "crop+flip" and b.train.images[0].shape == (3, 16, 20)
    # palette PNG: the index is the class, not the colour
    write_pairs(tmp_path / "pal" / "images", tmp_path / "pal" / "masks", 4, palette=True)
    m = read_mask(tmp_path / "pal" / "masks" / "s000.png")
    with Image.open(tmp_path / "pal" / "masks" / "s000.png") as im:
        assert im.mode == "P"
    ref = write_pairs(tmp_path / "ref" / "images", tmp_path / "ref" / "masks", 1, palette=False)[0]
    assert torch.equal(m, torch.from_numpy(ref.astype(np.int64)))
    b2 = load_seg_data(f"segfolder:{tmp_path / 'pal'}", image_size=12)
    assert b2.classes == ["0", "1", "2"] and b2.image_size == 12


def test_segfolder_train_val_layout_and_classes_txt(tmp_path):
    root = tmp_path / "tv"
    write_pairs(root / "train" / "images", root / "train" / "masks", 5)
    write_pairs(root / "val" / "images", root / "val" / "masks", 2, first=5, size=(12, 9))
    (root / "classes.txt").write_text("sky\nred\ngreen\nblue\n")
    b = load_seg_data(f"segfolder:{root}")
    assert b.classes == ["sky", "red", "green", "blue"] and len(b.train) == 5 and len(b.test) == 2
    assert b.test.images[0].shape == (3, 12, 9)
    # whole images of different sizes share a batch: padded with 0 and the ignore index
    mixed = SegDataset(b.train.images[:1] + b.test.images[:1], b.train.masks[:1] + b.test.masks[:1])
    x, y = mixed.batch([0, 1])
    assert x.shape == (2, 3, 16, 20) and torch.all(y[1, 12:] == IGNORE_INDEX) and torch.all(y[1, :, 9:] == 255)


def test_voc_layout(tmp_path):
    spec = make_voc_folder(tmp_path / "VOC2012", n_train=6, n_val=3)
    # VOC masks carry 255 on object borders
    mpath = tmp_path / "VOC2012" / "SegmentationClass" / "s001.png"
    mask = np.asarray(Image.open(mpath)).copy()
    mask[0, :] = 255
    save_mask(mask, mpath, palette=True)
    b = load_seg_data(spec)
    assert b.num_classes == 21 and b.classes[15] == "person"
    assert len(b.train) == 6 and len(b.test) == 3
    assert int(b.train.masks[1][0].unique()) == 255


def test_bad_input_names_file_and_value(tmp_path):
    root = tmp_path / "bad"
    write_pairs(root / "images", root / "masks", 4)
    (root / "classes.txt").write_text("a\nb\n")  # masks hold class 2
    with pytest.raises(
        ValueError,
        match=r"mask '.*masks/s00\d\.png' has value 2, which is neither a class "
        r"\(0\.\.1\) nor the ignore index 255",
    ):
        load_seg_data(f"segfolder:{root}")
    (root / "classes.txt").unlink()

    Image.fromarray(np.zeros((16, 20, 3), np.uint8)).save(root / "images" / "lonely.png")
    with pytest.raises(ValueError, match=r"image '.*images/lonely\.png' has no mask '.*masks/lonely\.png'"):
        load_seg_data(f"segfolder:{root}")
    (root / "images" / "lonely.png").unlink()

    save_mask(np.zeros((16, 21), np.uint8), root / "masks" / "s002.png", palette=False)
    with pytest.raises(ValueError, match=r"image '.*s002\.png' is 20x16 \(WxH\) but its mask '.*s002\.png' is 21x16"):
        load_seg_data(f"segfolder:{root}")
    save_mask(np.zeros((16, 20), np.uint8), root / "masks" / "s002.png", palette=False)

    (root / "images" / "s001.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"cannot read '.*images/s001\.png' as an image"):
        load_seg_data(f"segfolder:{root}")
    write_pairs(root / "images", root / "masks", 2)

    Image.fromarray(np.zeros((16, 20, 3), np.uint8)).save(root / "masks" / "s000.png")
    with pytest.raises(ValueError, match=r"mask '.*masks/s000\.png' is a RGB image; expected a single-channel"):
        load_seg_data(f"segfolder:{root}")

    voc = tmp_path / "voc"
    make_voc_folder(voc, 2, 1)
    (voc / "SegmentationClass" / "s000.png").unlink()
    with pytest.raises(ValueError, match=r"image '.*JPEGImages/s000\.jpg' has no mask '.*SegmentationClass/s000\.png'"):
        load_seg_data(f"segfolder:{voc}")
    split = tmp_path / "split"
    write_pairs(split / "train" / "images", split / "train" / "masks", 2)
    (split / "val" / "images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"'.*val/images' has no mask folder beside it: expected '.*val/masks'"):
        load_seg_data(f"segfolder:{split}")
    with pytest.raises(FileNotFoundError, match="no segmentation layout found"):
        load_seg_data(f"segfolder:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_seg_data(f"segfolder:{tmp_path / 'nowhere'}")


def test_16bit_greyscale_image_reads_by_value(tmp_path):
    from PIL import Image

    from visattn.data.segmentation import read_image

    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((5, 7), 32768, dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    img = read_image(path)
    assert img.shape == (3, 5, 7) and img.dtype == torch.uint8
    assert torch.all(img == 128)  # 32768 / 65535 * 255 = 127.5 -> 128, not white
