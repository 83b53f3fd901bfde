"""`prunestudy compare` (analysis.compare): like for like only, hypervolumes pooled and per study
beside the best baseline, and the FLOPs view; on synthetic tables and hand-made study folders (no
training), and on the real CLI studies of tests/conftest.py for the refusal they must meet."""
from __future__ import annotations

import json
import statistics
import sys

import numpy as np
import pandas as pd
import pytest

from analysis.compare import (
    compare,
    dense_reference,
    eligible,
    flops_reduction,
    front_points,
    of_size,
    one_group,
    reference_line,
    trials_warning,
)
from analysis.pareto import save_figure
from analysis.results import StudyError
from study import layout
from study.pareto import hypervolume_2d
from tests.conftest import run_main

LENET300_PARAMS = 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10


def _table(rows: list[dict]) -> pd.DataFrame:
    """Rows as analysis.results.load_results gives them: complete reparam trials on LeNet-300-100,
    3 epochs, unless a row says otherwise; flops follow sparsity unless given."""
    base = {"study": "a", "status": "complete", "feasible": True, "method": "reparam",
            "variant": "reparam", "dataset": "fashion_mnist", "model": "lenet300", "total_epochs": 3,
            "num_classes": 10, "dense_params": LENET300_PARAMS, "dense_flops": 1000.0}
    out = []
    for i, r in enumerate(rows):
        row = {**base, "trial_id": f"t{i}", **r}
        row.setdefault("flops", row["dense_flops"] * (1 - row["sparsity"]))
        out.append(row)
    return pd.DataFrame(out)


def test_a_comparison_holds_one_dataset_model_and_budget_and_says_which_groups_it_found():
    same = _table([{"val_accuracy": 0.9, "sparsity": 0.5},
                   {"study": "b", "method": "magnitude", "variant": "magnitude,global,oneshot",
                    "val_accuracy": 0.8, "sparsity": 0.7}])
    assert one_group(eligible(same)) == "fashion_mnist/lenet300/3ep"
    assert sorted(eligible(same)["front"]) == ["magnitude[magnitude,global,oneshot]", "reparam[reparam]"]
    # trials no front counts never make a group: failed, at chance, infeasible
    ignored = _table([{"val_accuracy": 0.9, "sparsity": 0.5},
                      {"model": "conv4", "status": "failed", "val_accuracy": 0.9, "sparsity": 0.5},
                      {"total_epochs": 6, "val_accuracy": 0.11, "sparsity": 0.99},
                      {"dataset": "mnist", "feasible": False, "val_accuracy": 0.9, "sparsity": 0.5}])
    assert one_group(eligible(ignored)) == "fashion_mnist/lenet300/3ep"
    unlike = _table([{"dataset": "mnist", "model": "mlp50_30", "total_epochs": 6,
                      "val_accuracy": 0.9, "sparsity": 0.5},
                     {"study": "b", "val_accuracy": 0.8, "sparsity": 0.6},
                     {"study": "c", "val_accuracy": 0.8, "sparsity": 0.6}])
    with pytest.raises(StudyError) as e:
        one_group(eligible(unlike))
    assert str(e.value) == ("the studies hold 2 (dataset, model, budget) groups: mnist/mlp50_30/6ep "
                            "(study a), fashion_mnist/lenet300/3ep (studies b, c); compare one at a time")
    # the same names, another dense architecture (e.g. a wider LeNet): refused too
    wider = _table([{"val_accuracy": 0.9, "sparsity": 0.5},
                    {"study": "b", "dense_params": 300000, "val_accuracy": 0.8, "sparsity": 0.6}])
    with pytest.raises(StudyError) as e:
        one_group(eligible(wider))
    assert str(e.value) == (
        "the studies hold 2 (dataset, model, budget, dense_params) groups: "
        "fashion_mnist/lenet300~266610p/3ep (study a), fashion_mnist/lenet300~300000p/3ep (study b); "
        "compare one at a time (--dense-params N keeps one dense architecture)")
    # a study older than dense_params is not checked
    old = wider.assign(dense_params=[LENET300_PARAMS, np.nan])
    assert one_group(eligible(old)) == "fashion_mnist/lenet300/3ep"
    with pytest.raises(StudyError, match="nothing to compare"):
        one_group(eligible(_table([{"val_accuracy": 0.1, "sparsity": 0.99}])))
    # the control method prunes nothing: its trials alone are nothing to compare
    with pytest.raises(StudyError, match="nothing to compare"):
        one_group(eligible(_table([{"method": "control", "variant": "False,", "val_accuracy": 0.9,
                                    "sparsity": 0.0}])))


