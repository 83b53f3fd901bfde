"""The test split never chooses anything (DESIGN.md): every entry point that selects on a metric
(search's --constraint, a study's stored constraints read by analysis, pareto's --objectives,
export's picks and filters, compare's and hypervolume's axes) refuses test_accuracy with exit 2
or a ConfigError, on one line; val_accuracy still works."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from study import layout
from study.config import ConfigError
from study.constraints import Constraint, parse_constraint
from study.metrics import OBJECTIVES, TEST_METRICS, VOCABULARY, check_selectable
from tests.conftest import run_main

REFUSED = "is measured on the test split, which never chooses anything"


def _study(folder, trials, constraints=()):
    folder.mkdir()
    layout.write_info(folder, {"method": "reparam", "dataset": "mnist",
                               "constraints": list(constraints)})
    for name, last in trials.items():
        trial = layout.trial_dir(folder, name)
        trial.mkdir()
        (trial / layout.PARAMS).write_text(json.dumps({"method": "reparam", "dataset": "mnist",
                                                       "model": "lenet300"}))
        (trial / layout.RESULT).write_text(json.dumps({"epoch": 2, "num_classes": 10, **last}))
    return folder


# test_accuracy disagrees with val_accuracy everywhere: a choice read on it would differ
TRIALS = {
    "val_best": {"val_accuracy": 0.95, "test_accuracy": 0.60, "sparsity": 0.5, "nonzero_params": 500},
    "test_best": {"val_accuracy": 0.70, "test_accuracy": 0.99, "sparsity": 0.9, "nonzero_params": 100},
}


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_the_vocabulary_marks_the_test_split_and_one_function_decides():
    assert TEST_METRICS == {"test_accuracy"} and VOCABULARY["test_accuracy"].test_split
    assert not any(VOCABULARY[m].test_split for m in OBJECTIVES)
    assert check_selectable("val_accuracy", "x") == "val_accuracy"
    for name in ("test_accuracy", "vae/test_accuracy"):
        with pytest.raises(ConfigError, match=REFUSED) as e:
            check_selectable(name, "--where")
        assert str(e.value).startswith("--where: ") and "\n" not in str(e.value)


def test_a_test_split_constraint_is_refused_and_val_accuracy_is_not():
    with pytest.raises(ConfigError, match=REFUSED) as e:
        parse_constraint("test_accuracy>=0.9")
    assert "'test_accuracy>=0.9'" in str(e.value) and "use val_accuracy" in str(e.value)
    assert parse_constraint("val_accuracy>=0.9") == Constraint("val_accuracy", ">=", 0.9)


def test_search_refuses_a_test_split_constraint_before_writing(tmp_path, data_dir, capsys):
    assert run_main("study.search", "reparam", "--constraint", "test_accuracy>=0.5",
                    "--storage-dir", str(tmp_path), "--data-dir", str(data_dir)) == 2
    line = _one_line(capsys.readouterr().err)
    assert "--constraint 'test_accuracy>=0.5'" in line and REFUSED in line
    assert not any(tmp_path.iterdir())  # nothing written


def test_pareto_refuses_test_split_objectives_and_takes_val_accuracy(tmp_path, capsys):
    study, out = _study(tmp_path / "s", TRIALS), tmp_path / "out"
    assert run_main("analysis.pareto", str(study), "--objectives", "test_accuracy", "sparsity",
                    "--out", str(out), "--no-wandb") == 2
    line = _one_line(capsys.readouterr().err)
    assert "--objectives test_accuracy sparsity" in line and REFUSED in line
    assert not out.exists()
    assert run_main("analysis.pareto", str(study), "--objectives", "val_accuracy", "sparsity",
                    "--out", str(out), "--no-wandb") == 0
    assert sorted(pd.read_csv(out / "pareto.csv")["trial_id"]) == ["test_best", "val_best"]


def test_pareto_fronts_refuse_a_test_split_objective():
    from analysis.pareto import fronts

    with pytest.raises(ConfigError, match=REFUSED):
        fronts(pd.DataFrame(TRIALS).T.assign(status="complete"), ("sparsity", "test_accuracy"))


@pytest.mark.parametrize("module, extra", [
    ("analysis.pareto", ["--no-wandb"]),
    ("analysis.export", []),
    ("analysis.compare", ["--no-wandb"]),
    ("analysis.hypervolume", []),
])
def test_analysis_refuses_a_study_whose_stored_constraint_reads_the_test_split(
        tmp_path, capsys, module, extra):
    study, out = _study(tmp_path / "s", TRIALS, ["test_accuracy>=0.5"]), tmp_path / "out"
    assert run_main(module, str(study), "--out", str(out), *extra) == 2
    assert REFUSED in _one_line(capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.parametrize("pick, args, expected", [
    ("max-accuracy", [], "val_best"),
    ("knee", [], None),  # both are on the (val_accuracy, sparsity) front
    # --min-accuracy reads val_accuracy: test_best (test 0.99, val 0.70) is below 0.9
    ("min-size", ["--min-accuracy", "0.9"], "val_best"),
])
def test_export_chooses_on_validation_only(tmp_path, capsys, pick, args, expected):
    study, out = _study(tmp_path / "s", TRIALS), tmp_path / "out"
    assert run_main("analysis.export", str(study), "--pick", pick, *args, "--out", str(out)) == 0
    files = [p.name for p in out.iterdir()]
    assert len(files) == 1
    if expected:
        assert files == [f"s-{expected}.yaml"]


def test_export_refuses_a_criterion_of_the_test_split(monkeypatch):
    import analysis.export as export

    monkeypatch.setitem(export.CRITERIA, "max-accuracy", ("test_accuracy", "sparsity"))
    with pytest.raises(ConfigError, match=REFUSED):
        export.choose(pd.DataFrame(), "max-accuracy", 1)
    monkeypatch.setattr(export, "MIN_ACCURACY", "test_accuracy")
    with pytest.raises(ConfigError, match=REFUSED):
        export.choose(pd.DataFrame(), "min-size", 1)


def test_compare_and_hypervolume_choose_on_validation():
    import analysis.compare as compare
    import analysis.hypervolume as hypervolume

    assert compare.ACCURACY == "val_accuracy" and compare.TEST not in compare.VIEWS.values()
    assert hypervolume.OBJECTIVES == OBJECTIVES
