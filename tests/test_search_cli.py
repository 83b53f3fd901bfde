"""`python -m study.search` end to end, in a subprocess, as users run it (tiny sizes): one real
2-trial study per method (tests/conftest.py CLI_STUDIES, started in the background) checked by one
test against the plumbing every method shares (Ray, Optuna, W&B) and a table of what each method
reports; bad input in-process, and one real process for the exit code."""
from __future__ import annotations

import json
import re

import optuna
import pytest

from study import layout
from study.config import TrialConfig
from study.trainable import load_state
from tests.conftest import CLI_STUDIES, PLANTED_KEY, run_main, run_module
from tests.wandb_reader import offline_runs, read_offline_run

LENET300_WEIGHTS = 784 * 300 + 300 * 100 + 100 * 10


def _reparam_run(run: dict, history: list[dict]) -> None:
    rate = run["config"]["pruning_rate"]  # pruned exactly at the end, to the searched rate
    assert history[-1]["prunable_sparsity"] == pytest.approx(
        round(rate * LENET300_WEIGHTS) / LENET300_WEIGHTS, abs=1e-9)


LENET300_LAYERS = (784 * 300, 300 * 100, 100 * 10)


def _magnitude_run(run: dict, history: list[dict]) -> None:
    rate, scope = run["config"]["target_sparsity"], run["config"]["scope"]
    # pruned exactly to the searched sparsity by the end of its window, counted from the tensors
    dropped = (round(rate * LENET300_WEIGHTS) if scope == "global"
               else sum(round(rate * n) for n in LENET300_LAYERS))
    assert history[-1]["prunable_sparsity"] == pytest.approx(dropped / LENET300_WEIGHTS, abs=1e-9)
    assert history[0]["prunable_sparsity"] == 0  # the dense epoch before the gradual window


def _importance_run(run: dict, history: list[dict]) -> None:
    assert history[-1]["sparsity"] > 0  # neurons removed (the objective Optuna holds, below)
    assert [h["importance/neurons/head.0"] for h in history] == [50, 25]
    assert [h["importance/neurons/head.2"] for h in history] == [30, 15]
    assert history[-1]["params"] < history[0]["params"]


# what each method's study must show beside the shared plumbing
EXPECT = {
    "beta_vae": {
        "searched": {"beta", "layer_sparsity", "lr"}, "exactly": False, "fixed": {"latent_dim"},
        # every setting it ran with, defaults included, whether searched, fixed or neither
        "config": {"latent_dim": 4, "ce_weight": 32.0, "eval_batch_size": TrialConfig.eval_batch_size},
        "epochs": [1, 2, 3],
        "first_keys": {"val_accuracy", "sparsity", "vae/kl", "vae/active_units", "params"},
        "every_keys": set(),
        "run": None,
        "final_state": lambda state: state["method"]["pruned"],
    },
    "reparam": {
        "searched": {"budget_lambda", "n", "t_init", "pruning_rate", "lr"}, "exactly": True, "fixed": set(),
        "config": {}, "epochs": [1, 2], "first_keys": set(),
        "every_keys": {"reparam/budget_loss", "reparam/surrogate_remaining", "reparam/t/head.0",
                       "reparam/val_accuracy_before_pruning", "val_accuracy", "sparsity"},
        "run": _reparam_run,
        "final_state": lambda state: state["method"]["stage"] == "pruned",
    },
    "importance": {
        "searched": {"mix", "lr"}, "exactly": False, "fixed": {"epochs"},
        "config": {"epochs": 2}, "epochs": [1, 2], "first_keys": set(), "every_keys": set(),
        "run": _importance_run,
        "final_state": lambda state: state["method"]["widths"] == {"head.0": 25, "head.2": 15},
    },
    "magnitude": {
        "searched": {"target_sparsity", "lr"}, "exactly": True, "fixed": {"schedule"},
        "config": {"schedule": "gradual", "epochs": 3}, "epochs": [1, 2, 3], "first_keys": set(),
        "every_keys": {"magnitude/target_sparsity_now", "magnitude/kept/head.0", "val_accuracy",
                       "sparsity"},
        "run": _magnitude_run,
        "final_state": lambda state: state["method"]["stage"] == "final",
    },
    "control": {  # its search space: the dense network, no mask (the dense reference of a budget)
        "searched": {"lr"}, "exactly": True, "fixed": set(),
        "config": {"masks": "", "shuffle": False, "widths": "", "epochs": 2}, "epochs": [1, 2],
        "first_keys": set(), "every_keys": {"control/kept_weights/head.0", "val_accuracy", "sparsity"},
        "run": None,
        "final_state": lambda state: state["method"]["stage"] == "final",
    },
}


