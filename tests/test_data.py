from __future__ import annotations

import hashlib

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
