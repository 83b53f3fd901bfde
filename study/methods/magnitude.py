"""magnitude: the standard pruning baselines (Blalock et al. 2020), by magnitude or at random,
over the whole network or per layer, one-shot or gradual, within one total epoch budget.

Every trial trains for exactly `epochs` epochs, whatever the schedule, so that a front compares
equal training budgets; the last `finetune_epochs` of them fine-tune with the masks fixed.

schedule `oneshot`: train dense for epochs - finetune_epochs, prune to `target_sparsity` once
(after that phase's last epoch, which reports the network just pruned), fine-tune with the masks
held.
schedule `gradual` (Zhu & Gupta 2017, "To prune, or not to prune"): train dense for
`prune_start_epoch` epochs; in the pruning window (the epochs up to epochs - finetune_epochs) the
masks are recomputed every `prune_every` optimizer steps to the sparsity of the cubic schedule
(`cubic_sparsity`, their Eq. 1), from `initial_sparsity` at the window's first step to
`target_sparsity` at its end; then fine-tune. Pruned weights stay pruned: magnitude masks are
computed from the masked weights (a pruned weight is 0, the first dropped) and multiply the held
ones; random masks follow one fixed random order of the weights, drawn once (`priority_seed`), so
each is a prefix of the next. The window is counted in steps from the steps of the first epoch (the
method is not told the training set's size), so a gradual window starts after at least one epoch.

criterion `random`: the random baseline of Blalock et al. 2020 and Frankle et al. 2021 (as many
weights dropped, chosen uniformly). scope `global`: one threshold over all conv/linear weights
(layers end at different densities); `layer`: every layer loses the same fraction.
After the last epoch the masks are made permanent: plain weights with zeros.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from study.config import ConfigError, setting
from study.methods.base import DataInfo, EpochEnd, make_optimizer
from study.models import MODELS, build_model
from study.pruning import (
    Masks,
    apply_masks,
    clone,
    kept_per_layer,
    magnitude_masks,
    make_permanent,
    random_masks,
    restore_mask_buffers,
    update_masks,
    zero_weights,
)


@dataclass(frozen=True)
class MagnitudeConfig:
    model: str = setting("lenet300", "architecture (study.models); LeNet-300-100 is Frankle & "
                         "Carbin 2019's and Blalock et al. 2020's MNIST network", choices=tuple(MODELS))
    criterion: str = setting("magnitude", "magnitude: drop the smallest |w|; random: drop as many "
                             "chosen uniformly (Blalock et al. 2020, Frankle et al. 2021's random "
                             "baseline)", choices=("magnitude", "random"))
    scope: str = setting("global", "global: one threshold over all conv/linear weights (Blalock et "
                         "al. 2020's Global Magnitude, their strongest baseline); layer: each layer "
                         "loses the same fraction (Zhu & Gupta 2017)", choices=("global", "layer"))
    schedule: str = setting("oneshot", "oneshot: train, prune once, fine-tune (Blalock et al. "
                            "2020); gradual: the cubic schedule of Zhu & Gupta 2017 (Eq. 1) over "
                            "the pruning window, then fine-tune", choices=("oneshot", "gradual"))
    target_sparsity: float = setting(0.9, "s_f: fraction of conv/linear weights pruned at the end "
                                     "(Zhu & Gupta 2017 report 0.5 to 0.975)", low=0.0, high=0.999)
    initial_sparsity: float = setting(0.0, "s_i: gradual only, sparsity at the window's first step "
                                      "(Zhu & Gupta 2017: usually 0)", low=0.0, high=0.999)
    epochs: int = setting(55, "the trial's TOTAL epochs, whatever the schedule (fronts compare "
                          "equal budgets); Frankle & Carbin 2019 train LeNet-300-100 for 50K "
                          "iterations of 60, ~55 epochs of MNIST", low=1)
    finetune_epochs: int = setting(10, "the last epochs of the budget, masks fixed; < epochs (a "
                                   "choice: the papers train on at the final sparsity until "
                                   "convergence)", low=0)
    prune_start_epoch: int = setting(1, "gradual only: dense epochs before the pruning window "
                                     "(>= 1: its steps per epoch are counted in the first); the "
                                     "window ends at epochs - finetune_epochs", low=0)
    prune_every: int = setting(10, "gradual only: optimizer steps between mask updates (Zhu & "
                               "Gupta's dt: 100-1000 steps on nets trained 1e5+ steps; 10 here so "
                               "short CPU runs update often: LeNet-300-100 on 12,000 samples at "
                               "batch 128 takes 94 steps per epoch); raise it for long runs", low=1)
    optimizer: str = setting("adam", "adam (Frankle & Carbin 2019's LeNet-300-100) or sgd; one "
                             "optimizer for the whole trial, its state kept through pruning",
                             choices=("adam", "sgd"))
    lr: float = setting(1.2e-3, "learning rate, constant (Frankle & Carbin 2019, LeNet-300-100 with "
                        "Adam: 1.2e-3)", low=1e-7, high=10.0)
    momentum: float = setting(0.9, "SGD momentum (sgd only; the usual 0.9)", low=0.0, high=0.999)
    weight_decay: float = setting(0.0, "L2 penalty (Frankle & Carbin 2019 use none for "
                                  "LeNet-300-100)", low=0.0)

    def __post_init__(self) -> None:
        if self.finetune_epochs >= self.epochs:
            raise ConfigError(f"setting 'finetune_epochs' = {self.finetune_epochs} must be < "
                              f"'epochs' = {self.epochs}: fine-tuning is the end of the trial's "
                              "epoch budget, after training and pruning")
        if self.schedule != "gradual":
            return
        end = self.epochs - self.finetune_epochs
        if not 1 <= self.prune_start_epoch < end:
            raise ConfigError(f"setting 'prune_start_epoch' = {self.prune_start_epoch} must be in "
                              f"[1, epochs - finetune_epochs = {end}) for schedule 'gradual': the "
                              "window needs an epoch, and a dense epoch before it counts the steps")
        if self.initial_sparsity > self.target_sparsity:
            raise ConfigError(f"setting 'initial_sparsity' = {self.initial_sparsity} must be <= "
                              f"'target_sparsity' = {self.target_sparsity}: pruned weights stay pruned")


def cubic_sparsity(step: int, window: int, initial: float, final: float) -> float:
    """Zhu & Gupta 2017, Eq. 1: s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3, with `step` =
    t - t0 and `window` = n dt, both in optimizer steps; s_i before the window, s_f after it."""
    progress = min(max(step / window, 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3


class Magnitude:
    """Stages: `dense` (no masks), `masked` (masks held), `final` (masks made permanent)."""
    Config = MagnitudeConfig
    metric_prefix = "magnitude/"
    architecture = "model"
    variant_settings = ("criterion", "scope", "schedule")  # each combination is its own baseline
    chance_rule_skips = ()

    def __init__(self, config: MagnitudeConfig, data: DataInfo, device: torch.device):
        self.cfg = config
        self.model = build_model(config.model, data.input_shape, data.num_classes, data.mean,
                                 data.std).to(device)
        params = self.model.parameters()  # masking keeps these objects (weight -> weight_orig)
        self.optimizer = make_optimizer(config.optimizer, params, config.lr, config.momentum,
                                        config.weight_decay)
        # the random order of the weights, drawn once from the trial's seed (the trainable seeds
        # the global generator before building a method): every random mask is a prefix of it
        self.priority_seed = int(torch.randint(2**62, ()))
        self.stage = "dense"
        self.epoch = 0  # epochs done
        self.step = 0  # optimizer steps taken
        self.steps_per_epoch = 0  # counted in the first epoch
        self.sparsity_now = 0.0  # the rate the held masks were last computed for
        self.window_end = config.epochs - config.finetune_epochs  # epochs done when at s_f
        self.window_start = config.prune_start_epoch if config.schedule == "gradual" else self.window_end

    def schedule(self) -> list[tuple[str, int]]:
        return [("train", self.window_start), ("prune", self.window_end - self.window_start),
                ("finetune", self.cfg.finetune_epochs)]

    def begin_epoch(self, phase: str, first: bool) -> bool:
        self.model.train()
        return True

    def _masks(self, model: nn.Module, rate: float) -> Masks:
        if self.cfg.criterion == "magnitude":  # from the masked weights: pruned ones are 0, first out
            return magnitude_masks(model, rate, self.cfg.scope)
        return random_masks(model, rate, self.cfg.scope,  # the same order every time
                            torch.Generator().manual_seed(self.priority_seed))

    @torch.no_grad()
    def _prune_to(self, rate: float) -> None:
        masks = self._masks(self.model, rate)
        if self.stage == "dense":
            apply_masks(self.model, masks)
            self.stage = "masked"
        else:
            update_masks(self.model, masks)
        self.sparsity_now = rate

    def loss_terms(self, phase: str, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if phase == "prune":  # gradual: the window's steps t - t0 = 0, dt, 2 dt, ...
            t = self.step - self.window_start * self.steps_per_epoch
            if t % self.cfg.prune_every == 0:
                window = (self.window_end - self.window_start) * self.steps_per_epoch  # n dt
                self._prune_to(cubic_sparsity(t, window, self.cfg.initial_sparsity,
                                              self.cfg.target_sparsity))
        self.step += 1
        return {"loss": F.cross_entropy(self.model(x), y)}

    def end_pass(self, phase: str, last: bool, terms: dict[str, float]) -> dict[str, float]:
        self.epoch += 1
        if self.epoch == 1:
            self.steps_per_epoch = self.step
        if self.epoch == self.window_end:  # oneshot's one shot; gradual's t0 + n dt: s_f
            self._prune_to(self.cfg.target_sparsity)
        if last:
            make_permanent(self.model)  # the same parameter objects: the optimizer still holds them
            self.stage = "final"
        return {}

    def inference_model(self) -> nn.Module:
        return self.model

    def networks(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def probe_model(self) -> nn.Module | None:
        """A copy pruned to target_sparsity by the same criterion and scope, the masks so far kept;
        None once the masks are at the target."""
        if self.epoch >= self.window_end:
            return None
        probe = clone(self.model)
        make_permanent(probe)
        zero_weights(probe, self._masks(probe, self.cfg.target_sparsity))
        return probe

    def end_epoch(self, end: EpochEnd) -> dict[str, float]:
        out = {"magnitude/target_sparsity_now": self.sparsity_now}
        for name, (kept, total) in kept_per_layer(self.model).items():
            out[f"magnitude/kept/{name}"] = kept / total
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "stage": self.stage, "epoch": self.epoch, "step": self.step,
                "steps_per_epoch": self.steps_per_epoch, "sparsity_now": self.sparsity_now,
                "priority_seed": self.priority_seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["stage"] == "masked":  # recreate the mask buffers, then load their values
            restore_mask_buffers(self.model)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.stage, self.epoch, self.step = state["stage"], state["epoch"], state["step"]
        self.steps_per_epoch, self.sparsity_now = state["steps_per_epoch"], state["sparsity_now"]
        self.priority_seed = state["priority_seed"]
