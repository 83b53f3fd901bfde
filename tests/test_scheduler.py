"""Multi-objective successive halving (study.scheduler): the promotion rule on synthetic rung
results, no training."""
from __future__ import annotations

import numpy as np
import optuna
import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from study.metrics import RUNG_OBJECTIVES, STOPPED_ATTR
from study.optuna_bridge import record_stopped
from study.pareto import hypervolume_2d, hypervolume_contributions, nondominated_ranks
from study.scheduler import MultiObjectiveASHA, promoted, rung_epochs, rung_order, stopped_at


@pytest.mark.parametrize("grace, factor, up_to, expected", [
    (1, 3, 100, [1, 3, 9, 27, 81]),
    (2, 2, 20, [2, 4, 8, 16]),
    (1, 1.5, 5, [1, 2, 3, 5]),  # round(1.5^k): 1, 2, 2 (dropped: not increasing), 3, 5
    (5, 3, 4, []),
])
def test_rungs_sit_at_geometric_epoch_milestones(grace, factor, up_to, expected):
    assert rung_epochs(grace, factor, up_to) == expected


@pytest.mark.parametrize("grace, factor, message", [(0, 3, "grace period"), (1, 1, "reduction factor")])
def test_bad_rung_settings_are_refused(grace, factor, message):
    with pytest.raises(ValueError, match=message):
        rung_epochs(grace, factor)


def test_nondominated_sorting_puts_nan_rows_last():
    pts = np.array([[0.9, 0.1], [0.5, 0.5], [0.1, 0.9], [0.4, 0.4], [0.3, 0.3], [np.nan, 1.0]])
    assert nondominated_ranks(pts).tolist() == [0, 0, 0, 1, 2, 3]


def test_hypervolume_contribution_is_the_area_only_that_point_dominates():
    pts = np.array([[0.9, 0.1], [0.5, 0.5], [0.1, 0.9]])
    # total 0.9*0.1 + 0.5*0.4 + 0.1*0.4 = 0.33; without the middle point 0.9*0.1 + 0.1*0.8 = 0.17
    assert hypervolume_contributions(pts) == pytest.approx([0.04, 0.16, 0.04])
    assert hypervolume_contributions(np.array([[0.5, 0.5], [0.5, 0.5]])) == pytest.approx([0, 0])


def test_rung_order_is_front_first_then_hypervolume_contribution_then_arrival():
    pts = np.array([
        [0.9, 0.1],   # 0 front, contribution 0.004 (barely more accurate than 3)
        [0.85, 0.45],  # 1 dominated by 3, yet more accurate than 2 and 4
        [0.1, 0.9],   # 2 front, contribution 0.04
        [0.86, 0.5],  # 3 front, the largest contribution
        [0.05, 0.05],  # 4 dominated by all
    ])
    assert rung_order(pts).tolist() == [3, 2, 0, 1, 4]
    # equal contributions: the earlier arrival first
    assert rung_order(np.array([[0.5, 0.5], [0.9, 0.1], [0.1, 0.9]])).tolist() == [0, 1, 2]


def test_a_trial_continues_only_in_the_top_third_of_its_rung():
    # nine trials at a rung, factor 3: the top ceil(9 / 3) = 3 continue
    rng = np.random.default_rng(0)
    pts = rng.uniform(0.1, 1.0, size=(9, 2))
    order = rung_order(pts).tolist()
    assert [promoted(pts, i, 3) for i in range(9)] == [i in order[:3] for i in range(9)]
    # the best of a rung always continues, the first trial at a rung too (nothing to compare with)
    assert promoted(pts, order[0], 3) and promoted(pts[:1], 0, 3)
    # a dominated trial never continues ahead of a non-dominated one, however accurate
    assert not promoted(np.array([[0.5, 0.5], [0.49, 0.9], [0.95, 0.1], [0.94, 0.09]]), 3, 2)


def _trial(trial_id: str) -> Trial:
    return Trial("prunestudy", trial_id=trial_id, stub=True)


def _rung(epoch: int, acc: float, sparsity: float) -> dict:
    return {"epoch": epoch, "val_accuracy": acc, "sparsity": 0.0,
            RUNG_OBJECTIVES[0]: acc, RUNG_OBJECTIVES[1]: sparsity}


