"""control: a network trained from scratch under a fixed mask, or a smaller dense network: the
sanity checks of a pruned network that `prunestudy sanity` runs (study/sanity.py).

Frankle et al. 2021 ("Pruning neural networks at initialization: why are we missing the mark?")
ask whether a pruning method's result depends on *which* weights it kept or only on how many each
layer kept: they retrain its mask with the weights re-initialized ("reinitialize") and the mask
shuffled within each layer ("layerwise shuffle", the same density per layer). Liu et al. 2019
("Rethinking the value of network pruning") ask the same of structured pruning: the smaller dense
network trained from scratch for the same epochs ("Scratch-E"). This method trains any of them:

  masks ''         no mask: the network of `model` (with `widths`, a smaller dense one: Liu et al.)
  masks PATH       a keep-mask per layer, held through training (Frankle et al.'s reinitialize:
                   fresh weights from the seed, the trial's mask)
  + shuffle        each layer's mask permuted first, with the trial's seed (their layerwise
                   shuffle: exactly the same number of kept weights in every layer)

The network's weights are always a fresh initialization from the trial's seed; the mask is held
for all `epochs` (study.pruning.apply_masks) and made permanent after the last. Sizes are counted
against the network as built: with `widths`, the smaller network itself (its sparsity is ~0:
compare its accuracy, not its sparsity). Each epoch it reports `control/kept_weights/<layer>`: the
number of nonzero weights of each conv/linear layer, counted from the tensors (a count, where
magnitude's `magnitude/kept/<layer>` is a fraction).
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from study.config import ConfigError, setting
from study.methods.base import DataInfo, EpochEnd, make_optimizer
from study.models import MODELS, build_model, bvae_cnn
from study.pruning import (
    Masks,
    apply_masks,
    hidden_layers,
    kept_per_layer,
    make_permanent,
    prunable_modules,
    resize_hidden,
)

# report key prefix: the number (a count, not a fraction as magnitude/kept/) of nonzero weights of
# each conv/linear layer, `control/kept_weights/<layer>`
KEPT_WEIGHTS = "control/kept_weights/"


def parse_widths(text: str) -> dict[str, int]:
    """'head.0=25,head.2=15' -> {'head.0': 25, 'head.2': 15}; '' -> {}."""
    widths = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit() or int(value) < 1 or name.strip() in widths:
            raise ConfigError(f"setting 'widths' must be comma-separated LAYER=WIDTH items with "
                              f"widths >= 1, each layer once (e.g. 'head.0=25,head.2=15'), got "
                              f"{text!r}")
        widths[name.strip()] = int(value)
    return widths


@dataclass(frozen=True)
class ControlConfig:
    model: str = setting("lenet300", "architecture (study.models): the pruned trial's",
                         choices=tuple(MODELS))
    masks: str = setting("", "a .pt file of {layer name: bool keep-mask} in the network's shapes "
                         "(written by `prunestudy sanity`; loaded weights-only), held through "
                         "training; '': no mask")
    shuffle: bool = setting(False, "permute each layer's mask with the trial's seed before training "
                            "(Frankle et al. 2021's layerwise shuffle: the same kept count per "
                            "layer); needs masks")
    widths: str = setting("", "hidden widths of the head, e.g. 'head.0=25,head.2=15' (Liu et al. "
                          "2019's smaller dense network, trained from scratch); '': the model's own")
    latent_dim: int = setting(16, "bvae_cnn only: its posterior mean's size (beta_vae's setting of "
                              "the name: the control of a beta_vae trial takes its)", low=1, high=1024)
    encoder_hidden: int = setting(0, "bvae_cnn only: its encoder's dense units; 0: paper-sized for "
                                  "the input (beta_vae's setting of the name)", low=0)
    epochs: int = setting(55, "training epochs: the pruned trial's whole budget (Liu et al.'s "
                          "Scratch-E; Frankle & Carbin 2019's LeNet-300-100: ~55 epochs)", low=1)
    optimizer: str = setting("adam", "adam or sgd, constant learning rate (`prunestudy sanity` "
                             "takes the trial's)", choices=("adam", "sgd"))
    lr: float = setting(1.2e-3, "learning rate (Frankle & Carbin 2019, LeNet-300-100 with Adam: "
                        "1.2e-3)", low=1e-7, high=10.0)
    momentum: float = setting(0.9, "SGD momentum (sgd only)", low=0.0, high=0.999)
    weight_decay: float = setting(0.0, "L2 penalty", low=0.0)

    def __post_init__(self) -> None:
        parse_widths(self.widths)
        if self.shuffle and not self.masks:
            raise ConfigError("setting 'shuffle' = True needs 'masks': there is no mask to shuffle")


def build_network(cfg: ControlConfig, data: DataInfo) -> nn.Module:
    """The network of `model` with the hidden `widths`, freshly initialized from the global
    generator (the trainable has seeded it with the trial's seed)."""
    if cfg.model == "bvae_cnn":  # beta_vae's network at a beta_vae trial's sizes
        model = bvae_cnn(data.input_shape, data.num_classes, data.mean, data.std,
                         latent_dim=cfg.latent_dim, hidden=cfg.encoder_hidden or None)
    else:
        model = build_model(cfg.model, data.input_shape, data.num_classes, data.mean, data.std)
    widths = parse_widths(cfg.widths)
    if widths:
        own = {name: model.head[i].out_features for name, i, _ in hidden_layers(model.head)}
        unknown = sorted(set(widths) - set(own))
        if unknown:
            raise ConfigError(f"setting 'widths' names {unknown[0]!r}, not a hidden layer of "
                              f"{cfg.model!r}; its hidden layers: {own}")
        resize_hidden(model.head, {**own, **widths})
        for layer in model.head:  # resize_hidden leaves every head Linear uninitialized
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()  # PyTorch's default init for the new fan-ins (Liu et al.)
    return model


def load_masks(cfg: ControlConfig, model: nn.Module) -> Masks:
    """The keep-masks of `masks`, checked against the network's layers (weights-only: no code runs)."""
    try:
        masks = torch.load(cfg.masks, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError) as e:
        raise ConfigError(f"setting 'masks' = {cfg.masks!r}: cannot load it "
                          f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    layers = prunable_modules(model)
    if not isinstance(masks, dict):
        raise ConfigError(f"setting 'masks' = {cfg.masks!r} must hold a dict of layer name -> bool "
                          "tensor")
    for name, keep in masks.items():
        if name not in layers:
            raise ConfigError(f"setting 'masks' = {cfg.masks!r}: {name!r} is not a conv/linear "
                              f"layer of {cfg.model!r}; its layers: {', '.join(layers)}")
        if not (torch.is_tensor(keep) and keep.dtype == torch.bool
                and keep.shape == layers[name].weight.shape):
            raise ConfigError(f"setting 'masks' = {cfg.masks!r}: {name!r} must be a bool tensor of "
                              f"shape {tuple(layers[name].weight.shape)}")
    return masks


def shuffled(masks: Masks, generator: torch.Generator) -> Masks:
    """Each layer's mask permuted uniformly at random (Frankle et al. 2021's layerwise shuffle):
    the same number of kept weights per layer, in other places."""
    return {name: keep.flatten()[torch.randperm(keep.numel(), generator=generator)].view_as(keep)
            for name, keep in masks.items()}


class Control:
    """Stages: `dense` (no mask), `masked` (masks held), `final` (made permanent after training)."""
    Config = ControlConfig
    metric_prefix = "control/"
    architecture = "model"
    # shuffle: a random mask of the trial's layer densities is another control than the trial's
    # own mask (Frankle et al. 2021 report them apart); widths: another network, whose sizes are
    # counted against itself (never on one front with the model's own widths). `masks` is not: each
    # mask file is a point of the same procedure
    variant_settings = ("shuffle", "widths")
    chance_rule_skips = ()

    def __init__(self, config: ControlConfig, data: DataInfo, device: torch.device):
        self.cfg = config
        self.model = build_network(config, data).to(device)
        self.stage = "dense"
        if config.masks:
            masks = load_masks(config, self.model)
            if config.shuffle:  # drawn after the weights, from the generator the trial seeded
                masks = shuffled(masks, torch.Generator().manual_seed(int(torch.randint(2**62, ()))))
            apply_masks(self.model, {name: keep.to(device) for name, keep in masks.items()})
            self.stage = "masked"
        params = self.model.parameters()  # after masking: weight_orig, the objects kept to the end
        self.optimizer = make_optimizer(config.optimizer, params, config.lr, config.momentum,
                                        config.weight_decay)

    def schedule(self) -> list[tuple[str, int]]:
        return [("train", self.cfg.epochs)]

    def begin_epoch(self, phase: str, first: bool) -> bool:
        self.model.train()
        return True

    def loss_terms(self, phase: str, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": F.cross_entropy(self.model(x), y)}

    def end_pass(self, phase: str, last: bool, terms: dict[str, float]) -> dict[str, float]:
        if last:
            make_permanent(self.model)  # the same parameter objects: the optimizer still holds them
            self.stage = "final"
        return {}

    def inference_model(self) -> nn.Module:
        return self.model

    def networks(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def probe_model(self) -> nn.Module | None:
        return None  # its network is at its final mask from the first step

    def end_epoch(self, end: EpochEnd) -> dict[str, float]:
        # kept weights per layer, counted from the tensors: `prunestudy sanity` checks they are the
        # pruned trial's
        return {f"{KEPT_WEIGHTS}{name}": kept for name, (kept, _) in kept_per_layer(self.model).items()}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "stage": self.stage}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["stage"] == "final":  # a plain network with zeros: drop the masks built in __init__
            make_permanent(self.model)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.stage = state["stage"]
