"""Datasets as whole uint8 tensors, split once, batched on the trial's device.

A study loads its dataset once (`load_dataset`), puts it in Ray's object store and every trial
draws batches from an index permutation (`batches`): no per-sample Python, no PIL after loading.
Models start with a `Normalize` layer, so batches are floats in [0, 1] (the beta-VAE's
reconstruction target) and the exported inference model is self-contained.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import zipfile
import zlib
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
DATASETS = tuple(_TORCHVISION) + tuple(_FOLDERS) + ("dsprites",)
# Training-batch augmentations (TrialConfig.augment); `auto` picks per dataset (`resolve_augment`)
AUGMENTS = ("auto", "none", "crop_flip")
CROP_PADDING = 4  # pixels of zero padding on each side before the random crop (crop_flip)
_CROP_FLIP_DATASETS = ("cifar10", "cifar10_jpeg")  # CIFAR: Dupont et al. 2021's baselines' crop + flip
_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_MNIST_SIDE = 28  # MNIST's and Fashion-MNIST's images: 28 x 28, 10 classes
_MNIST_CLASSES = 10
_DAMAGED = "a damaged or partial download? delete it to download it again"


class DataError(RuntimeError):
    """A dataset that cannot be found or read; the message is one line naming the path."""

    def __str__(self) -> str:
        from study.config import one_line  # study.config imports this module (through metrics)

        return one_line(super().__str__())


def _exists(path: Path) -> bool:
    """Whether `path` exists; a path the file system cannot hold (a NUL, a name too long) is a
    DataError naming it rather than a traceback."""
    try:
        return path.exists()
    except (OSError, ValueError) as e:
        raise DataError(f"cannot look for {str(path)!r}: {getattr(e, 'strerror', None) or e}") from None


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
    # ground-truth generative factors (int codes, one column each) where the dataset has them
    factor_names: tuple[str, ...] = ()
    train_factors: torch.Tensor | None = None
    val_factors: torch.Tensor | None = None
    test_factors: torch.Tensor | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    def to(self, device: torch.device | str) -> Dataset:
        move = {k: getattr(self, k).to(device) for k in
                ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y", "train_factors",
                 "val_factors", "test_factors") if getattr(self, k) is not None}
        return replace(self, **move)

    def subset_train(self, n: int, seed: int = SPLIT_SEED) -> Dataset:
        """The first n of a fixed permutation of the training split (n <= 0: all of it)."""
        if n <= 0 or n >= len(self.train_y):
            return self
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self.train_y), generator=g)[:n].to(self.train_x.device)
        factors = self.train_factors[idx] if self.train_factors is not None else None
        return replace(self, train_x=self.train_x[idx], train_y=self.train_y[idx],
                       train_factors=factors)

    def with_label(self, factor: str) -> Dataset:
        """The class label taken from the generative factor `factor` ('' keeps the dataset's)."""
        if not factor:
            return self
        if factor not in self.factor_names:
            known = ", ".join(self.factor_names) or "none: it has no generative factors"
            raise DataError(f"dataset {self.name} has no factor {factor!r} to label by (factors: {known})")
        k = self.factor_names.index(factor)
        labels = {s: getattr(self, f"{s}_factors")[:, k].clone() for s in ("train", "val", "test")}
        classes = int(max(int(v.max()) for v in labels.values())) + 1
        return replace(self, train_y=labels["train"], val_y=labels["val"], test_y=labels["test"],
                       num_classes=classes)


def default_data_dir() -> Path:
    return _expand(os.environ.get(DATA_DIR_ENV, "data"))


def _expand(path: str | Path) -> Path:
    """`path` with a leading ~ or ~user expanded; DataError for a user that does not exist."""
    try:
        return Path(path).expanduser()
    except RuntimeError:  # ~nobody-here: "Could not determine home directory"
        raise DataError(f"cannot expand {str(path)!r}: no such user's home folder") from None


def _cache_dir() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV, "~/.cache/prunestudy")).expanduser()


def load_dataset(name: str, root: str | Path | None = None, download: bool = True) -> Dataset:
    """Load `name` (see DATASETS, or `folder:PATH` for any ImageFolder with train/ and test/)."""
    root = _expand(root) if root is not None else default_data_dir()
    if name in _TORCHVISION:
        x, y, tx, ty, num_classes = _load_torchvision(name, root, download)
        _, mean, std = _TORCHVISION[name]
    elif name == "dsprites":
        return load_dsprites(root)
    elif name in _FOLDERS or name.startswith("folder:"):
        path = root / _FOLDERS[name] if name in _FOLDERS else _expand(name[len("folder:"):])
        x, y, tx, ty, num_classes = _load_image_folder(path)
        mean = tuple(float(v) for v in (x.float() / 255).mean(dim=(0, 2, 3)))
        std = tuple(float(v) for v in (x.float() / 255).std(dim=(0, 2, 3)))
    else:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)} or folder:PATH")
    train_idx, val_idx = split_indices(len(y))
    if not len(val_idx) or not len(train_idx):
        raise DataError(f"dataset {name}: {len(y)} training images are too few to hold "
                        f"{VALIDATION_FRACTION:.0%} of them out for validation")
    return Dataset(name=name, train_x=x[train_idx], train_y=y[train_idx], val_x=x[val_idx],
                   val_y=y[val_idx], test_x=tx, test_y=ty, mean=mean, std=std,
                   num_classes=num_classes)


