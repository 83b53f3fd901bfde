"""Every private name of Ray, OptunaSearch and Ray's W&B integration that study.ray_compat uses,
exercised on fresh objects (no Ray started): an upgrade that renames one fails here, loudly."""
from __future__ import annotations

import inspect

import optuna
import pytest
import ray
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.search_generator import SearchGenerator

from study import ray_compat


def test_the_installed_ray_and_optuna_are_the_tested_ones():
    assert ray.__version__.startswith(ray_compat.TESTED["ray"] + ".")
    assert optuna.__version__.startswith(ray_compat.TESTED["optuna"] + ".")


def test_require_names_the_missing_attribute_and_the_tested_version():
    message = r"has no attribute '_gone' in ray .*tested with ray 2\.60"
    with pytest.raises(ray_compat.RayCompatError, match=message):
        ray_compat.require(object(), "_gone")


def test_a_trials_checkpoint_can_be_pointed_elsewhere_and_its_cache_dropped(tmp_path):
    trial = Trial("run_trial", stub=True)
    checkpoint = tune.Checkpoint.from_directory(str(tmp_path))
    ray_compat.point_trial_at_checkpoint(trial, checkpoint, {"epoch": 2})
    assert trial.checkpoint.path == checkpoint.path  # what a restored trial loads
    ray_compat.point_trial_at_checkpoint(trial, None, {})
    assert trial.checkpoint is None
    ray_compat.forget_cached_state(trial)
    from ray.train._internal.storage import StorageContext  # needs a running Ray to build

    assert "current_checkpoint_index" in inspect.signature(StorageContext.__init__).parameters


def test_a_search_generators_state_can_grow():
    searcher = OptunaSearch(space={"x": optuna.distributions.FloatDistribution(0, 1)},
                            metric=["a", "b"], mode=["max", "max"])
    state = SearchGenerator(searcher).get_state()
    ray_compat.set_total_samples(state, 12)
    assert state["total_samples"] == 12 and state["finished"] is False
    with pytest.raises(ray_compat.RayCompatError, match="no 'total_samples'"):
        ray_compat.set_total_samples({"finished": True}, 3)


def test_optuna_search_exposes_its_optuna_trials():
    searcher = OptunaSearch(space={"x": optuna.distributions.FloatDistribution(0, 1)},
                            metric=["a", "b"], mode=["max", "max"])
    assert searcher.suggest("t1") is not None
    assert isinstance(ray_compat.optuna_trial(searcher, "t1"), optuna.trial.Trial)
    assert isinstance(ray_compat.optuna_study(searcher), optuna.Study)
    assert ray_compat.completed_trials(searcher) == set()
    searcher.on_trial_complete("t1", {"a": 1.0, "b": 0.5})
    assert ray_compat.completed_trials(searcher) == {"t1"}
