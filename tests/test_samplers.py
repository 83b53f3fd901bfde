"""`--sampler NAME --sampler-arg KEY=VALUE`: prunestudy's sampler settings reach Optuna's sampler,
are recorded in study.json, and a setting Optuna's class does not take is a one-line error."""
from __future__ import annotations

import pytest

from study import layout, ray_compat, search
from tests.conftest import run_main


def test_sampler_args_reach_the_optuna_sampler_and_study_json(tmp_path, data_dir):
    args = search.parse_args(["reparam", "--sampler", "nsga2", "--sampler-arg", "population_size=4",
                              "--name", "s", "--storage-dir",
                              str(tmp_path), "--data-dir", str(data_dir)])
    study_dir, info, _ = search._new_study(args)
    assert info["sampler_args"] == {"population_size": 4}
    searcher = search.make_searcher(info["space"], tmp_path, "s", "nsga2", 0, None,
                                    info["sampler_args"])
    sampler = ray_compat.optuna_study(searcher).sampler
    assert type(sampler).__name__ == "NSGAIISampler"
    assert sampler._population_size == 4
    search._create_study(study_dir, info)
    assert layout.read_info(study_dir)["sampler_args"] == {"population_size": 4}


@pytest.mark.parametrize("name", sorted(search.SAMPLER_DEFAULTS))
def test_a_sampler_gets_prunestudys_defaults_unless_a_sampler_arg_overrides_them(tmp_path, name):
    space = search.build_space(search.parse_args(["reparam"]))
    sampler = ray_compat.optuna_study(search.make_searcher(space, tmp_path, "s", name, 0)).sampler
    defaults = search.SAMPLER_DEFAULTS[name]
    assert defaults and all(getattr(sampler, f"_{k}") == v for k, v in defaults.items())
    key, value = next(iter(defaults.items()))
    other = value + 3 if isinstance(value, int) else not value
    assert search.sampler_settings(name, [f"{key}={other}"])[key] == other


@pytest.mark.parametrize("args, message", [
    (["--sampler", "nsga2", "--sampler-arg", "popsize=3"],
     "--sampler-arg popsize: not a setting of optuna.samplers.NSGAIISampler"),
    (["--sampler-arg", "seed=3"], "--sampler-arg seed: not a setting of optuna.samplers.TPESampler"),
    (["--sampler-arg", "gamma=0.1"], "--sampler-arg gamma: not a setting"),  # a callable in Optuna
    (["--sampler-arg", "n_startup_trials=five"], "takes int there"),
    (["--sampler-arg", "n_startup_trials=true"], "takes int there"),
    (["--sampler", "random", "--sampler-arg", "seed=1"], "(settings: none)"),
    (["--sampler-arg", "n_startup_trials"], "--sampler-arg expects key=value"),
    (["--sampler", "nsga2", "--sampler-arg", "population_size=1"],
     "population_size` must be greater than or equal to 2"),
    (["--resume", "x", "--sampler-arg", "n_startup_trials=2"], "cannot change on --resume"),
])
def test_bad_sampler_args_are_one_line_errors(tmp_path, data_dir, args, message, capsys):
    code = run_main("study.search", "reparam", *args, "--storage-dir", str(tmp_path), "--data-dir",
                    str(data_dir))
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not any(tmp_path.iterdir())  # nothing written


def test_bench_sampler_specs_name_a_sampler_and_its_settings():
    from study.bench import sampler_spec
    from study.config import ConfigError

    assert sampler_spec("random") == ("random", [])
    assert sampler_spec("tpe:multivariate=true,n_startup_trials=5") == (
        "tpe", ["multivariate=true", "n_startup_trials=5"])
    with pytest.raises(ConfigError, match="'cmaes' is not a sampler"):
        sampler_spec("cmaes:x=1")


def test_gp_sampler_searches_both_objectives_under_a_constraint(tmp_path):
    """--sampler gp: Optuna's GPSampler behind the study's searcher, its model-based suggestions
    after the start-up trials, each trial's constraint value told (what GPSampler reads)."""
    import optuna

    from study.constraints import parse_constraints

    space = search.build_space(search.parse_args(["reparam"]))
    searcher = search.make_searcher(space, tmp_path, "s", "gp", 0,
                                    parse_constraints(["val_accuracy>=0.5"]),
                                    search.sampler_settings("gp", ["n_startup_trials=2"]))
    study = ray_compat.optuna_study(searcher)
    assert type(study.sampler).__name__ == "GPSampler" and study.sampler._n_startup_trials == 2
    for i in range(4):
        config = searcher.suggest(f"t{i}")
        lr = config["lr"]  # a made-up response: accuracy falls with the learning rate
        searcher.on_trial_complete(f"t{i}", {"val_accuracy": 1 - 10 * lr, "sparsity": config["pruning_rate"],
                                             "epoch": 1, "final": True, "test_accuracy": 0.5})
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 4
    assert all(t.constraints == {"val_accuracy>=0.5": pytest.approx(0.5 - t.values[0])} for t in trials)
    # each suggestion's sampling time is on its trial, read back as `bench samplers` reports it
    from study.bench import sampling_seconds

    asked = sampling_seconds(tmp_path)
    assert len(asked) == 4 and all(s > 0 for s in asked)
    assert max(asked[2:]) > max(asked[:2])  # the GP's fits cost more than the random start-up
