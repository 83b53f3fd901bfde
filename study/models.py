"""Architectures by name. Every model takes float images in [0, 1] and starts with `Normalize`."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """Per-channel (x - mean) / std with constant buffers (not parameters: never counted or pruned)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class BetaVAEClassifier(nn.Module):
    """Beta-VAE with a classifier head (shneider2023, Fig. 1).

    Encoder: two 3x3 stride-2 convolutions (32, 64 channels) and a dense layer of `hidden` units,
    then the latent mean and log-variance; the head classifies z; the decoder mirrors the encoder
    (Keras' VAE example, which the paper's 69k-parameter MNIST model matches: with hidden=16 the
    inference model has 69,072 parameters at latent_dim=2, 69,450 at 16). The inference model is
    encoder -> mean -> head:
    the decoder and the log-variance layer only serve the VAE loss and are dropped after it.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, latent_dim: int,
                 hidden: int, mean: Sequence[float], std: Sequence[float], with_decoder: bool = True):
        super().__init__()
        c, h, w = input_shape
        if h % 4 or w % 4:
            raise ValueError(f"BetaVAEClassifier needs input sides divisible by 4, got {h}x{w}")
        flat = 64 * (h // 4) * (w // 4)
        self.features = nn.Sequential(*_bvae_convs(c, mean, std), nn.Linear(flat, hidden), nn.ReLU())
        self.z_mean = nn.Linear(hidden, latent_dim)
        self.head = nn.Linear(latent_dim, num_classes)
        self.z_logvar = nn.Linear(hidden, latent_dim) if with_decoder else None
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, flat), nn.ReLU(), nn.Unflatten(1, (64, h // 4, w // 4)),
            nn.ConvTranspose2d(64, 64, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(32, c, 3, padding=1)) if with_decoder else None  # logits of pixels

    def inference_model(self) -> nn.Sequential:
        """The classifier evaluated, pruned and counted: shares its modules with this model."""
        return nn.Sequential(self.features, self.z_mean, self.head)

    def remove_decoder(self) -> None:
        self.decoder = None
        self.z_logvar = None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        f = self.features(x)
        return self.z_mean(f), (self.z_logvar(f) if self.z_logvar is not None else None)


def _bvae_convs(channels: int, mean: Sequence[float], std: Sequence[float]) -> list[nn.Module]:
    """The beta-VAE encoder's convolutions, flattened: shared by BetaVAEClassifier and bvae_cnn, so
    the network beta_vae prunes and the one other methods prune are built alike."""
    return [Normalize(mean, std),
            nn.Conv2d(channels, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten()]


def beta_vae_hidden(input_shape: tuple[int, int, int]) -> int:
    """Paper-sized dense layer: 16 units gives ~69k parameters on 28x28x1 (Keras' VAE example);
    700 gives ~2.9M on 32x32x3, the paper's CIFAR-10 size. Other grayscale inputs (dsprites'
    64x64) keep the MNIST model's 16 units (0.27M parameters there)."""
    c, h, w = input_shape
    return 16 if c == 1 else 700


# --- classifiers by name: features (conv part, may be empty) then a head of Linear/ReLU layers ---

