from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis.collapse import collapse_by_beta, flag_collapse
from analysis.pareto import fronts
from study import layout
from study.pareto import hypervolume_2d, pareto_mask
from tests.conftest import run_main, run_module
from tests.wandb_reader import offline_runs, read_offline_run


def test_pareto_mask_handles_ties_duplicates_single_points_and_nans():
    assert pareto_mask([]).shape == (0,)  # no finished trial yet: an empty front, not an error
    pts = np.array([
        [0.9, 0.1],  # 0 front
        [0.8, 0.5],  # 1 front
        [0.8, 0.5],  # 2 duplicate of 1: also on the front
        [0.8, 0.4],  # 3 dominated by 1 (tie on accuracy, less sparse)
        [0.5, 0.9],  # 4 front
        [np.nan, 0.99],  # 5 NaN: never on the front
        [0.4, 0.9],  # 6 dominated by 4 (tie on sparsity)
        [0.1, 0.1],  # 7 dominated
    ])
    assert pareto_mask(pts).tolist() == [True, True, True, False, True, False, False, False]
    assert pareto_mask(np.array([[0.3, 0.3]])).tolist() == [True]
    assert pareto_mask(np.array([[np.nan, np.nan]])).tolist() == [False]


@pytest.mark.parametrize("points, expected", [
    ([[1.0, 0.5]], 0.5),
    ([[0.9, 0.2], [0.5, 0.8]], 0.9 * 0.2 + 0.5 * 0.6),
    ([[0.9, 0.2], [0.5, 0.8], [0.4, 0.1], [0.5, 0.8]], 0.9 * 0.2 + 0.5 * 0.6),  # dominated, duplicate
    ([[0.9, 0.2], [np.nan, 1.0]], 0.18),
    ([[0.0, 0.5], [0.7, 0.0]], 0.0),  # on the reference lines: no area
    (np.zeros((0, 2)), 0.0),
])
def test_hypervolume_of_known_points(points, expected):
    assert hypervolume_2d(np.array(points, dtype=float)) == pytest.approx(expected)


def _table(rows):
    base = {"study": "s", "trial_id": "t", "status": "complete", "method": "beta_vae", "variant": "vae",
            "dataset": "mnist", "model": "vae", "total_epochs": 3, "config/latent_dim": 4,
            "config/beta": 1.0, "num_classes": 10}
    return pd.DataFrame([{**base, **r} for r in rows])


def test_fronts_compare_like_with_like_over_complete_trials():
    df = _table([
        {"trial_id": "a", "val_accuracy": 0.9, "sparsity": 0.5},
        {"trial_id": "b", "val_accuracy": 0.8, "sparsity": 0.6},
        {"trial_id": "c", "val_accuracy": 0.99, "sparsity": 0.99, "status": "failed"},  # ignored
        {"trial_id": "d", "method": "reparam", "variant": "reparam", "model": "lenet300",
         "val_accuracy": 0.85, "sparsity": 0.9},
        # another dataset: its own front, never on MNIST's, however good
        {"trial_id": "e", "dataset": "fashion_mnist", "val_accuracy": 0.95, "sparsity": 0.95},
        # the CNN baseline is another procedure and model: its own front
        {"trial_id": "f", "variant": "cnn", "model": "cnn", "val_accuracy": 0.99, "sparsity": 0.4},
        # twice the epochs: another budget, its own front (Blalock et al. 2020)
        {"trial_id": "g", "total_epochs": 6, "val_accuracy": 0.97, "sparsity": 0.9},
        # a study older than the budget: its own front, never pooled with any budget
        {"trial_id": "h", "total_epochs": np.nan, "val_accuracy": 0.5, "sparsity": 0.5},
    ])
    table, volumes = fronts(df)
    members = {name: sorted(g["trial_id"]) for name, g in table.groupby("front")}
    # one front per (method, variant, dataset, model, budget); no joint front mixes them
    assert members == {"beta_vae[vae]/mnist/vae/3ep": ["a", "b"], "beta_vae[cnn]/mnist/cnn/3ep": ["f"],
                       "reparam[reparam]/mnist/lenet300/3ep": ["d"],
                       "beta_vae[vae]/fashion_mnist/vae/3ep": ["e"], "beta_vae[vae]/mnist/vae/6ep": ["g"],
                       "beta_vae[vae]/mnist/vae/-": ["h"]}
    hv = dict(zip(volumes["front"], volumes["hypervolume"], strict=True))
    assert set(hv) == set(members)
    assert hv["beta_vae[vae]/mnist/vae/3ep"] == pytest.approx(0.9 * 0.5 + 0.8 * 0.1)
    assert hv["reparam[reparam]/mnist/lenet300/3ep"] == pytest.approx(0.85 * 0.9)
    assert hv["beta_vae[vae]/fashion_mnist/vae/3ep"] == pytest.approx(0.95 * 0.95)
    assert hv["beta_vae[vae]/mnist/vae/6ep"] == pytest.approx(0.97 * 0.9)
    key = volumes.set_index("front").loc["beta_vae[vae]/mnist/vae/6ep"]
    assert (key["method"], key["variant"], key["dataset"], key["model"], key["total_epochs"]) == (
        "beta_vae", "vae", "mnist", "vae", 6)
    with pytest.raises(ValueError, match="unknown metric 'latency'"):
        fronts(df, ("val_accuracy", "latency"))


