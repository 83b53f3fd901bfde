"""reparam: budget-aware pruning by weight reparametrization (dupont2021), and its baselines.

variant `reparam` (paper Section 2): every conv and linear weight w is used through its apparent
weight w * h_t(w) (Eq. 3, h_t of Eq. 5), with one learned temperature t per layer; the loss is
cross-entropy + lambda * budget loss (Eq. 7-9). No fine-tuning: after the last epoch, effective
pruning zeroes the round(p * N) smallest |apparent weights| over the whole network (one *global*
threshold, as the paper's "pruned up to the targeted pruning rate" implies) and removes the
reparametrization, leaving a plain network with its zeros in its weights.
variants `mag` / `mag_ft` (the paper's MP and MP+FT): the same network and schedule trained on
cross-entropy alone, then the same global magnitude pruning to p; `mag_ft` then fine-tunes with the
masks held for `finetune_epochs` (a fresh optimizer and schedule: the paper fine-tunes "with the same
procedure").

Temperature: learned as rho with t = softplus(rho) (t > 0, and d t / d rho ~ 1 for t >> 1, so
gradient descent moves t itself, as the paper's t_init = 100 suggests). Learning log t instead was
tried first: at lr 0.1 with momentum the budget gradient took the first layer of LeNet-300-100 from
t = 100 to 0.66 within one epoch, its whole weight tensor fell into the stop band where h_t has no
gradient left, and the network stayed at chance (Fashion-MNIST, 10% validation accuracy).

Training procedure (paper Section 3.1): SGD, reduce-on-plateau and early stopping. The paper steps
both on *test* accuracy; here their signal is the validation accuracy of the network being trained
(the apparent-weight network for `reparam`), measured in `diagnostics`, which the trainable calls
once per epoch: the test set is only measured at the end. Early stopping within the trainable's
fixed schedule: once the validation accuracy has not improved for `early_stop_patience` epochs the
weights are frozen for the rest of the phase (batches are not drawn; `loss` repeats the last trained
epoch's), which is what stopping leaves, without restoring the best weights.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from study.config import setting
from study.methods.base import DataInfo, EpochEnd
from study.metrics import accuracy
from study.models import MODELS, build_model
from study.pruning import (
    apply_masks,
    kept_per_layer,
    magnitude_masks,
    make_permanent,
    prunable_modules,
    restore_mask_buffers,
    zero_weights,
)

C1 = 1.0 / (1.0 - math.exp(-1.0))  # Eq. 5: scales h_t to [0, 1]
C2 = math.exp(-1.0)  # Eq. 5: h_t(0) = 0
# Beyond |t x| = 1e4, h_t = 1 to float32 precision for every even n >= 2; clamping there keeps
# (t x)^n finite (n = 8 would overflow float32), so the gradient is 0 rather than inf * 0 = NaN.
_TX_MAX = 1e4


@dataclass(frozen=True)
class ReparamConfig:
    variant: str = setting("reparam", "reparam: the paper's method; mag: magnitude pruning without "
                           "fine-tuning; mag_ft: magnitude pruning + fine-tuning (masks held)",
                           choices=("reparam", "mag", "mag_ft"))
    model: str = setting("conv4", "architecture (study.models): any, every conv and linear weight "
                         "is reparametrized; the paper's conv4 (28x28 and 32x32 forms), vgg19, "
                         "resnet18 (CIFAR forms), and lenet300 (LeNet-300-100)",
                         choices=tuple(MODELS))
    pruning_rate: float = setting(0.9, "target fraction p of conv/linear weights pruned; the "
                                  "budget is C_target = (1 - p) * C_initial", low=0.0, high=0.999)
    budget_lambda: float = setting(5.0, "lambda of Eq. 8, weight of the budget loss (paper: 5)",
                                   low=0.0)
    n: int = setting(4, "even exponent of h_t (Eq. 5): crispness of the stop band (paper: 4)",
                     choices=(2, 4, 6, 8))
    t_init: float = setting(100.0, "initial temperature of every layer (paper: 100); t is learned "
                            "as softplus(rho)", low=1e-3, high=1e6)
    lr: float = setting(0.1, "SGD learning rate at the start of each phase (paper: 0.1)",
                        low=1e-7, high=10.0)
    momentum: float = setting(0.9, "SGD momentum (not stated by the paper; 0.9 is the usual CIFAR "
                              "setting)", low=0.0, high=0.999)
    weight_decay: float = setting(5e-5, "L2 penalty on weights and biases, not on temperatures "
                                  "(paper: 5e-5)", low=0.0)
    epochs: int = setting(300, "training epochs (paper: 300, with early stopping)", low=1)
    plateau_patience: int = setting(10, "epochs without validation improvement before the learning "
                                    "rate is reduced (paper: 10)", low=0)
    plateau_factor: float = setting(0.3, "learning-rate factor on a plateau (paper: 0.3)",
                                    low=1e-6, high=1.0)
    early_stop_patience: int = setting(60, "epochs without validation improvement before a phase "
                                       "stops (weights frozen; paper: 60; 0: never)", low=0)
    target_tolerance: float = setting(0.01, "achieved conv/linear sparsity further than this from "
                                      "pruning_rate is reported as reparam/target_missed",
                                      low=0.0, high=1.0)
    finetune_epochs: int = setting(300, "mag_ft only: fine-tuning epochs with the masks held "
                                   "(paper: the training procedure again, 300)", low=0)


def h_t(x: torch.Tensor, t: torch.Tensor | float, n: int) -> torch.Tensor:
    """Eq. 5, the numerically stable h_t(x) = C1 * (exp(-1 / ((t x)^n + 1)) - C2), n even; clamped
    to [0, 1] so rounding never breaks property 1."""
    tx = (t * x).abs().clamp(max=_TX_MAX)  # n is even: (t x)^n = |t x|^n
    return (C1 * (torch.exp(-1.0 / (tx.pow(n) + 1.0)) - C2)).clamp(0.0, 1.0)


class ApparentWeight(nn.Module):
    """Eq. 3 as a parametrization of a layer's weight: w_hat = w * h_t(w). The temperature is the
    layer's only extra parameter, learned as rho with t = softplus(rho) so that t stays positive
    while its gradient steps are those of t itself (see `temperature` in the module docstring)."""

    def __init__(self, n: int, t_init: float):
        super().__init__()
        self.n = n
        self.rho = nn.Parameter(torch.tensor(t_init + math.log(-math.expm1(-t_init))))

    @property
    def t(self) -> torch.Tensor:
        return F.softplus(self.rho)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * h_t(w, self.t, self.n)


def reparametrize(model: nn.Module, n: int, t_init: float) -> None:
    """Use every conv and linear weight through its apparent weight (biases and batch norm stay)."""
    for module in prunable_modules(model).values():
        parametrize.register_parametrization(module, "weight", ApparentWeight(n, t_init))


def cost(model: nn.Module) -> torch.Tensor:
    """Eq. 9: C = sum over every reparametrized entry of h_t(w), the surrogate of the l0 norm."""
    total = 0.0
    for module in prunable_modules(model).values():
        p = module.parametrizations.weight
        total = total + h_t(p.original, p[0].t, p[0].n).sum()
    return total


def budget_loss(c: torch.Tensor, c_target: float, c_initial: float) -> torch.Tensor:
    """Eq. 7: ((C - C_target) / C_initial)^2."""
    return ((c - c_target) / c_initial) ** 2


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the state of the plain architecture, each reparametrized weight as its apparent
    weight (a copy: state_dict() tensors share storage with the live, still trained weights)."""
    out = {k: v.clone() for k, v in model.state_dict().items() if ".parametrizations." not in k}
    for name, module in prunable_modules(model).items():
        if parametrize.is_parametrized(module, "weight"):
            out[f"{name}.weight"] = module.weight.detach().clone()
    return out


