"""Pruning mechanics (study.pruning): masks by magnitude and at random, global and per layer, and
their life through training, zeroing, permanence, checkpoints and counting."""
from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from study.pruning import (
    apply_masks,
    kept_per_layer,
    magnitude_masks,
    make_permanent,
    prunable_modules,
    random_masks,
    restore_mask_buffers,
    zero_weights,
)


def net(seed: int = 0) -> nn.Sequential:
    """conv 1->4 (36 weights), conv 4->8 (288), linear 8*16->20 (2,560), linear 20->10 (200)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1),
                         nn.Flatten(), nn.Linear(8 * 16, 20), nn.ReLU(), nn.Linear(20, 10))


def dropped(masks: dict[str, torch.Tensor]) -> dict[str, int]:
    return {name: int((~keep).sum()) for name, keep in masks.items()}


def test_prunable_modules_are_the_conv_and_linear_layers_by_name_in_order():
    assert list(prunable_modules(net())) == ["0", "2", "4", "6"]


@pytest.mark.parametrize("amount", [0.0, 0.1, 0.5, 0.77, 0.99, 1.0])
def test_layer_masks_are_those_of_torch_l1_unstructured(amount):
    ours, theirs = net(), net()
    apply_masks(ours, magnitude_masks(ours, amount, "layer"))
    for module in prunable_modules(theirs).values():
        prune.l1_unstructured(module, "weight", amount=amount)
    for (name, a), b in zip(prunable_modules(ours).items(), prunable_modules(theirs).values(),
                            strict=True):
        assert torch.equal(a.weight_mask, b.weight_mask), name  # the same buffer, bit for bit
        assert torch.equal(a.weight, b.weight), name


def test_layer_masks_drop_the_same_fraction_of_every_layer():
    model = net()
    masks = magnitude_masks(model, 0.3, "layer")
    assert dropped(masks) == {name: round(0.3 * m.weight.numel())
                              for name, m in prunable_modules(model).items()}
    for name, m in prunable_modules(model).items():  # within a layer, the smallest go
        w, keep = m.weight.detach().abs(), masks[name]
        assert float(w[~keep].max()) <= float(w[keep].min()), name


def test_global_masks_drop_the_smallest_over_all_layers_with_one_threshold():
    model = net()
    with torch.no_grad():
        model[6].weight.mul_(10.0)  # a layer of larger weights loses fewer of them
    masks = magnitude_masks(model, 0.6, "global")
    n = sum(m.weight.numel() for m in prunable_modules(model).values())
    assert sum(dropped(masks).values()) == round(0.6 * n)
    weights = {name: m.weight.detach().abs() for name, m in prunable_modules(model).items()}
    largest_dropped = max(float(w[~masks[k]].max()) for k, w in weights.items() if (~masks[k]).any())
    smallest_kept = min(float(w[masks[k]].min()) for k, w in weights.items() if masks[k].any())
    assert largest_dropped <= smallest_kept
    fractions = {k: float((~keep).float().mean()) for k, keep in masks.items()}
    assert fractions["6"] < 0.1 < 0.5 < fractions["4"]


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_ties_go_by_position(scope):
    model = nn.Sequential(nn.Linear(4, 2), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.fill_(0.5)
        model[1].weight.copy_(torch.tensor([[-0.5, 0.5], [0.5, -0.5]]))  # |w| ties everywhere
    masks = magnitude_masks(model, 0.5, scope)
    if scope == "global":  # 6 of 12: the first six positions, layer 0's
        assert not masks["0"].flatten()[:6].any() and masks["0"].flatten()[6:].all()
        assert masks["1"].all()
    else:
        assert masks["0"].flatten().tolist() == [False] * 4 + [True] * 4
        assert masks["1"].flatten().tolist() == [False] * 2 + [True] * 2


def test_random_layer_masks_drop_exactly_the_rate_of_each_layer_from_the_generator_alone():
    model = net()
    rng_before = torch.get_rng_state()
    a = random_masks(model, 0.4, "layer", torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is untouched
    b = random_masks(model, 0.4, "layer", torch.Generator().manual_seed(3))
    c = random_masks(model, 0.4, "layer", torch.Generator().manual_seed(4))
    assert dropped(a) == {name: round(0.4 * m.weight.numel())
                          for name, m in prunable_modules(model).items()}
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same masks
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_random_global_masks_drop_exactly_the_rate_of_all_weights_whatever_their_size():
    model = net()
    with torch.no_grad():
        model[6].weight.mul_(1000.0)  # magnitudes play no part
    masks = random_masks(model, 0.5, "global", torch.Generator().manual_seed(0))
    n = sum(m.weight.numel() for m in prunable_modules(model).values())
    assert sum(dropped(masks).values()) == round(0.5 * n)
    assert 0.3 < float((~masks["6"]).float().mean()) < 0.7


@pytest.mark.parametrize("rate, scope, message", [(0.5, "row", "scope must be"),
                                                  (1.5, "layer", "rate must be in [0, 1], got 1.5")])
def test_bad_mask_arguments_are_errors_naming_the_value(rate, scope, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        magnitude_masks(net(), rate, scope)


def test_held_masks_survive_training_a_checkpoint_and_removal():
    model = net()
    masks = magnitude_masks(model, 0.7, "layer")
    apply_masks(model, masks)
    assert {"4.weight_orig", "4.weight_mask"} <= set(model.state_dict())  # loadable as before
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 1, 4, 4)).square().mean().backward()
        opt.step()
    # counted from weight_orig * weight_mask: `weight` is stale until the next forward
    expected = {name: (int(keep.sum()), keep.numel()) for name, keep in masks.items()}
    assert kept_per_layer(model) == expected
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    restored = net(seed=1)
    restore_mask_buffers(restored)
    restored.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(4, 1, 4, 4)
    assert torch.equal(restored(x), model(x))
    assert kept_per_layer(restored) == expected
    make_permanent(restored)
    assert "4.weight" in restored.state_dict() and "4.weight_mask" not in restored.state_dict()
    assert torch.equal(restored(x), model(x)) and kept_per_layer(restored) == expected


def test_zero_weights_zeroes_a_plain_model_in_place_and_returns_the_threshold():
    model = net()
    weights = {name: m.weight.detach().clone() for name, m in prunable_modules(model).items()}
    masks = magnitude_masks(model, 0.5, "global")
    threshold = zero_weights(model, masks)
    assert threshold == max(float(w[~masks[k]].abs().max()) for k, w in weights.items()
                            if (~masks[k]).any())
    for name, m in prunable_modules(model).items():
        keep = masks[name]
        assert torch.equal(m.weight[keep], weights[name][keep]) and not m.weight[~keep].any(), name
    assert kept_per_layer(model) == {k: (int(keep.sum()), keep.numel()) for k, keep in masks.items()}
    assert zero_weights(net(), magnitude_masks(net(), 0.0, "global")) == 0.0  # nothing zeroed
