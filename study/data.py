"""Datasets as whole uint8 tensors, split once, batched on the trial's device.

A study loads its dataset once (`load_dataset`), puts it in Ray's object store and every trial
draws batches from an index permutation (`batches`): no per-sample Python, no PIL after loading.
Models start with a `Normalize` layer, so batches are floats in [0, 1] (the beta-VAE's
reconstruction target) and the exported inference model is self-contained.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

VALIDATION_FRACTION = 0.10  # of the training set, held out for the search's objective
SPLIT_SEED = 0  # fixed: every trial of every study sees the same validation split
DATA_DIR_ENV = "PRUNESTUDY_DATA_DIR"
CACHE_DIR_ENV = "PRUNESTUDY_CACHE_DIR"

# torchvision class name -> (folder under the root, channel means, channel stds)
_TORCHVISION = {
    "mnist": ("MNIST", (0.1307,), (0.3081,)),
    "fashion_mnist": ("FashionMNIST", (0.2860,), (0.3530,)),
    "cifar10": ("CIFAR10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
# Named ImageFolder datasets: name -> folder under the data root.
_FOLDERS = {"cifar10_jpeg": "CIFAR10-JPEG"}
DATASETS = tuple(_TORCHVISION) + tuple(_FOLDERS)
_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class DataError(RuntimeError):
    """A dataset that cannot be found or read; the message is one line naming the path."""


@dataclass(frozen=True)
class Dataset:
    name: str
    train_x: torch.Tensor  # uint8, (N, C, H, W)
    train_y: torch.Tensor  # int64, (N,)
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    def to(self, device: torch.device | str) -> Dataset:
        move = {k: getattr(self, k).to(device) for k in
                ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")}
        return replace(self, **move)

    def subset_train(self, n: int, seed: int = SPLIT_SEED) -> Dataset:
        """The first n of a fixed permutation of the training split (n <= 0: all of it)."""
        if n <= 0 or n >= len(self.train_y):
            return self
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self.train_y), generator=g)[:n].to(self.train_x.device)
        return replace(self, train_x=self.train_x[idx], train_y=self.train_y[idx])


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV, "data")).expanduser()


def _cache_dir() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV, "~/.cache/prunestudy")).expanduser()


def load_dataset(name: str, root: str | Path | None = None, download: bool = True) -> Dataset:
    """Load `name` (see DATASETS, or `folder:PATH` for any ImageFolder with train/ and test/)."""
    root = Path(root).expanduser() if root is not None else default_data_dir()
    if name in _TORCHVISION:
        x, y, tx, ty, num_classes = _load_torchvision(name, root, download)
        _, mean, std = _TORCHVISION[name]
    elif name in _FOLDERS or name.startswith("folder:"):
        path = root / _FOLDERS[name] if name in _FOLDERS else Path(name[len("folder:"):]).expanduser()
        x, y, tx, ty, num_classes = _load_image_folder(path)
        mean = tuple(float(v) for v in (x.float() / 255).mean(dim=(0, 2, 3)))
        std = tuple(float(v) for v in (x.float() / 255).std(dim=(0, 2, 3)))
    else:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)} or folder:PATH")
    train_idx, val_idx = split_indices(len(y))
    return Dataset(name=name, train_x=x[train_idx], train_y=y[train_idx], val_x=x[val_idx],
                   val_y=y[val_idx], test_x=tx, test_y=ty, mean=mean, std=std,
                   num_classes=num_classes)


def split_indices(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed-seed split of n training samples into (train, validation) index tensors."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val = int(round(n * VALIDATION_FRACTION))
    return perm[n_val:], perm[:n_val]


def _load_torchvision(name: str, root: Path, download: bool):
    import torchvision.datasets as tvd

    folder, _, _ = _TORCHVISION[name]
    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
    if name in ("mnist", "fashion_mnist"):
        root = _unpacked_mnist_root(root, folder)
    try:
        train, test = (cls(str(root), train=t, download=download) for t in (True, False))
    except Exception as e:  # torchvision raises RuntimeError/URLError/OSError when files are absent
        where = root / (folder if name != "cifar10" else "cifar-10-batches-py")
        how = "and the download failed" if download else "and downloads are off"
        raise DataError(f"dataset {name} not found under {where} {how} "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    x, tx = (torch.as_tensor(np.asarray(d.data)) for d in (train, test))
    if x.ndim == 3:  # MNIST-like (N, H, W)
        x, tx = x.unsqueeze(1), tx.unsqueeze(1)
    else:  # CIFAR (N, H, W, C)
        x, tx = x.permute(0, 3, 1, 2).contiguous(), tx.permute(0, 3, 1, 2).contiguous()
    y, ty = (torch.as_tensor(np.asarray(d.targets), dtype=torch.int64) for d in (train, test))
    return x, y, tx, ty, len(train.classes)


def _unpacked_mnist_root(root: Path, folder: str) -> Path:
    """torchvision reads MNIST's unpacked files only; a root holding just the .gz archives (such as
    a read-only shared copy) is unpacked once into the cache, leaving the root untouched."""
    raw = root / folder / "raw"
    if all((raw / f).exists() for f in _MNIST_FILES) or not all(
            (raw / f"{f}.gz").exists() for f in _MNIST_FILES):
        return root
    key = hashlib.sha1(str(raw.resolve()).encode()).hexdigest()[:12]
    cache_root = _cache_dir() / f"unpacked-{key}"
    dst = cache_root / folder / "raw"
    dst.mkdir(parents=True, exist_ok=True)
    for f in _MNIST_FILES:
        if not (dst / f).exists():
            tmp = dst / f"{f}.tmp{os.getpid()}"
            with gzip.open(raw / f"{f}.gz", "rb") as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out)
            tmp.replace(dst / f)  # atomic: concurrent loaders never read a half-written file
    return cache_root


def _load_image_folder(path: Path):
    """Decode an ImageFolder tree (path/train/<class>/*, path/test/<class>/*) once into uint8."""
    from PIL import Image
    from torchvision.datasets import ImageFolder

    out = []
    for split in ("train", "test"):
        if not (path / split).is_dir():
            raise DataError(f"image folder dataset not found: {path / split} is not a directory")
        folder = ImageFolder(str(path / split))
        images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p, _ in folder.samples])
        out += [torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                torch.tensor(folder.targets, dtype=torch.int64)]
        classes = folder.classes
    return (*out, len(classes))


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int,
            generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (float images in [0, 1], labels) on x's device; shuffled when a generator is
    given (the permutation is drawn on the CPU so it is the same on every device), in order if not."""
    n = len(y)
    order = torch.randperm(n, generator=generator).to(x.device) if generator is not None else None
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size] if order is not None else slice(i, i + batch_size)
        yield x[idx].float().div_(255), y[idx]
