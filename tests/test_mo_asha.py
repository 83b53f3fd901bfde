"""`--scheduler mo-asha` and `--constraint` end to end: one real study through the CLI (reparam,
tiny), one trial at a time so that the rungs' arrival order, hence every decision, is fixed;
then `analysis.robust` on its front. Bad flags in-process."""
from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
import pytest

from study import layout
from study.metrics import RUNG_OBJECTIVES, STOPPED_ATTR
from tests.conftest import background_study, run_main

TRIALS = 6
ARGS = ["reparam", "--scheduler", "mo-asha", "--grace-period", "1", "--reduction-factor", "3",
        "--num-samples", str(TRIALS), "--max-concurrent", "1", "--sampler", "random", "--seed", "5",
        "--dataset", "mnist", "--set", "epochs=4", "--set", "train_subset=300",
        "--constraint", "val_accuracy>=0.5"]


@background_study("mo-asha", cost=60)
def _mo_asha_study(ctx):
    """The study, then `analysis.robust` on it with 2 seeds: (folder, search, robust processes)."""
    env = {"RAY_TMPDIR": str(ctx.ray_dir())}
    search = ctx.run("study.search", *ARGS, "--name", "moasha", "--storage-dir", str(ctx.folder),
                     "--data-dir", str(ctx.data_dir), env=env)
    study_dir = ctx.folder / "moasha"
    robust = None
    if search.returncode == 0:
        # one run at a time (one Ray worker importing torch), no W&B: the suite's time is short
        robust = ctx.run("analysis.robust", str(study_dir), "--seeds", "2", "--max-concurrent",
                         "1", "--no-wandb", "--out", str(ctx.folder / "robust"),
                         env={"RAY_TMPDIR": str(ctx.ray_dir())})
    return study_dir, search, robust


@pytest.mark.parametrize("args, message", [
    (["--scheduler", "hyperband"], "invalid choice: 'hyperband'"),
    (["--grace-period", "2"], "--grace-period and --reduction-factor need --scheduler mo-asha"),
    (["--scheduler", "mo-asha", "--grace-period", "0"], "--grace-period must be at least 1"),
    (["--scheduler", "mo-asha", "--reduction-factor", "1"], "--reduction-factor must be above 1"),
    (["--constraint", "val_accuracy>0.9"], "is not METRIC>=NUMBER or METRIC<=NUMBER"),
    (["--constraint", "latency<=3"], "unknown metric 'latency'"),
])
def test_bad_scheduler_and_constraint_flags_are_one_line_errors(tmp_path, data_dir, args, message,
                                                                capsys):
    code = run_main("study.search", "reparam", *args, "--storage-dir", str(tmp_path), "--data-dir",
                    str(data_dir))
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not any(tmp_path.iterdir())  # nothing written


def _rung_reports(study_dir, trials):
    """{rung epoch: [(trial id, rung objectives)]} in the order the trials ran."""
    rungs: dict[int, list] = {}
    for t in trials:
        for row in layout.trial_history(layout.trial_dir(study_dir, t.user_attrs["ray_trial_id"])):
            if RUNG_OBJECTIVES[0] in row:
                rungs.setdefault(row["epoch"], []).append(
                    (t.user_attrs["ray_trial_id"], tuple(row[m] for m in RUNG_OBJECTIVES)))
    return rungs


@pytest.mark.study("mo-asha")
def test_a_mo_asha_study_stops_trials_at_rungs_by_the_promotion_rule(studies):
    from analysis.pareto import fronts
    from analysis.results import load_results
    from study.scheduler import MultiObjectiveASHA

    study_dir, proc, _ = studies.result("mo-asha")
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = layout.read_info(study_dir)
    assert info["scheduler"] == "mo-asha" and info["constraints"] == ["val_accuracy>=0.5"]
    study = optuna.load_study(study_name="moasha", storage=layout.storage_url(study_dir))
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    assert len(trials) == TRIALS
    stopped = {t.user_attrs["ray_trial_id"]: t for t in trials if STOPPED_ATTR in t.user_attrs}
    assert stopped, "no trial stopped: the study no longer exercises the scheduler"

    # every decision is the promotion rule's, replayed on the rung reports in arrival order
    replay = MultiObjectiveASHA(grace_period=1, reduction_factor=3)
    for epoch, reports in sorted(_rung_reports(study_dir, trials).items()):
        assert epoch in (1, 3)  # rungs 1 and 3; none at or past the last epoch, 4
        for trial_id, point in reports:
            replay.decide(trial_id, epoch, point)
    assert replay.stopped == {tid: t.user_attrs[STOPPED_ATTR] for tid, t in stopped.items()}

    df = load_results([study_dir]).set_index("trial_id")
    for tid, t in stopped.items():  # PRUNED with its rung; its last report is that rung's
        assert t.state == optuna.trial.TrialState.PRUNED
        assert df.loc[tid, "status"] == "stopped" and df.loc[tid, "epoch"] == t.user_attrs[STOPPED_ATTR]
        assert t.user_attrs[RUNG_OBJECTIVES[0]] == df.loc[tid, RUNG_OBJECTIVES[0]]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) + len(stopped) == TRIALS
    assert set(df["status"]) == {"stopped", "complete"}
    for t in complete:  # the constraint on every finished trial, in Optuna and in analysis
        tid = t.user_attrs["ray_trial_id"]
        assert t.constraints == {"val_accuracy>=0.5": pytest.approx(0.5 - t.values[0])}
        assert t.user_attrs["feasible"] == (t.values[0] >= 0.5) == df.loc[tid, "feasible"]
        # the probe at rung 1 pruned to the final target: the sparsity it will end with
        history = layout.trial_history(layout.trial_dir(study_dir, tid))
        assert history[0][RUNG_OBJECTIVES[1]] == pytest.approx(history[-1]["sparsity"], abs=2e-3)
    table, _ = fronts(df.reset_index())
    assert not set(table["trial_id"]) & set(stopped)  # never a front point
    assert all(df.loc[tid, "feasible"] for tid in table["trial_id"])
    assert "stopped at rung epoch" in proc.stdout


@pytest.mark.study("mo-asha")
def test_hypervolume_and_robust_front_of_the_mo_asha_study(studies, tmp_path, capsys):
    study_dir, _, robust = studies.result("mo-asha")
    assert run_main("analysis.hypervolume", str(study_dir), "--out", str(tmp_path)) == 0
    curve = pd.read_csv(tmp_path / "hypervolume.csv")
    assert curve["trials"].tolist() == list(range(1, TRIALS + 1))
    assert np.all(np.diff(curve["hypervolume"]) >= 0) and curve["epochs"].is_monotonic_increasing

    assert robust is not None and robust.returncode == 0, (robust.stderr[-3000:] if robust else "")
    summary = pd.read_csv(study_dir.parent / "robust" / "robust.csv")
    assert len(summary) >= 1 and (summary["seeds"] == 2).all() and (summary["runs_complete"] == 2).all()
    assert (summary["val_accuracy_std"] >= 0).all() and summary["survives"].any()
    assert (study_dir.parent / "robust" / "robust.png").stat().st_size > 5000
    assert "front points survive the new seeds" in robust.stdout
