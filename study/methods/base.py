"""The small interface every pruning method implements (the trainable never knows which runs)."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]  # (images in [0, 1], labels) on the device


@dataclass(frozen=True)
class DataInfo:
    """What a method needs to know of its dataset to build its models."""
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class EpochEnd:
    """What the trainable measured at the end of an epoch, handed to `Method.diagnostics`."""
    phase: str
    phase_end: bool  # the last epoch of its phase (e.g. beta_vae's VAE state is diagnosed there)
    val_accuracy: float  # of inference_model() on the validation split, as reported
    x: torch.Tensor  # validation images (uint8) and labels, on the trial's device
    y: torch.Tensor
    factors: torch.Tensor | None  # the validation images' ground-truth factors (dsprites), else None
    eval_batch_size: int  # samples per evaluation batch (no effect on results)


class Method(Protocol):
    """One pruning method: owns its model(s), optimizer, loss and phase schedule.

    The trainable calls, in order: `schedule()` once; for each epoch `begin_phase(p)` at the first
    epoch of phase p, `train_epoch(p, batches)`; after the last epoch `finish()`; and, every
    epoch, `inference_model()` (evaluated and counted) and `diagnostics(EpochEnd)`.
    `state_dict`/`load_state_dict` cover everything needed to continue after any epoch.
    """
    Config: type  # a dataclass of settings (study.config.setting), defaults from the paper

    def __init__(self, config: Any, data: DataInfo, device: torch.device) -> None: ...

    def schedule(self) -> list[tuple[str, int]]:
        """Phases in order, with their number of epochs."""

    def begin_phase(self, phase: str) -> None: ...

    def train_epoch(self, phase: str, batches: Batches) -> dict[str, float]:
        """One pass over `batches`; returns mean loss terms, `loss` (the total) among them."""

    def finish(self) -> dict[str, float]:
        """Work after the last epoch (e.g. effective pruning); returns diagnostics of it."""

    def inference_model(self) -> nn.Module: ...

    def diagnostics(self, end: EpochEnd) -> dict[str, float]:
        """Method metrics on the validation split, under its prefix."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
