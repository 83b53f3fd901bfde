"""Optuna trial states: how each Ray trial's end reaches the Optuna study, and how the two agree
again after an interrupted driver.

Ray Tune asks OptunaSearch for a trial's settings and tells it the trial's last report; Optuna
records a state from it. Every state is decided here from the trial's outcome (study.outcome):
  complete     COMPLETE with its objectives (and its `--constraint` values)
  diverged, degenerate   PRUNED, with the user attribute `diverged` / `degenerate` (its reason)
  stopped      PRUNED, with its rung epoch and rung objectives (`record_stopped`)
  failed       FAIL (OptunaSearch's own handling of an error)
`reconcile_optuna` repairs what a killed driver left RUNNING, and leaves RUNNING what an
interrupted driver (Ctrl-C, SIGTERM, a full disk) left for `--resume` to finish: Optuna cannot
change a finished trial's state, so a trial told FAIL when it was interrupted would stay FAIL after
it finished. Ray pickles the searcher with its experiment and `--resume` unpickles it:
`LinkedOptunaSearch` lives at module level, and what it carries (`study_constraints`) is an
attribute of the instance, saved with OptunaSearch's state.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from study import layout, ray_compat
from study.constraints import Constraint, feasible, tell_constraints
from study.metrics import OBJECTIVES, RUNG_OBJECTIVES, STOPPED_ATTR
from study.outcome import DEGENERATE_REASON_KEY, RAY_TRIAL_ID_ATTR, is_final, outcome
from study.scheduler import stopped_at

SAMPLING_SECONDS_ATTR = "sampling_seconds"  # the seconds the sampler took to suggest the trial


class LinkedOptunaSearch(OptunaSearch):
    """OptunaSearch that records each Ray trial id on its Optuna trial, so the two agree, and the
    seconds its sampler took to suggest it (`sampling_seconds`); tells
    Optuna the study's constraints (study.constraints) and the trials MO-ASHA stopped."""
    study_constraints: list[Constraint] = []  # the study's, set by study.search (none in older studies)

    def suggest(self, trial_id: str) -> dict | None:
        start = time.perf_counter()
        params = super().suggest(trial_id)
        seconds = time.perf_counter() - start  # the sampler's ask (a GP's fit grows with trials)
        trial = ray_compat.optuna_trial(self, trial_id)
        trial.set_user_attr(RAY_TRIAL_ID_ATTR, trial_id)
        trial.set_user_attr(SAMPLING_SECONDS_ATTR, round(seconds, 4))
        return params

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        completed, study = ray_compat.completed_trials(self), ray_compat.optuna_study(self)
        if (trial_id in completed and result and not error
                and all(m in result for m in OBJECTIVES)):
            told = ray_compat.optuna_trial(self, trial_id)
            if _state(study, told.number) == optuna.trial.TrialState.RUNNING:
                # told before, but the telling failed (OptunaSearch logs and drops a storage
                # error, e.g. a full disk): the trial itself is told now
                completed.discard(trial_id)
                self.on_trial_complete(trial_id, result, error)
                return
            # a trial that errored (told FAIL) and then finished after --resume: its failed
            # attempt stays FAIL, its finished one is recorded beside it, once
            complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if trial_id not in {t.user_attrs.get(RAY_TRIAL_ID_ATTR) for t in complete}:
                failed = told
                study.add_trial(optuna.trial.create_trial(
                    params=failed.params, distributions=failed.distributions,
                    values=[result[m] for m in OBJECTIVES],
                    user_attrs={**failed.user_attrs, "resumed_after_failure_of": failed.number,
                                "feasible": feasible(self.study_constraints, result)}))
            return
        how = outcome(result)
        if how in ("diverged", "degenerate") and trial_id not in completed:
            # a diverged or degenerate trial ended early: pruned, which TPE ranks below every
            # complete trial, so it learns to avoid the region; never a front point. The user
            # attribute is named after the outcome
            trial = ray_compat.optuna_trial(self, trial_id)
            trial.set_user_attr(how, result.get(DEGENERATE_REASON_KEY, True))
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            completed.add(trial_id)
            return
        if not error and trial_id not in completed and stopped_at(result) is not None:
            # stopped at a rung by --scheduler mo-asha: PRUNED with its rung (study.scheduler).
            # Only a scheduler's STOP ends a trial on a rung report: an interrupted driver
            # never calls on_trial_complete (Ray's cleanup stops actors only)
            record_stopped(study, ray_compat.optuna_trial(self, trial_id), result)
            completed.add(trial_id)
            return
        if (self.study_constraints and result and not error and trial_id not in completed
                and all(m in result for m in OBJECTIVES)):
            tell_constraints(ray_compat.optuna_trial(self, trial_id), self.study_constraints,
                             result)
        super().on_trial_complete(trial_id, result, error)


def record_stopped(study: optuna.Study, trial: optuna.Trial, result: dict[str, Any]) -> None:
    """Tell Optuna that `trial` was stopped at a rung: PRUNED (samplers rank it below every
    complete trial, as a trial that did not earn its full budget; never on Optuna's best_trials),
    with the rung epoch and its rung objectives as user attributes."""
    trial.set_user_attr(STOPPED_ATTR, int(result["epoch"]))
    for m in RUNG_OBJECTIVES:
        trial.set_user_attr(m, float(result[m]))
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)


def _state(study: optuna.Study, number: int) -> optuna.trial.TrialState:
    return study.get_trials(deepcopy=False)[number].state


def reconcile_optuna(study_dir: Path, name: str) -> int:
    """Make the Optuna study agree with Ray's trials after a run. A trial Optuna still holds as
    RUNNING is, by Ray's newest snapshot (the one `--resume` restores):
      not TERMINATED there (the driver was interrupted: Ctrl-C, SIGTERM, a full disk): left
        RUNNING, as Ray continues it on `--resume` and then tells Optuna how it ended;
      TERMINATED there, or absent (asked after the snapshot by a killed driver: Ray will not run
        it again): told COMPLETE with its final metrics if its Ray trial finished, else FAIL.
    Returns how many were told."""
    study = optuna.load_study(study_name=name, storage=layout.optuna_storage(study_dir))
    resumable = {trial_id for trial_id, status in (layout.snapshot_trials(study_dir) or {}).items()
                 if status != "TERMINATED"}  # errored ones too: --resume resumes them
    fixed = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        trial_id = t.user_attrs.get(RAY_TRIAL_ID_ATTR)
        if trial_id in resumable:
            continue
        rows = layout.trial_history(layout.trial_dir(study_dir, trial_id))
        final = rows[-1] if rows and is_final(rows[-1]) else {}
        if all(m in final for m in OBJECTIVES):
            study.tell(t.number, [final[m] for m in OBJECTIVES])
        else:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        fixed += 1
    return fixed
