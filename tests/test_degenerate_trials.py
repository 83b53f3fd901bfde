"""Degenerate trials end early in the trainable (every method), and Optuna records them pruned."""
from __future__ import annotations

import optuna
import pytest

from study import layout, search
from tests.conftest import run_recorded, tiny_config


def _reparam(**overrides):
    return {"method": "reparam", "model": "lenet300", "dataset": "mnist", "train_subset": 256,
            "batch_size": 64, "epochs": 3, **overrides}


def test_a_dead_reparam_network_ends_at_its_first_epoch_as_degenerate(mnist_small):
    # t_init 0.01 with n 8: |t w| ~ 1e-4, so every h_t(w) of Eq. 5 is 0 in float32
    reports, states = run_recorded(_reparam(t_init=0.01, n=8), mnist_small)
    assert [m["epoch"] for m in reports] == [1]
    last = reports[0]
    assert last["degenerate"] == 1 and last["degenerate_reason"] == "dead network"
    assert last["dead_network"] == 1 and last["reparam/dead_layers"] == 3
    assert "test_accuracy" not in last and last["total_epochs"] == 3
    # a resume from its checkpoint (as after a killed driver) trains and reports nothing more
    again, _ = run_recorded(_reparam(t_init=0.01, n=8), mnist_small, resume=states[-1])
    assert again == []
    # the paper's t_init is alive, and the same dead start runs to the end with degenerate_epochs 0
    healthy, _ = run_recorded(_reparam(epochs=1, pruning_rate=0.5), mnist_small)
    assert healthy[-1]["reparam/dead_layers"] == 0 and "dead_network" not in healthy[-1]
    assert healthy[-1]["reparam/target_missed"] == 0
    forced, _ = run_recorded(_reparam(t_init=0.01, n=8, epochs=2, pruning_rate=0.5,
                                      degenerate_epochs=0), mnist_small)
    assert [m["epoch"] for m in forced] == [1, 2] and "degenerate" not in forced[-1]
    # its zeros are not the 50% it asked for: flagged
    assert forced[-1]["prunable_sparsity"] > 0.99 and forced[-1]["reparam/target_missed"] == 1


@pytest.mark.parametrize("degenerate_epochs, epochs", [(2, [1, 2, 3]), (3, [1, 2, 3, 4]),
                                                       (0, [1, 2, 3, 4, 5])])
def test_chance_accuracy_for_a_few_epochs_from_the_second_ends_a_trial(mnist_small, degenerate_epochs,
                                                                         epochs):
    # chance_margin 1 makes every epoch "at chance": the count starts at the second epoch
    config = tiny_config(variant="cnn", epochs=3, head_epochs=1, prune_epochs=1, train_subset=256,
                         chance_margin=1.0, degenerate_epochs=degenerate_epochs)
    reports, states = run_recorded(config, mnist_small)
    assert [m["epoch"] for m in reports] == epochs
    if degenerate_epochs:
        assert reports[-1]["degenerate_reason"] == f"val_accuracy at chance for {degenerate_epochs} epochs"
        assert all("degenerate" not in m for m in reports[:-1])
        assert states[-1]["at_chance"] == degenerate_epochs
    else:  # the last epoch is never cut short, and 0 never ends early
        assert "degenerate" not in reports[-1] and "test_accuracy" in reports[-1]


@pytest.mark.parametrize("head_epochs, epochs", [(1, [1, 2, 3, 4]), (3, [1, 2, 3, 4, 5])])
def test_chance_accuracy_in_the_vae_phase_is_not_counted_but_in_the_head_phase_it_is(
        mnist_small, head_epochs, epochs):
    # chance_margin 1: every epoch "at chance". beta_vae's VAE phase (its chance_rule_skips) at
    # chance is a collapse, measured to its end; the head phase's epochs count from its first
    config = tiny_config(epochs=3, head_epochs=head_epochs, prune_epochs=0, layer_sparsity=0.0,
                         latent_dim=2, train_subset=128, chance_margin=1.0)
    reports, states = run_recorded(config, mnist_small)
    assert [m["epoch"] for m in reports] == epochs
    assert [s["at_chance"] for s in states] == [0, 0, 0, *range(1, len(epochs) - 2)]
    if head_epochs == 1:  # the VAE phase ran out at chance: the trial reached its end
        assert "degenerate" not in reports[-1] and "test_accuracy" in reports[-1]
    else:  # 2 head epochs at chance: ended, the skip is the VAE phase's only
        assert reports[-1]["phase"] == "head" and "test_accuracy" not in reports[-1]
        assert reports[-1]["degenerate_reason"] == "val_accuracy at chance for 2 epochs"


def test_a_degenerate_trial_is_pruned_in_optuna_with_its_reason(tmp_path):
    args = search.parse_args(["reparam", "--storage-dir", str(tmp_path)])
    searcher = search.make_searcher(search.build_space(args), tmp_path, "s", "random", 0)
    for trial_id in ("a", "b"):
        searcher.suggest(trial_id)
    searcher.on_trial_complete("a", {"val_accuracy": 0.1, "sparsity": 0.99, "degenerate": 1,
                                     "degenerate_reason": "dead network"})
    searcher.on_trial_complete("b", {"val_accuracy": 0.9, "sparsity": 0.5})
    study = optuna.load_study(study_name="s", storage=layout.storage_url(tmp_path))
    a, b = study.get_trials(deepcopy=False)
    assert a.state == optuna.trial.TrialState.PRUNED and a.user_attrs["degenerate"] == "dead network"
    assert b.state == optuna.trial.TrialState.COMPLETE and b.values == [0.9, 0.5]