def test_a_front_holds_one_dense_architecture_named_only_where_a_key_holds_several(tmp_path,
                                                                                   monkeypatch):
    """beta_vae's default space searches latent_dim in {8, 16}: two networks of 69,234 and 69,450
    dense parameters under one model name, each its own front, never pooled."""
    import analysis.pareto
    from analysis.export import choose
    from analysis.pareto import plot_png

    six = {"model": "bvae_cnn", "total_epochs": 6}
    df = _table([
        {**six, "trial_id": "a8", "config/latent_dim": 8, "dense_params": 69234,
         "val_accuracy": 0.9, "sparsity": 0.5},
        # latent 16 dominates latent 8's only trial: pooled, a8 would be on no front
        {**six, "trial_id": "b16", "config/latent_dim": 16, "dense_params": 69450,
         "val_accuracy": 0.95, "sparsity": 0.6},
        {**six, "trial_id": "c16", "config/latent_dim": 16, "dense_params": 69450,
         "val_accuracy": 0.8, "sparsity": 0.9},
        # a failed trial of latent 8: the name holds whatever its status
        {**six, "trial_id": "f8", "status": "failed", "dense_params": 69234,
         "val_accuracy": 0.99, "sparsity": 0.99},
        # one size in its key: no size in the name, and a study older than dense_params joins it
        {"trial_id": "m", "method": "magnitude", "variant": "magnitude,global,oneshot", **six,
         "dense_params": 69450, "val_accuracy": 0.85, "sparsity": 0.8},
        {"trial_id": "old", "method": "magnitude", "variant": "magnitude,global,oneshot", **six,
         "val_accuracy": 0.5, "sparsity": 0.95},
    ])
    table, volumes = fronts(df)
    members = {name: sorted(g["trial_id"]) for name, g in table.groupby("front")}
    assert members == {"beta_vae[vae]/mnist/bvae_cnn~69234p/6ep": ["a8"],
                       "beta_vae[vae]/mnist/bvae_cnn~69450p/6ep": ["b16", "c16"],
                       "magnitude[magnitude,global,oneshot]/mnist/bvae_cnn/6ep": ["m", "old"]}
    size = dict(zip(volumes["front"], volumes["dense_params"], strict=True))
    assert size["beta_vae[vae]/mnist/bvae_cnn~69234p/6ep"] == 69234
    assert size["magnitude[magnitude,global,oneshot]/mnist/bvae_cnn/6ep"] == 69450
    hv = dict(zip(volumes["front"], volumes["hypervolume"], strict=True))
    assert hv["beta_vae[vae]/mnist/bvae_cnn~69234p/6ep"] == pytest.approx(0.9 * 0.5)
    # a trial of unknown size where a key holds two: apart from both, named so
    unknown = pd.concat([df, _table([{**six, "trial_id": "u", "val_accuracy": 0.7,
                                      "sparsity": 0.7}])], ignore_index=True)
    assert "beta_vae[vae]/mnist/bvae_cnn~?p/6ep" in set(fronts(unknown)[0]["front"])
    # the knee of each architecture's front: latent 8's own point is one
    bvae = df[df["method"] == "beta_vae"]
    assert sorted(choose(bvae, "knee", 2)["trial_id"]) == ["a8", "c16"]
    # the plot names fronts as `fronts` does: every front's line is drawn
    drawn = []
    monkeypatch.setattr(analysis.pareto, "save_figure",
                        lambda fig, path: drawn.extend(ln.get_label() for ln in fig.axes[0].get_lines()))
    plot_png(df, table, tmp_path / "p.png")
    assert sorted(drawn) == sorted(f"{name} front" for name in members)