BVAE = {"method": "beta_vae", "variant": "vae", "dataset": "mnist", "model": "bvae_cnn",
        "total_epochs": 6}
LATENT_8, LATENT_16 = 69234, 69450  # bvae_cnn's dense parameters at latent_dim 8 and 16


def test_one_beta_vae_study_searching_two_latent_sizes_is_two_dense_architectures():
    """beta_vae's default space searches latent_dim in {8, 16}: one study, two networks. Compare
    names both (one line) and compares one with --dense-params (of_size), never the two pooled."""
    rows = _table([{**BVAE, "dense_params": LATENT_8, "val_accuracy": 0.9, "sparsity": 0.5},
                   {**BVAE, "dense_params": LATENT_16, "val_accuracy": 0.95, "sparsity": 0.6},
                   {**BVAE, "dense_params": LATENT_16, "val_accuracy": 0.8, "sparsity": 0.9},
                   {**BVAE, "study": "m", "method": "magnitude", "variant": "magnitude,global,oneshot",
                    "dense_params": LATENT_16, "val_accuracy": 0.85, "sparsity": 0.8}])
    with pytest.raises(StudyError) as e:
        one_group(eligible(rows))
    assert str(e.value) == (
        "the studies hold 2 (dataset, model, budget, dense_params) groups: "
        "mnist/bvae_cnn~69234p/6ep (study a), mnist/bvae_cnn~69450p/6ep (studies a, m); "
        "compare one at a time (--dense-params N keeps one dense architecture)")
    sixteen = of_size(eligible(rows), LATENT_16)
    assert one_group(sixteen) == "mnist/bvae_cnn/6ep"  # one size left: no size in the name
    table = compare(sixteen).set_index("front")
    assert table.loc["beta_vae[vae]", "trials"] == 2  # latent 8's trial is not pooled in
    assert table.loc["beta_vae[vae]", "hv"] == pytest.approx(0.95 * 0.6 + 0.8 * 0.3)
    # a study older than dense_params is kept, unchecked; a size no trial has is an error
    old = rows.assign(dense_params=[LATENT_8, LATENT_16, LATENT_16, np.nan])
    assert len(of_size(eligible(old), LATENT_16)) == 3
    with pytest.raises(StudyError, match="no trial to compare counts against dense_params 5: "
                                         "found 69234, 69450"):
        of_size(eligible(rows), 5)


def test_pooled_test_hypervolume_reads_test_accuracy_at_the_points_validation_chose():
    rows = _table([{"trial_id": "a", "val_accuracy": 0.9, "test_accuracy": 0.8, "sparsity": 0.5},
                   {"trial_id": "b", "val_accuracy": 0.7, "test_accuracy": 0.75, "sparsity": 0.9},
                   # dominated on validation; on test it would dominate a: never chosen by it
                   {"trial_id": "c", "val_accuracy": 0.6, "test_accuracy": 0.95, "sparsity": 0.5}])
    table = compare(eligible(rows)).iloc[0]
    assert table["hv"] == pytest.approx(0.9 * 0.5 + 0.7 * 0.4)
    assert table["hv_test"] == pytest.approx(0.8 * 0.5 + 0.75 * 0.4)  # not 0.95 * 0.5 + ...
    assert table["flops_hv_test"] == pytest.approx(0.8 * 0.5 + 0.75 * 0.4)
    points = front_points(eligible(rows))
    sparsity = points[points["view"] == "sparsity"].set_index("trial_id")
    assert sorted(sparsity.index) == ["a", "b"]
    assert sparsity["test_accuracy"].to_dict() == {"a": 0.8, "b": 0.75}
    # a front point without test accuracy: no test hypervolume rather than a smaller one
    missing = compare(eligible(rows.assign(test_accuracy=[0.8, np.nan, 0.95]))).iloc[0]
    assert np.isnan(missing["hv_test"]) and missing["hv"] == table["hv"]
    assert compare(eligible(rows.drop(columns="test_accuracy")))["hv_test"].isna().all()


