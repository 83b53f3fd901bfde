from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from study.config import ConfigError
from study.data import batches
from study.methods.base import DataInfo
from study.methods.importance import (
    ContributionMeter,
    Importance,
    ImportanceConfig,
    contribution_ratios,
    measuring,
    planned_widths,
)
from study.models import build_model
from study.pruning import hidden_layers, remove_neurons, resize_hidden
from study.spaces import load_space
from study.sparsity import DenseReference, size_metrics
from study.trainable import parse_config, train, train_epoch
from tests.conftest import run_recorded

MNIST_INFO = DataInfo((1, 28, 28), 10, (0.1307,), (0.3081,))
CPU = torch.device("cpu")


def tiny(**overrides):
    """An importance trial of seconds: 5 epochs, 1 warm-up epoch and 2 rounds (30% then 50%) of
    1 + 1 epochs (its resume, determinism and bad settings: test_contracts, with every method's)."""
    config = {"method": "importance", "dataset": "mnist", "train_subset": 512, "batch_size": 64,
              "epochs": 5, "warmup_epochs": 1, "prune_fraction": 0.3, "target_fraction": 0.5,
              "seed": 0}
    config.update(overrides)
    return config


def _meter(scores: list[float]) -> ContributionMeter:
    """A meter whose C_avg and C_max both equal `scores`."""
    meter = ContributionMeter(len(scores), 1e-12, CPU)
    meter.total = torch.tensor(scores, dtype=torch.float64)
    meter.peak = torch.tensor(scores)
    meter.pairs = 1
    return meter


# --- Eq. 1, Eq. 2 and the score ---------------------------------------------------------------

def test_contribution_ratios_and_both_aggregates_match_a_hand_computed_two_layer_example():
    a = torch.tensor([[1.0, 2.0], [3.0, 0.0]])  # 2 samples f, 2 neurons k of the current layer
    w = torch.tensor([[1.0, 1.0], [2.0, -1.0]])  # next layer: 2 neurons j
    # f=0: j=0 |1*1|, |1*2| over 3; j=1 |2*1|, |-1*2| over 4. f=1: all of it from neuron 0
    expected = torch.tensor([[[1 / 3, 2 / 3], [1 / 2, 1 / 2]],
                             [[1.0, 0.0], [1.0, 0.0]]])
    assert torch.allclose(contribution_ratios(a, w, 1e-12), expected)
    meter = ContributionMeter(2, 1e-12, CPU)
    meter.update(a, w)
    assert torch.allclose(meter.c_avg(), torch.tensor([(1 / 3 + 1 / 2 + 1 + 1) / 4,  # 17/24
                                                       (2 / 3 + 1 / 2 + 0 + 0) / 4]))  # 7/24
    assert torch.allclose(meter.c_max(), torch.tensor([1.0, 2 / 3]))
    assert meter.pairs == 4  # F * M


def test_the_denominator_guard_keeps_ratios_finite_shares_when_the_signed_sum_is_zero_or_negative():
    a = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    w = torch.tensor([[1.0, -1.0], [1.0, -3.0]])  # signed sums: 0 and -2 on the first two samples
    r = contribution_ratios(a, w, 1e-12)
    assert torch.isfinite(r).all()
    assert torch.allclose(r[0], torch.tensor([[0.5, 0.5], [0.25, 0.75]]))  # shares of |w a|
    assert torch.equal(r[2], torch.zeros(2, 2))  # every input off: 0, not 0/0
    assert torch.allclose(r[:2].sum(dim=2), torch.ones(2, 2))  # the shares of one (f, j) sum to 1


def test_scores_accumulate_every_sample_the_same_in_any_batching_and_chunking():
    torch.manual_seed(0)
    a, w = torch.rand(37, 6), torch.randn(4, 6)
    whole = ContributionMeter(6, 1e-12, CPU)
    whole.update(a, w)
    split = ContributionMeter(6, 1e-12, CPU, chunk_elements=1)  # one sample per chunk
    for part in a.split(10):
        split.update(part, w)
    assert split.pairs == whole.pairs == 37 * 4
    # the same up to float rounding (torch 2.15 reduces a chunk of one sample in another order)
    assert torch.allclose(split.c_avg(), whole.c_avg())
    assert torch.allclose(split.c_max(), whole.c_max(), rtol=1e-6, atol=0)
    ratios = contribution_ratios(a, w, 1e-12)
    assert torch.allclose(whole.c_avg(), ratios.mean(dim=(0, 1)))
    assert torch.equal(whole.c_max(), ratios.amax(dim=(0, 1)))


