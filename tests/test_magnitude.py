"""magnitude's own equations: Zhu & Gupta's cubic schedule, exact sparsity at the end for every
criterion, scope and schedule, nested masks through a gradual window, a fixed epoch budget and its
setting errors. Resume, determinism and round trips are checked with every method's, in
test_contracts."""
from __future__ import annotations

import itertools

import pytest
import torch

from study.config import ConfigError
from study.methods.base import DataInfo
from study.methods.magnitude import Magnitude, MagnitudeConfig, cubic_sparsity
from study.pruning import prunable_modules
from study.sparsity import prunable_weights
from study.trainable import parse_config, restore_method
from tests.conftest import run_recorded

MNIST_INFO = DataInfo((1, 28, 28), 10, (0.1307,), (0.3081,))
TARGET = 0.9


def tiny(**overrides) -> dict:
    """LeNet-300-100 on 128 MNIST samples (2 steps per epoch): 1 dense epoch, a 1-epoch window
    (gradual), 1 fine-tuning epoch."""
    return {"method": "magnitude", "dataset": "mnist", "model": "lenet300", "train_subset": 128,
            "batch_size": 64, "epochs": 3, "finetune_epochs": 1, "prune_every": 1,
            "target_sparsity": TARGET, "seed": 0, "degenerate_epochs": 0, **overrides}


def _dropped(n: int, rate: float = TARGET) -> int:
    return round(rate * n)  # study.pruning drops round(rate * entries) of each group


def test_the_cubic_schedule_is_zhu_and_guptas_eq_1_at_the_windows_start_middle_and_end():
    s_i, s_f, window = 0.1, 0.9, 100
    assert cubic_sparsity(0, window, s_i, s_f) == pytest.approx(s_i)
    # halfway: s_f + (s_i - s_f) (1/2)^3
    assert cubic_sparsity(50, window, s_i, s_f) == pytest.approx(0.9 - 0.8 / 8)
    assert cubic_sparsity(25, window, s_i, s_f) == pytest.approx(0.9 - 0.8 * 0.75 ** 3)
    assert cubic_sparsity(window, window, s_i, s_f) == pytest.approx(s_f)
    assert cubic_sparsity(window, window, s_i, s_f) == s_f  # exactly: Eq. 1 as written
    assert cubic_sparsity(-5, window, s_i, s_f) == cubic_sparsity(0, window, s_i, s_f)
    assert cubic_sparsity(150, window, s_i, s_f) == s_f
    steps = [cubic_sparsity(t, window, 0.0, s_f) for t in range(window + 1)]
    assert steps == sorted(steps)  # never decreasing: pruned weights can stay pruned
    assert steps[10] - steps[0] > steps[-1] - steps[-11]  # fast at first, slow near the target


@pytest.mark.parametrize("criterion, scope, schedule",
                         list(itertools.product(("magnitude", "random"), ("global", "layer"),
                                                ("oneshot", "gradual"))))
def test_the_trial_ends_exactly_at_the_target_with_plain_weights(mnist_small, criterion, scope, schedule):
    config = tiny(criterion=criterion, scope=scope, schedule=schedule)
    reports, states = run_recorded(config, mnist_small)
    assert len(reports) == config["epochs"]
    model = restore_method(config, states[-1], mnist_small).inference_model()
    assert not any(k.endswith(("_orig", "_mask")) for k in model.state_dict())  # exported plainly
    weights = prunable_weights(model)  # counted from the tensors, as the trainable counts them
    zeros = {k: int((w == 0).sum()) for k, w in weights.items()}
    sizes = {k: w.numel() for k, w in weights.items()}
    expected = (_dropped(sum(sizes.values())) if scope == "global"
                else sum(_dropped(n) for n in sizes.values()))
    assert sum(zeros.values()) == expected
    assert reports[-1]["prunable_sparsity"] == pytest.approx(expected / sum(sizes.values()), abs=1e-12)
    assert reports[-1]["magnitude/target_sparsity_now"] == TARGET
    density = {k: 1 - zeros[k] / sizes[k] for k in sizes}
    if scope == "layer":  # every layer the same fraction (up to rounding one weight)
        assert all(zeros[k] == _dropped(sizes[k]) for k in sizes)
        assert max(density.values()) - min(density.values()) < 2 / min(sizes.values())
    elif criterion == "magnitude":  # one threshold: layers end at different densities
        assert max(density.values()) - min(density.values()) > 0.01
    for k in sizes:
        assert reports[-1][f"magnitude/kept/{k.removesuffix('.weight')}"] == pytest.approx(density[k])


def _masks(method: Magnitude) -> dict[str, torch.Tensor]:
    return {name: m.weight_mask.bool().clone() for name, m in prunable_modules(method.model).items()
            if hasattr(m, "weight_mask")}


@pytest.mark.parametrize("criterion, scope", list(itertools.product(("magnitude", "random"),
                                                                     ("global", "layer"))))