class FeaturesHead(nn.Module):
    """`head(features(x))`. The head is an nn.Sequential of Linear and ReLU layers, so methods that
    remove neurons (importance) rebuild its hidden Linear layers; `features` ends flattened."""

    def __init__(self, features: nn.Sequential, head: nn.Sequential):
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _mlp_head(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def mlp(input_shape, num_classes, mean, std, hidden: Sequence[int]) -> FeaturesHead:
    c, h, w = input_shape
    return FeaturesHead(nn.Sequential(Normalize(mean, std), nn.Flatten()),
                        _mlp_head([c * h * w, *hidden, num_classes]))


def conv4(input_shape, num_classes, mean, std) -> FeaturesHead:
    """Frankle & Carbin's Conv-4: 64-64-pool-128-128-pool, then FC 256-256-classes (2.4M params
    on 32x32x3; dupont2021's CIFAR-10 Conv4). 28x28 inputs give a 7x7x128 feature map."""
    c, h, w = input_shape

    def conv(a, b):
        return [nn.Conv2d(a, b, 3, padding=1), nn.ReLU()]

    features = nn.Sequential(Normalize(mean, std), *conv(c, 64), *conv(64, 64), nn.MaxPool2d(2),
                             *conv(64, 128), *conv(128, 128), nn.MaxPool2d(2), nn.Flatten())
    return FeaturesHead(features, _mlp_head([128 * (h // 4) * (w // 4), 256, 256, num_classes]))


def reddy_cnn(input_shape, num_classes, mean, std) -> FeaturesHead:
    """reddy's CIFAR CNN, its widths assumed (the paper does not give them): two conv blocks to a
    2048-wide fully connected input (32 channels at 8x8 on 32x32 inputs), then three hidden
    layers halving it, then the classes."""
    c, h, w = input_shape
    features = nn.Sequential(
        Normalize(mean, std),
        nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    return FeaturesHead(features, _mlp_head([32 * (h // 4) * (w // 4), 1024, 512, 256, num_classes]))


def bvae_cnn(input_shape, num_classes, mean, std, latent_dim: int = 16,
             hidden: int | None = None) -> FeaturesHead:
    """beta_vae's inference network (BetaVAEClassifier.inference_model) at its defaults, for the
    other methods: the encoder's convolutions; a head of the dense layer (`hidden` units,
    beta_vae_hidden: 16 on grayscale, 700 on colour), ReLU, the posterior mean (`latent_dim`) and
    the classifier on it (no ReLU between: inference reads the mean). 69,450 parameters on 28x28."""
    c, h, w = input_shape
    if h % 4 or w % 4:
        raise ValueError(f"bvae_cnn needs input sides divisible by 4, got {h}x{w}")
    hidden = beta_vae_hidden(input_shape) if hidden is None else hidden
    return FeaturesHead(nn.Sequential(*_bvae_convs(c, mean, std)), nn.Sequential(
        nn.Linear(64 * (h // 4) * (w // 4), hidden), nn.ReLU(),
        nn.Linear(hidden, latent_dim), nn.Linear(latent_dim, num_classes)))


_VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"]


def vgg19(input_shape, num_classes, mean, std) -> FeaturesHead:
    """VGG19 in its CIFAR form: 16 3x3 convs with batch norm, five max-pools, one linear layer."""
    c, h, w = input_shape
    layers: list[nn.Module] = [Normalize(mean, std)]
    for v in _VGG19:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
            c = v
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return FeaturesHead(nn.Sequential(*layers), nn.Sequential(nn.Linear(512, num_classes)))


class BasicBlock(nn.Module):
    def __init__(self, a: int, b: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(a, b, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(b)
        self.conv2 = nn.Conv2d(b, b, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(b)
        self.shortcut = nn.Sequential()
        if stride != 1 or a != b:
            self.shortcut = nn.Sequential(nn.Conv2d(a, b, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet18(input_shape, num_classes, mean, std) -> FeaturesHead:
    """ResNet18 in its CIFAR form: a 3x3 stem without max-pool, four stages of two basic blocks."""
    c = input_shape[0]
    layers: list[nn.Module] = [Normalize(mean, std), nn.Conv2d(c, 64, 3, padding=1, bias=False),
                               nn.BatchNorm2d(64), nn.ReLU()]
    a = 64
    for b, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(a, b, stride), BasicBlock(b, b, 1)]
        a = b
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return FeaturesHead(nn.Sequential(*layers), nn.Sequential(nn.Linear(512, num_classes)))


MODELS = {
    "lenet300": lambda s, n, m, d: mlp(s, n, m, d, hidden=(300, 100)),  # LeNet-300-100
    "mlp50_30": lambda s, n, m, d: mlp(s, n, m, d, hidden=(50, 30)),  # reddy's MNIST MLP
    "conv4": conv4,
    "reddy_cnn": reddy_cnn,
    "vgg19": vgg19,
    "resnet18": resnet18,
    "bvae_cnn": bvae_cnn,
}


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int,
                mean: Sequence[float], std: Sequence[float]) -> FeaturesHead:
    """A classifier by name (MODELS); inputs are images in [0, 1]."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name](input_shape, num_classes, mean, std)
