"""`prunestudy sanity` (analysis/sanity.py, study/sanity.py, the `control` method): the controls of
Frankle et al. 2021 and Liu et al. 2019 keep exactly the pruned trials' layer-wise densities,
counted here from the controls' final tensors; shuffled masks move, reinitialized ones stay; a
structured trial's control is the smaller dense network of its widths. One real run (Ray) over a
folder holding a tiny magnitude trial and a tiny importance trial (a study is one method; one
folder with both keeps the test to one Ray run), started in the background; the rest in-process.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from study import layout
from study.config import ConfigError
from study.sparsity import prunable_weights
from study.trainable import load_state, parse_config, restore_method, train
from tests.conftest import background_study, run_main

# oneshot global magnitude pruning: every layer ends at its own density
MAGNITUDE = {"method": "magnitude", "dataset": "mnist", "model": "lenet300", "train_subset": 1024,
             "batch_size": 64, "epochs": 2, "finetune_epochs": 1, "target_sparsity": 0.9,
             "scope": "global", "seed": 3, "degenerate_epochs": 0}
# one round removes half of each hidden layer's neurons: mlp50_30 -> 25, 15
IMPORTANCE = {"method": "importance", "dataset": "mnist", "model": "mlp50_30", "train_subset": 1024,
              "batch_size": 64, "epochs": 2, "warmup_epochs": 1, "prune_fraction": 0.5,
              "target_fraction": 0.5, "seed": 5, "degenerate_epochs": 0}


def write_trial(study_dir: Path, trial_id: str, config: dict, data) -> None:
    """A trial folder as a search leaves it (params.json, result.json, its final checkpoint),
    trained in this process by the trainable every search runs."""
    folder = layout.trial_dir(study_dir, trial_id)
    folder.mkdir(parents=True)
    (folder / layout.PARAMS).write_text(json.dumps(config))

    def report(metrics, state_dir):
        with open(folder / layout.RESULT, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        if state_dir is not None and "test_accuracy" in metrics:
            shutil.copytree(state_dir, folder / "checkpoint_000000")

    train(config, data, report)


@background_study("sanity", cost=30)
def _sanity_run(ctx):
    """The folder with the two trials, then `analysis.sanity` on it with one seed."""
    from study.data import load_dataset

    study_dir = ctx.folder / "pruned"
    study_dir.mkdir()
    layout.write_info(study_dir, {
        "method": "magnitude", "dataset": "mnist", "data_dir": str(ctx.data_dir),
        "cpus_per_trial": 1, "gpus_per_trial": 0})
    data = load_dataset("mnist", ctx.data_dir, download=False)
    write_trial(study_dir, "mag", MAGNITUDE, data)
    write_trial(study_dir, "imp", IMPORTANCE, data)
    proc = ctx.run("analysis.sanity", str(study_dir), "--seeds", "1", "--out", str(ctx.folder / "out"),
                   env={"RAY_TMPDIR": str(ctx.ray_dir())})
    return study_dir, ctx.folder / "out", proc


def _final_network(state_dir: Path, data):
    state = load_state(state_dir)
    return state["config"], restore_method(state["config"], state, data).inference_model()


def _kept(model) -> dict[str, torch.Tensor]:
    """{layer: nonzero mask} of the effective conv/linear weights (study.sparsity's own count)."""
    return {name[:-len(".weight")]: w != 0 for name, w in prunable_weights(model).items()}


@pytest.mark.study("sanity")
def test_controls_keep_the_trials_layer_wise_densities_counted_from_their_tensors(studies, mnist):
    study_dir, out, proc = studies.result("sanity")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = {t: _final_network(layout.checkpoints(layout.trial_dir(study_dir, t))[-1], mnist)[1]
              for t in ("mag", "imp")}
    (runs,) = [d for d in (out / "sanity-runs" / "runs").iterdir() if d.is_dir()]  # one Ray run
    controls = {}
    for _, folder in layout.trial_dirs(runs):
        config, network = _final_network(layout.checkpoints(folder)[-1], mnist)
        of = "imp" if config["model"] == "mlp50_30" else "mag"
        kind = ("method" if config["method"] != "control" else "small_dense" if config.get("widths")
                else "shuffle" if config.get("shuffle") else "reinit")
        controls[of, kind] = (config, network)
    assert sorted(controls) == [("imp", "method"), ("imp", "shuffle"), ("imp", "small_dense"),
                                ("mag", "method"), ("mag", "reinit"),
                                ("mag", "shuffle")]  # importance's reinit is its small_dense, once
    # the trial's own config again, with the controls' seed (trial seed + 1), its own procedure
    for of, trial in (("mag", MAGNITUDE), ("imp", IMPORTANCE)):
        config = controls[of, "method"][0]
        assert {k: config[k] for k in trial} == {**trial, "seed": trial["seed"] + 1}
        assert {c["seed"] for (o, _), (c, _) in controls.items() if o == of} == {trial["seed"] + 1}

    mag = _kept(trials["mag"])
    for kind in ("shuffle", "reinit"):
        config, network = controls["mag", kind]
        assert config["epochs"] == 2 and config["seed"] == MAGNITUDE["seed"] + 1
        kept = _kept(network)
        assert {k: (int(m.sum()), m.shape) for k, m in kept.items()} == {
            k: (int(m.sum()), m.shape) for k, m in mag.items()}  # exactly the same per layer
        same = [torch.equal(kept[k], mag[k]) for k in mag]
        assert all(same) if kind == "reinit" else not any(same)  # shuffled masks move
    assert len({int(m.sum()) * 1000 // m.numel() for m in mag.values()}) > 1  # densities differ

    imp = _kept(trials["imp"])
    dense = {k: m.numel() for k, m in _kept(controls["imp", "shuffle"][1]).items()}
    assert dense == {"head.0": 784 * 50, "head.2": 50 * 30, "head.4": 30 * 10}  # the dense network
    # (a): a random mask in the dense network, the trial's kept weights / dense layer weights
    assert {k: int(m.sum()) for k, m in _kept(controls["imp", "shuffle"][1]).items()} == {
        k: int(m.sum()) for k, m in imp.items()}
    # (c): the smaller dense network of the trial's widths, every weight of it kept
    config, small = controls["imp", "small_dense"]
    assert config["widths"] == "head.0=25,head.2=15" and "masks" not in config
    assert [m.shape for m in _kept(small).values()] == [m.shape for m in imp.values()]
    assert {k: int(m.sum()) for k, m in _kept(small).items()} == {k: m.numel() for k, m in imp.items()}

    table = pd.read_csv(out / "sanity.csv")
    assert sorted(zip(table["trial_id"], table["control"], strict=True)) == sorted(
        k for k in controls if k[1] != "method")  # a row per control, the method's runs beside
    assert table["kept_equal"].all()
    assert (table[["method_complete", "control_complete", "paired"]] == 1).all().all()
    assert (table["control_test_accuracy_std"] == 0).all() and (table["diff_test_accuracy_std"] == 0).all()
    assert table["diff_test_accuracy_mean"].to_numpy() == pytest.approx(
        (table["method_test_accuracy_mean"] - table["control_test_accuracy_mean"]).to_numpy())
    assert table["beats"].to_numpy() == pytest.approx(
        (table["diff_test_accuracy_mean"] > 0).to_numpy())  # one seed: its sign
    imp = table[table["trial_id"] == "imp"]  # the selected run is the trial's own, shown beside
    assert (imp["selected_test_accuracy"] != imp["method_test_accuracy_mean"]).all()
    assert "beats: the method's re-run (the trial's config, seed trial seed + 1)" in proc.stdout
    assert "probability 1/2 (the verdict rests on one seed)" in proc.stdout
    assert "Asymmetry: the controls train at a constant learning rate" in proc.stdout
    assert proc.stdout.count("(the verdict rests on one seed)\n") == 2  # each trial's verdict
    assert "reinit (its mask, fresh weights) is this very network" in proc.stdout


def test_bad_input_is_one_line_and_exit_2(tmp_path, data_dir, capsys):
    assert run_main("analysis.sanity", str(tmp_path / "nope")) == 2
    assert "does not exist" in capsys.readouterr().err
    layout.write_info(tmp_path, {"method": "magnitude", "dataset": "mnist", "data_dir": str(data_dir)})
    assert run_main("analysis.sanity", str(tmp_path)) == 2  # a study without a trial
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert run_main("analysis.sanity", str(tmp_path), "--seeds", "0") == 2
    assert "--seeds must be at least 1" in capsys.readouterr().err
    # a front trial whose final state is gone: refused before anything trains
    folder = layout.trial_dir(tmp_path, "a")
    folder.mkdir()
    (folder / layout.PARAMS).write_text(json.dumps(MAGNITUDE))
    (folder / layout.RESULT).write_text(json.dumps(
        {"epoch": 2, "total_epochs": 2, "val_accuracy": 0.9, "sparsity": 0.9, "num_classes": 10,
         "test_accuracy": 0.9}) + "\n")
    assert run_main("analysis.sanity", str(tmp_path), "--out", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "has no final state" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "sanity-runs" / "runs").exists()  # nothing trained


def test_a_control_takes_the_trials_network_budget_and_optimizer():
    from study.sanity import Pruned, control_base, controls

    reparam = control_base({"method": "reparam", "model": "lenet300", "lr": 0.05, "train_subset": 500}, 7)
    assert {k: reparam[k] for k in ("model", "epochs", "optimizer", "lr", "momentum",
                                    "weight_decay", "train_subset", "degenerate_epochs")} == {
        "model": "lenet300", "epochs": 7, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
        "weight_decay": 5e-5, "train_subset": 500, "degenerate_epochs": 0}  # reparam: SGD
    vae = control_base({"method": "beta_vae", "latent_dim": 4}, 7)
    assert (vae["model"], vae["optimizer"], vae["latent_dim"], "momentum" in vae) == (
        "bvae_cnn", "adam", 4, False)
    assert control_base({**MAGNITUDE, "optimizer": "sgd"}, 2)["optimizer"] == "sgd"  # its own setting
    for config in (reparam, vae):
        parse_config(config)  # every control is a valid trial
    base = control_base(IMPORTANCE, 2)
    made = controls(Pruned(IMPORTANCE, base, {}, {}, {"head.0": 25, "head.2": 15}), Path("m.pt"))
    assert sorted(made) == ["shuffle", "small_dense"] and made["shuffle"]["shuffle"] is True
    assert made["small_dense"] == {**base, "widths": "head.0=25,head.2=15"}


def test_a_beta_vae_trials_mask_lands_on_the_same_layers_of_bvae_cnn(tmp_path, mnist_small):
    """beta_vae's inference network names its layers apart from study.models' bvae_cnn (the
    control's network): the masks are mapped layer by layer, in order, and the control keeps them."""
    from study.sanity import controls, read_pruned

    config = {"method": "beta_vae", "dataset": "mnist", "train_subset": 128, "batch_size": 64,
              "epochs": 1, "head_epochs": 0, "prune_epochs": 1, "layer_sparsity": 0.7,
              "latent_dim": 4, "seed": 0, "degenerate_epochs": 0}
    write_trial(tmp_path, "vae", config, mnist_small)
    trial = _kept(_final_network(layout.checkpoints(layout.trial_dir(tmp_path, "vae"))[-1],
                                 mnist_small)[1])
    pruned = read_pruned(layout.trial_dir(tmp_path, "vae"), mnist_small)
    assert list(pruned.masks) == ["features.1", "features.3", "head.0", "head.2", "head.3"]
    assert [torch.equal(a, b) for a, b in zip(pruned.masks.values(), trial.values(), strict=True)] == [
        True] * 5  # the trial's own mask, layer by layer
    torch.save(pruned.masks, tmp_path / "masks.pt")
    reinit = {**controls(pruned, tmp_path / "masks.pt")["reinit"], "seed": 1, "epochs": 1}
    assert reinit["latent_dim"] == 4 and reinit["optimizer"] == "adam"
    states = []
    train(reinit, mnist_small, lambda m, d: states.append(d and load_state(d)))
    control = _kept(restore_method(reinit, states[-1], mnist_small).inference_model())
    assert [torch.equal(a, b) for a, b in zip(control.values(), trial.values(), strict=True)] == [
        True] * 5


@pytest.mark.parametrize("settings, message", [
    ({"shuffle": True}, "'shuffle' = True needs 'masks'"),
    ({"widths": "head.0=0"}, "setting 'widths' must be"),
    ({"widths": "head.1=5"}, "'head.1', not a hidden layer"),
    ({"masks": "missing.pt"}, "setting 'masks' = 'missing.pt': cannot load it"),
    ({"masks": "WRONG"}, "'head.0' must be a bool tensor of shape (50, 784)"),
])
def test_bad_control_settings_are_one_line_errors(tmp_path, mnist_small, settings, message):
    wrong = tmp_path / "wrong.pt"
    torch.save({"head.0": torch.ones(3, 3, dtype=torch.bool)}, wrong)
    if settings.get("masks") == "WRONG":
        settings = {**settings, "masks": str(wrong)}
    config = {"method": "control", "dataset": "mnist", "model": "mlp50_30", "train_subset": 64,
              "epochs": 1, "seed": 0, **settings}
    with pytest.raises(ConfigError) as e:
        train(config, mnist_small, lambda m, d: None)
    assert message in str(e.value) and "\n" not in str(e.value)


def _runs(method: list, **controls: list):
    """ControlRuns of one front trial: its method's re-runs then its controls, seeds 1, 2, ...; a
    float is a complete run's test accuracy, a dict a run's last report as it stands."""
    from study.sanity import METHOD, ControlRun

    def report(r, kept: dict) -> dict:
        return r if isinstance(r, dict) else {"val_accuracy": 0.5, "test_accuracy": r, **kept}

    out = [ControlRun(0, METHOD, seed, {}, {}, report(r, {}))
           for seed, r in enumerate(method, start=1)]
    for name, reports in controls.items():
        out += [ControlRun(0, name, seed, {}, {"head.0": 10},
                           report(r, {"control/kept_weights/head.0": 10}))
                for seed, r in enumerate(reports, start=1)]
    return out


# a lucky selected run: above every re-run and every control, so it must not decide anything
FRONT = pd.DataFrame([{"front": "f", "trial_id": "t", "val_accuracy": 0.9, "test_accuracy": 0.99}])
DIVERGED = {"epoch": 1, "diverged": 1}


def test_beats_is_the_methods_re_runs_above_the_control_on_every_seed_paired_by_seed():
    from analysis.sanity import summarize, verdicts

    s = summarize(FRONT, _runs([0.80, 0.70, 0.75],
                               shuffle=[0.79, 0.69, 0.74],  # below on each seed, by 0.01
                               reinit=[0.70, 0.72, 0.60]))  # a lower mean, but above on seed 2
    row = s.set_index("control")
    assert row.loc["shuffle", "method_test_accuracy_mean"] == pytest.approx(0.75)
    assert row.loc["shuffle", "method_test_accuracy_std"] == pytest.approx(0.05)
    assert row.loc["shuffle", "control_test_accuracy_mean"] == pytest.approx(0.74)
    assert row.loc["shuffle", "diff_test_accuracy_mean"] == pytest.approx(0.01)
    assert row.loc["shuffle", "diff_test_accuracy_std"] == pytest.approx(0.0, abs=1e-12)
    assert row.loc["reinit", "diff_test_accuracy_mean"] == pytest.approx((0.10 - 0.02 + 0.15) / 3)
    # the shuffle's mean + std (0.79) is above the method's mean, yet it loses on every seed: beaten;
    # reinit's mean is far below, yet it wins seed 2: not beaten (the selected 0.99 decides nothing)
    assert row.loc["shuffle", "beats"] is True and row.loc["reinit", "beats"] is False
    assert (s["selected_test_accuracy"] == 0.99).all() and (s["paired"] == 3).all()
    assert s["kept_equal"].all()
    assert verdicts(s) == ["f trial t: beats shuffle; does not beat reinit"]
    assert verdicts(summarize(FRONT, _runs([0.8, 0.8], shuffle=[0.7, 0.7]))) == [
        "f trial t: beats every control"]
    # a control that kept another count than the trial's (read from control/kept_weights/<layer>)
    runs = _runs([0.8], shuffle=[{"val_accuracy": 0.5, "test_accuracy": 0.7,
                                  "control/kept_weights/head.0": 11}])
    assert not summarize(FRONT, runs)["kept_equal"].any()


def test_one_seed_says_the_verdict_rests_on_it():
    from analysis.sanity import rule, summarize, verdicts

    s = summarize(FRONT, _runs([0.8], shuffle=[0.7], reinit=[0.9]))
    assert verdicts(s) == ["f trial t: beats shuffle; does not beat reinit (the verdict rests on one "
                           "seed)"]
    assert "(the verdict rests on one seed)" in rule(1) and "1/8" in rule(3)
    assert "rests on one seed" not in rule(3)


def test_no_complete_run_is_no_verdict_never_a_defeat():
    from analysis.sanity import summarize, verdicts

    # every control run diverged or failed (an empty last report: the run raised)
    s = summarize(FRONT, _runs([0.8, 0.8], shuffle=[DIVERGED, {}], reinit=[0.7, 0.7]))
    assert s.set_index("control").loc["shuffle", "beats"] is None
    (line,) = verdicts(s)
    assert line == "f trial t: beats reinit; shuffle: no complete run (1 diverged, 1 failed)"
    assert "does not beat" not in line
    # the method's re-runs did not complete: no verdict on any control
    s = summarize(FRONT, _runs([DIVERGED, {"epoch": 1, "degenerate": 1}], shuffle=[0.7, 0.7],
                               reinit=[DIVERGED, DIVERGED]))
    assert s["beats"].isna().all() and (s["method_not_complete"] == "1 degenerate, 1 diverged").all()
    (line,) = verdicts(s)
    assert line == ("f trial t: the method's re-runs: no complete run (1 degenerate, 1 diverged): "
                    "no verdict")
    # a seed without its pair: above on the paired seeds is no verdict; below on one is a defeat
    s = summarize(FRONT, _runs([0.8, DIVERGED], shuffle=[0.7, 0.7], reinit=[0.9, 0.7]))
    assert list(s["beats"]) == [None, False]
    assert verdicts(s) == ["f trial t: does not beat reinit; shuffle: no verdict, 1 of 2 seeds with "
                           "both runs complete (method 1 diverged)"]
