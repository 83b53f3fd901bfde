"""Hypervolume curves (analysis.hypervolume; their comparisons, study.pareto) on synthetic study
folders: no training."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from optuna._hypervolume import compute_hypervolume  # private: only an oracle for the test

from analysis.hypervolume import hypervolume_curves
from study import layout
from study.pareto import hypervolume_2d
from tests.conftest import run_main


def test_the_2d_hypervolume_agrees_with_optunas():
    rng = np.random.default_rng(1)
    for n in (1, 2, 5, 40):
        pts = rng.uniform(0, 1, size=(n, 2))
        # Optuna minimizes: maximized points are negated losses, the reference (0, 0) stays
        assert hypervolume_2d(pts) == pytest.approx(compute_hypervolume(-pts, np.zeros(2)))


def _write_study(folder, trials, constraints=()):
    """trials: (trial id, model, status-defining last report, seconds it ran, when it ended)."""
    folder.mkdir()
    layout.write_info(folder, {"method": "reparam", "dataset": "mnist",
                               "constraints": list(constraints)})
    for tid, model, last, ran, end in trials:
        trial = layout.trial_dir(folder, tid)
        trial.mkdir()
        (trial / layout.PARAMS).write_text(json.dumps({"method": "reparam", "dataset": "mnist",
                                                       "model": model, "variant": "reparam"}))
        row = {"epoch": 3, "total_epochs": 3, "num_classes": 10, "time_total_s": ran,
               "timestamp": end, **last}
        (trial / layout.RESULT).write_text(json.dumps(row))
    return folder


def done(acc, sparsity):
    return {"val_accuracy": acc, "sparsity": sparsity, "test_accuracy": acc}


TRIALS = [  # started at 1000 (the first), ended in the order c, a, n, b, d, x
    ("a", "lenet300", done(0.9, 0.5), 20.0, 1030),
    ("b", "lenet300", done(0.7, 0.9), 30.0, 1050),
    ("c", "lenet300", done(0.95, 0.2), 10.0, 1010),
    ("d", "lenet300", done(0.1, 0.99), 10.0, 1060),   # at chance: no point
    ("n", "lenet300", {"diverged": 1, "loss": float("nan")}, 5.0, 1040),  # no point, counted
    ("x", "conv4", done(0.8, 0.8), 60.0, 1070),       # another model: its own curve
    ("r", "lenet300", {"val_accuracy": 0.99, "sparsity": 0.99}, 5.0, 1080),  # running: not ended
]


def test_hypervolume_grows_as_trials_end_per_front(tmp_path):
    from analysis.results import load_results

    df = load_results([_write_study(tmp_path / "s", TRIALS)])
    curves = hypervolume_curves(df)
    lenet = curves[curves["front"] == "reparam[reparam]/mnist/lenet300/3ep"]
    assert lenet["trial_id"].tolist() == ["c", "a", "n", "b", "d"]
    assert lenet["trials"].tolist() == [1, 2, 3, 4, 5]
    assert lenet["seconds"].tolist() == [10, 30, 40, 50, 60]  # since the first start (1000)
    assert lenet["epochs"].tolist() == [3, 6, 9, 12, 15]
    hv_ca = 0.95 * 0.2 + 0.9 * 0.3
    assert lenet["hypervolume"].tolist() == pytest.approx(
        [0.95 * 0.2, hv_ca, hv_ca, hv_ca + 0.7 * 0.4, hv_ca + 0.7 * 0.4])
    conv = curves[curves["front"] == "reparam[reparam]/mnist/conv4/3ep"]
    assert conv["hypervolume"].tolist() == pytest.approx([0.64]) and conv["seconds"].tolist() == [70]


def test_each_dense_size_of_a_key_is_a_curve_of_its_own(tmp_path):
    """A searched setting that changes the network (beta_vae's latent_dim): two dense sizes under
    one model name are two fronts, named by size, as analysis.pareto names them."""
    from analysis.results import load_results

    trials = [("a", "lenet300", {**done(0.9, 0.5), "dense_params": 1000}, 10.0, 1010),
              ("b", "lenet300", {**done(0.95, 0.6), "dense_params": 2000}, 10.0, 1020),
              ("c", "conv4", {**done(0.8, 0.8), "dense_params": 3000}, 10.0, 1030)]
    curves = hypervolume_curves(load_results([_write_study(tmp_path / "s", trials)]))
    last = curves.groupby("front").tail(1).set_index("front")["hypervolume"].to_dict()
    assert last == pytest.approx({"reparam[reparam]/mnist/lenet300~1000p/3ep": 0.9 * 0.5,
                                  "reparam[reparam]/mnist/lenet300~2000p/3ep": 0.95 * 0.6,
                                  "reparam[reparam]/mnist/conv4/3ep": 0.8 * 0.8})


def test_infeasible_trials_add_no_hypervolume(tmp_path):
    from analysis.results import load_results

    df = load_results([_write_study(tmp_path / "s", TRIALS, ["val_accuracy>=0.8"])])
    lenet = hypervolume_curves(df).query("front == 'reparam[reparam]/mnist/lenet300/3ep'")
    hv_ca = 0.95 * 0.2 + 0.9 * 0.3
    assert lenet["hypervolume"].tolist() == pytest.approx([0.95 * 0.2, hv_ca, hv_ca, hv_ca, hv_ca])


def test_hypervolume_command_writes_csv_and_png_per_study(tmp_path, capsys):
    one = _write_study(tmp_path / "tpe", TRIALS)
    two = _write_study(tmp_path / "random", TRIALS[:2])
    assert run_main("analysis.hypervolume", str(one), str(two), "--out", str(tmp_path / "out")) == 0
    csv = pd.read_csv(tmp_path / "out" / "hypervolume.csv")
    assert set(csv["study"]) == {"tpe", "random"}
    assert csv.query("study == 'random'")["hypervolume"].tolist() == pytest.approx(
        [0.9 * 0.5, 0.9 * 0.5 + 0.7 * 0.4])
    png = (tmp_path / "out" / "hypervolume.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "reparam[reparam]/mnist/lenet300/3ep" in capsys.readouterr().out
    assert run_main("analysis.hypervolume", str(tmp_path / "nope")) == 2
    assert "does not exist" in capsys.readouterr().err


def test_curves_compare_by_trials_by_budget_and_by_trials_to_reach_a_target():
    from study.pareto import at_budget, by_trials, trials_to_reach

    curve = pd.DataFrame({"trials": [1, 2, 3], "epochs": [3, 5, 9], "hypervolume": [0.1, 0.3, 0.4]})
    assert by_trials(curve, 5).tolist() == pytest.approx([0.1, 0.3, 0.4, 0.4, 0.4])
    assert by_trials(curve, 2).tolist() == pytest.approx([0.1, 0.3])
    assert by_trials(curve.iloc[:0], 2).tolist() == [0.0, 0.0]
    assert at_budget(curve, "epochs", 8) == 0.3 and at_budget(curve, "epochs", 2) == 0.0
    assert trials_to_reach(np.array([0.1, 0.3, 0.4]), 0.3) == 2
    assert trials_to_reach(np.array([0.1, 0.3]), 0.35) is None
