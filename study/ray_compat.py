"""Every use of Ray's, OptunaSearch's and Ray's W&B integration's private names, in one place.

Tested with ray 2.60 and optuna 5.0 (pyproject caps both at the next minor release). Most of these
uses *assign* private attributes, which a renamed attribute in a new release would silently ignore;
so each is checked to exist before it is read or written (`require`), and
`tests/test_ray_compat.py` checks them all on fresh objects, so an upgrade fails loudly in CI
rather than quietly in a user's study.
"""
from __future__ import annotations

from typing import Any

TESTED = {"ray": "2.60", "optuna": "5.0"}


class RayCompatError(RuntimeError):
    """A private name this project relies on is gone: the installed Ray is not one it was tested
    with."""


def require(obj: Any, name: str) -> Any:
    """`getattr(obj, name)`, or a RayCompatError naming the attribute and the tested versions."""
    if not hasattr(obj, name):
        import ray

        raise RayCompatError(f"{type(obj).__name__} has no attribute {name!r} in ray {ray.__version__}; "
                             f"prunestudy was tested with ray {TESTED['ray']}")
    return getattr(obj, name)


# --- Tune trials: restoring a checkpoint Ray's snapshot lost (study.resume) ----------------------

def point_trial_at_checkpoint(trial, checkpoint, metrics: dict[str, Any]) -> None:
    """Make `trial` resume from `checkpoint` (None: from the start), with the result reported
    with it. Ray keeps the checkpoint a restored trial loads in its checkpoint manager."""
    from ray.train._internal.session import _TrainingResult

    manager = require(require(trial, "run_metadata"), "checkpoint_manager")
    require(manager, "_checkpoint_results")
    require(manager, "_latest_checkpoint_result")
    result = None if checkpoint is None else _TrainingResult(checkpoint=checkpoint, metrics=metrics)
    manager._checkpoint_results = [] if result is None else [result]
    manager._latest_checkpoint_result = result


def set_checkpoint_index(trial, index: int) -> None:
    """The index of the trial's last checkpoint folder: the next one is index + 1."""
    storage = require(trial, "storage")
    require(storage, "current_checkpoint_index")
    storage.current_checkpoint_index = index


def forget_cached_state(trial) -> None:
    """Make Ray serialize the trial afresh in its next experiment snapshot."""
    require(trial, "invalidate_json_state")()
    require(require(trial, "run_metadata"), "invalidate_cache")()


def set_total_samples(state: dict[str, Any], total: int) -> None:
    """In a pickled search-generator state (search_gen_state-*.json): let the search go on to
    `total` trials."""
    for key in ("total_samples", "finished"):
        if key not in state:
            raise RayCompatError(f"Ray's search-generator state has no {key!r}; prunestudy was "
                                 f"tested with ray {TESTED['ray']}")
    state["total_samples"], state["finished"] = total, False


# --- OptunaSearch: the Optuna trial behind a Ray trial (study.search) -----------------------------

def optuna_trial(searcher, trial_id: str):
    """The live Optuna trial OptunaSearch asked for Ray trial `trial_id`."""
    return require(searcher, "_ot_trials")[trial_id]


def optuna_study(searcher):
    return require(searcher, "_ot_study")


def completed_trials(searcher) -> set[str]:
    """Ray trial ids OptunaSearch has already told Optuna about (it ignores a second report)."""
    return require(searcher, "_completed_trials")
