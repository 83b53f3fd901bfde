from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

from study.sparsity import DenseReference, macs_per_sample, size_metrics


def hand_model() -> nn.Sequential:
    """conv 1->2 (3x3, 18 weights + 2 biases) on 4x4 'same' -> flatten 32 -> linear 32->3 (96 + 3)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(32, 3))


def test_dense_counts_are_the_hand_counts():
    model = hand_model()
    dense = DenseReference.of(model, (1, 4, 4))
    assert dense.params == 18 + 2 + 96 + 3
    assert dense.prunable_params == 18 + 96
    assert dense.flops == 2 * (18 * 16 + 96)  # every conv weight used at 16 positions


def test_sparsity_counts_zeros_in_the_weights_not_what_was_asked():
    model = hand_model()
    dense = DenseReference.of(model, (1, 4, 4))
    with torch.no_grad():
        model[0].weight[0] = 0.0  # 9 conv weights
        model[2].bias[1] = 0.0  # a bias counts in sparsity, not in prunable_sparsity
    prune.custom_from_mask(model[2], "weight", torch.arange(96).view(3, 32) % 2 == 0)  # 48 masked
    m = size_metrics(model, dense, (1, 4, 4))
    assert m["params"] == 119
    assert m["nonzero_params"] == 119 - 9 - 1 - 48
    assert abs(m["sparsity"] - (9 + 1 + 48) / 119) < 1e-12
    assert abs(m["prunable_sparsity"] - (9 + 48) / 114) < 1e-12
    assert m["flops"] == 2 * (9 * 16 + 48)
    assert m["dense_flops"] == dense.flops
    assert m["dense_params"] == dense.params == 119


def test_removed_neurons_count_as_zeros_against_the_dense_architecture():
    model = hand_model()
    dense = DenseReference.of(model, (1, 4, 4))
    smaller = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(32, 2))  # 1 output gone
    m = size_metrics(smaller, dense, (1, 4, 4))
    assert m["params"] == 119 - 33
    assert abs(m["sparsity"] - 33 / 119) < 1e-12


def test_macs_ignore_zero_weights_only_when_asked():
    model = hand_model()
    with torch.no_grad():
        model[2].weight.zero_()
    assert macs_per_sample(model, (1, 4, 4), nonzero_only=False) == 18 * 16 + 96
    assert macs_per_sample(model, (1, 4, 4), nonzero_only=True) == 18 * 16
