"""`python -m study.search` end to end, in a subprocess, as users run it (tiny sizes)."""
from __future__ import annotations

import optuna
import pytest

from study import layout
from study.tracking import offline_runs, read_offline_run
from study.trainable import load_state
from tests.conftest import run_main, run_module


def _search(*args, data_dir, timeout=600):
    return run_module("study.search", *args, "--data-dir", str(data_dir), timeout=timeout)


def test_a_two_trial_beta_vae_study(tiny_study):
    study_dir, proc, ray_left = tiny_study
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Pareto front (val_accuracy, sparsity)" in proc.stdout
    assert str(study_dir) in proc.stdout and "wandb sync" in proc.stdout

    # Optuna: two complete trials, both objectives, each linked to its Ray trial
    study = optuna.load_study(study_name="tiny", storage=layout.storage_url(study_dir))
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE] * 2
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert all(len(t.values) == 2 and 0 <= t.values[1] <= 1 for t in trials)
    assert {"beta", "layer_sparsity", "lr"} <= set(trials[0].params) and "latent_dim" not in trials[0].params
    ray_ids = {t.user_attrs["ray_trial_id"] for t in trials}

    # W&B: one offline run per trial, grouped and tagged, holding every epoch's metrics
    runs = [read_offline_run(r) for r in offline_runs(study_dir)]
    runs = [r for r in runs if "pareto" not in r["tags"]]  # analysis may have added a summary run
    assert len(runs) == 2
    for run in runs:
        assert run["group"] == "tiny" and set(run["tags"]) == {"beta_vae", "mnist"}
        assert run["config"]["latent_dim"] == 4
        # every setting it ran with, defaults included, whether searched, fixed or neither
        assert run["config"]["ce_reduction"] == "sum" and run["config"]["eval_batch_size"] == 1024
        epochs = [h["epoch"] for h in run["history"] if "epoch" in h]
        assert epochs == [1, 2, 3]
        first, last = run["history"][0], run["history"][-1]
        assert {"val_accuracy", "sparsity", "vae/kl", "vae/active_units", "params"} <= set(first)
        assert "test_accuracy" in last and last["epoch"] == 3
    # the objectives Optuna holds are the final metrics W&B logged
    finals = sorted((round(r["history"][-1]["val_accuracy"], 9), round(r["history"][-1]["sparsity"], 9))
                    for r in runs)
    assert finals == sorted((round(t.values[0], 9), round(t.values[1], 9)) for t in trials)

    # Ray: each trial's last checkpoint holds the whole state at its last epoch
    for ray_id in ray_ids:
        checkpoints = layout.checkpoints(layout.trial_dir(study_dir, ray_id))
        assert checkpoints, ray_id
        state = load_state(checkpoints[-1])
        assert state["epoch"] == 3 and state["method"]["pruned"]
    assert not ray_left  # no Ray process left behind


@pytest.mark.parametrize("args, message", [
    (["gan"], "unknown method 'gan'"),
    (["beta_vae", "--set", "beta=-1"], "'beta' must be in"),
    (["beta_vae", "--set", "nonsense"], "--set expects key=value"),
    (["beta_vae", "--dataset", "svhn"], "unknown dataset 'svhn'"),
])
def test_bad_input_is_a_one_line_error_and_exit_code_2(tmp_path, data_dir, args, message, capsys):
    assert run_main("study.search", *args, "--storage-dir", str(tmp_path), "--data-dir", str(data_dir)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing written


def test_missing_data_offline_names_the_path(tmp_path):
    """The one check through a real process: `python -m study.search` exits with code 2."""
    proc = _search("beta_vae", "--storage-dir", str(tmp_path / "runs"), data_dir=tmp_path / "nodata")
    assert proc.returncode == 2
    assert str(tmp_path / "nodata" / "MNIST") in proc.stderr
    assert not (tmp_path / "runs").exists()
