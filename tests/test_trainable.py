from __future__ import annotations

import pytest

from study.config import ConfigError
from study.trainable import parse_config, train
from tests.conftest import assert_same_metrics, run_recorded, tiny_config


def test_same_config_and_seed_give_the_same_metrics(mnist):
    config = tiny_config(epochs=1, head_epochs=0, prune_epochs=1)
    a, _ = run_recorded(config, mnist)
    b, _ = run_recorded(config, mnist)
    for x, y in zip(a, b, strict=True):
        assert_same_metrics(x, y)
    c, _ = run_recorded({**config, "seed": 1}, mnist)
    assert c[-1]["val_accuracy"] != a[-1]["val_accuracy"] or c[-1]["loss"] != a[-1]["loss"]


@pytest.mark.parametrize("stop_after", [1, 2])  # mid-phase sequence and at a phase boundary
def test_a_resumed_trial_continues_from_its_checkpoint_as_if_never_stopped(mnist, stop_after):
    config = tiny_config(epochs=2, head_epochs=1, prune_epochs=1)
    whole, _ = run_recorded(config, mnist)
    first, states = run_recorded(config, mnist, stop_after=stop_after)
    assert len(first) == stop_after
    rest, _ = run_recorded(config, mnist, resume=states[-1])
    assert [m["epoch"] for m in rest] == list(range(stop_after + 1, 5))  # no epoch redone
    for x, y in zip(whole, first + rest, strict=True):
        assert_same_metrics(x, y)


@pytest.mark.parametrize("config, message", [
    ({"method": "nope"}, "unknown method 'nope'"),
    ({"method": "beta_vae", "bogus": 1}, "unknown setting 'bogus'"),
    ({"method": "beta_vae", "beta": -1.0}, "'beta' must be in [0.0, None], got -1.0"),
    ({"method": "beta_vae", "layer_sparsity": 1.5}, "'layer_sparsity' must be in"),
    ({"method": "beta_vae", "sparsity": 0.5}, "setting 'sparsity' is now 'layer_sparsity'"),
    ({"method": "beta_vae", "latent_dim": 2.5}, "'latent_dim' must be int"),
    ({"method": "beta_vae", "variant": "gan"}, "'variant' must be one of"),
    ({"method": "beta_vae", "lr": float("nan")}, "'lr' must be finite"),
    ({"method": "beta_vae", "device": "tpu"}, "'device' must be one of"),
    ({"method": "beta_vae", "ce_reduction": "avg"}, "'ce_reduction' must be one of"),
    ({"method": "beta_vae", "recon_reduction": "max"}, "'recon_reduction' must be one of"),
])
def test_bad_settings_are_errors_naming_the_key(config, message):
    with pytest.raises(ConfigError) as e:
        parse_config(config)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_a_schedule_without_epochs_is_refused(mnist):
    with pytest.raises(ConfigError, match="no epoch to run"):
        train(tiny_config(epochs=0, head_epochs=0, prune_epochs=0), mnist, lambda m, d: None)
