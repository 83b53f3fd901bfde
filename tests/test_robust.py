"""Fronts with error bars (analysis.robust): which runs, and the summary, on synthetic trials."""
from __future__ import annotations

import pandas as pd
import pytest

from analysis.robust import front_configs, seed_runs, summarize


def _df():
    base = {"study": "s", "status": "complete", "method": "reparam", "variant": "reparam",
            "dataset": "mnist", "model": "lenet300", "total_epochs": 3, "num_classes": 10,
            "config/method": "reparam", "config/seed": 7, "config/lr": 0.1, "config/rung_epochs": "1,3",
            "test_accuracy": 0.9}
    rows = [{"trial_id": "a", "val_accuracy": 0.95, "sparsity": 0.5},
            {"trial_id": "b", "val_accuracy": 0.9, "sparsity": 0.8, "config/seed": 9},
            {"trial_id": "c", "val_accuracy": 0.8, "sparsity": 0.7}]  # dominated by b
    return pd.DataFrame([{**base, **r} for r in rows])


def test_every_front_trial_runs_again_with_new_seeds_and_no_rung_probes():
    front = front_configs(_df())
    assert sorted(front["trial_id"]) == ["a", "b"]
    runs = seed_runs(front, 3)
    assert sorted((r["of"], r["config"]["seed"]) for r in runs) == [
        ("a", 8), ("a", 9), ("a", 10), ("b", 10), ("b", 11), ("b", 12)]
    assert all(r["config"]["lr"] == 0.1 and r["config"]["rung_epochs"] == "" for r in runs)
    assert {r["front"] for r in runs} == {"reparam[reparam]/mnist/lenet300/3ep"}


def test_the_summary_gives_mean_and_std_over_the_new_seeds_and_who_survives():
    front = front_configs(_df())
    done = {"test_accuracy": 0.9}
    results = [{"of": "a", "val_accuracy": 0.80, "sparsity": 0.5, **done},
               {"of": "a", "val_accuracy": 0.84, "sparsity": 0.5, **done},
               {"of": "b", "val_accuracy": 0.90, "sparsity": 0.8, **done},
               {"of": "b", "val_accuracy": 0.88, "sparsity": 0.8, **done},
               {"of": "b", "epoch": 1, "diverged": 1}]  # not complete: left out of the statistics
    s = summarize(front, results).set_index("trial_id")
    assert s.loc["a", "val_accuracy_mean"] == pytest.approx(0.82)
    assert s.loc["a", "val_accuracy_std"] == pytest.approx(0.0282843, rel=1e-5)
    assert s.loc["a", "val_accuracy"] == 0.95  # the study's own run, beside
    assert (s.loc["b", "seeds"], s.loc["b", "runs_complete"]) == (3, 2)
    # a's lucky 0.95 falls to 0.82 < b's 0.89 at lower sparsity: dominated, it does not survive
    assert s["survives"].to_dict() == {"a": False, "b": True}


def test_the_robust_front_is_a_table_in_the_studys_wandb_group(tmp_path):
    """The W&B side of `analysis.robust` (the end-to-end run in test_mo_asha skips it for time):
    a real offline run in the study's group, tagged robust, whose table holds the summary."""
    import json

    from analysis.robust import log_to_wandb
    from tests.wandb_reader import offline_runs, read_offline_run

    front = front_configs(_df())
    results = [{"of": t, "val_accuracy": 0.9, "sparsity": 0.6, "test_accuracy": 0.9}
               for t in ("a", "a", "b", "b")]
    summary = summarize(front, results)
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    assert log_to_wandb(summary, study_dir, {"method": "reparam", "dataset": "mnist"}) == "offline"
    # `run.finish()` can return before wandb-core has written the run's file; `analysis.robust`
    # exits right after, and the exit waits for it: here, wait as the exit does
    import wandb

    wandb.teardown()
    (run,) = offline_runs(study_dir)
    logged = read_offline_run(run)
    assert logged["group"] == "study" and {"reparam", "robust"} <= set(logged["tags"])
    (row,) = [h for h in logged["history"] if h.get("robust/front/_type") == "table-file"]
    table = json.loads((run / "files" / row["robust/front/path"]).read_text())
    assert len(table["data"]) == len(summary) == 2
    assert {"trial_id", "val_accuracy_mean", "sparsity_std", "survives"} <= set(table["columns"])