def test_gradual_masks_are_nested_and_follow_the_schedule_every_prune_every_steps(criterion, scope):
    """Driven by hand on random batches: 1 dense epoch of 5 steps, a 2-epoch window (10 steps,
    masks at steps 0, 3, 6, 9 and s_f at its end), 1 fine-tuning epoch."""
    torch.manual_seed(0)
    cfg = MagnitudeConfig(model="lenet300", criterion=criterion, scope=scope, schedule="gradual",
                          target_sparsity=TARGET, initial_sparsity=0.2, epochs=4, finetune_epochs=1,
                          prune_start_epoch=1, prune_every=3, lr=1e-2)
    method = Magnitude(cfg, MNIST_INFO, torch.device("cpu"))
    batches = [(torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))) for _ in range(5)]
    n = sum(m.weight.numel() for m in prunable_modules(method.model).values())
    history, probed = [], None
    phases = [phase for phase, k in method.schedule() for _ in range(k)]
    assert phases == ["train", "prune", "prune", "finetune"]
    for epoch, phase in enumerate(phases):
        method.begin_epoch(phase, True)
        for x, y in batches:
            before = method.sparsity_now
            loss = method.loss_terms(phase, x, y)["loss"]
            if method.sparsity_now != before or (phase == "prune" and not history):
                history.append((method.step - 1 - 5, method.sparsity_now, _masks(method)))
            method.optimizer.zero_grad()
            loss.backward()
            method.optimizer.step()
        if epoch == 1:  # mid-window: the probe keeps what is pruned and goes to the target
            probed = method.probe_model(), _masks(method)
        method.end_pass(phase, epoch == len(phases) - 1, {})
        if epoch == 2:
            history.append((10, method.sparsity_now, _masks(method)))
    assert [t for t, _, _ in history] == [0, 3, 6, 9, 10]
    for (t, rate, masks), (_, _, later) in zip(history, history[1:] + history[-1:], strict=True):
        assert rate == cubic_sparsity(t, 10, 0.2, TARGET)
        kept = sum(int(k.sum()) for k in masks.values())
        dropped = (_dropped(n, rate) if scope == "global"
                   else sum(_dropped(k.numel(), rate) for k in masks.values()))
        assert kept == n - dropped
        assert all(bool((later[name] <= masks[name]).all()) for name in masks)  # nested
    probe, masks = probed
    for name, keep in masks.items():
        weight = prunable_modules(probe)[name].weight
        assert not weight[~keep].any()  # pruned stays pruned in the probe
    assert sum(int((prunable_modules(probe)[k].weight == 0).sum()) for k in masks) == (
        _dropped(n) if scope == "global" else sum(_dropped(k.numel()) for k in masks.values()))
    assert method.stage == "final" and not _masks(method)  # made permanent after the last epoch


@pytest.mark.parametrize("epochs, finetune", [(3, 3), (3, 5)])
def test_finetune_epochs_must_be_fewer_than_the_epoch_budget(epochs, finetune):
    with pytest.raises(ConfigError) as e:
        parse_config(tiny(epochs=epochs, finetune_epochs=finetune))
    assert f"'finetune_epochs' = {finetune} must be < 'epochs' = {epochs}" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("schedule", ["oneshot", "gradual"])
def test_a_random_criterion_with_a_fixed_seed_is_reproducible(mnist_small, schedule):
    def final_masks(seed: int) -> dict[str, torch.Tensor]:
        config = tiny(criterion="random", schedule=schedule, seed=seed)
        _, states = run_recorded(config, mnist_small)
        model = restore_method(config, states[-1], mnist_small).inference_model()
        return {k: w != 0 for k, w in prunable_weights(model).items()}

    a, b, other = final_masks(0), final_masks(0), final_masks(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], other[k]) for k in a)


@pytest.mark.parametrize("schedule, epochs, finetune, start", [
    ("oneshot", 1, 0, 1), ("oneshot", 7, 3, 1), ("oneshot", 7, 3, 5),
    ("gradual", 2, 0, 1), ("gradual", 7, 3, 1), ("gradual", 7, 3, 3), ("gradual", 7, 0, 6)])
def test_the_whole_trial_takes_epochs_epochs_whatever_the_schedule(schedule, epochs, finetune, start):
    cfg = MagnitudeConfig(schedule=schedule, epochs=epochs, finetune_epochs=finetune,
                          prune_start_epoch=start)
    phases = dict(Magnitude(cfg, MNIST_INFO, torch.device("cpu")).schedule())
    assert sum(phases.values()) == epochs
    assert phases["finetune"] == finetune
    assert phases["prune"] == (epochs - finetune - start if schedule == "gradual" else 0)


@pytest.mark.parametrize("schedule", ["oneshot", "gradual"])
def test_a_trial_reports_epochs_epochs(mnist_small, schedule):
    reports, _ = run_recorded(tiny(schedule=schedule, epochs=4, finetune_epochs=2), mnist_small)
    assert [m["epoch"] for m in reports] == [1, 2, 3, 4]
    assert [m["phase"] for m in reports] == (["train", "train", "finetune", "finetune"]
                                             if schedule == "oneshot" else
                                             ["train", "prune", "finetune", "finetune"])
    # oneshot: the train phase's last epoch reports the network just pruned; gradual: the window's
    assert [m["magnitude/target_sparsity_now"] for m in reports] == [0.0, TARGET, TARGET, TARGET]