def split_indices(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed-seed split of n training samples into (train, validation) index tensors."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val = int(round(n * VALIDATION_FRACTION))
    return perm[n_val:], perm[:n_val]


def _load_torchvision(name: str, root: Path, download: bool):
    folder, _, _ = _TORCHVISION[name]
    if name in ("mnist", "fashion_mnist"):
        raw = root / folder / "raw"
        found = [_idx_file(raw, f) for f in _MNIST_FILES]
        if all(found):  # read directly: importing torchvision costs a study 2.4 s of start-up
            x, y, tx, ty = _read_mnist(*found)
            return x.unsqueeze(1), y.long(), tx.unsqueeze(1), ty.long(), _MNIST_CLASSES
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
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


def _idx_file(raw: Path, name: str) -> Path | None:
    """MNIST's file `name` in torchvision's raw folder, unpacked or as its .gz archive."""
    for path in (raw / name, raw / f"{name}.gz"):
        if _exists(path):
            return path
    return None


def _read_mnist(images: Path, labels: Path, test_images: Path, test_labels: Path
                ) -> tuple[torch.Tensor, ...]:
    """MNIST's four IDX files, checked against each other: 28 x 28 images, one label in 0-9 per
    image. Whatever is wrong is a DataError naming the file."""
    out = []
    for x_path, y_path in ((images, labels), (test_images, test_labels)):
        x, y = _read_idx(x_path, 3), _read_idx(y_path, 1)
        if x.shape[1:] != (_MNIST_SIDE, _MNIST_SIDE):
            raise DataError(f"{x_path} holds {x.shape[1]} x {x.shape[2]} images, not MNIST's "
                            f"{_MNIST_SIDE} x {_MNIST_SIDE} ({_DAMAGED})")
        if len(y) != len(x):
            raise DataError(f"{y_path} holds {len(y)} labels for the {len(x)} images of "
                            f"{x_path.name} ({_DAMAGED})")
        if y.max() >= _MNIST_CLASSES:
            raise DataError(f"{y_path} holds label {int(y.max())}, not one of MNIST's "
                            f"{_MNIST_CLASSES} classes ({_DAMAGED})")
        out += [torch.as_tensor(x), torch.as_tensor(y)]
    return tuple(out)


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of `ndim` dimensions (MNIST's format: big-endian magic 0x0000 08 NDIM, NDIM
    sizes, then exactly their product of unsigned bytes). A damaged file (truncated, another magic
    number, sizes its data does not fill) is a DataError naming it."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # a damaged .gz: BadGzipFile, EOFError, zlib.error
        raise DataError(f"cannot read {path}: {e or type(e).__name__} ({_DAMAGED})") from None
    if len(data) < 4 or data[:3] != b"\0\0\x08" or data[3] != ndim:
        raise DataError(f"{path} is not an IDX file of {ndim}-dimensional unsigned bytes: it "
                        f"starts with {data[:4].hex() or 'nothing'}, not 00000800{ndim:02x} ({_DAMAGED})")
    start = 4 + 4 * ndim
    if len(data) < start:
        raise DataError(f"{path} is truncated: {len(data)} bytes, its header alone is {start} "
                        f"({_DAMAGED})")
    dims = struct.unpack(f">{ndim}i", data[4:start])
    if min(dims) <= 0 or len(data) - start != math.prod(dims):
        raise DataError(f"{path} holds {len(data) - start} bytes of data where its header's sizes "
                        f"{' x '.join(map(str, dims))} need {math.prod(dims)} ({_DAMAGED})")
    return np.frombuffer(data, np.uint8, offset=start).reshape(dims).copy()


def _load_image_folder(path: Path):
    """Decode an ImageFolder tree (path/train/<class>/*, path/test/<class>/*) once into uint8."""
    from PIL import Image
    from torchvision.datasets import ImageFolder

    out, sizes = [], {}
    for split in ("train", "test"):
        if not _exists(path / split) or not (path / split).is_dir():
            raise DataError(f"image folder dataset not found: {path / split} is not a directory")
        try:
            folder = ImageFolder(str(path / split))
        except (OSError, ValueError) as e:  # no class folder, or no image in them
            raise DataError(f"image folder {path / split}: {e}") from None
        images = []
        for file, _ in folder.samples:
            try:
                with Image.open(file) as image:
                    images.append(np.asarray(image.convert("RGB")))
            except (OSError, ValueError, Image.DecompressionBombError) as e:  # a damaged image
                raise DataError(f"cannot read the image {file}: {e}") from None
            first = sizes.setdefault("first", (file, images[-1].shape))
            if images[-1].shape != first[1]:
                raise DataError(f"{file} is {_size(images[-1].shape)} where {first[0]} is "
                                f"{_size(first[1])}: an image folder's images share one size")
        images = np.stack(images)
        out += [torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                torch.tensor(folder.targets, dtype=torch.int64)]
        classes = folder.classes
    return (*out, len(classes))


def _size(shape: tuple[int, ...]) -> str:
    return f"{shape[1]} x {shape[0]} pixels"


# dSprites (Matthey et al. 2017): the full grid of its five factors, in the original file's order
DSPRITES_FACTORS = {"shape": 3, "scale": 6, "orientation": 40, "pos_x": 32, "pos_y": 32}
DSPRITES_FILE = "dsprites/dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
DSPRITES_SIZE = 70_000  # images drawn from the 737,280 of the grid: 60,000 training, 10,000 test
DSPRITES_TEST = 10_000
_DSPRITES_CACHE = "dsprites-render-v1.npz"


def dsprites_factor_codes(index: np.ndarray) -> np.ndarray:
    """Grid indices -> (n, 5) factor codes (shape, scale, orientation, pos_x, pos_y), last fastest."""
    codes, rest = [], np.asarray(index, dtype=np.int64)
    for size in reversed(DSPRITES_FACTORS.values()):
        codes.append(rest % size)
        rest = rest // size
    return np.stack(codes[::-1], axis=1)


def render_dsprites(codes: np.ndarray) -> np.ndarray:
    """64x64 binary images (uint8 0/1) of the given factor codes, in the manner of dSprites: a
    square, an ellipse or a heart; scale 6 values in [0.5, 1]; orientation 40 values in
    [0, 2 pi); centre 32 values per axis across the image. A stand-in for the original file (which
    is used instead when present): same factors and grid, not the same pixels."""
    side = 64
    scales = np.linspace(0.5, 1.0, 6)
    angles = np.linspace(0.0, 2 * np.pi, 40, endpoint=False)
    shift = np.round(np.linspace(0, 0.6 * side, 32)).astype(int)  # pixels; distinct per position
    # every (shape, scale, orientation) sprite once, centred at c0; positions are integer shifts
    c0, radius = 0.2 * side, 0.16 * side
    v, u = np.mgrid[0:side, 0:side].astype(np.float64) + 0.5
    sprites = np.zeros((3, 6, 40, side, side), dtype=np.uint8)
    for j, s in enumerate(scales):
        for k, a in enumerate(angles):
            # pixel coordinates in the sprite's frame: rotated by -a, in units of its radius
            x = (np.cos(a) * (u - c0) + np.sin(a) * (v - c0)) / (radius * s)
            y = (-np.sin(a) * (u - c0) + np.cos(a) * (v - c0)) / (radius * s)
            sprites[0, j, k] = np.maximum(np.abs(x), np.abs(y)) <= 0.75
            sprites[1, j, k] = (x / 1.0) ** 2 + (y / 0.5) ** 2 <= 1.0
            hx, hy = x / 0.8, -y / 0.8 + 0.1  # the heart curve (x^2 + y^2 - 1)^3 <= x^2 y^3
            sprites[2, j, k] = (hx ** 2 + hy ** 2 - 1) ** 3 - hx ** 2 * hy ** 3 <= 0
    images = np.zeros((len(codes), side, side), dtype=np.uint8)
    for (sx, sy), rows in _group_rows(codes[:, 3:5]):
        base = sprites[codes[rows, 0], codes[rows, 1], codes[rows, 2]]
        dx, dy = shift[sx], shift[sy]
        images[rows, dy:, dx:] = base[:, :side - dy, :side - dx]
    return images


def _group_rows(keys: np.ndarray):
    """((key tuple), row indices) for each distinct row of `keys`."""
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    order = np.argsort(inverse.ravel(), kind="stable")
    bounds = np.cumsum(np.bincount(inverse.ravel(), minlength=len(uniq)))[:-1]
    return zip(map(tuple, uniq), np.split(order, bounds), strict=True)


def load_dsprites(root: Path) -> Dataset:
    """dSprites: a fixed-seed sample of DSPRITES_SIZE images of the factor grid, DSPRITES_TEST of
    them (fixed seed) the test split and 10% of the rest the validation split; labels are the shape
    (Dataset.with_label picks another factor).
    Read from the original file under the data root when present, else rendered (render_dsprites)
    and cached once in the cache folder."""
    grid = int(np.prod(list(DSPRITES_FACTORS.values())))
    index = np.sort(np.random.default_rng(SPLIT_SEED).choice(grid, DSPRITES_SIZE, replace=False))
    original = root / DSPRITES_FILE
    if _exists(original):  # the arrays only: its pickled metadata is never unpickled
        try:
            with np.load(original, allow_pickle=False) as f:
                imgs = f["imgs"]
            if imgs.shape != (grid, 64, 64):
                raise ValueError(f"its imgs are {imgs.shape}, not ({grid}, 64, 64)")
            images = imgs[index].astype(np.uint8)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise DataError(f"cannot read {original}: {e} ({_DAMAGED})") from None
    else:
        cache = _cache_dir() / _DSPRITES_CACHE
        try:  # the cache is ours: one that cannot be read is rendered again
            with np.load(cache) as f:
                images = np.unpackbits(f["bits"], axis=-1).reshape(-1, 64, 64)
            if len(images) != len(index):
                images = None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            images = None
        if images is None:
            images = render_dsprites(dsprites_factor_codes(index))
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".tmp{os.getpid()}.npz")
            np.savez_compressed(tmp, bits=np.packbits(images.reshape(len(images), -1), axis=-1))
            tmp.replace(cache)  # atomic: concurrent loaders never read a half-written file
    codes = torch.from_numpy(dsprites_factor_codes(index))
    x = torch.from_numpy(images).unsqueeze(1).mul_(255)  # 0/1 -> 0/255 like every other dataset
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    test, rest = order[:DSPRITES_TEST], order[DSPRITES_TEST:]
    train_idx, val_idx = (rest[i] for i in split_indices(len(rest)))
    on = np.count_nonzero(images[rest.numpy()]) / (len(rest) * images[0].size)  # binary pixels
    return Dataset(name="dsprites", train_x=x[train_idx], train_y=codes[train_idx, 0],
                   val_x=x[val_idx], val_y=codes[val_idx, 0], test_x=x[test], test_y=codes[test, 0],
                   mean=(on,), std=(float(np.sqrt(on * (1 - on))),),
                   num_classes=DSPRITES_FACTORS["shape"], factor_names=tuple(DSPRITES_FACTORS),
                   train_factors=codes[train_idx], val_factors=codes[val_idx],
                   test_factors=codes[test])


