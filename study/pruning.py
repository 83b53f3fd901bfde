"""Pruning mechanics every method shares: the prunable layers, keep-masks (by magnitude or at
random, over the whole network or per layer), and the masks' life: held through training, zeroed
into plain weights, made permanent, restored before a checkpoint loads, and counted.

A mask set is {layer name: keep-mask}, a bool tensor shaped as the layer's weight (True: kept).
Masks are computed from the weight the next forward pass uses (a masked layer's `weight_orig *
weight_mask`: torch.nn.utils.prune recomputes `weight` only at the next forward). Held masks are
torch.nn.utils.prune's, so a masked layer's state holds `weight_orig` and `weight_mask`, and
checkpoints load with `restore_mask_buffers` first.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import prune

from study.sparsity import PRUNABLE

Masks = dict[str, torch.Tensor]
# "global": one threshold over all layers together (dupont2021's effective pruning); "layer": each
# layer loses the same fraction (Keras' prune_low_magnitude, shneider2023)
Scope = Literal["global", "layer"]


def prunable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every conv and linear layer (study.sparsity.PRUNABLE), by name, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE)}


def _weight(module: nn.Module) -> torch.Tensor:
    """The layer's weight as its next forward pass uses it."""
    if hasattr(module, "weight_mask"):
        return (module.weight_orig * module.weight_mask).detach()
    return module.weight.detach()


@torch.no_grad()
def _keep_masks(model: nn.Module, rate: float, scope: Scope,
                drop_order: Callable[[torch.Tensor], torch.Tensor]) -> Masks:
    """Within each group of weights (all layers together, or each layer), drop exactly
    round(rate * entries) entries: the first in `drop_order` of the group's flattened weights."""
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate!r}")
    weights = {name: _weight(m) for name, m in prunable_modules(model).items()}
    groups = [list(weights)] if scope == "global" else [[name] for name in weights]
    masks: Masks = {}
    for names in groups:
        flat = torch.cat([weights[name].flatten() for name in names])
        drop = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
        drop[drop_order(flat)[:round(rate * flat.numel())]] = True
        for name, d in zip(names, drop.split([weights[name].numel() for name in names]), strict=True):
            masks[name] = ~d.view_as(weights[name])
    return masks


def magnitude_masks(model: nn.Module, rate: float, scope: Scope) -> Masks:
    """Keep-masks dropping the round(rate * N) smallest |w|: of all N conv/linear weights together
    (scope "global", one threshold), or of each layer's N (scope "layer", what
    torch.nn.utils.prune.l1_unstructured drops). Ties go by position (a stable sort), so the masks
    are deterministic."""
    return _keep_masks(model, rate, scope, lambda w: torch.sort(w.abs(), stable=True).indices)


def random_masks(model: nn.Module, rate: float, scope: Scope, generator: torch.Generator) -> Masks:
    """Keep-masks dropping round(rate * N) weights chosen uniformly at random (from `generator`,
    one permutation per group in layer order): of all N together (scope "global": layers lose
    different fractions), or exactly round(rate * n) of each layer's n (scope "layer")."""
    return _keep_masks(model, rate, scope, lambda w: torch.randperm(
        w.numel(), generator=generator, device=generator.device).to(w.device))


def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Hold the masks through training: each layer's weight becomes weight_orig * weight_mask
    (torch.nn.utils.prune.custom_from_mask), so optimizer steps never revive a masked weight."""
    modules = prunable_modules(model)
    for name, keep in masks.items():
        prune.custom_from_mask(modules[name], "weight", keep)


@torch.no_grad()
def zero_weights(model: nn.Module, masks: Masks) -> float:
    """Zero the masked-out weights of a plain (unmasked) model in place; returns the largest
    magnitude zeroed (a magnitude mask's threshold; 0 when nothing is)."""
    modules = prunable_modules(model)
    largest = 0.0
    for name, keep in masks.items():
        weight = modules[name].weight
        if not keep.all():
            largest = max(largest, float(weight[~keep].abs().max()))
        weight.masked_fill_(~keep, 0.0)
    return largest


@torch.no_grad()
def update_masks(model: nn.Module, masks: Masks) -> None:
    """Narrow the held masks of a masked model in place (keep = held keep AND new keep): pruned
    weights stay pruned. In place, because custom_from_mask again would stack every earlier mask in
    a PruningContainer, growing memory with each update."""
    modules = prunable_modules(model)
    for name, keep in masks.items():
        modules[name].weight_mask.mul_(keep)


def make_permanent(model: nn.Module) -> None:
    """Turn every held mask into zeros of a plain weight (torch.nn.utils.prune.remove): the layer's
    state is a `weight` again, first among its parameters as in a layer never masked (prune.remove
    registers it after `bias`, and the order changes the saved bytes: `compressed_bytes`)."""
    for module in prunable_modules(model).values():
        if hasattr(module, "weight_mask"):
            prune.remove(module, "weight")
            params = module._parameters
            for key in [k for k in params if k != "weight"]:
                params[key] = params.pop(key)


def clone(model: nn.Module) -> nn.Module:
    """A deep copy of a model whose masks may be held. torch.nn.utils.prune keeps a masked layer's
    `weight` as the product computed at its last forward, with its graph, which deepcopy refuses;
    the copy's is recomputed from its own weight_orig and weight_mask."""
    masked = [m for m in prunable_modules(model).values() if hasattr(m, "weight_mask")]
    out = copy.deepcopy(model, {id(m.weight): None for m in masked})
    with torch.no_grad():
        for m in prunable_modules(out).values():
            if hasattr(m, "weight_mask"):
                m.weight = m.weight_orig * m.weight_mask
    return out


def restore_mask_buffers(model: nn.Module) -> None:
    """Give every conv/linear layer a `weight_orig` and a `weight_mask` (all kept) so that the
    state of a masked model loads into it (torch.nn.utils.prune.identity); the loaded masks then
    hold as they did."""
    for module in prunable_modules(model).values():
        prune.identity(module, "weight")


def kept_per_layer(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(nonzero, total) weights of each conv/linear layer, counted from the weights the forward
    pass uses, whatever masks or plain zeros made them."""
    counts = {}
    for name, module in prunable_modules(model).items():
        weight = _weight(module)
        counts[name] = (int(torch.count_nonzero(weight)), weight.numel())
    return counts
