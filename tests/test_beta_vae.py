from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from study.methods.base import DataInfo
from study.methods.beta_vae import BetaVAE, BetaVAEConfig, active_units, kl_per_dim, prune_per_layer
from study.models import BetaVAEClassifier
from study.sparsity import PRUNABLE, prunable_weights
from study.trainable import load_state, train
from tests.conftest import tiny_config


def test_kl_per_dim_matches_the_closed_form_of_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(64, 5) * 2, torch.randn(64, 5)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0))
    assert torch.allclose(kl_per_dim(mu, logvar), expected, atol=1e-5)
    assert torch.all(kl_per_dim(torch.zeros(3, 2), torch.zeros(3, 2)) == 0)  # posterior = prior


def test_active_units_counts_dimensions_whose_mean_varies_over_the_data():
    torch.manual_seed(0)
    mu = torch.zeros(1000, 4)
    mu[:, 0] = torch.randn(1000)  # variance ~1: active
    mu[:, 1] = 0.05 * torch.randn(1000)  # variance ~0.0025: inactive at 0.01
    mu[:, 2] = 3.0  # constant: collapsed
    mu[:, 3] = 0.2 * torch.randn(1000)  # variance ~0.04: active
    assert active_units(mu, 0.01) == 2
    assert active_units(mu, 0.001) == 3
    assert active_units(torch.full((10, 3), 7.0), 0.01) == 0


@pytest.mark.parametrize("amount", [0.3, 0.5, 0.9])
def test_per_layer_pruning_hits_the_target_in_every_layer(amount):
    torch.manual_seed(0)
    model = BetaVAEClassifier((1, 28, 28), 10, 4, 16, (0.1,), (0.3,)).inference_model()
    prune_per_layer(model, amount)
    weights = prunable_weights(model)
    assert len(weights) == 5  # 2 convs, dense, mean, head
    for name, w in weights.items():
        zeros = int((w == 0).sum())
        assert zeros == round(amount * w.numel()), name  # per layer, not globally


def test_paper_sized_models():
    mnist = BetaVAE(BetaVAEConfig(), DataInfo((1, 28, 28), 10, (0.1,), (0.3,)), torch.device("cpu"))
    cifar = BetaVAE(BetaVAEConfig(), DataInfo((3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3),
                    torch.device("cpu"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(mnist.inference_model()) == 69_450  # paper: "69k" (latent_dim 16)
    assert 2.85e6 < count(cifar.inference_model()) < 2.95e6  # paper: "2.9M"


def test_masks_hold_through_fine_tuning_and_a_checkpoint_round_trip(mnist):
    reports = []
    config = tiny_config(prune_epochs=2)
    train(config, mnist, lambda m, d: reports.append((m, load_state(d))))
    pruned = [(m, s) for m, s in reports if m["phase"] == "prune"]
    assert len(pruned) == 2
    for metrics, _ in pruned:
        assert abs(metrics["prunable_sparsity"] - 0.5) < 1e-3  # fine-tuning never revived a weight
    # restore the state saved after the first fine-tuning epoch into a fresh method
    state = pruned[0][1]
    method = BetaVAE(BetaVAEConfig(prune_epochs=2), DataInfo(mnist.input_shape, 10, mnist.mean,
                                                             mnist.std), torch.device("cpu"))
    method.load_state_dict(state["method"])
    model = method.inference_model()
    model(mnist.val_x[:8].float() / 255)  # the forward pass recomputes weight = orig * mask
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE):
            mask = module.weight_mask
            assert abs(float(1 - mask.mean()) - 0.5) < 0.01, name
            assert torch.all(module.weight[mask == 0] == 0), name
    # and keep training it: zeros stay zeros
    from study.data import batches

    method.train_epoch("prune", batches(mnist.train_x[:256], mnist.train_y[:256], 64,
                                        torch.Generator().manual_seed(0)))
    assert all(abs(float((w == 0).float().mean()) - 0.5) < 0.01
               for w in prunable_weights(method.inference_model()).values())


def test_cnn_variant_has_no_decoder_and_no_kl(mnist):
    reports = []
    train(tiny_config(variant="cnn", sparsity=0.0), mnist, lambda m, d: reports.append(m))
    assert [m["phase"] for m in reports] == ["train", "head"]
    assert all("vae/kl" not in m and "train/kl" not in m for m in reports)
    assert reports[-1]["sparsity"] < 1e-3


def test_vae_reports_its_diagnostics_each_epoch(mnist):
    reports = []
    train(tiny_config(latent_dim=3), mnist, lambda m, d: reports.append(m))
    first = reports[0]
    assert first["phase"] == "train"
    kl_dims = [first[f"vae/kl_per_dim/{j}"] for j in range(3)]
    assert abs(sum(kl_dims) - first["vae/kl"]) < 1e-4
    assert 0 <= first["vae/active_units"] <= 3
    assert {"train/kl", "train/recon", "train/ce", "vae/recon"} <= set(first)
    assert all("vae/active_units" in m for m in reports)
    assert "test_accuracy" in reports[-1] and "test_accuracy" not in reports[0]
