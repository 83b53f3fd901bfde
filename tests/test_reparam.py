from __future__ import annotations

import io
import math

import pytest
import torch
from torch.nn.utils import parametrize

from study.data import batches
from study.methods.base import DataInfo
from study.methods.reparam import (
    C1,
    C2,
    Reparam,
    ReparamConfig,
    budget_loss,
    cost,
    effective_pruning,
    h_t,
    plain_state_dict,
    reparametrize,
)
from study.models import build_model
from study.pruning import prunable_modules
from study.sparsity import prunable_weights
from study.trainable import train_epoch
from tests.conftest import run_recorded

MNIST_INFO = DataInfo((1, 28, 28), 10, (0.1307,), (0.3081,))


def tiny(**overrides):
    """A reparam trial small enough for a unit test (LeNet-300-100, 512 MNIST samples); its
resume, determinism and bad settings are checked with every method's, in test_contracts."""
    config = {"method": "reparam", "dataset": "mnist", "model": "lenet300", "train_subset": 512,
              "batch_size": 64, "epochs": 2, "finetune_epochs": 1, "pruning_rate": 0.9, "seed": 0}
    config.update(overrides)
    return config


def lenet(t_init=100.0, n=4, seed=0):
    torch.manual_seed(seed)
    model = build_model("lenet300", (1, 28, 28), 10, (0.1307,), (0.3081,))
    reparametrize(model, n, t_init)
    return model


# --- h_t (Eq. 5) and the paper's properties 1-4 ----------------------------------------------

@pytest.mark.parametrize("n", [2, 4, 6, 8])
@pytest.mark.parametrize("t", [1.0, 100.0, 1000.0])
def test_h_t_lies_in_0_1_and_is_symmetric(n, t):  # properties 1 and 3
    x = torch.cat([torch.linspace(-3, 3, 10_001), torch.logspace(-12, 30, 200)])
    h = h_t(x, t, n)
    assert torch.all((h >= 0) & (h <= 1))
    assert torch.equal(h, h_t(-x, t, n))
    assert h_t(torch.tensor(0.0), t, n) == 0  # C2 cancels exp(-1) at x = 0
    assert float(h_t(torch.tensor(1e6), t, n)) == pytest.approx(1.0, abs=1e-6)  # C1 scales it to 1


def test_h_t_is_eq_5():
    x = torch.tensor([0.003, 0.01, 0.02, -0.05], dtype=torch.float64)
    t, n = 100.0, 4
    expected = C1 * (torch.exp(-1.0 / ((t * x) ** n + 1.0)) - C2)
    assert torch.allclose(h_t(x, t, n), expected, rtol=1e-12)
    assert abs(C1 - 1 / (1 - math.exp(-1))) < 1e-15 and abs(C2 - math.exp(-1)) < 1e-15


@pytest.mark.parametrize("n", [2, 4, 6, 8])
@pytest.mark.parametrize("x0", [0.0, 1e-30, 3.0, 1e4, -1e4, 1e30, -1e30])
def test_h_t_value_and_gradients_are_finite_at_zero_and_at_large_magnitude(n, x0):  # property 2
    x = torch.tensor(x0, requires_grad=True)
    t = torch.tensor(1000.0, requires_grad=True)
    h = h_t(x, t, n)
    (gx, gt) = torch.autograd.grad(h, (x, t))
    assert math.isfinite(float(h.detach())) and math.isfinite(float(gx)) and math.isfinite(float(gt))
    (gw,) = torch.autograd.grad(x * h_t(x, t, n), x)  # the apparent weight of Eq. 3 too
    assert math.isfinite(float(gw))


def test_the_stop_band_narrows_as_t_grows():  # property 4
    x = torch.linspace(0, 2, 200_001, dtype=torch.float64)
    widths = []
    for t in (1.0, 10.0, 100.0, 1000.0):
        h = h_t(x, t, 4)
        widths.append(float(x[h < 0.5].max()))  # half-height edge of the stop band
    assert widths == sorted(widths, reverse=True) and widths[0] > 50 * widths[-1]
    # for every a and eps there is a t with h_t < eps on [-a, a]
    for a, eps in ((1.0, 1e-3), (0.1, 1e-6)):
        grid = torch.linspace(-a, a, 10_001, dtype=torch.float64)
        assert float(h_t(grid, 0.01 / a, 4).max()) < eps