def test_the_search_summary_names_each_dense_size_of_a_front(tmp_path):
    from analysis.summary import summarize

    study = tmp_path / "s"
    study.mkdir()
    layout.write_info(study, {"method": "beta_vae", "dataset": "mnist"})
    config = {"method": "beta_vae", "dataset": "mnist", "variant": "vae", "model": "bvae_cnn"}
    for name, latent, size, acc in (("a", 8, 69234, 0.9), ("b", 16, 69450, 0.95)):
        trial = layout.trial_dir(study, name)
        trial.mkdir()
        (trial / layout.PARAMS).write_text(json.dumps({**config, "latent_dim": latent}))
        (trial / layout.RESULT).write_text(json.dumps(
            {"epoch": 6, "total_epochs": 6, "val_accuracy": acc, "sparsity": 0.5,
             "test_accuracy": acc, "dense_params": size, "num_classes": 10}))
    text = summarize(study)
    for size in (69234, 69450):
        assert (f"Pareto front (val_accuracy, sparsity) of beta_vae[vae]/mnist/bvae_cnn~{size}p/6ep "
                "(a budget of 6 epochs): 1 of 1 finished trials") in text


def test_the_knee_is_the_front_point_farthest_from_the_chord_away_from_the_origin():
    from analysis.export import choose

    # ends (0.98, 0.1) and (0.2, 0.95); "bulge" lies above the chord (toward (1, 1)), "dent" below
    # it (toward the origin) and farther from it (0.16 vs 0.12 scaled): the knee is the bulge
    df = _table([
        {"trial_id": "end_acc", "val_accuracy": 0.98, "sparsity": 0.1},
        {"trial_id": "bulge", "val_accuracy": 0.7, "sparsity": 0.55},
        {"trial_id": "dent", "val_accuracy": 0.25, "sparsity": 0.7},
        {"trial_id": "end_sparse", "val_accuracy": 0.2, "sparsity": 0.95},
        {"trial_id": "other_dataset", "dataset": "fashion_mnist", "val_accuracy": 0.97, "sparsity": 0.97},
    ])
    mnist = df[df["dataset"] == "mnist"]
    assert choose(mnist, "knee", 1)["trial_id"].tolist() == ["bulge"]
    assert choose(mnist, "knee", 4)["trial_id"].tolist()[-1] == "dent"  # after the two ends
    # several datasets: each front's knee first, never a knee of their mixture
    assert sorted(choose(df, "knee", 2)["trial_id"]) == ["bulge", "other_dataset"]


