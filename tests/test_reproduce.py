"""The papers' reproductions (study.reproduce) on tiny runs: each asks the method restored from a
saved state (study.trainable.restore_method) for what it kept, and measures the network the
paper's column means. Where a check compares with the trainable's own measures, the test split is
made the validation split, so the reproduction's test accuracy must equal a reported validation
accuracy of the same network. Tiny trials on `mnist_small`."""
from __future__ import annotations

import json
import random
from dataclasses import replace

import numpy as np
import pytest
import torch

from study.data import Dataset
from study.methods.importance import planned_widths
from study.metrics import accuracy
from study.reproduce import main
from study.reproduce.dupont2021 import table_row as dupont2021_row
from study.reproduce.reddy import curve_point, hidden_neurons
from study.reproduce.shneider2023 import row_config
from study.reproduce.shneider2023 import table_row as shneider2023_row
from study.trainable import STATE_FILE, restore_method, train
from tests.test_contracts import tiny, whole


def _test_is_val(data: Dataset) -> Dataset:
    return replace(data, test_x=data.val_x, test_y=data.val_y)


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_restore_method_rebuilds_the_trials_method_and_leaves_the_callers_draws_alone(mnist_small, tmp_path):
    config = tiny("importance")
    reports, states = whole(config, mnist_small)
    torch.save(states[-1], tmp_path / STATE_FILE)
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    expected = _draws()
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    for state in (states[-1], tmp_path):  # the state, or the folder holding it
        method = restore_method(config, state, mnist_small)
        assert accuracy(method.inference_model(), mnist_small.val_x, mnist_small.val_y, 128) == \
            reports[-1]["val_accuracy"]
        assert {f"importance/neurons/{k}": v for k, v in method.widths().items()}.items() <= \
            reports[-1].items()
    assert _draws() == expected  # building the method seeded the generators; put back


def test_shneider2023_unpruned_accuracy_is_the_network_after_the_head_phase(mnist_small):
    config = {**row_config("vae-1", 0, "short"), "train_subset": 128, "epochs": 1, "latent_dim": 4,
              "batch_size": 64, "device": "cpu", "degenerate_epochs": 0}
    row = shneider2023_row(config, _test_is_val(mnist_small))
    history = row["history"]
    assert [h["phase"] for h in history] == ["train", "head", "prune"]
    # restored from the state after the head epoch: that network's reported validation accuracy
    assert row["test_unpruned"] == history[1]["val_accuracy"]
    assert row["test_pruned"] == history[-1]["val_accuracy"] != row["test_unpruned"]
    assert row["sparsity"] > 0.4 and row["bytes_pruned"] < row["bytes_unpruned"]
    assert "vae/end/kl" in row  # the VAE's state where its phase ended


def test_shneider2023_unpruned_accuracy_reads_the_trials_own_label_factor(dsprites):
    # labelled by scale (6 classes), not dsprites' own label (shape): the unpruned network is
    # evaluated on the classes it was trained on (it once read shape's labels: near chance)
    small = replace(dsprites, val_x=dsprites.val_x[:300], val_y=dsprites.val_y[:300],
                    val_factors=dsprites.val_factors[:300], test_x=dsprites.val_x[:300],
                    test_y=dsprites.val_y[:300], test_factors=dsprites.val_factors[:300])
    config = {**row_config("vae-4", 0, "dsprites", "dsprites"), "train_subset": 96, "epochs": 1,
              "head_epochs": 1, "prune_epochs": 1, "latent_dim": 4, "batch_size": 32, "device": "cpu",
              "label_factor": "scale"}
    row = shneider2023_row(config, small)
    assert row["test_unpruned"] == row["history"][1]["val_accuracy"]  # test = validation here


@pytest.mark.parametrize("variant", ["reparam", "mag", "mag_ft"])
def test_dupont2021_accuracy_before_pruning_is_that_of_the_weights_kept_before_it(mnist_small, variant):
    config = {"method": "reparam", "dataset": "mnist", "model": "lenet300", "variant": variant,
              "pruning_rate": 0.99, "epochs": 1, "finetune_epochs": 1, "seed": 0, "train_subset": 256,
              "batch_size": 64, "device": "cpu", "degenerate_epochs": 0}
    data = _test_is_val(mnist_small)
    row = dupont2021_row(config, data)
    reports = []
    train(config, data, lambda metrics, _: reports.append(metrics))
    assert row["test_accuracy"] == row["val_accuracy"]  # the pruned network
    assert row["test_accuracy_before_pruning"] == reports[-1]["reparam/val_accuracy_before_pruning"]
    assert row["test_accuracy_before_pruning"] > row["test_accuracy"] + 0.1  # 99% of the weights gone
    assert row["prunable_sparsity"] == pytest.approx(0.99, abs=1e-3)
    assert row["finetune_epochs"] == (1 if variant == "mag_ft" else 0)


@pytest.mark.parametrize("variant", ["rank", "random"])
def test_reddy_widths_are_the_restored_networks_and_reach_the_planned_widths(mnist_small, variant):
    config = {"method": "importance", "dataset": "mnist", "model": "mlp50_30", "variant": variant,
              "target_fraction": 0.5, "prune_fraction": 0.3, "warmup_epochs": 1, "epochs": 5,
              "seed": 0, "train_subset": 128, "batch_size": 64, "degenerate_epochs": 0}
    original = hidden_neurons(mnist_small)
    assert original == 50 + 30
    point = curve_point(config, mnist_small, original)
    plans = [planned_widths(n, 0.3, 0.5) for n in (50, 30)]
    assert point["widths"] == [plan[-1] for plan in plans] == [25, 15]
    assert point["neurons_removed"] == 0.5
    rounds = max(len(plan) - 1 for plan in plans)
    assert len(point["val_before_after"]) == rounds and point["epochs"] == 1 + 2 * rounds


def test_reproduce_runs_a_paper_from_the_command_line(data_dir, capsys):
    assert main(["--data-dir", str(data_dir), "dupont2021", "--rates", "0.9", "--variants", "mag",
                 "--dataset", "mnist", "--epochs", "1", "--set", "train_subset=256"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    row = json.loads(line)
    assert (row["variant"], row["rate"], row["epochs"], row["paper_conv4_cifar10"]) == ("mag", 0.9, 1, 54.94)
    with pytest.raises(SystemExit) as exit_:
        main(["shneider2023", "--rows", "vae-2"])  # not a row of Table I
    assert exit_.value.code == 2