# --- budget loss (Eq. 7, 9) ----------------------------------------------------------------------

def test_the_budget_is_computed_over_every_conv_and_linear_weight():
    model = lenet(t_init=1e6)  # h_t = 1 nearly everywhere: C = number of weights
    n_weights = 784 * 300 + 300 * 100 + 100 * 10
    assert abs(float(cost(model)) - n_weights) / n_weights < 1e-3
    method = Reparam(ReparamConfig(model="lenet300", pruning_rate=0.9), MNIST_INFO,
                     torch.device("cpu"))
    assert method.c_initial == n_weights
    assert method.c_target == pytest.approx(0.1 * n_weights)  # Table 2: 0.10 remain at p = 90%


@pytest.mark.parametrize("direction", [-1, 1])
def test_the_budget_loss_is_zero_at_the_target_and_its_gradient_moves_the_cost_toward_it(direction):
    model = lenet()
    c0 = float(cost(model))
    n = float(sum(m.weight.numel() for m in prunable_modules(model).values()))
    assert float(budget_loss(cost(model), c0, n)) == pytest.approx(0.0, abs=1e-12)
    target = c0 + direction * 0.2 * n
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses, costs = [], []
    for _ in range(5):
        c = cost(model)
        loss = budget_loss(c, target, n)
        losses.append(float(loss))
        costs.append(float(c))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[0] == pytest.approx(0.04, rel=1e-3)
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False))
    assert all(direction * (b - a) > 0 for a, b in zip(costs, costs[1:], strict=False))
    temps = [float(m.parametrizations.weight[0].t) for m in prunable_modules(model).values()]
    # a wider stop band (lower t) lowers the cost; the small layers' steps are below float32's
    # resolution at t = 100 in 5 steps, the first layer's (235k weights) is not
    assert direction * (temps[0] - 100.0) > 0 and all(direction * (t - 100.0) >= 0 for t in temps)


# --- effective pruning ---------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [0.5, 0.9, 0.97, 0.99])
def test_effective_pruning_hits_the_rate_exactly_and_keeps_every_other_apparent_weight(rate):
    model = lenet()
    with torch.no_grad():  # some training-like spread, so that layers differ in scale
        model.head[2].parametrizations.weight.original.mul_(3.0)
    apparent = {k: v for k, v in plain_state_dict(model).items() if k.endswith("weight")}
    threshold = effective_pruning(model, rate)
    after = {k: v.detach() for k, v in model.state_dict().items() if k.endswith("weight")}
    assert after.keys() == apparent.keys()
    n = sum(v.numel() for v in after.values())
    zeros = sum(int((v == 0).sum()) for v in after.values())
    assert zeros == round(rate * n)
    for k, w in after.items():
        kept = w != 0
        assert torch.equal(w[kept], apparent[k][kept]), k  # bit for bit
        dropped, survivors = apparent[k][~kept].abs(), apparent[k][kept].abs()
        assert dropped.numel() == 0 or float(dropped.max()) <= threshold, k
        assert survivors.numel() == 0 or float(survivors.min()) >= threshold, k
    per_layer = [float((w == 0).float().mean()) for w in after.values()]
    assert max(per_layer) - min(per_layer) > 0.01  # one global threshold, not one rate per layer


def test_the_pruned_model_is_a_plain_network_that_exports_and_reloads_with_its_zeros(mnist):
    method = Reparam(ReparamConfig(model="lenet300", pruning_rate=0.95), MNIST_INFO,
                     torch.device("cpu"))
    train_epoch(method, "train", True, batches(mnist.train_x[:256], mnist.train_y[:256], 64,
                                               torch.Generator().manual_seed(0)))
    method.finish()
    model = method.inference_model()
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    plain = build_model("lenet300", (1, 28, 28), 10, (0.1307,), (0.3081,))
    assert set(model.state_dict()) == set(plain.state_dict())  # no temperature, no original
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    plain.load_state_dict(torch.load(buf, weights_only=True))
    zeros = sum(int((w == 0).sum()) for w in prunable_weights(plain).values())
    assert zeros == round(0.95 * method.c_initial)
    x = mnist.val_x[:64].float() / 255
    assert torch.equal(plain.eval()(x), model.eval()(x))