def test_the_scheduler_stops_trials_that_arrive_below_the_rungs_top_third():
    sched = MultiObjectiveASHA(grace_period=1, reduction_factor=3)
    assert sched.set_search_properties(None, None) and sched.milestones[:3] == [1, 3, 9]
    decide = {}
    arrivals = [("a", 0.5, 0.5), ("b", 0.4, 0.4), ("c", 0.6, 0.6), ("d", 0.3, 0.3), ("e", 0.9, 0.2)]
    for tid, acc, sp in arrivals:
        decide[tid] = sched.on_trial_result(None, _trial(tid), _rung(1, acc, sp))
    # a: first (continues); b: 2nd of 2, keep 1, dominated (stop); c: best of 3 (continues);
    # d: dominated, 4th of 4, keep 2 (stop); e: non-dominated beside c, 2nd of 5, keep 2 (continues)
    assert decide == {"a": "CONTINUE", "b": "STOP", "c": "CONTINUE", "d": "STOP", "e": "CONTINUE"}
    assert sched.stopped == {"b": 1, "d": 1}
    # reported again after a restore from a checkpoint: it was promoted, it continues
    assert sched.on_trial_result(None, _trial("a"), _rung(1, 0.0, 0.0)) == TrialScheduler.CONTINUE
    # epochs that are no rung, and reports without rung objectives, never stop a trial
    assert sched.on_trial_result(None, _trial("x"), _rung(2, 0.0, 0.0)) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, _trial("y"), {"epoch": 3, "val_accuracy": 0.0}) == "CONTINUE"
    assert "2 stopped" in sched.debug_string()


def test_the_scheduler_state_survives_save_and_restore(tmp_path):
    sched = MultiObjectiveASHA(grace_period=2, reduction_factor=2)
    sched.on_trial_result(None, _trial("a"), _rung(2, 0.9, 0.9))
    sched.save(str(tmp_path / "s.pkl"))
    again = MultiObjectiveASHA()
    again.restore(str(tmp_path / "s.pkl"))
    assert again.milestones == [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
    assert again.on_trial_result(None, _trial("b"), _rung(2, 0.1, 0.1)) == TrialScheduler.STOP


def test_a_stopped_trial_is_told_to_optuna_as_pruned_with_its_rung():
    final = {"epoch": 5, "val_accuracy": 0.9, "sparsity": 0.5, "test_accuracy": 0.9, **_rung(5, 0.8, 0.5)}
    assert stopped_at(_rung(3, 0.8, 0.5)) == 3
    assert stopped_at(final) is None and stopped_at({"epoch": 2, "diverged": 1}) is None
    assert stopped_at({"epoch": 2, "val_accuracy": 0.5, "sparsity": 0.1}) is None  # no rung: not ours

    study = optuna.create_study(directions=["maximize", "maximize"],
                                sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2))
    for acc in (0.9, 0.8, 0.7):
        t = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        study.tell(t, [acc, 1 - acc])
    t = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    record_stopped(study, t, _rung(3, 0.99, 0.99))
    frozen = study.trials[-1]
    assert frozen.state == optuna.trial.TrialState.PRUNED
    assert frozen.user_attrs[STOPPED_ATTR] == 3 and frozen.user_attrs[RUNG_OBJECTIVES[0]] == 0.99
    assert frozen.number not in {b.number for b in study.best_trials}  # never a front point
    # TPE samples on beside a pruned multi-objective trial
    nxt = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    assert 0 <= nxt.params["x"] <= 1
    assert hypervolume_2d(np.array([b.values for b in study.best_trials])) == pytest.approx(
        0.9 * 0.1 + 0.8 * 0.1 + 0.7 * 0.1)


def test_a_resumed_study_reads_its_rungs_back_from_the_study_folder(tmp_path):
    import json

    from study import layout

    # Ray unpickles the scheduler as it was built: the rungs come back from the trials' results
    for tid, ts, acc in (("a", 10, 0.9), ("b", 11, 0.2)):
        folder = layout.trial_dir(tmp_path, tid)
        folder.mkdir()
        rows = [{"epoch": 1, "timestamp": ts, **_rung(1, acc, acc)}, {"epoch": 2, "timestamp": ts + 5}]
        (folder / layout.RESULT).write_text("\n".join(json.dumps(r) for r in rows))
    sched = MultiObjectiveASHA(grace_period=1, reduction_factor=3, study_dir=str(tmp_path))
    # third at the rung (keep 1 of 3), below a: stopped; without the history it would be first
    assert sched.on_trial_result(None, _trial("c"), _rung(1, 0.5, 0.5)) == TrialScheduler.STOP
    assert list(sched.rungs[1]) == ["a", "b", "c"]
    assert sched.on_trial_result(None, _trial("a"), _rung(1, 0.0, 0.0)) == TrialScheduler.CONTINUE
