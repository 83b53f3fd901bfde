"""`prunestudy importance` (analysis.hyperparameters) and what the W&B group shows: the analysis
run's front and importances, the trial runs' settings and final metrics."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.hyperparameters import (
    FRONT,
    finished,
    importances,
    needed_trials,
    search_space,
    wandb_summary,
)
from analysis.results import StudyError, load_study
from study import layout
from tests.conftest import run_main
from tests.wandb_reader import _records, offline_runs, read_offline_run

GROUP = "magnitude[magnitude,global,oneshot]/mnist/lenet300/3ep"


def _synthetic(n: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(configs, last reports) of n trials where the answer is known: `a` decides val_accuracy,
    `b` decides sparsity (and costs some accuracy: the front's trade-off), `noise` decides neither
    except where it crashes a trial (val_accuracy when < 0.1, sparsity when > 0.9): the worst
    trials, so a sign error (PED-ANOVA minimizes; both objectives are maximized) makes it the
    most important. Reaching the front takes a high `a` at any `b`."""
    rng = np.random.default_rng(seed)
    a, b, noise = rng.uniform(size=n), rng.uniform(size=n), rng.uniform(size=n)
    val = 0.7 + 0.25 * a - 0.15 * b - 0.4 * (noise < 0.1) + rng.normal(0, 0.003, n)
    sparsity = 0.3 + 0.6 * b - 0.5 * (noise > 0.9) + rng.normal(0, 0.003, n)
    configs = [{"method": "magnitude", "criterion": "magnitude", "scope": "global", "schedule": "oneshot",
                "dataset": "mnist", "model": "lenet300", "a": float(a[i]), "b": float(b[i]),
                "noise": float(noise[i])} for i in range(n)]
    reports = [{"epoch": 3, "total_epochs": 3, "num_classes": 10, "val_accuracy": float(val[i]),
                "sparsity": float(sparsity[i]), "test_accuracy": float(val[i]) - 0.01,
                "dense_params": 266610, "training_iteration": 3} for i in range(n)]
    return configs, reports


def _space() -> dict:
    import optuna.distributions as od

    return {k: od.FloatDistribution(0.0, 1.0) for k in ("a", "b", "noise")}


def _table(n: int, seed: int = 0) -> pd.DataFrame:
    configs, reports = _synthetic(n, seed)
    return pd.DataFrame([{"study": "syn", "study_dir": "syn", "trial_id": f"t{i}", "status": "complete",
                          "method": "magnitude", "variant": "magnitude,global,oneshot",
                          "dataset": "mnist", "model": "lenet300",
                          **{f"config/{k}": v for k, v in c.items()}, **r}
                         for i, (c, r) in enumerate(zip(configs, reports, strict=True))])


def _by_target(table: pd.DataFrame) -> pd.DataFrame:
    return table.pivot(index="param", columns="target", values="importance")


def test_importance_names_the_setting_that_decides_each_objective_and_the_front():
    table = importances(_table(80), {"syn": _space()})
    assert set(table["front"]) == {GROUP} and (table["trials"] == 80).all()
    assert set(table["evaluator"]) == {"ped_anova"} and (table["top_trials"] == 8).all()
    imp = _by_target(table)
    # per target, normalized: they sum to 1 (Optuna's convention)
    assert imp.sum().to_numpy() == pytest.approx([1.0, 1.0, 1.0])
    assert imp.loc["a", "val_accuracy"] > 0.5 and imp.loc["noise", "val_accuracy"] < 0.1
    assert imp.loc["b", "sparsity"] > 0.8
    assert imp.loc["a", "sparsity"] < 0.1 and imp.loc["noise", "sparsity"] < 0.1
    assert imp.loc["a", FRONT] > 0.8 and imp.loc["noise", FRONT] < 0.1
    keys = wandb_summary(table)
    assert keys["importance/val_accuracy/a"] == imp.loc["a", "val_accuracy"]
    assert keys["importance/pareto_front/noise"] == imp.loc["noise", FRONT]
    assert keys["importance/trials"] == 80 and "importance/note" not in keys


