"""Constraints (study.constraints): parsing, Optuna's constrained samplers, and analysis honouring
them (front, hypervolume, export), on synthetic trials."""
from __future__ import annotations

import json

import optuna
import pytest

from analysis.export import choose
from analysis.pareto import fronts
from analysis.results import load_results
from study import layout
from study.config import ConfigError
from study.constraints import (
    MISSING_VIOLATION,
    Constraint,
    feasible,
    parse_constraint,
    tell_constraints,
    violations,
)


@pytest.mark.parametrize("text, expected", [
    ("val_accuracy>=0.95", Constraint("val_accuracy", ">=", 0.95)),
    (" sparsity <= .9 ", Constraint("sparsity", "<=", 0.9)),
    ("flops<=2e6", Constraint("flops", "<=", 2e6)),
    ("reparam/target_missed<=0", Constraint("reparam/target_missed", "<=", 0.0)),
])
def test_constraints_parse(text, expected):
    assert parse_constraint(text) == expected


@pytest.mark.parametrize("text, message", [
    ("val_accuracy>0.95", "is not METRIC>=NUMBER"),
    ("val_accuracy>=high", "is not METRIC>=NUMBER"),
    ("", "is not METRIC>=NUMBER"),
    ("latency<=3", "unknown metric 'latency'"),
    ("val_accuracy>=1e999", "must be finite"),
    ("test_accuracy>=0.9", "measured on the test split"),
])
def test_bad_constraints_are_one_line_errors_naming_the_text(text, message):
    with pytest.raises(ConfigError, match=message) as e:
        parse_constraint(text)
    assert repr(text) in str(e.value) and "\n" not in str(e.value)


def test_every_registered_methods_prefix_is_a_constraint_metric_without_editing_constraints(
        monkeypatch):
    import study.methods
    from study.methods import METHODS, Importance

    for cls in METHODS.values():
        assert parse_constraint(f"{cls.metric_prefix}x<=1").metric == f"{cls.metric_prefix}x"
    with pytest.raises(ConfigError, match="unknown metric 'scored/x'"):
        parse_constraint("scored/x<=1")
    monkeypatch.setattr(study.methods, "METHODS", dict(METHODS))
    study.methods.register(type("Scored", (Importance,), {"metric_prefix": "scored/"}), "scored")
    assert parse_constraint("scored/x<=1") == Constraint("scored/x", "<=", 1.0)


def test_violation_is_positive_on_the_wrong_side_of_the_bound():
    at_least, at_most = parse_constraint("val_accuracy>=0.9"), parse_constraint("flops<=100")
    assert at_least.violation({"val_accuracy": 0.85}) == pytest.approx(0.05)
    assert at_least.violation({"val_accuracy": 0.95}) == pytest.approx(-0.05)
    assert at_most.violation({"flops": 150}) == 50 and at_most.violation({"flops": 100}) == 0
    assert at_least.violation({}) == MISSING_VIOLATION  # a missing metric is a violation
    assert at_least.violation({"val_accuracy": float("nan")}) == MISSING_VIOLATION
    assert feasible([at_least, at_most], {"val_accuracy": 0.9, "flops": 1})
    assert not feasible([at_least, at_most], {"val_accuracy": 0.9, "flops": 101})
    assert feasible([], {})


def test_constraints_reach_optunas_samplers_and_best_trials():
    constraints = [parse_constraint("val_accuracy>=0.9")]
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for sampler in (optuna.samplers.TPESampler(seed=0, n_startup_trials=2),
                    optuna.samplers.NSGAIISampler(seed=0, population_size=2),
                    optuna.samplers.GPSampler(seed=0, n_startup_trials=2)):
        study = optuna.create_study(directions=["maximize", "maximize"], sampler=sampler)
        for acc, sp in ((0.95, 0.5), (0.85, 0.99), (0.92, 0.6), (0.5, 0.999)):
            t = study.ask(dist)
            metrics = {"val_accuracy": acc, "sparsity": sp}
            tell_constraints(t, constraints, metrics)
            study.tell(t, [acc, sp])
        t = study.ask(dist)  # the samplers sample on, constrained
        assert 0 <= t.params["x"] <= 1
        infeasible = study.trials[1]
        assert infeasible.constraints == {"val_accuracy>=0.9": pytest.approx(0.05)}
        assert infeasible.user_attrs == {"constraints": ["val_accuracy>=0.9"], "feasible": False}
        # the very sparse trials are infeasible: the best trials are the feasible front only
        assert sorted(b.number for b in study.best_trials) == [0, 2]


def _study(folder, constraints, trials):
    folder.mkdir()
    layout.write_info(folder, {"method": "reparam", "dataset": "mnist", "constraints": constraints})
    for name, last in trials.items():
        trial = layout.trial_dir(folder, name)
        trial.mkdir()
        (trial / layout.PARAMS).write_text(json.dumps({"method": "reparam", "dataset": "mnist",
                                                       "model": "lenet300"}))
        (trial / layout.RESULT).write_text(json.dumps({"epoch": 2, "num_classes": 10,
                                                       "test_accuracy": 0.9, **last}))
    return folder


def test_front_hypervolume_and_export_honour_the_studys_constraints(tmp_path):
    study = _study(tmp_path / "s", ["val_accuracy>=0.9"], {
        "good": {"val_accuracy": 0.95, "sparsity": 0.5, "nonzero_params": 500},
        "sparse": {"val_accuracy": 0.8, "sparsity": 0.95, "nonzero_params": 50},  # a front point without it
    })
    df = load_results([study])
    assert df.set_index("trial_id")["feasible"].to_dict() == {"good": True, "sparse": False}
    table, volumes = fronts(df)
    assert table["trial_id"].tolist() == ["good"]
    assert volumes["hypervolume"].tolist() == pytest.approx([0.95 * 0.5])
    assert volumes["left_out_infeasible"].tolist() == [1]
    assert choose(df, "max-accuracy", 5)["trial_id"].tolist() == ["good"]
    assert choose(df, "min-size", 5)["trial_id"].tolist() == ["good"]
    # the same trials without the constraint: both on the front
    df = df.drop(columns="feasible")
    assert sorted(fronts(df)[0]["trial_id"]) == ["good", "sparse"]
    assert violations([parse_constraint("val_accuracy>=0.9")], {"val_accuracy": 0.8}) == {
        "val_accuracy>=0.9": pytest.approx(0.1)}
