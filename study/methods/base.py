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
    """What the trainable measured at the end of an epoch, handed to `Method.end_epoch`."""
    phase: str
    phase_end: bool  # the last epoch of its phase (e.g. beta_vae's VAE state is diagnosed there)
    val_accuracy: float  # of inference_model() on the validation split, as reported
    x: torch.Tensor  # validation images (uint8) and labels, on the trial's device
    y: torch.Tensor
    factors: torch.Tensor | None  # the validation images' ground-truth factors (dsprites), else None
    eval_batch_size: int  # samples per evaluation batch (the trial's setting; no effect on results)


class Method(Protocol):
    """One pruning method: owns its model(s), optimizer, loss terms and phase schedule; the
    trainable (study.trainable) owns the loop, the optimizer step and the averaging of loss terms.

    Per epoch of `schedule()`, the trainable calls:
      begin_epoch(phase, first)      False: the epoch does not train (no batch is drawn)
      loss_terms(phase, x, y)        per batch; then optimizer.zero_grad / backward / step
      end_pass(phase, last, terms)   after the training pass (terms: its averaged loss terms,
                                     empty when it did not train), before evaluation; `last`:
                                     the trial's last epoch (work after training, e.g. pruning)
      inference_model()              evaluated and counted by the trainable
      end_epoch(EpochEnd)            the measured validation accuracy in; schedulers and early
                                     stopping move here; returns the method's metrics
    `state_dict`/`load_state_dict` cover everything needed to continue after any epoch.

    The declaration (checked by study.methods.register) is all the harness needs beyond these:
    `Config`, `metric_prefix` (the `--constraint` vocabulary), `architecture` and
    `variant_settings` (what its fronts are grouped by), `chance_rule_skips` (the phases whose
    chance accuracy is what the study measures, not a degenerate trial), `networks()` (device
    layout) and `probe_model()` (MO-ASHA's rungs).
    """
    Config: type  # a frozen dataclass of settings (study.config.setting), defaults from the paper
    metric_prefix: str  # its diagnostics are reported under it, e.g. "vae/" (ends with "/", unique)
    architecture: str  # the Config setting naming its network, e.g. "model"; fronts group by its value
    # the Config settings whose values make a different procedure, not a point of the same one (a
    # baseline variant, a criterion): a front holds one value of each, e.g. ("variant",)
    variant_settings: tuple[str, ...]
    # phases (names of `schedule()`) whose epochs at chance validation accuracy the trainable's
    # degenerate rule does not count: chance there is what the study measures (beta_vae's VAE
    # phase: a collapsed posterior), recorded, never cut short; the dead-network rule still
    # applies. () for most methods. An instance may narrow it for its settings (beta_vae's cnn
    # variant, no VAE: ()); the trainable reads the instance's and checks it against schedule()
    chance_rule_skips: tuple[str, ...]
    optimizer: torch.optim.Optimizer  # what the trainable steps; a method may replace it

    def __init__(self, config: Any, data: DataInfo, device: torch.device) -> None: ...

    def schedule(self) -> list[tuple[str, int]]:
        """Phases in order, with their number of epochs."""

    def begin_epoch(self, phase: str, first: bool) -> bool:
        """Before an epoch's training pass (`first`: the phase's first epoch); False skips it."""

    def loss_terms(self, phase: str, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss of one batch, `loss` (the total, minimized) and any terms to report beside it
        (each a per-sample mean; the trainable averages them over the epoch's samples)."""

    def end_pass(self, phase: str, last: bool, terms: dict[str, float]) -> dict[str, float]:
        """After the epoch's training pass, before evaluation; returns metrics to report beside
        `terms` (a `loss` among them when the epoch did not train)."""

    def inference_model(self) -> nn.Module: ...

    def networks(self) -> dict[str, nn.Module]:
        """Every network it holds, by attribute name: those it trains and any it evaluates as its
        inference model (their parameters include the inference model's). The trainable lays them
        out on the device (channels_last on CUDA)."""

    def probe_model(self) -> nn.Module | None:
        """A copy of the inference network pruned to the trial's final target without the training
        left, measured at MO-ASHA's rungs (study.scheduler.rung_objectives); None when the network
        as it is is its final state (already pruned, or a method that prunes as it trains). It
        changes no state and draws no random numbers."""

    def end_epoch(self, end: EpochEnd) -> dict[str, float]:
        """After evaluation: the method's metrics (under its prefix) and any state that follows
        the validation accuracy (learning-rate schedules, early stopping)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def make_optimizer(name: str, params: Iterable[torch.Tensor], lr: float, momentum: float,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """A method's optimizer from its `optimizer` setting: Adam, or SGD with `momentum` (the
    setting's two choices wherever a method offers them)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