def resolve_augment(augment: str, dataset: str) -> str:
    """The augmentation `augment` means for `dataset`: `auto` is `crop_flip` for CIFAR-10
    (`cifar10`, `cifar10_jpeg`) and `none` for every other dataset, `folder:PATH` included (its
    images could be anything: set `crop_flip` to have it)."""
    if augment not in AUGMENTS:
        raise ValueError(f"unknown augment {augment!r}: choose one of {', '.join(AUGMENTS)}")
    if augment == "auto":
        return "crop_flip" if dataset in _CROP_FLIP_DATASETS else "none"
    return augment


def crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = CROP_PADDING) -> torch.Tensor:
    """A batch (N, C, H, W) randomly cropped and flipped, each image its own draw, in one gather:
    zero-padded by `padding` on every side, an H x W window cut at a uniform offset in
    [0, 2 * padding] per axis, then mirrored left-right with probability 1/2 (torchvision's
    RandomCrop(padding=4) + RandomHorizontalFlip). The draws come from `generator` on the CPU (the
    same on every device: offsets, then flips), the gather runs on x's device."""
    n, c, h, w = x.shape
    shifts = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator).to(x.device)
    flips = torch.randint(0, 2, (n,), generator=generator).bool().to(x.device)
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    rows = shifts[:, :1] + torch.arange(h, device=x.device)  # (N, H)
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = shifts[:, 1:] + torch.where(flips[:, None], w - 1 - cols, cols)  # (N, W)
    return padded[torch.arange(n, device=x.device)[:, None, None, None],
                  torch.arange(c, device=x.device)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int,
            generator: torch.Generator | None = None,
            augment: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (float images in [0, 1], labels) on x's device; shuffled when a generator is
    given (the permutation is drawn on the CPU so it is the same on every device), in order if not;
    randomly cropped and flipped (`crop_flip`, drawn from `augment`) when `augment` is given, which
    only training batches are. On CUDA, image batches are channels_last."""
    n = len(y)
    order = torch.randperm(n, generator=generator).to(x.device) if generator is not None else None
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size] if order is not None else slice(i, i + batch_size)
        xb = x[idx]
        if augment is not None:  # on the uint8 images: zero padding is black, as in torchvision
            xb = crop_flip(xb, augment)
        xb = xb.float().div_(255)
        if xb.is_cuda and xb.dim() == 4:  # NHWC, as the convolutions' weights (to_channels_last)
            xb = xb.contiguous(memory_format=torch.channels_last)
        yield xb, y[idx]