def _check_the_live_view(out: str, study_dir, expect: dict) -> None:
    """The study's own view, read from a pipe (not a terminal): plain timestamped lines, one per
    trial start with its searched values, one per epoch, how each ended, the front, the status;
    none of Ray's tables or checkpoint chatter (that went to search.log)."""
    view = [line for line in out.splitlines() if re.match(r"\[\d\d:\d\d:\d\d\] ", line)]
    started = [line for line in view if " started: " in line]
    assert len(started) == 2
    for line in started:
        assert all(f" {k}=" in line for k in expect["searched"]), line
    epochs = [line for line in view if re.search(r"trial \w+ epoch \d+/\d+ \w+: val \d+\.\d%$", line)]
    assert len(epochs) == 2 * len(expect["epochs"])
    assert sum(" complete: val " in line for line in view) == 2
    assert any(line.split("] ", 1)[1].startswith("front: ") for line in view)
    assert re.search(r"study: 2 finished, 0 running, 0 pending; elapsed (\d+m)?\d+s", out)
    assert "Checkpoint successfully created" not in out and "Trial status" not in out
    assert "\x1b[" not in out  # no terminal control codes in a pipe
    assert (study_dir / layout.SEARCH_LOG).stat().st_size > 0


def test_every_method_has_a_study_and_its_expectations():
    from study.methods import METHODS

    assert set(CLI_STUDIES) == set(EXPECT) == set(METHODS)


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.study(f"cli-{m}")) for m in EXPECT])
def test_a_two_trial_study_through_the_cli(studies, method):
    study_dir, proc, ray_left = studies.result(f"cli-{method}")
    name, expect = study_dir.name, EXPECT[method]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Pareto front (val_accuracy, sparsity)" in proc.stdout
    assert str(study_dir) in proc.stdout and "wandb sync" in proc.stdout
    _check_the_live_view(proc.stdout, study_dir, expect)

    # Optuna: two complete trials, both objectives, each linked to its Ray trial
    study = optuna.load_study(study_name=name, storage=layout.storage_url(study_dir))
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE] * 2
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert all(len(t.values) == 2 and 0 <= t.values[1] <= 1 for t in trials)
    params = set(trials[0].params)
    assert params == expect["searched"] if expect["exactly"] else expect["searched"] <= params
    assert not params & expect["fixed"]  # fixed by --set
    ray_ids = {t.user_attrs["ray_trial_id"] for t in trials}
    info = layout.read_info(study_dir)
    assert info["method"] == method and info["num_samples"] == 2
    for t in trials:  # each Optuna trial is its Ray trial: its settings, its final metrics
        trial_dir = layout.trial_dir(study_dir, t.user_attrs["ray_trial_id"])
        assert {k: layout.trial_params(trial_dir)[k] for k in t.params} == t.params
        rows = layout.trial_history(trial_dir)
        assert [r["epoch"] for r in rows] == expect["epochs"]
        assert t.values == [rows[-1][m] for m in ("val_accuracy", "sparsity")]

    # W&B: one offline run per trial, grouped and tagged, holding every epoch's metrics
    runs = [read_offline_run(r) for r in offline_runs(study_dir)]
    runs = [r for r in runs if "pareto" not in r["tags"]]  # analysis may have added a summary run
    assert len(runs) == 2
    for run in runs:
        assert run["group"] == name and set(run["tags"]) == {method, "mnist"}
        assert {k: run["config"][k] for k in expect["config"]} == expect["config"]
        history = [h for h in run["history"] if "epoch" in h]
        assert [h["epoch"] for h in history] == expect["epochs"]
        assert expect["first_keys"] <= set(history[0])
        assert all(expect["every_keys"] <= set(h) for h in history)
        assert "test_accuracy" in history[-1] and "test_accuracy" not in history[0]
        if expect["run"]:
            expect["run"](run, history)
    # W&B holds the settings Optuna chose, and the objectives Optuna holds are the final metrics logged
    chosen = sorted(json.dumps({k: r["config"][k] for k in params}, sort_keys=True) for r in runs)
    assert chosen == sorted(json.dumps(t.params, sort_keys=True) for t in trials)
    finals = sorted((round(h["val_accuracy"], 9), round(h["sparsity"], 9))
                    for h in ([h for h in r["history"] if "epoch" in h][-1] for r in runs))
    assert finals == sorted((round(t.values[0], 9), round(t.values[1], 9)) for t in trials)

    # Ray: each trial's last checkpoint holds the whole state at its last epoch
    for ray_id in ray_ids:
        checkpoints = layout.checkpoints(layout.trial_dir(study_dir, ray_id))
        assert checkpoints, ray_id
        state = load_state(checkpoints[-1])
        assert state["epoch"] == expect["epochs"][-1] and expect["final_state"](state), ray_id
    assert not ray_left  # no Ray process left behind

    # the W&B API key planted in the study's environment appears nowhere
    assert PLANTED_KEY not in proc.stdout and PLANTED_KEY not in proc.stderr
    for path in study_dir.rglob("*"):
        if path.is_file():
            assert PLANTED_KEY.encode() not in path.read_bytes(), path


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
    proc = run_module("study.search", "beta_vae", "--storage-dir", str(tmp_path / "runs"), "--data-dir",
                      str(tmp_path / "nodata"), timeout=600)
    assert proc.returncode == 2
    assert str(tmp_path / "nodata" / "MNIST") in proc.stderr
    assert not (tmp_path / "runs").exists()