def test_too_few_trials_is_a_message_naming_the_count_needed_not_a_number():
    # PED-ANOVA's top quantile must hold 5 trials: ceil(0.1 n) >= 5 from n = 41
    assert (needed_trials(0.1), needed_trials(0.25), needed_trials(0.5)) == (41, 17, 9)
    table = importances(_table(40), {"syn": _space()})
    assert len(table) == 1 and table["importance"].isna().all()
    assert table["note"].iloc[0].startswith(f"needs at least 41 finished trials in group {GROUP} (has 40)")
    assert wandb_summary(table) == {"importance/trials": 40, "importance/note": table["note"].iloc[0]}
    assert table["param"].isna().all()
    assert importances(_table(41), {"syn": _space()})["importance"].notna().all()
    assert importances(_table(40), {"syn": _space()}, quantile=0.25)["importance"].notna().all()


def test_search_space_is_read_back_from_study_json_and_never_evaluated(tmp_path):
    import optuna.distributions as od

    space = {"beta": od.FloatDistribution(1.0, 20.0, log=True), "n": od.IntDistribution(2, 8, step=2),
             "variant": od.CategoricalDistribution(["vae", True, None, 1.5]),
             "seed": od.CategoricalDistribution([3])}  # one value: nothing searched
    layout.write_info(tmp_path, {"search": {k: repr(v) for k, v in space.items()}})
    assert search_space(tmp_path) == {k: v for k, v in space.items() if k != "seed"}
    layout.write_info(tmp_path, {"search": {"x": "__import__('os').system('true')"}})
    with pytest.raises(StudyError, match="cannot read the search distribution"):
        search_space(tmp_path)


def _fabricated_study(folder: Path, n: int) -> Path:
    """A study folder as the search leaves it (study.json, trial folders), of `_synthetic` trials."""
    import optuna.distributions as od

    folder.mkdir()
    layout.write_info(folder, {"name": folder.name, "method": "magnitude", "dataset": "mnist",
                               "search": {"a": repr(od.FloatDistribution(0.0, 1.0)),
                                          "b": repr(od.FloatDistribution(0.0, 1.0)),
                                          "noise": repr(od.FloatDistribution(0.0, 1.0))}})
    for i, (config, report) in enumerate(zip(*_synthetic(n), strict=True)):
        trial = layout.trial_dir(folder, f"{i:05d}")
        trial.mkdir()
        (trial / layout.PARAMS).write_text(json.dumps(config))
        (trial / layout.RESULT).write_text(json.dumps(report) + "\n")
    return folder


def _summary(run_dir: Path) -> dict:
    """The summary of an offline run, its keys flat ('pareto/front/_type')."""
    from wandb.proto import wandb_internal_pb2 as pb

    out = {}
    for raw in _records(next(Path(run_dir).glob("*.wandb"))):
        rec = pb.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == "summary":
            out.update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                        for i in rec.summary.update})
    return out