def test_measuring_hooks_see_every_forward_pass_and_are_removed_after():
    torch.manual_seed(0)
    model = build_model("mlp50_30", (1, 28, 28), 10, (0.1,), (0.3,))
    x = torch.rand(70, 1, 28, 28)
    with measuring(model.head, 1e-12) as meters:
        for xb in x.split(32):
            model(xb)
    assert set(meters) == {"head.0", "head.2"}
    assert meters["head.0"].pairs == 70 * 30 and meters["head.2"].pairs == 70 * 10
    hidden = model.head[:2](model.features(x))  # head.0's activations, entering head.2
    assert torch.allclose(meters["head.0"].c_avg(),
                          contribution_ratios(hidden, model.head[2].weight, 1e-12).mean(dim=(0, 1)))
    assert all(not m._forward_pre_hooks for m in model.head)


def test_lambdas_weight_c_avg_and_c_max_and_change_which_neuron_is_lowest():
    # neuron 0: a steady 0.4 share; neuron 1: mostly nothing, once 0.9; neuron 2: the rest
    a = torch.tensor([[4.0, 0.0, 6.0]] * 3 + [[0.5, 9.0, 0.5]])
    meter = ContributionMeter(3, 1e-12, CPU)
    meter.update(a, torch.ones(1, 3))
    c_avg, c_max = meter.c_avg(), meter.c_max()
    assert torch.allclose(c_avg, torch.tensor([1.25, 0.9, 1.85]) / 4)
    assert torch.allclose(c_max, torch.tensor([0.4, 0.9, 0.6]))
    assert torch.allclose(meter.scores(0.3, 0.7), 0.3 * c_avg + 0.7 * c_max)
    assert int(meter.scores(1.0, 0.0).argmin()) == 1  # C_avg alone: the rarely active one goes
    assert int(meter.scores(0.0, 1.0).argmin()) == 0  # C_max alone: the never-peaking one goes


def test_mix_is_c_max_share_and_replaces_both_lambdas():
    def method_cfg(**kw):
        return parse_config({"method": "importance", **kw})[1]
    assert method_cfg(mix=0.2).weights() == (0.8, 0.2)
    assert method_cfg(mix=0.0, lambda1=0.1, lambda2=0.9).weights() == (1.0, 0.0)  # mix wins
    assert method_cfg(lambda1=0.1, lambda2=0.9).weights() == (0.1, 0.9)  # mix -1: not used
    with pytest.raises(ConfigError, match="'mix' = -0.5 must be in"):
        method_cfg(mix=-0.5)
    with pytest.raises(ConfigError, match="both 0"):
        method_cfg(lambda1=0.0, lambda2=0.0)  # all ties: nothing ranked
    assert method_cfg(lambda1=0.0, lambda2=0.0, variant="random").weights() == (0.0, 0.0)
    space = load_space("importance")
    assert "mix" in space.search and not {"lambda1", "lambda2"} & set(space.search)


# --- schedule ----------------------------------------------------------------------------------

@pytest.mark.parametrize("width, p, t, expected", [
    (50, 0.2, 0.68, [50, 40, 32, 26, 21, 17, 16]),  # the paper's MLP at its 68%: keep 50 - 34
    (30, 0.2, 0.68, [30, 24, 19, 15, 12, 10]),  # keep 30 - round(20.4)
    (30, 0.5, 0.99, [30, 15, 7, 3, 1]),  # never below one neuron; round(7.5) = 8, round(1.5) = 2
    (5, 0.05, 0.6, [5, 4, 3, 2]),  # round(0.25) = 0: still one neuron per round
    (50, 0.3, 0.0, [50]),  # no target: no round
])
def test_each_round_removes_p_of_the_remaining_neurons_and_the_last_hits_the_target(width, p, t,
                                                                                    expected):
    widths = planned_widths(width, p, t)
    assert widths == expected
    keep = max(1, width - round(t * width))
    for a, b in zip(widths, widths[1:], strict=False):
        assert b == max(keep, a - max(1, round(p * a)))