def test_control_trials_are_the_dense_reference_never_a_front():
    control = {"method": "control", "variant": "False,", "config/masks": "", "config/widths": ""}
    rows = _table([{"val_accuracy": 0.9, "sparsity": 0.5, "test_accuracy": 0.89},
                   {**control, "study": "c", "trial_id": "lr1", "val_accuracy": 0.88,
                    "sparsity": 0.0, "test_accuracy": 0.87},
                   {**control, "study": "c", "trial_id": "lr2", "val_accuracy": 0.86,
                    "sparsity": 0.0, "test_accuracy": 0.9},
                   # sanity's controls: a mask, or a smaller dense network (another size)
                   {**control, "config/masks": "/m.pt", "val_accuracy": 0.99, "sparsity": 0.9},
                   {**control, "config/widths": "head.0=25", "dense_params": 20000,
                    "val_accuracy": 0.99, "sparsity": 0.0},
                   # the dense network of another budget
                   {**control, "total_epochs": 6, "val_accuracy": 0.99, "sparsity": 0.0}])
    pruning = eligible(rows)
    assert set(pruning["method"]) == {"reparam"}
    assert compare(pruning)["front"].tolist() == ["reparam[reparam]"]
    reference = dense_reference(rows, pruning)
    assert reference["trial_id"].tolist() == ["lr1", "lr2"]  # best validation accuracy first
    assert reference_line(reference, 5) == (
        "dense reference (control), dotted: val_accuracy 0.8800, test_accuracy 0.8700 (trial lr1 "
        "of study c, the best val_accuracy of 2 control trials; not a front)")
    assert "none of the 3 control trials" in reference_line(reference.iloc[:0], 3)
    assert reference_line(reference.iloc[:0], 0) == ""
    # another dense size (a wider LeNet) is not this group's reference
    wider = rows.assign(dense_params=np.where(rows["method"] == "control", 300000, LENET300_PARAMS))
    assert dense_reference(wider, eligible(wider)).empty


def test_fronts_of_unequal_trial_counts_are_warned_of():
    rows = _table([{"val_accuracy": 0.9, "sparsity": 0.5}, {"val_accuracy": 0.7, "sparsity": 0.9},
                   {"method": "magnitude", "variant": "magnitude,global,oneshot",
                    "val_accuracy": 0.85, "sparsity": 0.6}])
    assert trials_warning(compare(eligible(rows))) == (
        "warning: the fronts hold different numbers of trials (1 to 2, column trials): a pooled "
        "hypervolume grows with trials; compare per-study means, or equal trial counts")
    assert trials_warning(compare(eligible(rows.iloc[1:]))) == ""


def test_hypervolumes_pooled_and_per_study_against_the_best_baseline():
    mag = {"study": "m", "method": "magnitude", "variant": "magnitude,global,oneshot"}
    rnd = {"study": "m", "method": "magnitude", "variant": "random,global,oneshot"}
    rows = _table([
        {"study": "a", "val_accuracy": 0.9, "sparsity": 0.5},
        {"study": "a", "val_accuracy": 0.7, "sparsity": 0.9},
        {"study": "b", "val_accuracy": 0.85, "sparsity": 0.8},
        {**mag, "val_accuracy": 0.88, "sparsity": 0.6},
        {**mag, "val_accuracy": 0.5, "sparsity": 0.9},
        {**rnd, "val_accuracy": 0.6, "sparsity": 0.6},
    ])
    table = compare(eligible(rows)).set_index("front")
    assert table["baseline"].to_dict() == {"magnitude[magnitude,global,oneshot]": True,
                                           "magnitude[random,global,oneshot]": True,
                                           "reparam[reparam]": False}
    reparam = table.loc["reparam[reparam]"]
    assert (reparam["studies"], reparam["trials"]) == (2, 3)
    own = [0.9 * 0.5 + 0.7 * 0.4, 0.85 * 0.8]  # study a's front, study b's
    pooled = 0.9 * 0.5 + 0.85 * 0.3 + 0.7 * 0.1
    assert reparam["hv"] == pytest.approx(pooled) == pytest.approx(hypervolume_2d(
        np.array([[0.9, 0.5], [0.7, 0.9], [0.85, 0.8]])))
    assert reparam["hv_mean"] == pytest.approx(statistics.fmean(own))
    assert reparam["hv_std"] == pytest.approx(np.std(own, ddof=1))
    best = 0.88 * 0.6 + 0.5 * 0.3  # magnitude's front beats random's 0.36
    assert table.loc["magnitude[random,global,oneshot]", "hv"] == pytest.approx(0.36)
    assert reparam["hv_vs_baseline"] == pytest.approx(pooled - best)
    assert reparam["hv_mean_vs_baseline"] == pytest.approx(statistics.fmean(own) - best)
    assert table.loc["magnitude[magnitude,global,oneshot]", "hv_vs_baseline"] == 0
    assert np.isnan(table.loc["magnitude[random,global,oneshot]", "hv_std"])  # one study: no std
    # no baseline in the group: no difference to give
    alone = compare(eligible(rows[rows["method"] == "reparam"]))
    assert alone["hv_vs_baseline"].isna().all() and alone["flops_hv_mean_vs_baseline"].isna().all()