def test_collapse_flags_read_the_vae_state_at_the_end_of_its_phase():
    def end(kl, units, acc, dims=4):
        return {"vae/end/kl": kl, "vae/end/active_units": units, "vae/end/val_accuracy": acc,
                **{f"vae/end/kl_per_dim/{j}": kl / dims for j in range(dims)}}

    df = _table([
        {"trial_id": "ok", "val_accuracy": 0.95, **end(8.0, 3, 0.9)},
        {"trial_id": "dead", "val_accuracy": 0.10, "config/beta": 10.0, **end(0.001, 0, 0.1)},
        {"trial_id": "lowkl", "val_accuracy": 0.6, **end(0.02, 1, 0.5)},
        # collapsed in its VAE phase, recovered by the head phase: flagged all the same
        {"trial_id": "recovered", "val_accuracy": 0.94, "vae/active_units": 16, **end(0.0001, 0, 0.11)},
        # latent_dim not searched: no config/latent_dim; the dimensions come from kl_per_dim
        {"trial_id": "unsearched", "val_accuracy": 0.9, "config/latent_dim": np.nan,
         **end(0.05, 2, 0.8, dims=8)},
        # three classes (dsprites shapes): chance is 1/3, so 0.34 is chance and 0.2 impossible
        {"trial_id": "three", "num_classes": 3, "val_accuracy": 0.9, **end(5.0, 2, 0.34)},
        {"trial_id": "cnn", "variant": "cnn", "val_accuracy": 0.1, "vae/active_units": 0},
    ])
    flagged = flag_collapse(df).set_index("trial_id")
    assert flagged.loc["ok", "collapse"] == "" and not flagged.loc["ok", "collapsed"]
    assert flagged.loc["dead", "collapse"] == "no_active_units,low_kl,chance_accuracy"
    assert flagged.loc["lowkl", "collapse"] == "low_kl"  # 0.02 / 4 dims < 0.01 nats
    assert flagged.loc["recovered", "collapse"] == "no_active_units,low_kl,chance_accuracy"
    assert flagged.loc["unsearched", "collapse"] == "low_kl"  # 0.05 / 8 dims
    assert flagged.loc["three", "collapse"] == "chance_accuracy"
    assert not flagged.loc["cnn", "collapsed"]  # the CNN baseline has no posterior
    assert flag_collapse(df, kl_per_dim=0.001).set_index("trial_id").loc["lowkl", "collapse"] == ""
    by_beta = collapse_by_beta(flag_collapse(df)).set_index("beta")
    assert by_beta.loc["[10.0, 20.0)", "collapsed"] == 1 and by_beta.loc["[1.0, 2.0)", "trials"] == 5
    assert by_beta.loc["[1.0, 2.0)", "vae_end_val_accuracy"] == pytest.approx(
        (0.9 + 0.5 + 0.11 + 0.8 + 0.34) / 5)


def test_the_search_summary_lists_finished_trials_only(tmp_path):
    from analysis.summary import summarize

    study = tmp_path / "s"
    study.mkdir()
    layout.write_info(study, {"method": "beta_vae", "dataset": "mnist"})
    config = {"method": "beta_vae", "dataset": "mnist", "variant": "vae", "model": "bvae_cnn", "beta": 1.0}
    trials = {"done": [{"epoch": 1, "total_epochs": 1, "val_accuracy": 0.9, "sparsity": 0.5,
                        "test_accuracy": 0.89}],
              # failed after an epoch whose intermediate metrics would dominate the finished trial
              "broken": [{"epoch": 1, "val_accuracy": 0.95, "sparsity": 0.6}],
              "nan": [{"epoch": 1, "diverged": 1, "loss": float("nan")}]}
    for name, rows in trials.items():
        trial = layout.trial_dir(study, name)
        trial.mkdir()
        (trial / layout.PARAMS).write_text(json.dumps({**config, "beta": len(name)}))
        (trial / layout.RESULT).write_text("\n".join(json.dumps(r) for r in rows))
    (layout.trial_dir(study, "broken") / layout.ERROR).write_text("RuntimeError")
    text = summarize(study)
    assert "1 complete" in text and "1 failed" in text and "1 diverged" in text
    assert ("Pareto front (val_accuracy, sparsity) of beta_vae[vae]/mnist/bvae_cnn/1ep (a budget of 1 "
            "epoch): 1 of 1 finished trials") in text
    assert "done" in text and "broken" not in text and "nan" not in text.split("\n", 1)[1]


def test_results_table_reads_the_study(tiny_study):
    from analysis.results import load_results

    study_dir, _, _ = tiny_study
    df = load_results([study_dir])
    assert len(df) == 2 and set(df["status"]) == {"complete"}
    assert set(df["method"]) == {"beta_vae"} and set(df["dataset"]) == {"mnist"}
    # the front key, read from the method's declaration and the trials' reports: the variant and
    # architecture settings' values, the schedule's epochs (1 VAE + 1 head + 1 prune) and the
    # dense architecture's size (study.sparsity), reported every epoch
    assert set(df["variant"]) == {"vae"} and set(df["model"]) == {"bvae_cnn"}
    assert set(df["total_epochs"]) == {3} and df["dense_params"].nunique() == 1
    assert df["optuna_number"].notna().all()
    assert {"config/beta", "config/lr", "val_accuracy", "test_accuracy", "vae/kl"} <= set(df.columns)