@pytest.mark.parametrize("epochs, rounds", [
    (12, [3, 3, 3]),  # 12 - 3 warm-up - 3 removal epochs = 6 recovery epochs: 2 per round
    (13, [3, 3, 4]),  # 7: 2 per round, and the last round one more
    (14, [3, 4, 4]),  # 8: the last two rounds one more
    (6, [1, 1, 1]),  # warm-up and removals fill the budget: no recovery
])
def test_the_budget_is_warmup_then_rounds_of_a_removal_epoch_and_an_even_share_of_the_rest(epochs,
                                                                                           rounds):
    method = Importance(ImportanceConfig(epochs=epochs, warmup_epochs=3, prune_fraction=0.5,
                                         target_fraction=0.8), MNIST_INFO, CPU)
    # head.0: 50, 25, 13, 10 (keep 10); head.2: 30, 15, 7, 6 (keep 6): three rounds
    assert method.plan == {"head.0": [50, 25, 13, 10], "head.2": [30, 15, 7, 6]}
    assert method.schedule() == [("warmup", 3), *((f"round{r}", n) for r, n in enumerate(rounds, 1))]
    assert sum(n for _, n in method.schedule()) == epochs


def test_the_defaults_recover_two_epochs_after_each_of_their_eleven_rounds_and_no_round_trains_plain():
    method = Importance(ImportanceConfig(), MNIST_INFO, CPU)
    assert method.rounds == 11
    assert method.schedule() == [("warmup", 2)] + [(f"round{r}", 3) for r in range(1, 12)]
    # a layer that reaches its target first stops shrinking while the other goes on
    method = Importance(ImportanceConfig(prune_fraction=0.2, target_fraction=0.68), MNIST_INFO, CPU)
    assert method.rounds == 6 and len(method.plan["head.2"]) == 6  # head.2 is done after round 5
    method._remove(6, {"head.0": _meter([1.0] * 50), "head.2": _meter([1.0] * 30)})
    assert method.widths() == {"head.0": 16, "head.2": 10}
    assert Importance(ImportanceConfig(target_fraction=0.0, epochs=7), MNIST_INFO,
                      CPU).schedule() == [("warmup", 7)]


def test_a_schedule_that_exceeds_the_budget_is_a_one_line_error_naming_the_numbers(mnist_small):
    config = tiny(epochs=6, warmup_epochs=2, prune_fraction=0.2, target_fraction=0.9)
    reports = []
    with pytest.raises(ConfigError) as e:  # 50: 11 rounds to keep 5; 30: 9 rounds to keep 3
        train(config, mnist_small, lambda m, d: reports.append(m))
    assert str(e.value) == ("importance: warmup_epochs 2 + 11 rounds (prune_fraction 0.2 to "
                            "target_fraction 0.9 on mlp50_30) = 13 epochs exceed setting 'epochs' = 6")
    assert reports == []  # refused before anything ran
    with pytest.raises(ConfigError, match="warmup_epochs 7 \\+ 0 rounds"):
        Importance(ImportanceConfig(epochs=6, warmup_epochs=7, target_fraction=0.0), MNIST_INFO, CPU)


def test_every_trial_of_the_default_space_fits_its_budget():
    """The rounds are most at the smallest prune_fraction and the largest target_fraction (a
    smaller keep only prolongs the same widths); between the points where some round(p * w) flips
    (p = (k + 1/2) / w, w up to the layer's width) they are constant, so those points, either side
    of them, and the ends cover every prune_fraction the sampler can draw."""
    space = load_space("importance")
    fixed = {**vars(ImportanceConfig()), **space.fixed}
    low, high = space.search["prune_fraction"].low, space.search["prune_fraction"].high
    target = space.search["target_fraction"].high
    model = build_model(fixed["model"], (1, 28, 28), 10, (0.5,), (0.25,))
    widths = [model.head[i].out_features for _, i, _ in hidden_layers(model.head)]
    points = {low, high} | {(k + 0.5) / w + d for w in range(1, max(widths) + 1) for k in range(w)
                            for d in (-1e-9, 0.0, 1e-9)}
    most = max(len(planned_widths(n, p, target)) - 1 for n in widths for p in points if low <= p <= high)
    assert most == 8
    assert fixed["warmup_epochs"] + most <= fixed["epochs"]  # the yaml's arithmetic