def test_the_flops_view_measures_work_removed_not_parameters_zeroed():
    # zeros in a wide first layer save more work than as many in a small last layer: FLOPs
    # reduction is not sparsity, and here it ranks the two fronts the other way round
    rows = _table([{"val_accuracy": 0.9, "sparsity": 0.8, "flops": 500.0},
                   {"method": "magnitude", "variant": "magnitude,layer,oneshot",
                    "val_accuracy": 0.9, "sparsity": 0.7, "flops": 100.0}])
    assert flops_reduction(rows).tolist() == pytest.approx([0.5, 0.9])
    table = compare(eligible(rows)).set_index("front")
    assert table.loc["reparam[reparam]", "hv"] == pytest.approx(0.9 * 0.8)
    assert table.loc["reparam[reparam]", "flops_hv"] == pytest.approx(hypervolume_2d([[0.9, 0.5]]))
    assert table.loc["reparam[reparam]", "hv_vs_baseline"] == pytest.approx(0.9 * 0.1)
    assert table.loc["reparam[reparam]", "flops_hv_vs_baseline"] == pytest.approx(-0.9 * 0.4)
    # a study older than the FLOPs counts: no FLOPs hypervolume rather than a zero
    old = compare(eligible(rows.drop(columns=["flops", "dense_flops"])))
    assert old["flops_hv"].isna().all() and not old["hv"].isna().any()


def _final(acc: float, sparsity: float, **extra) -> dict:
    """A complete trial's last report on LeNet-300-100, 3 epochs."""
    return {"epoch": 3, "total_epochs": 3, "val_accuracy": acc, "sparsity": sparsity,
            "test_accuracy": acc - 0.01, "num_classes": 10, "dense_params": LENET300_PARAMS,
            "dense_flops": 532800, "flops": round(532800 * (1 - sparsity)), **extra}


REPARAM = {"method": "reparam", "variant": "reparam", "dataset": "fashion_mnist", "model": "lenet300"}
MAGNITUDE = {"method": "magnitude", "criterion": "magnitude", "scope": "global", "schedule": "oneshot",
             "dataset": "fashion_mnist", "model": "lenet300"}


def _study(folder, trials: dict[str, tuple[dict, dict]]):
    """A study folder as the search writes it: trial id -> (config, last report)."""
    folder.mkdir()
    layout.write_info(folder, {"method": next(iter(trials.values()))[0]["method"],
                               "dataset": "fashion_mnist"})
    for tid, (config, last) in trials.items():
        trial = layout.trial_dir(folder, tid)
        trial.mkdir()
        (trial / layout.PARAMS).write_text(json.dumps(config))
        (trial / layout.RESULT).write_text(json.dumps(last))
    return folder


CONTROL = {"method": "control", "dataset": "fashion_mnist", "model": "lenet300", "masks": "",
           "widths": "", "shuffle": False}