def test_pareto_command_writes_csv_plots_and_a_wandb_summary(tiny_study, tmp_path):
    study_dir, _, _ = tiny_study
    proc = run_module("analysis.pareto", str(study_dir), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "hypervolume" in proc.stdout and "beta_vae" in proc.stdout
    csv = pd.read_csv(tmp_path / "pareto.csv")
    assert len(csv) >= 1 and {"val_accuracy", "sparsity", "test_accuracy", "front"} <= set(csv.columns)
    png = (tmp_path / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "plotly" in (tmp_path / "pareto.html").read_text()[:200000].lower()
    runs = [r for r in offline_runs(study_dir) if "pareto" in read_offline_run(r)["tags"]]
    assert len(runs) == 1
    summary = read_offline_run(runs[0])
    assert summary["group"] == "tiny"
    (logged,) = [h for h in summary["history"] if h.get("pareto/front/_type") == "table-file"]
    assert logged["pareto/front/nrows"] == len(csv)
    table = json.loads((runs[0] / "files" / logged["pareto/front/path"]).read_text())
    assert len(table["data"]) == len(csv) and "val_accuracy" in table["columns"]


def test_export_then_retrain_reproduces_the_trial(tiny_study, tmp_path, data_dir, monkeypatch, capsys):
    """Both commands in-process (`main(argv)`): study.train sets the exported trial's thread count
    (OMP_NUM_THREADS, torch's threads), undone after the test."""
    import torch

    study_dir, _, _ = tiny_study
    code = run_main("analysis.export", str(study_dir), "--pick", "max-accuracy", "--top-k", "1",
                    "--out", str(tmp_path))
    assert code == 0, capsys.readouterr().err[-2000:]
    (exported,) = tmp_path.glob("*.yaml")
    doc = yaml.safe_load(exported.read_text())
    assert doc["provenance"]["study"] == "tiny" and doc["config"]["method"] == "beta_vae"
    expected = doc["provenance"]["metrics"]
    monkeypatch.setenv("OMP_NUM_THREADS", "")  # recorded, so that the test's end removes it again
    monkeypatch.delenv("OMP_NUM_THREADS")
    threads = torch.get_num_threads()
    try:
        code = run_main("study.train", str(exported), "--data-dir", str(data_dir), "--out",
                        str(tmp_path / "result.json"))
    finally:
        torch.set_num_threads(threads)
    assert code == 0, capsys.readouterr().err[-2000:]
    run = json.loads((tmp_path / "result.json").read_text())["runs"][0]
    for metric in ("val_accuracy", "test_accuracy", "sparsity", "nonzero_params"):
        assert run[metric] == pytest.approx(expected[metric], abs=1e-12), metric


@pytest.mark.parametrize("module, args, message", [
    ("analysis.pareto", ["{missing}"], "does not exist"),
    ("analysis.pareto", ["{empty}"], "no trial found"),
    ("analysis.pareto", ["{study}", "--objectives", "val_accuracy", "latency"], "unknown metric 'latency'"),
    ("analysis.export", ["{missing}", "--out", "{tmp}/x"], "does not exist"),
    ("analysis.export", ["{notstudy}", "--out", "{tmp}/x"], "not a study folder"),
    ("analysis.export", ["{study}", "--min-sparsity", "1.1", "--out", "{tmp}/x"], "no complete trial"),
    ("analysis.collapse", ["{empty}"], "no trial found"),
    ("study.train", ["{tmp}/absent.yaml"], "cannot read config"),
])
def test_bad_analysis_input_is_a_one_line_error_and_exit_code_2(tiny_study, tmp_path, module, args,
                                                                message, capsys):
    study_dir, _, _ = tiny_study
    (tmp_path / "empty").mkdir()
    layout.write_info(tmp_path / "empty", {})
    (tmp_path / "notstudy").mkdir()
    paths = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "study": study_dir,
             "notstudy": tmp_path / "notstudy", "tmp": tmp_path}
    code = run_main(module, *[a.format(**paths) for a in args])
    out, err = capsys.readouterr()
    assert code == 2, out[-1000:] + err[-1000:]
    assert message in err and len(err.strip().splitlines()) == 1
