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
    (Keras' VAE example, which the paper's 69k-parameter MNIST model matches: with hidden=16 and
    latent_dim=2 the encoder has 69,076 parameters). The inference model is encoder -> mean -> head:
    the decoder and the log-variance layer only serve the VAE loss and are dropped after it.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, latent_dim: int,
                 hidden: int, mean: Sequence[float], std: Sequence[float], with_decoder: bool = True):
        super().__init__()
        c, h, w = input_shape
        if h % 4 or w % 4:
            raise ValueError(f"BetaVAEClassifier needs input sides divisible by 4, got {h}x{w}")
        flat = 64 * (h // 4) * (w // 4)
        self.features = nn.Sequential(
            Normalize(mean, std),
            nn.Conv2d(c, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU())
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


def beta_vae_hidden(input_shape: tuple[int, int, int]) -> int:
    """Paper-sized dense layer: 16 units gives ~69k parameters on 28x28x1 (Keras' VAE example);
    700 gives ~2.9M on 32x32x3, the paper's CIFAR-10 size."""
    c, h, w = input_shape
    return 16 if h * w * c <= 28 * 28 else 700
