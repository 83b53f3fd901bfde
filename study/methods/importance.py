"""importance: neural importance-based train-time pruning with real neuron removal (reddy, Alg. 1).

Neurons are the outputs of the hidden Linear layers of a model's head (every head Linear but the
last; the first one's *input*, e.g. conv features, is never pruned), so it runs on every model
whose head has them (`FITTING_MODELS`). Schedule, within a total budget of `epochs`:

    warmup (warmup_epochs)  plain training ("until the network attains initial maturity")
    round1 (1 + recovery)   epoch 1 trains while measuring every sample's contributions
                            (Alg. 1 steps 2-8), then ranks and removes the bottom neurons of each
                            layer (steps 9-18); the other epochs recover (step 20)
    round2 ... roundR       the same, until `target_fraction` of each layer's neurons is gone

The budget: the R rounds follow from prune_fraction and target_fraction (below), and the
epochs - warmup_epochs - R epochs left recover. Alg. 1 recovers after every removal (step 20 is
inside the loop), so they are spread over the rounds: each round recovers
(epochs - warmup_epochs - R) // R epochs, and the last (epochs - warmup_epochs - R) % R rounds
one more (the later rounds cut a thinner network). Every trial of a study thus trains exactly
`epochs` epochs, whatever its fractions; a schedule that does not fit is a ConfigError. Without a
round (target_fraction 0) all `epochs` train plain (warmup).

A round's first epoch reports the accuracy just after its removal (`importance/just_pruned` = 1,
with `importance/val_accuracy_before_pruning` beside it) and its last epoch the accuracy after its
recovery (`importance/recovered` = 1; both flags at once in a round without recovery epochs).

Widths: each round removes round(p * w) of a layer's w remaining neurons (p = prune_fraction; at
least 1), never going below keep = max(1, n0 - round(t * n0)) of its n0 original neurons
(t = target_fraction); rounds go on until every layer holds exactly keep, so each round removes
neurons and the last lands on the target (layers that get there first stop shrinking). Python's
round (halves to even) throughout. Variant `random` (the paper's Fig. 1 baseline) removes as many
neurons, chosen uniformly at random, and measures nothing.

Removal is real (study.pruning.remove_neurons): the layer and the next one are rebuilt smaller
with the surviving weights copied, the optimizer is rebuilt and its per-parameter state (Adam's
moments, SGD's momentum) sliced the same way, so parameter and FLOP counts fall; checkpoints
record the widths and restore rebuilds the shapes (study.pruning.resize_hidden) before loading
tensors.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from study.config import ConfigError, setting
from study.methods.base import DataInfo, EpochEnd, make_optimizer
from study.metrics import accuracy
from study.models import MODELS, build_model
from study.pruning import OptimizerState, hidden_layers, remove_neurons, resize_hidden

# Elements of one chunk of the (samples x next neurons x neurons) ratio tensor: 2^24 floats = 64 MiB.
# The MLP 784-50-30-10 fits a whole batch (128 x 30 x 50); the CIFAR CNN's 2048 -> 1024 layer
# (2M ratios per sample) is measured 8 samples at a time.
CHUNK_ELEMENTS = 1 << 24


def _has_hidden_layers(model: str) -> bool:
    """Whether the model's head has a hidden Linear layer, i.e. neurons to remove: built on the
    meta device (no memory, no random numbers drawn), at a 32x32 colour input every model takes
    (which layers a head has does not depend on the input)."""
    with torch.device("meta"):
        net = MODELS[model]((3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3)
    return bool(hidden_layers(net.head))


# the models it runs on, read from the models themselves
FITTING_MODELS = tuple(name for name in MODELS if _has_hidden_layers(name))


@dataclass(frozen=True)
class ImportanceConfig:
    variant: str = setting("rank", "rank: remove the lowest lambda1*C_avg + lambda2*C_max; random: "
                           "remove as many neurons chosen at random (the paper's Fig. 1 baseline)",
                           choices=("rank", "random"))
    model: str = setting("mlp50_30", "architecture (study.models); any whose head has hidden linear "
                         "layers; the paper's: mlp50_30 (MNIST), reddy_cnn (CIFAR)",
                         choices=FITTING_MODELS)
    lambda1: float = setting(0.5, "weight of C_avg (Eq. 1); the paper's balanced start is 0.5",
                             low=0.0, high=1.0)
    lambda2: float = setting(0.5, "weight of C_max (Eq. 2); the paper's balanced start is 0.5",
                             low=0.0, high=1.0)
    mix: float = setting(-1.0, "the ranking's one degree of freedom, C_max's share: lambda1 = 1 - mix, "
                         "lambda2 = mix (the paper's 'lambda1 near 1' ... 'lambda2 near 1'), "
                         "replacing lambda1 and lambda2; -1: not used, lambda1 and lambda2 as given. "
                         "C_avg (a neuron's mean share, 1/N on average) is 15-30x smaller than C_max, "
                         "so the ranking moves between pure C_avg and pure C_max for mix in about "
                         "[1e-4, 0.7] and is C_max's from about 0.1 (docs/benchmarks.md): the search "
                         "space searches it on a log scale", low=-1.0, high=1.0)
    epochs: int = setting(35, "the trial's TOTAL epochs, whatever its fractions (fronts compare equal "
                          "budgets): warmup_epochs, then one removal epoch per round, the rest "
                          "recovery spread over the rounds; must cover warmup_epochs + rounds. The "
                          "paper gives none; 35 is 2 recovery epochs per round at the defaults",
                          low=1)
    warmup_epochs: int = setting(2, "epochs of plain training before the first round (the paper: "
                                 "'a few iterations until initial maturity')", low=0)
    prune_fraction: float = setting(0.1, "fraction of a layer's remaining neurons removed per round "
                                    "(the paper's VAE rounds drop 8-10%)", low=0.01, high=0.99)
    target_fraction: float = setting(0.68, "fraction of each layer's original neurons removed by the "
                                     "last round (paper, Table 1 MNIST: 68%; 0: no pruning)",
                                     low=0.0, high=0.99)
    lr: float = setting(1e-3, "learning rate (the paper gives none; Adam's usual 1e-3)",
                        low=1e-7, high=1.0)
    optimizer: str = setting("adam", "optimizer; its state survives removals, sliced",
                             choices=("adam", "sgd"))
    momentum: float = setting(0.9, "SGD momentum (sgd only)", low=0.0, high=0.999)
    eps: float = setting(1e-12, "floor of Eq. 1's denominator sum_i |w_ij a_if|: all-zero inputs "
                         "(every ReLU off) give ratios 0, never 0/0",
                         low=1e-30, high=1e-3)

    def __post_init__(self) -> None:
        if -1.0 < self.mix < 0.0:
            raise ConfigError(f"setting 'mix' = {self.mix} must be in [0, 1] (or -1: not used)")
        if self.mix < 0 and self.variant == "rank" and self.lambda1 == self.lambda2 == 0.0:
            raise ConfigError("settings 'lambda1' and 'lambda2' are both 0: every neuron scores 0 "
                              "and the ranking is all ties (set 'mix', or either weight above 0)")

    def weights(self) -> tuple[float, float]:
        """(lambda1, lambda2) of the aggregate contribution: from `mix` when it is set."""
        return (1.0 - self.mix, self.mix) if self.mix >= 0 else (self.lambda1, self.lambda2)


# --- Eq. 1 and Eq. 2 --------------------------------------------------------------------------

def contribution_ratios(a: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """Eq. 1 for inputs a (F x N, the layer's activations) into a Linear of weight w (M x N):
    ratio[f, j, k] = |w_jk a_fk| / sum_i |w_ji a_fi|, shape F x M x N.

    Guard: the paper's signed ratio w a / sum(w a) explodes when the pre-activation sum is near zero
    and flips sign when it is negative, so it ranks nothing. Absolute values make every ratio a
    share in [0, 1] of the next neuron's input mass (the shares of one (f, j) sum to 1). The
    denominator is floored at `eps`, so all-zero inputs (every ReLU off) give ratios 0, never NaN.
    """
    a, w = a.detach().float().abs(), w.detach().float().abs()
    denom = (a @ w.T).clamp_min(eps)  # F x M: sum_i |w_ji a_fi|
    return a[:, None, :] * w[None] / denom[:, :, None]


class ContributionMeter:
    """Eq. 1's ratios of one layer's neurons, accumulated over every sample of an epoch into
    C_avg (Eq. 1: the mean over samples f and next-layer neurons j) and C_max (Eq. 2: the max)."""

    def __init__(self, neurons: int, eps: float, device: torch.device,
                 chunk_elements: int = CHUNK_ELEMENTS):
        self.eps = eps
        self.chunk_elements = chunk_elements
        self.total = torch.zeros(neurons, dtype=torch.float64, device=device)  # sum over f, j
        self.peak = torch.zeros(neurons, device=device)  # max over f, j (ratios are >= 0)
        self.pairs = 0  # (f, j) pairs seen: F * M

    @torch.no_grad()
    def update(self, a: torch.Tensor, w: torch.Tensor) -> None:
        """Add the samples of one forward pass: a (B x N) entering a Linear of weight w (M x N)."""
        a = a.flatten(1)
        step = max(1, self.chunk_elements // w.numel())  # chunk the batch, stay vectorized
        for s in range(0, len(a), step):
            ratio = contribution_ratios(a[s:s + step], w, self.eps)
            self.total += ratio.sum(dim=(0, 1)).double()
            self.peak = torch.maximum(self.peak, ratio.amax(dim=(0, 1)))
        self.pairs += len(a) * w.shape[0]

    def c_avg(self) -> torch.Tensor:
        return (self.total / max(self.pairs, 1)).float()  # Eq. 1: 1/(F*M) sum_f sum_j ratio

    def c_max(self) -> torch.Tensor:
        return self.peak.clone()  # Eq. 2

    def scores(self, lambda1: float, lambda2: float) -> torch.Tensor:
        return lambda1 * self.c_avg() + lambda2 * self.c_max()  # the aggregate contribution


# --- measuring the head's hidden layers --------------------------------------------------------

@contextmanager
def measuring(head: nn.Sequential, eps: float,
              chunk_elements: int = CHUNK_ELEMENTS) -> Iterator[dict[str, ContributionMeter]]:
    """Meters fed by forward pre-hooks on each next Linear (Alg. 1 steps 2-8): every forward pass
    inside the block adds its samples' activations, with the weights of that moment."""
    meters: dict[str, ContributionMeter] = {}
    handles = []
    for name, i, j in hidden_layers(head):
        meter = ContributionMeter(head[i].out_features, eps, head[i].weight.device, chunk_elements)
        meters[name] = meter
        handles.append(head[j].register_forward_pre_hook(
            lambda module, args, meter=meter: meter.update(args[0], module.weight)))
    try:
        yield meters
    finally:
        for h in handles:
            h.remove()


# --- the schedule's arithmetic ---------------------------------------------------------------

def planned_widths(original: int, prune_fraction: float, target_fraction: float) -> list[int]:
    """A layer's widths after rounds 0 (the original), 1, ..., until it keeps
    max(1, original - round(target_fraction * original)): each round removes
    max(1, round(prune_fraction * remaining)) neurons, the last only down to that."""
    keep = max(1, original - round(target_fraction * original))  # at least one neuron survives
    widths = [original]
    while widths[-1] > keep:
        width = widths[-1]
        widths.append(max(keep, width - max(1, round(prune_fraction * width))))
    return widths


class Importance:
    Config = ImportanceConfig
    metric_prefix = "importance/"
    architecture = "model"
    variant_settings = ("variant",)  # ranked, or the random-removal baseline
    chance_rule_skips = ()

    def __init__(self, config: ImportanceConfig, data: DataInfo, device: torch.device):
        self.cfg = config
        self.device = device
        self.model = build_model(config.model, data.input_shape, data.num_classes, data.mean,
                                 data.std).to(device)
        self.original = {name: self.model.head[i].out_features
                         for name, i, _ in hidden_layers(self.model.head)}
        self.plan = {name: planned_widths(n, config.prune_fraction, config.target_fraction)
                     for name, n in self.original.items()}
        self.rounds = max(len(widths) - 1 for widths in self.plan.values())  # until all hit keep
        needed = config.warmup_epochs + self.rounds
        if needed > config.epochs:
            raise ConfigError(f"importance: warmup_epochs {config.warmup_epochs} + {self.rounds} "
                              f"rounds (prune_fraction {config.prune_fraction} to target_fraction "
                              f"{config.target_fraction} on {config.model}) = {needed} epochs exceed "
                              f"setting 'epochs' = {config.epochs}")
        self.rounds_done = 0
        self.optimizer = self._new_optimizer()
        self._round = 0  # set by begin_epoch on a round's first epoch: it measures, then removes
        self._measuring = ExitStack()  # the measuring hooks, while such an epoch trains
        self._meters: dict[str, ContributionMeter] = {}
        self._just_pruned = False
        self._unpruned: nn.Module | None = None  # the model just before this epoch's removal

    def schedule(self) -> list[tuple[str, int]]:
        """`epochs` in all: the warm-up, then each round's removal epoch and its share of the
        recovery epochs left (the module docstring's rule; Alg. 1 step 20 after every removal)."""
        if not self.rounds:
            return [("warmup", self.cfg.epochs)]
        recovery, extra = divmod(self.cfg.epochs - self.cfg.warmup_epochs - self.rounds, self.rounds)
        return [("warmup", self.cfg.warmup_epochs)] + [
            (f"round{r}", 1 + recovery + (r > self.rounds - extra)) for r in range(1, self.rounds + 1)]

    def _new_optimizer(self) -> torch.optim.Optimizer:
        return make_optimizer(self.cfg.optimizer, self.model.parameters(), self.cfg.lr,
                              self.cfg.momentum)

    def widths(self) -> dict[str, int]:
        return {name: self.model.head[i].out_features for name, i, _ in hidden_layers(self.model.head)}

    def begin_epoch(self, phase: str, first: bool) -> bool:
        """A round's first epoch measures every sample's contributions while it trains."""
        self._just_pruned, self._unpruned = False, None
        self._round = int(phase[len("round"):]) if first and phase.startswith("round") else 0
        if self._round and self.cfg.variant == "rank":
            self._meters = self._measuring.enter_context(measuring(self.model.head, self.cfg.eps))
        self.model.train()
        return True

    def loss_terms(self, phase: str, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": F.cross_entropy(self.model(x), y)}

    def end_pass(self, phase: str, last: bool, terms: dict[str, float]) -> dict[str, float]:
        """After a round's measuring epoch, its removal (the hooks are gone first)."""
        self._measuring.close()
        if self._round:
            self._remove(self._round, self._meters)
        self._round, self._meters = 0, {}
        return {}

    def _remove(self, rnd: int, meters: dict[str, ContributionMeter]) -> None:
        """Alg. 1 steps 9-18: rank each layer's neurons by lambda1*C_avg + lambda2*C_max (or draw
        them at random), keep the top of each to its planned width, rebuild, carry the optimizer."""
        self._unpruned = copy.deepcopy(self.model)
        head = self.model.head
        state: OptimizerState = dict(self.optimizer.state)
        # every layer's choice comes from the same measuring epoch, taken before any rebuild
        keeps = {}
        for name, i, _ in hidden_layers(head):
            width = head[i].out_features
            target = self.plan[name][min(rnd, len(self.plan[name]) - 1)]
            if target >= width:
                continue
            if self.cfg.variant == "rank":  # Alg. 1 steps 11, 15: the bottom ones go, ties by index
                order = torch.argsort(meters[name].scores(*self.cfg.weights()),
                                      descending=True, stable=True)
            else:
                order = torch.randperm(width)
            keeps[i] = order[:target].sort().values
        for i, keep in keeps.items():  # Alg. 1 steps 17-18: the smaller layers, surviving weights
            remove_neurons(head, i, keep, state)
        self.optimizer = self._new_optimizer()
        for p in self.model.parameters():
            if p in state:
                self.optimizer.state[p] = state[p]
        self.rounds_done = rnd
        self._just_pruned = True

    def inference_model(self) -> nn.Module:
        return self.model

    def networks(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def probe_model(self) -> nn.Module | None:
        """None: which neurons go is measured round by round as it trains, so no copy can be cut
        to the final widths ahead of time; a rung measures its network as it is."""
        return None

    @torch.no_grad()
    def end_epoch(self, end: EpochEnd) -> dict[str, float]:
        widths = self.widths()
        out: dict[str, float] = {f"importance/neurons/{k}": v for k, v in widths.items()}
        out["importance/neurons_removed"] = 1 - sum(widths.values()) / sum(self.original.values())
        out["importance/round"] = self.rounds_done
        out["importance/just_pruned"] = float(self._just_pruned)
        # a round's last epoch: the one before the next removal, or the trial's last
        out["importance/recovered"] = float(end.phase_end and end.phase.startswith("round"))
        if self._unpruned is not None:  # the same evaluation as val_accuracy, before the removal
            out["importance/val_accuracy_before_pruning"] = accuracy(self._unpruned, end.x, end.y,
                                                                        end.eval_batch_size)
            self._unpruned = None
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "widths": self.widths(), "rounds_done": self.rounds_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        resize_hidden(self.model.head, state["widths"])  # shapes first, then the tensors
        self.model.load_state_dict(state["model"])
        self.optimizer = self._new_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.rounds_done = state["rounds_done"]
        self._round, self._just_pruned, self._unpruned = 0, False, None