@pytest.mark.parametrize("fractions, rounds", [((0.3, 0.5), 2), ((0.5, 0.5), 1), ((0.5, 0.0), 0)])
def test_trials_of_different_fractions_all_train_the_budget(mnist_small, fractions, rounds):
    p, t = fractions
    reports, _ = run_recorded(tiny(train_subset=128, prune_fraction=p, target_fraction=t),
                              mnist_small)
    assert [m["total_epochs"] for m in reports] == [5] * 5  # the same total, whatever the rounds
    assert sum(m["importance/just_pruned"] for m in reports) == rounds
    assert reports[-1]["importance/round"] == rounds


# --- removal -------------------------------------------------------------------------------------

def test_removal_preserves_the_function_when_the_removed_neurons_outgoing_weights_are_zero():
    torch.manual_seed(0)
    model = build_model("mlp50_30", (1, 28, 28), 10, (0.1,), (0.3,))
    gone0, gone2 = [3, 7, 40, 49], [0, 11, 29]
    with torch.no_grad():
        model.head[2].weight[:, gone0] = 0  # head.0's neurons feed nothing
        model.head[4].weight[:, gone2] = 0  # nor do head.2's
    x = torch.rand(16, 1, 28, 28)
    before = model(x)
    remove_neurons(model.head, 0, torch.tensor([k for k in range(50) if k not in gone0]))
    remove_neurons(model.head, 2, torch.tensor([k for k in range(30) if k not in gone2]))
    assert [m.weight.shape for m in model.head if isinstance(m, nn.Linear)] == [
        (46, 784), (27, 46), (10, 27)]
    assert torch.allclose(model(x), before, atol=1e-6)
    with torch.no_grad():  # and a neuron that did feed the next layer changes it: the check can fail
        model.head[2].weight[:, 0] = 1.0
    assert not torch.allclose(model(x), before, atol=1e-3)


def test_parameter_and_flop_counts_after_removal_equal_the_hand_count():
    torch.manual_seed(0)
    model = build_model("mlp50_30", (1, 28, 28), 10, (0.1,), (0.3,))
    dense = DenseReference.of(model, (1, 28, 28))
    assert dense.params == 784 * 50 + 50 + 50 * 30 + 30 + 30 * 10 + 10 == 41_090
    remove_neurons(model.head, 0, torch.arange(10, 50))  # 40 neurons left
    remove_neurons(model.head, 2, torch.arange(20))  # 20 left
    hand = 784 * 40 + 40 + 40 * 20 + 20 + 20 * 10 + 10  # 32,430
    assert sum(p.numel() for p in model.parameters()) == hand
    size = size_metrics(model, dense, (1, 28, 28))
    assert size["params"] == size["nonzero_params"] == hand
    assert size["sparsity"] == pytest.approx(1 - hand / 41_090)
    assert size["flops"] == 2 * (784 * 40 + 40 * 20 + 20 * 10)


def test_a_round_keeps_the_highest_scored_neurons_of_each_layer():
    torch.manual_seed(0)
    method = Importance(ImportanceConfig(prune_fraction=0.5, target_fraction=0.5), MNIST_INFO, CPU)
    w0, w2 = method.model.head[0].weight.detach().clone(), method.model.head[2].weight.detach().clone()
    s0, s2 = torch.rand(50), torch.rand(30)
    method._remove(1, {"head.0": _meter(s0.tolist()), "head.2": _meter(s2.tolist())})
    keep0 = s0.argsort(descending=True)[:25].sort().values
    keep2 = s2.argsort(descending=True)[:15].sort().values
    assert method.widths() == {"head.0": 25, "head.2": 15}
    assert torch.equal(method.model.head[0].weight, w0[keep0])
    assert torch.equal(method.model.head[2].weight, w2[keep2][:, keep0])
    assert method.model.head[4].weight.shape == (10, 15)


