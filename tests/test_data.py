from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from study.data import DataError, batches, load_dataset, split_indices


def test_mnist_splits_ten_percent_for_validation(mnist):
    assert mnist.train_x.shape == (54_000, 1, 28, 28) and mnist.train_x.dtype == torch.uint8
    assert mnist.val_x.shape == (6_000, 1, 28, 28) and mnist.test_x.shape == (10_000, 1, 28, 28)
    assert mnist.num_classes == 10
    train, val = split_indices(60_000)
    assert len(set(train.tolist()) & set(val.tolist())) == 0
    assert torch.equal(split_indices(60_000)[1], val)  # fixed seed: the same split every time


def test_loading_leaves_the_shared_data_untouched(data_dir):
    before = {p: hashlib.md5(p.read_bytes()).hexdigest() for p in (data_dir / "FashionMNIST").rglob("*")
              if p.is_file()}
    data = load_dataset("fashion_mnist", data_dir, download=False)
    assert data.train_x.shape[0] == 54_000
    after = {p: hashlib.md5(p.read_bytes()).hexdigest() for p in (data_dir / "FashionMNIST").rglob("*")
             if p.is_file()}
    assert before == after


def test_a_missing_dataset_offline_is_one_line_naming_the_path(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("mnist", tmp_path, download=False)
    assert str(tmp_path / "MNIST") in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="unknown dataset 'svhn'"):
        load_dataset("svhn", tmp_path)
    with pytest.raises(DataError, match="is not a directory"):
        load_dataset(f"folder:{tmp_path}", tmp_path)


def test_image_folder_datasets_load_as_uint8(tmp_path):
    from PIL import Image

    for split, n in (("train", 20), ("test", 4)):
        for label in ("a", "b"):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(n // 2):
                Image.new("RGB", (8, 8), (i * 10, 0, 255 if label == "b" else 0)).save(
                    tmp_path / split / label / f"{i}.png")
    data = load_dataset(f"folder:{tmp_path}")
    assert data.train_x.shape == (18, 3, 8, 8) and data.val_x.shape == (2, 3, 8, 8)
    assert data.test_x.shape == (4, 3, 8, 8) and data.num_classes == 2
    assert data.train_x.dtype == torch.uint8 and len(data.mean) == 3


def test_batches_cover_every_sample_once_in_a_seeded_order(mnist):
    x, y = mnist.val_x[:1000], mnist.val_y[:1000]
    seen = torch.cat([yb for _, yb in batches(x, y, 128, torch.Generator().manual_seed(3))])
    assert sorted(seen.tolist()) == sorted(y.tolist())
    again = torch.cat([yb for _, yb in batches(x, y, 128, torch.Generator().manual_seed(3))])
    assert torch.equal(seen, again)
    xb, _ = next(batches(x, y, 10))
    assert xb.dtype == torch.float32 and 0.0 <= float(xb.min()) and float(xb.max()) <= 1.0


def test_dsprites_is_a_fixed_sample_of_the_factor_grid_with_its_factors_kept(dsprites):
    from study.data import DSPRITES_FACTORS, dsprites_factor_codes

    assert dsprites.input_shape == (1, 64, 64) and dsprites.num_classes == 3
    assert len(dsprites.train_y) + len(dsprites.val_y) + len(dsprites.test_y) == 70_000
    counts = torch.bincount(dsprites.train_x.view(-1), minlength=256)  # binary images (a histogram:
    assert int(counts[1:255].sum()) == 0 and counts[0] > 0 and counts[255] > 0  # torch.unique sorts)
    assert dsprites.factor_names == tuple(DSPRITES_FACTORS)
    for split in ("train", "val", "test"):
        factors, labels = getattr(dsprites, f"{split}_factors"), getattr(dsprites, f"{split}_y")
        assert torch.equal(labels, factors[:, 0])  # the label is the shape
        for k, size in enumerate(DSPRITES_FACTORS.values()):
            assert int(factors[:, k].min()) >= 0 and int(factors[:, k].max()) == size - 1
    # the grid index decodes with the last factor fastest, as in the original file
    assert dsprites_factor_codes([0, 1, 32, 737_279]).tolist() == [
        [0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 1, 0], [2, 5, 39, 31, 31]]
    by_scale = dsprites.with_label("scale")
    assert by_scale.num_classes == 6 and torch.equal(by_scale.val_y, dsprites.val_factors[:, 1])
    with pytest.raises(DataError, match="no factor 'colour'"):
        dsprites.with_label("colour")


def test_dsprites_images_follow_their_factors():
    from study.data import render_dsprites

    def image(shape=0, scale=5, orientation=0, x=16, y=16):
        return torch.from_numpy(render_dsprites(np.array([[shape, scale, orientation, x, y]]))[0])

    def centre(img):
        v, u = torch.nonzero(img, as_tuple=True)
        return float(u.float().mean()), float(v.float().mean())

    base = image()
    assert base.sum() > 0 and not torch.equal(base, image(shape=1)) and not torch.equal(base, image(shape=2))
    assert image(scale=0).sum() < image(scale=5).sum()  # scale 0.5 vs 1: about a quarter the area
    assert not torch.equal(image(shape=2, orientation=0), image(shape=2, orientation=10))
    (x0, y0), (x1, y1) = centre(image(x=0)), centre(image(x=31))
    assert x1 - x0 > 30 and abs(y1 - y0) < 1  # pos_x moves the sprite across, not down
    assert centre(image(y=31))[1] - centre(image(y=0))[1] > 30
    assert image(x=31, y=31)[-1].sum() == 0 and image(x=31, y=31)[:, -1].sum() == 0  # not clipped


def test_label_factor_on_a_dataset_without_factors_is_refused(mnist):
    with pytest.raises(DataError, match="mnist has no factor 'shape'"):
        mnist.with_label("shape")


def test_batches_are_augmented_only_when_given_an_augmentation_generator(mnist):
    x, y = mnist.val_x[:256], mnist.val_y[:256]
    plain = [xb for xb, _ in batches(x, y, 64, torch.Generator().manual_seed(3))]
    assert torch.equal(torch.cat(plain), x[torch.randperm(256, generator=torch.Generator().manual_seed(3))]
                       .float() / 255)  # no augmentation unless asked: the images as they are
    aug = [(xb, yb) for xb, yb in batches(x, y, 64, torch.Generator().manual_seed(3),
                                          augment=torch.Generator().manual_seed(0))]
    assert torch.equal(torch.cat([yb for _, yb in aug]),
                       torch.cat([yb for _, yb in batches(x, y, 64, torch.Generator().manual_seed(3))]))
    assert all(xb.shape == p.shape and xb.dtype == torch.float32 and 0 <= float(xb.min())
               and float(xb.max()) <= 1 for (xb, _), p in zip(aug, plain, strict=True))
    assert not torch.equal(torch.cat([xb for xb, _ in aug]), torch.cat(plain))
