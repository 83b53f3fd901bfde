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


class Method(Protocol):
    """One pruning method: owns its model(s), optimizer, loss and phase schedule.

    The trainable calls, in order: `schedule()` once; for each epoch `begin_phase(p)` at the first
    epoch of phase p, `train_epoch(p, batches)`; after the last epoch `finish()`; and, every
    epoch, `inference_model()` (evaluated and counted) and `diagnostics(p, x, y)`.
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

    def diagnostics(self, phase: str, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Method metrics on the validation images x (uint8) and labels y, under its prefix."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