def test_the_random_variant_removes_as_many_neurons_chosen_at_random():
    config = ImportanceConfig(variant="random", prune_fraction=0.5, target_fraction=0.5)
    methods = []
    for _ in range(2):
        torch.manual_seed(0)  # the same network twice
        methods.append(Importance(config, MNIST_INFO, CPU))
    bias = methods[0].model.head[0].bias.detach().clone()  # identifies head.0's neurons
    kept = []
    for method in methods:
        method._remove(1, {})  # no measurement: nothing to rank by
        assert method.widths() == {"head.0": 25, "head.2": 15}
        kept.append({int((bias == b).nonzero()) for b in method.model.head[0].bias.detach()})
    assert len(kept[0]) == len(kept[1]) == 25
    assert kept[0] != kept[1]  # two draws, two different subsets


@pytest.mark.parametrize("optimizer, keys", [("adam", ("exp_avg", "exp_avg_sq")),
                                             ("sgd", ("momentum_buffer",))])
def test_the_optimizer_state_of_surviving_parameters_is_carried_sliced(mnist, optimizer, keys):
    torch.manual_seed(0)
    method = Importance(ImportanceConfig(optimizer=optimizer, prune_fraction=0.5, target_fraction=0.5),
                        MNIST_INFO, CPU)
    train_epoch(method, "warmup", True, batches(mnist.train_x[:256], mnist.train_y[:256], 64))
    old = {name: {k: v.clone() for k, v in method.optimizer.state[p].items()}
           for name, p in method.model.named_parameters()}
    s0, s2 = torch.rand(50), torch.rand(30)
    method._remove(1, {"head.0": _meter(s0.tolist()), "head.2": _meter(s2.tolist())})
    k0, k2 = s0.argsort(descending=True)[:25].sort().values, s2.argsort(descending=True)[:15].sort().values
    expected = {"head.0.weight": lambda t: t[k0], "head.0.bias": lambda t: t[k0],
                "head.2.weight": lambda t: t[k2][:, k0], "head.2.bias": lambda t: t[k2],
                "head.4.weight": lambda t: t[:, k2], "head.4.bias": lambda t: t}
    params = dict(method.model.named_parameters())
    assert set(method.optimizer.state) == set(params.values())  # all carried, nothing stale
    for name, cut in expected.items():
        new = method.optimizer.state[params[name]]
        for k in keys:
            assert new[k].shape == params[name].shape, (name, k)
            assert torch.equal(new[k], cut(old[name][k])), (name, k)
        if optimizer == "adam":
            assert torch.equal(new["step"], old[name]["step"])
    assert method.optimizer.param_groups[0]["lr"] == method.cfg.lr


@pytest.mark.parametrize("model, input_shape, widths", [
    ("reddy_cnn", (3, 32, 32), {"head.0": 512, "head.2": 256, "head.4": 128}),
    ("lenet300", (1, 28, 28), {"head.0": 150, "head.2": 50}),
    ("conv4", (1, 28, 28), {"head.0": 128, "head.2": 128}),
    # the encoder's dense layer, then the posterior mean (no ReLU between it and the classifier)
    ("bvae_cnn", (1, 28, 28), {"head.0": 8, "head.2": 8}),
])
def test_other_models_with_hidden_head_layers_are_measured_and_shrink(model, input_shape, widths):
    torch.manual_seed(0)
    info = DataInfo(input_shape, 10, (0.5,) * input_shape[0], (0.25,) * input_shape[0])
    method = Importance(ImportanceConfig(model=model, prune_fraction=0.5, target_fraction=0.5), info, CPU)
    x = torch.rand(3, *input_shape)
    with measuring(method.model.head, 1e-12, chunk_elements=1 << 20) as meters:  # chunks of 1 sample
        method.model(x)
    assert all(m.pairs == 3 * method.model.head[j].out_features
               for (name, _, j), m in zip(hidden_layers(method.model.head), meters.values(), strict=True))
    method._remove(1, meters)
    assert method.widths() == widths
    assert method.model(x).shape == (3, 10)
    dense = build_model(model, input_shape, 10, info.mean, info.std)
    assert method.model.head[0].in_features == dense.head[0].in_features  # its input is never pruned


def test_models_without_hidden_head_layers_are_not_among_its_choices():  # supported: test_models
    for model in ("vgg19", "resnet18"):
        with pytest.raises(ConfigError, match="'model' must be one of"):
            parse_config(tiny(model=model))