def test_compare_command_writes_the_table_and_both_views(tmp_path, capsys, monkeypatch):
    import analysis.compare

    one = _study(tmp_path / "rp1", {"a": (REPARAM, _final(0.9, 0.5)), "b": (REPARAM, _final(0.7, 0.9))})
    two = _study(tmp_path / "rp2", {"c": (REPARAM, _final(0.85, 0.8))})
    mag = _study(tmp_path / "mag", {"m": (MAGNITUDE, _final(0.88, 0.6)),
                                    "r": ({**MAGNITUDE, "criterion": "random"}, _final(0.6, 0.6))})
    dense = _study(tmp_path / "dense", {"d1": (CONTROL, _final(0.91, 0.0)),
                                        "d2": (CONTROL, _final(0.89, 0.0))})
    out = tmp_path / "out"
    figures = {}  # each figure's title and lines, as drawn

    def save(fig, path):
        ax = fig.axes[0]
        figures[path.name] = (ax.get_title(), {ln.get_label(): ln for ln in ax.get_lines()})
        save_figure(fig, path)

    monkeypatch.setattr(analysis.compare, "save_figure", save)
    monkeypatch.setattr(sys, "argv", sys.argv)  # study.cli sets it as the command's
    assert run_main("study.cli", "compare", str(one), str(two), str(mag), str(dense), "--out",
                    str(out), "--no-wandb") == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"fashion_mnist/lenet300/3ep (dense_params {LENET300_PARAMS}): "
                              "5 trials of studies rp1, rp2, mag")
    assert "magnitude[magnitude,global,oneshot] (baseline)" in printed
    assert "control" not in printed.split("x = sparsity:")[1]  # never a row of the tables
    assert ("dense reference (control), dotted: val_accuracy 0.9100, test_accuracy 0.9000 (trial "
            "d1 of study dense, the best val_accuracy of 2 control trials; not a front)") in printed
    assert ("warning: the fronts hold different numbers of trials (1 to 3, column trials): a pooled "
            "hypervolume grows with trials; compare per-study means, or equal trial counts") in printed
    assert "pooled (test), of (test_accuracy, x) at the points that front chose on val_accuracy" in printed
    assert printed.count("pooled (test)") == 3  # explained once, a column in each view
    assert ("x = FLOPs reduction (1 - flops / dense_flops): unstructured zeros are counted as saved "
            "work (a sparse kernel's view), which flatters unstructured methods against structured "
            "removal") in printed
    for name in ("compare.png", "compare_flops.png"):
        title, lines = figures[name]
        reference = lines["dense reference (control)"]
        assert reference.get_linestyle() == ":" and set(reference.get_ydata()) == {0.91}
        assert not any("control" in label for label in lines if label != "dense reference (control)")
    assert "unstructured zeros are counted as saved work" in figures["compare_flops.png"][0]
    assert "unstructured" not in figures["compare.png"][0]
    points = pd.read_csv(out / "compare_points.csv")
    reparam = points[(points["front"] == "reparam[reparam]") & (points["view"] == "sparsity")]
    assert reparam.set_index("trial_id")["test_accuracy"].sort_index().to_dict() == pytest.approx(
        {"a": 0.89, "b": 0.69, "c": 0.84})
    csv = pd.read_csv(out / "compare.csv").set_index("front")
    assert "control" not in " ".join(csv.index)
    assert csv.loc["reparam[reparam]", "hv_test"] == pytest.approx(0.89 * 0.5 + 0.84 * 0.3 + 0.69 * 0.1)
    assert csv.loc["reparam[reparam]", ["studies", "trials"]].tolist() == [2, 3]
    assert csv.loc["reparam[reparam]", "hv"] == pytest.approx(0.9 * 0.5 + 0.85 * 0.3 + 0.7 * 0.1)
    assert csv.loc["reparam[reparam]", "hv_std"] > 0
    assert csv.loc["reparam[reparam]", "hv_vs_baseline"] == pytest.approx(
        csv.loc["reparam[reparam]", "hv"] - 0.88 * 0.6)
    assert csv.loc["reparam[reparam]", "flops_hv"] == pytest.approx(csv.loc["reparam[reparam]", "hv"],
                                                                    abs=1e-5)
    for name in ("compare.png", "compare_flops.png"):
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "plotly" in (out / "compare.html").read_text()[:200000].lower()


