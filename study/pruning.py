"""Pruning mechanics every method shares: the prunable layers, keep-masks (by magnitude or at
random, over the whole network or per layer), and the masks' life: held through training, zeroed
into plain weights, made permanent, restored before a checkpoint loads, and counted. Structured
pruning's counterpart: the hidden Linear layers of a classifier's head (study.models.FeaturesHead),
whose neurons are removed for real (`hidden_layers`, `remove_neurons`), and their widths given to
a fresh network, the smaller dense one (`resize_hidden`).

A mask set is {layer name: keep-mask}, a bool tensor shaped as the layer's weight (True: kept).
Masks are computed from the weight the next forward pass uses (a masked layer's `weight_orig *
weight_mask`: torch.nn.utils.prune recomputes `weight` only at the next forward). Held masks are
torch.nn.utils.prune's, so a masked layer's state holds `weight_orig` and `weight_mask`, and
checkpoints load with `restore_mask_buffers` first.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Literal

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


# --- structured: the hidden Linear layers of a head, their neurons removed for real --------------

def hidden_layers(head: nn.Sequential) -> list[tuple[str, int, int]]:
    """(name, index, index of the next Linear) of every hidden Linear layer of a FeaturesHead's
    head (every Linear but the last): the layers whose output neurons can be removed. Names are
    the model's ("head.<index>"), as in its state_dict."""
    linear = [i for i, m in enumerate(head) if isinstance(m, nn.Linear)]
    return [(f"head.{i}", i, j) for i, j in zip(linear[:-1], linear[1:], strict=True)]


def _empty_linear(n_in: int, n_out: int, like: nn.Linear) -> nn.Linear:
    """A Linear of the given shape on `like`'s device and dtype, uninitialized (values are copied or
    loaded into it next; building on 'meta' draws no random numbers)."""
    layer = nn.Linear(n_in, n_out, bias=like.bias is not None, device="meta", dtype=like.weight.dtype)
    return layer.to_empty(device=like.weight.device)


def resize_hidden(head: nn.Sequential, widths: dict[str, int]) -> None:
    """Give the hidden layers (`hidden_layers`, by name) these widths, uninitialized: the smaller
    dense network a checkpoint's tensors of a structurally pruned model load into. Draws no random
    numbers."""
    for name, i, j in hidden_layers(head):
        head[i] = _empty_linear(head[i].in_features, widths[name], head[i])
        head[j] = _empty_linear(widths[name], head[j].out_features, head[j])


OptimizerState = dict[torch.Tensor, dict[str, Any]]


def remove_neurons(head: nn.Sequential, index: int, keep: torch.Tensor,
                   state: OptimizerState | None = None) -> None:
    """Rebuild head[index] with only the neurons `keep` (sorted indices) and the next Linear with
    only their input columns, copying the surviving weights. `state` (parameter -> optimizer state)
    is re-keyed to the new parameters, each tensor of a parameter's shape sliced the same way
    (Adam's exp_avg / exp_avg_sq, SGD's momentum_buffer); others (Adam's step) kept."""
    nxt = next(j for j, m in enumerate(head) if j > index and isinstance(m, nn.Linear))
    layer, after = head[index], head[nxt]
    new_layer = _empty_linear(layer.in_features, len(keep), layer)
    new_after = _empty_linear(len(keep), after.out_features, after)
    keep = keep.to(layer.weight.device)
    rows: Callable[[torch.Tensor], torch.Tensor] = lambda t: t[keep]  # noqa: E731
    cols: Callable[[torch.Tensor], torch.Tensor] = lambda t: t[:, keep]  # noqa: E731
    pairs = [(layer.weight, new_layer.weight, rows), (layer.bias, new_layer.bias, rows),
             (after.weight, new_after.weight, cols), (after.bias, new_after.bias, lambda t: t)]
    with torch.no_grad():
        for old, new, cut in pairs:
            if old is None:
                continue
            new.copy_(cut(old))
            if state is not None and old in state:
                state[new] = {k: cut(v).clone() if torch.is_tensor(v) and v.shape == old.shape else v
                              for k, v in state.pop(old).items()}
    head[index], head[nxt] = new_layer, new_after