def test_resize_hidden_gives_the_shapes_a_pruned_state_loads_into():
    torch.manual_seed(0)
    pruned = build_model("mlp50_30", (1, 28, 28), 10, (0.1,), (0.3,))
    remove_neurons(pruned.head, 0, torch.arange(0, 50, 2))
    remove_neurons(pruned.head, 2, torch.arange(12))
    dense = build_model("mlp50_30", (1, 28, 28), 10, (0.1,), (0.3,))
    state = torch.get_rng_state()
    resize_hidden(dense.head, {"head.0": 25, "head.2": 12})
    assert torch.equal(torch.get_rng_state(), state)  # it draws no random numbers
    dense.load_state_dict(pruned.state_dict())
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(dense(x), pruned(x))


# --- through the trainable -------------------------------------------------------------------

def test_checkpoint_round_trip_across_a_removal_restores_shapes_weights_and_optimizer(mnist):
    torch.manual_seed(0)
    config = ImportanceConfig(prune_fraction=0.3, target_fraction=0.5)
    method = Importance(config, MNIST_INFO, CPU)
    train_epoch(method, "round1", True, batches(mnist.train_x[:256], mnist.train_y[:256], 64))
    method.end_pass("round1", False, {})  # the round's removal
    assert method.widths() == {"head.0": 35, "head.2": 21}
    buf = io.BytesIO()
    torch.save(method.state_dict(), buf)
    buf.seek(0)
    restored = Importance(config, MNIST_INFO, CPU)
    restored.load_state_dict(torch.load(buf, weights_only=True))
    assert restored.widths() == method.widths() and restored.rounds_done == 1
    x = mnist.val_x[:32].float() / 255
    assert torch.equal(restored.model(x), method.model(x))
    # the same next epoch from both gives the same weights: the optimizer state came back too
    for m in (method, restored):
        train_epoch(m, "round1", False, batches(mnist.train_x[256:512], mnist.train_y[256:512], 64))
        m.end_pass("round1", False, {})
    for (name, a), b in zip(method.model.state_dict().items(), restored.model.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name


def test_a_trial_reports_widths_every_epoch_and_marks_the_removal_epochs(mnist_small):
    reports, states = run_recorded(tiny(), mnist_small)
    assert [m["phase"] for m in reports] == ["warmup", "round1", "round1", "round2", "round2"]
    assert [m["importance/just_pruned"] for m in reports] == [0, 1, 0, 1, 0]
    assert [m["importance/recovered"] for m in reports] == [0, 0, 1, 0, 1]
    assert [m["total_epochs"] for m in reports] == [5] * 5
    assert [m["importance/neurons/head.0"] for m in reports] == [50, 35, 35, 25, 25]
    assert [m["importance/neurons/head.2"] for m in reports] == [30, 21, 21, 15, 15]
    params = [m["params"] for m in reports]
    assert params[0] == 41_090 and params[-1] == 784 * 25 + 25 + 25 * 15 + 15 + 15 * 10 + 10
    assert params[1] < params[0] and params[3] < params[2]  # they fall on removal epochs
    assert reports[-1]["sparsity"] == pytest.approx(1 - params[-1] / 41_090)
    assert reports[-1]["importance/neurons_removed"] == pytest.approx(1 - 40 / 80)
    before = [("importance/val_accuracy_before_pruning" in m) for m in reports]
    assert before == [False, True, False, True, False]
    assert "test_accuracy" in reports[-1] and "test_accuracy" not in reports[-2]
    assert states[1]["method"]["widths"] == {"head.0": 35, "head.2": 21}


def test_a_round_without_recovery_epochs_is_both_just_pruned_and_recovered(mnist_small):
    # 4 epochs: 1 warm-up, 2 removal epochs, 1 recovery epoch, which goes to the last round
    reports, _ = run_recorded(tiny(epochs=4, train_subset=128), mnist_small)
    assert [m["phase"] for m in reports] == ["warmup", "round1", "round2", "round2"]
    assert [m["importance/just_pruned"] for m in reports] == [0, 1, 1, 0]
    assert [m["importance/recovered"] for m in reports] == [0, 1, 0, 1]