def test_compare_refuses_unlike_studies_on_one_line_with_exit_code_2(tmp_path, capsys):
    three = _study(tmp_path / "three", {"a": (REPARAM, _final(0.9, 0.5))})
    six = _study(tmp_path / "six", {"b": (REPARAM, _final(0.9, 0.5, total_epochs=6, epoch=6))})
    assert run_main("analysis.compare", str(three), str(six), "--no-wandb") == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        "error: the studies hold 2 (dataset, model, budget) groups: fashion_mnist/lenet300/3ep "
        "(study three), fashion_mnist/lenet300/6ep (study six); compare one at a time")
    assert not (tmp_path / "three" / "analysis").exists()  # nothing written
    assert run_main("analysis.compare", str(tmp_path / "nope")) == 2
    assert "does not exist" in capsys.readouterr().err


def test_compare_names_a_beta_vae_studys_two_latent_sizes_and_compares_one(tmp_path, capsys):
    def bvae(latent: int) -> dict:
        return {"method": "beta_vae", "variant": "vae", "dataset": "mnist", "model": "bvae_cnn",
                "latent_dim": latent}

    study = _study(tmp_path / "bvae", {
        "a": (bvae(8), _final(0.9, 0.5, dense_params=LATENT_8)),
        "b": (bvae(16), _final(0.95, 0.6, dense_params=LATENT_16)),
        "c": (bvae(16), _final(0.8, 0.9, dense_params=LATENT_16))})
    assert run_main("analysis.compare", str(study), "--no-wandb") == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "error: the studies hold 2 (dataset, model, budget, dense_params) groups: "
        "mnist/bvae_cnn~69234p/3ep (study bvae), mnist/bvae_cnn~69450p/3ep (study bvae); compare "
        "one at a time (--dense-params N keeps one dense architecture)")
    assert run_main("analysis.compare", str(study), "--dense-params", str(LATENT_16), "--out",
                    str(tmp_path / "out"), "--no-wandb") == 0
    assert capsys.readouterr().out.startswith(
        f"mnist/bvae_cnn/3ep (dense_params {LATENT_16}): 2 trials of study bvae")
    assert pd.read_csv(tmp_path / "out" / "compare.csv")["hv"].tolist() == pytest.approx(
        [0.95 * 0.6 + 0.8 * 0.3])


def test_the_comparison_is_a_table_in_the_first_studys_wandb_group(tmp_path, capsys):
    import wandb

    from tests.wandb_reader import offline_runs, read_offline_run

    study = _study(tmp_path / "rp", {"a": (REPARAM, _final(0.9, 0.5))})
    assert run_main("analysis.compare", str(study), "--out", str(tmp_path / "out")) == 0
    wandb.teardown()  # the command's exit would wait for wandb-core to write the run: as robust's test
    (run,) = offline_runs(study)
    logged = read_offline_run(run)
    assert logged["group"] == "rp" and "compare" in logged["tags"]
    (row,) = [h for h in logged["history"] if h.get("compare/fronts/_type") == "table-file"]
    table = json.loads((run / "files" / row["compare/fronts/path"]).read_text())
    assert len(table["data"]) == 1 and {"front", "hv", "flops_hv"} <= set(table["columns"])


@pytest.mark.study("cli-reparam")
@pytest.mark.study("cli-magnitude")
def test_the_real_reparam_and_magnitude_studies_differ_in_budget_and_are_not_compared(studies, capsys):
    """The CLI studies run the same LeNet-300-100 on MNIST, reparam for 2 epochs and magnitude for 3:
    the same dense architecture (dense_params, reported every epoch), not the same budget."""
    from analysis.results import load_results

    reparam, _, _ = studies.result("cli-reparam")
    magnitude, _, _ = studies.result("cli-magnitude")
    df = load_results([reparam, magnitude])
    assert set(df["dense_params"]) == {LENET300_PARAMS}
    assert run_main("analysis.compare", str(reparam), str(magnitude), "--no-wandb") == 2
    err = capsys.readouterr().err
    assert "mnist/lenet300/2ep (study tiny)" in err and "mnist/lenet300/3ep (study mag)" in err
    assert len(err.strip().splitlines()) == 1