def test_importance_command_logs_front_and_importances_to_the_study_analysis_run(tmp_path, monkeypatch,
                                                                                capsys):
    import wandb

    for key in ("WANDB_DIR", "WANDB_SILENT", "WANDB_MODE"):  # tracking.configure sets them
        monkeypatch.setenv(key, "offline" if key == "WANDB_MODE" else "")
    study = _fabricated_study(tmp_path / "syn", 60)
    code = run_main("analysis.hyperparameters", str(study), "--out", str(tmp_path / "out"))
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    wandb.teardown()  # the command's exit would wait for wandb-core to write the run (as compare's test)
    assert f"{GROUP}: 60 finished trials" in out and "pareto_front" in out
    csv = pd.read_csv(tmp_path / "out" / "importance.csv")
    assert len(csv) == 9 and set(csv["target"]) == {FRONT, "val_accuracy", "sparsity"}
    png = (tmp_path / "out" / "importance.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    (run,) = offline_runs(study)
    meta, summary = read_offline_run(run), _summary(run)
    assert meta["group"] == "syn" and "param-importance" in meta["tags"]
    # the importances, under keys that say so, as the CSV has them
    imp = _by_target(csv)
    for target in (FRONT, "val_accuracy", "sparsity"):
        for param in ("a", "b", "noise"):
            assert summary[f"importance/{target}/{param}"] == pytest.approx(imp.loc[param, target])
    assert summary["importance/sparsity/b"] > 0.8 and summary["importance/trials"] == 60
    assert summary["importance/table/nrows"] == len(csv)
    # the front beside them: its table, its hypervolume, its plot; and the importance plot
    trial_ids = set(load_study(study)["trial_id"])
    assert summary["pareto/front/_type"] == "table-file" and summary["pareto/front_size"] >= 1
    table = json.loads((run / "files" / summary["pareto/front/path"]).read_text())
    assert len(table["data"]) == summary["pareto/front_size"] and "val_accuracy" in table["columns"]
    assert set(row[table["columns"].index("trial_id")] for row in table["data"]) <= trial_ids
    assert summary["pareto/hypervolume"] > 0
    for image in ("importance/plot", "pareto/plot"):
        assert summary[f"{image}/_type"] == "image-file"
        assert (run / "files" / summary[f"{image}/path"]).stat().st_size > 5000


def test_importance_on_a_real_study_and_its_trial_runs_for_the_wandb_panels(tiny_study, tmp_path,
                                                                           capsys):
    """The 2-trial beta_vae study: too few trials, said so; its trial runs hold every searched
    setting as a top-level config key and the final metrics and status in their summary."""
    study_dir, _, _ = tiny_study
    code = run_main("analysis.hyperparameters", str(study_dir), "--out", str(tmp_path), "--no-wandb")
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    has = len(finished(load_study(study_dir)))  # complete and away from chance: 1 or 2 of them
    assert f"needs at least 41 finished trials in group beta_vae[vae]/mnist/bvae_cnn/3ep (has {has})" in out
    assert pd.read_csv(tmp_path / "importance.csv")["importance"].isna().all()
    searched = set(layout.read_info(study_dir)["search"])
    assert searched == set(search_space(study_dir)) and searched
    assert len(layout.trial_dirs(study_dir)) == 2
    for trial_id, trial in layout.trial_dirs(study_dir):
        (run,) = [r for r in offline_runs(study_dir) if r.name.endswith(f"-{trial_id}")]
        config, summary = read_offline_run(run)["config"], _summary(run)
        params, last = layout.trial_params(trial), layout.trial_history(trial)[-1]
        assert {k: config[k] for k in searched} == {k: params[k] for k in searched}
        for metric in ("val_accuracy", "sparsity", "test_accuracy", "epoch"):
            assert summary[metric] == last[metric], metric
        assert summary["status"] == "complete"


@pytest.mark.parametrize("args, message", [
    (["{missing}"], "does not exist"),
    (["{nospace}"], "records no search space"),
    (["{nospace}", "--target-quantile", "1"], "must be in (0, 1)"),
])
def test_bad_importance_input_is_a_one_line_error_and_exit_code_2(tmp_path, args, message, capsys):
    (tmp_path / "nospace" / "trial_a").mkdir(parents=True)  # a study older than its recorded space
    layout.write_info(tmp_path / "nospace", {"method": "magnitude"})
    (tmp_path / "nospace" / "trial_a" / layout.RESULT).write_text('{"epoch": 1}\n')
    paths = {"missing": tmp_path / "nope", "nospace": tmp_path / "nospace"}
    code = run_main("analysis.hyperparameters", *[a.format(**paths) for a in args], "--no-wandb")
    err = capsys.readouterr().err
    assert code == 2 and message in err.strip().splitlines()[-1], err  # argparse's: after its usage
