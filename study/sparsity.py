"""Independent accounting of a model's size, counted from its tensors alone.

Nothing here asks a method what it pruned: zeros are counted in the effective weights (for
torch.nn.utils.prune, `weight = weight_orig * weight_mask`), and removed neurons show up as a
smaller parameter count against the dense architecture's, recorded before any pruning.
"""
from __future__ import annotations

import gzip
import io
from dataclasses import dataclass

import torch
from torch import nn

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.ConvTranspose2d)


def effective_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter as the forward pass sees it: pruned tensors with their masks applied."""
    out = {}
    for mod_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if name.endswith("_orig"):  # torch.nn.utils.prune: <name> = <name>_orig * <name>_mask,
                name = name[:-len("_orig")]  # recomputed only at the next forward: use the source
                param = param * getattr(module, f"{name}_mask")
            out[f"{mod_name}.{name}" if mod_name else name] = param.detach()
    return out


def prunable_weights(model: nn.Module, params: dict[str, torch.Tensor] | None = None
                     ) -> dict[str, torch.Tensor]:
    """The effective weight of every conv and linear layer (biases excluded); `params`: the
    model's effective_parameters when already at hand."""
    prunable = {f"{n}.weight" if n else "weight" for n, m in model.named_modules()
                if isinstance(m, PRUNABLE)}
    params = effective_parameters(model) if params is None else params
    return {k: v for k, v in params.items() if k in prunable}


def macs_per_sample(model: nn.Module, input_shape: tuple[int, ...], nonzero_only: bool) -> int:
    """Multiply-accumulates of conv and linear layers for one input; with nonzero_only, a zero weight
    costs nothing (what a sparse kernel would do), so pruned and removed weights both save work."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        w = module.weight
        n = int(torch.count_nonzero(w)) if nonzero_only else w.numel()
        # conv: every weight is used once per output position; linear: once per sample
        positions = output[0, 0].numel() if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d,
                                                               nn.ConvTranspose2d)) else 1
        total += n * positions

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, PRUNABLE)]
    device = next(model.parameters()).device
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


def compressed_bytes(params: dict[str, torch.Tensor]) -> int:
    """gzip size of the saved effective weights (float32), the size measure of shneider2023 Table I."""
    buf = io.BytesIO()
    torch.save({k: v.float().cpu().contiguous() for k, v in params.items()}, buf)
    return len(gzip.compress(buf.getvalue(), compresslevel=6))


@dataclass(frozen=True)
class DenseReference:
    """Counts of the dense architecture, taken once before any pruning or neuron removal."""
    params: int
    prunable_params: int
    flops: int

    @classmethod
    def of(cls, model: nn.Module, input_shape: tuple[int, ...]) -> DenseReference:
        params = effective_parameters(model)
        return cls(params=sum(t.numel() for t in params.values()),
                   prunable_params=sum(t.numel() for t in prunable_weights(model, params).values()),
                   flops=2 * macs_per_sample(model, input_shape, nonzero_only=False))


def nonzero_count(params: dict[str, torch.Tensor]) -> int:
    return sum(int(torch.count_nonzero(t)) for t in params.values())


def sparsity(model: nn.Module, dense: DenseReference) -> float:
    """1 - nonzero parameters of `model` / parameters of the dense architecture."""
    return 1.0 - nonzero_count(effective_parameters(model)) / dense.params


def size_metrics(model: nn.Module, dense: DenseReference, input_shape: tuple[int, ...]) -> dict[str, float]:
    """DESIGN.md's size vocabulary. sparsity = 1 - nonzero parameters / dense parameters; the dense
    counts beside, so that analysis can tell two trials' dense architectures apart."""
    params = effective_parameters(model)  # once: every count below reads these tensors
    nonzero = nonzero_count(params)
    prunable_nonzero = nonzero_count(prunable_weights(model, params))
    return {
        "params": sum(t.numel() for t in params.values()),
        "nonzero_params": nonzero,
        "sparsity": 1.0 - nonzero / dense.params,
        "prunable_sparsity": 1.0 - prunable_nonzero / dense.prunable_params,
        "compressed_bytes": compressed_bytes(params),
        "flops": 2 * macs_per_sample(model, input_shape, nonzero_only=True),
        "dense_flops": dense.flops,
        "dense_params": dense.params,
    }