# --- the method in the trainable -----------------------------------------------------------------

def test_reparam_reports_its_diagnostics_each_epoch_and_prunes_exactly_at_the_end(mnist_small):
    reports, states = run_recorded(tiny(epochs=3, pruning_rate=0.8), mnist_small)
    assert [m["phase"] for m in reports] == ["train"] * 3
    for m in reports:
        assert {"reparam/budget_loss", "reparam/surrogate_remaining", "reparam/t/head.0",
                "reparam/t/head.2", "reparam/t/head.4", "reparam/val_accuracy_before_pruning",
                "train/budget", "train/ce"} <= set(m)
        assert 0 < m["reparam/surrogate_remaining"] <= 1
    for m in reports[:-1]:  # before effective pruning: val_accuracy is the apparent network's
        assert m["val_accuracy"] == m["reparam/val_accuracy_before_pruning"]
        assert m["prunable_sparsity"] < 0.8
    last = reports[-1]
    n = 784 * 300 + 300 * 100 + 100 * 10
    assert last["prunable_sparsity"] == pytest.approx(round(0.8 * n) / n, abs=1e-12)
    assert "test_accuracy" in last and "test_accuracy" not in reports[0]
    assert last["reparam/pruning_threshold"] > 0
    # the budget pulls the surrogate cost toward 0.2 and the temperatures move
    assert reports[-1]["reparam/surrogate_remaining"] < reports[0]["reparam/surrogate_remaining"]
    assert any(last[f"reparam/t/{k}"] != 100.0 for k in ("head.0", "head.2", "head.4"))
    assert states[-1]["method"]["stage"] == "pruned"


def test_mag_prunes_at_the_end_and_mag_ft_holds_its_masks_while_fine_tuning(mnist):
    n = 784 * 300 + 300 * 100 + 100 * 10
    exact = round(0.9 * n) / n
    mag, mag_states = run_recorded(tiny(variant="mag", epochs=2), mnist)
    assert [m["phase"] for m in mag] == ["train", "train"]
    assert mag[0]["prunable_sparsity"] == 0 and mag[-1]["prunable_sparsity"] == pytest.approx(exact)
    assert "reparam/budget_loss" not in mag[0]
    ft, states = run_recorded(tiny(variant="mag_ft", epochs=2, finetune_epochs=2), mnist)
    assert [m["phase"] for m in ft] == ["train", "train", "finetune", "finetune"]
    assert all(m["prunable_sparsity"] == pytest.approx(exact) for m in ft[2:])
    masks = [{k: v for k, v in s["method"]["model"].items() if k.endswith("weight_mask")}
             for s in states[2:3]]
    final = states[-1]["method"]["model"]
    for k, mask in masks[0].items():  # zeros at the end are exactly the masked entries
        assert torch.equal(final[k.replace("_mask", "")] == 0, mask == 0), k
    # mag and mag_ft train identically until pruning: same weights before it
    mag_before = mag_states[-1]["method"]["before"]
    for k, v in states[-1]["method"]["before"].items():
        assert torch.equal(v, mag_before[k]), k
    # fine-tuning recovers what magnitude pruning lost (validation accuracy)
    assert ft[-1]["val_accuracy"] > mag[-1]["val_accuracy"]


def test_early_stopping_freezes_the_weights(mnist):
    reports, states = run_recorded(tiny(epochs=4, early_stop_patience=1, lr=1e-7), mnist)
    stopped = [m["reparam/early_stopped"] for m in reports]
    assert stopped[0] == 0 and stopped[-1] == 1
    i = stopped.index(1)  # the first frozen epoch changed nothing
    before, after = states[i - 1]["method"]["model"], states[i]["method"]["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)