@torch.no_grad()
def effective_pruning(model: nn.Module, rate: float) -> float:
    """Paper Section 3.1: the apparent weights become the plain weights (the reparametrization is
    removed), then the round(rate * N) smallest of them are set to zero; every other apparent weight
    is kept exactly. Returns the global threshold."""
    for module in prunable_modules(model).values():
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return zero_weights(model, magnitude_masks(model, rate, "global"))


DEAD_H = 1e-3  # a layer whose largest h_t(w) is below this is dead (every apparent weight ~0)


class Reparam:
    """Stages: `train` (reparametrized for `reparam`, plain otherwise), `finetune` (mag_ft: plain
    weights under torch.nn.utils.prune masks), `pruned` (after finish(): a plain network)."""
    Config = ReparamConfig
    metric_prefix = "reparam/"
    architecture = "model"
    variant_settings = ("variant",)  # the paper's method, or its MP / MP+FT baselines
    chance_rule_skips = ()

    def __init__(self, config: ReparamConfig, data: DataInfo, device: torch.device):
        self.cfg = config
        self.model = build_model(config.model, data.input_shape, data.num_classes, data.mean,
                                 data.std).to(device)
        # the plain twin that evaluates the apparent weights (and the weights before pruning)
        self.plain = copy.deepcopy(self.model)
        self.c_initial = float(sum(m.weight.numel() for m in prunable_modules(self.model).values()))
        # Table 2 reports 0.10 of the weights remaining at p = 90%: Table 1's "C_target = p x
        # C_initial" reads p as the kept fraction; with p the pruned fraction, C_target = (1 - p) C_0.
        self.c_target = (1.0 - config.pruning_rate) * self.c_initial
        if config.variant == "reparam":
            reparametrize(self.model, config.n, config.t_init)
            self.model.to(device)
        self.stage = "train"
        self.before: dict[str, torch.Tensor] | None = None  # plain weights before pruning
        self._before_accuracy: float | None = None  # their validation accuracy, once measured
        self._lr = config.lr
        self._new_procedure()

    def _new_procedure(self) -> None:
        """A fresh SGD, plateau scheduler and early-stopping record (each training procedure)."""
        temps = [p for n, p in self.model.named_parameters() if n.endswith(".rho")]
        rest = [p for n, p in self.model.named_parameters() if not n.endswith(".rho")]
        groups = [{"params": rest}] + ([{"params": temps, "weight_decay": 0.0}] if temps else [])
        self.optimizer = torch.optim.SGD(groups, lr=self.cfg.lr, momentum=self.cfg.momentum,
                                         weight_decay=self.cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="max", factor=self.cfg.plateau_factor,
            patience=self.cfg.plateau_patience)
        self.best = -1.0
        self.bad_epochs = 0
        self.last_loss = math.nan

    def schedule(self) -> list[tuple[str, int]]:
        return [("train", self.cfg.epochs),
                ("finetune", self.cfg.finetune_epochs if self.cfg.variant == "mag_ft" else 0)]

    @property
    def stopped(self) -> bool:
        return 0 < self.cfg.early_stop_patience <= self.bad_epochs

    def begin_epoch(self, phase: str, first: bool) -> bool:
        if first and phase == "finetune":  # mag_ft: prune the trained network, then fine-tune it masked
            self.before, self._before_accuracy = plain_state_dict(self.model), None
            apply_masks(self.model, magnitude_masks(self.model, self.cfg.pruning_rate, "global"))
            self.stage = "finetune"
            self._new_procedure()
        self._lr = self.optimizer.param_groups[0]["lr"]  # this epoch's, before end_epoch steps it
        if self.stopped:
            return False
        self.model.train()
        return True

    def _budget_terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        c = cost(self.model)
        return c, budget_loss(c, self.c_target, self.c_initial)

    def loss_terms(self, phase: str, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        ce = F.cross_entropy(self.model(x), y)
        if self.cfg.variant != "reparam" or self.stage != "train":
            return {"loss": ce, "train/ce": ce}
        _, budget = self._budget_terms()
        return {"loss": ce + self.cfg.budget_lambda * budget, "train/ce": ce,  # Eq. 8
                "train/budget": budget}

    def end_pass(self, phase: str, last: bool, terms: dict[str, float]) -> dict[str, float]:
        """Early-stopped epochs report the last trained epoch's loss; the last epoch prunes."""
        out = {"train/lr": self._lr, "reparam/early_stopped": float(not terms)}
        if terms:
            self.last_loss = terms["loss"]
        else:
            out["loss"] = self.last_loss
        if last:
            out.update(self.finish())
        return out

    @torch.no_grad()
    def _reparam_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        c, dead = 0.0, 0
        for name, module in prunable_modules(self.model).items():
            p = module.parametrizations.weight
            h = h_t(p.original, p[0].t, p[0].n)
            c += float(h.sum())  # Eq. 9, layer by layer
            out[f"reparam/t/{name}"] = float(p[0].t)
            # a layer whose every h_t(w) is ~0 passes nothing on, and h_t's gradient is ~0 there
            # too (Eq. 5's stop band): the network cannot learn its way back
            dead += float(h.max()) < DEAD_H
        out["reparam/budget_loss"] = float(budget_loss(torch.tensor(c), self.c_target, self.c_initial))
        out["reparam/surrogate_remaining"] = c / self.c_initial  # Table 2's fraction
        out["reparam/dead_layers"] = dead
        return out

    def finish(self) -> dict[str, float]:
        """After the last epoch: effective pruning to exactly round(p * N) zero weights (mag_ft:
        its masks made permanent); returns the surrogate metrics measured just before it."""
        if self.stage == "pruned":
            return {}
        out: dict[str, float] = {}
        if self.stage == "finetune":
            make_permanent(self.model)
        else:
            self.before, self._before_accuracy = plain_state_dict(self.model), None
            if self.cfg.variant == "reparam":
                out = self._reparam_metrics()
                threshold = effective_pruning(self.model, self.cfg.pruning_rate)
            else:  # mag, and mag_ft without fine-tuning epochs
                threshold = zero_weights(self.model, magnitude_masks(self.model,
                                                                     self.cfg.pruning_rate, "global"))
            out["reparam/pruning_threshold"] = threshold
        counts = kept_per_layer(self.model).values()
        achieved = sum(n - kept for kept, n in counts) / sum(n for _, n in counts)
        out["reparam/target_missed"] = float(abs(achieved - self.cfg.pruning_rate)
                                             > self.cfg.target_tolerance)
        self.stage = "pruned"
        self._new_procedure()  # over the plain parameters, so the state stays loadable
        return out

    def inference_model(self) -> nn.Module:
        if self.stage == "train" and self.cfg.variant == "reparam":
            self.plain.load_state_dict(plain_state_dict(self.model))  # the apparent network
            return self.plain
        return self.model

    def networks(self) -> dict[str, nn.Module]:
        return {"model": self.model, "plain": self.plain}  # plain: the apparent network, evaluated

    def probe_model(self) -> nn.Module | None:
        """MO-ASHA's rung probe (study.scheduler): a copy of the network being trained (reparam:
        the apparent one) with its round(p * N) smallest weights zeroed by one global threshold,
        as `finish` will prune it, without the training left; None after training (mag_ft's masks,
        or pruned): the network as it is is then at its target."""
        if self.stage != "train":
            return None
        probe = copy.deepcopy(self.inference_model())
        zero_weights(probe, magnitude_masks(probe, self.cfg.pruning_rate, "global"))
        return probe

    def model_before_pruning(self) -> nn.Module:
        """The plain network evaluated as 'before effective pruning'."""
        if self.before is None:
            return self.inference_model()
        self.plain.load_state_dict(self.before)
        return self.plain

    @torch.no_grad()
    def end_epoch(self, end: EpochEnd) -> dict[str, float]:
        """The accuracy before effective pruning (the trainable's own measure until pruning, then
        that of the weights kept aside, measured once), the surrogate metrics, and the paper's
        reduce-on-plateau and early stopping, which follow the validation accuracy of the network
        being trained (the apparent network, then the masked one; the paper: test accuracy)."""
        if self.before is None:
            before = end.val_accuracy  # the network just evaluated is the one before pruning
        else:
            if self._before_accuracy is None:  # the weights kept aside do not change
                self._before_accuracy = accuracy(self.model_before_pruning(), end.x, end.y,
                                                 end.eval_batch_size)
            before = self._before_accuracy
        out = {"reparam/val_accuracy_before_pruning": before}
        if self.stage == "pruned":
            return out
        if self.cfg.variant == "reparam":
            out.update(self._reparam_metrics())
            if out["reparam/dead_layers"]:
                out["dead_network"] = 1
        self.scheduler.step(end.val_accuracy)
        if end.val_accuracy > self.best:
            self.best, self.bad_epochs = end.val_accuracy, 0
        else:
            self.bad_epochs += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "stage": self.stage, "before": self.before,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "best": self.best, "bad_epochs": self.bad_epochs, "last_loss": self.last_loss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["stage"] != "train" and self.cfg.variant == "reparam":
            for module in prunable_modules(self.model).values():
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        if state["stage"] == "finetune":  # recreate the mask buffers, then load their values
            restore_mask_buffers(self.model)
        self.model.load_state_dict(state["model"])
        self.stage = state["stage"]
        self.before, self._before_accuracy = state["before"], None
        self._new_procedure()
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
        self.last_loss = state["last_loss"]
