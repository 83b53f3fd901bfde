"""`python -m analysis.hypervolume STUDY... [--out DIR]`: hypervolume as a study progresses.

For each study and each front in it (one per (method, variant, dataset, model, epoch budget,
dense size), named as `analysis.pareto` names them over all the studies given), the dominated
hypervolume of (val_accuracy, sparsity), reference point (0, 0), after each trial that ended
(complete, stopped at a rung, diverged, degenerate or failed: each spent compute), in the order
they ended, against the number of trials ended, the seconds since the study's first trial
started (Ray's `timestamp` of a trial's last report; a trial started at `timestamp -
time_total_s`) and the epochs run so far. Only
complete, feasible (`--constraint`) trials away from chance accuracy add points, as in
`analysis.pareto`. The area is `study.pareto.hypervolume_2d`: exact for two objectives (a sweep
over the front sorted by sparsity), a few lines instead of Optuna's private `optuna._hypervolume`
(the tests check both agree); study.pareto also compares curves (by trials, at a budget).
Writes `hypervolume.csv` (a row per ended trial) and `hypervolume.png` (two panels, a line per
study and front) to `--out` (default: the first study's `analysis/` folder).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.pareto import add_chance_margin, at_chance, front_names, is_feasible, save_figure
from analysis.results import StudyError, load_results, load_study
from study import layout
from study.config import ConfigError
from study.metrics import CHANCE_MARGIN, OBJECTIVES, check_selectable
from study.pareto import hypervolume_2d

ENDED = ("complete", "stopped", "diverged", "degenerate", "failed")
COLUMNS = ["study", "front", "trials", "seconds", "epochs", "trial_id", "status", "hypervolume"]


def _number(df: pd.DataFrame, column: str) -> pd.Series:
    return (pd.to_numeric(df[column], errors="coerce") if column in df
            else pd.Series(np.nan, index=df.index, dtype=float))


def hypervolume_curves(df: pd.DataFrame, chance_margin: float = CHANCE_MARGIN) -> pd.DataFrame:
    """A row per ended trial of `df` (analysis.results' table), per study and front, in the order
    they ended: `trials` ended so far, `seconds` since the study began, `epochs` run so far, and
    the `hypervolume` of the front's points so far."""
    for m in OBJECTIVES:  # the area's axes: never the test split
        check_selectable(m, "hypervolume objectives")
    if df.empty:
        return pd.DataFrame(columns=COLUMNS)
    df = df.assign(_end=_number(df, "timestamp"))
    df = df.assign(_start=df["_end"] - _number(df, "time_total_s").fillna(0.0),
                   _point=(df["status"] == "complete") & is_feasible(df) & ~at_chance(df, chance_margin),
                   _front=front_names(df))
    rows = []
    for study, trials in df.groupby("study", sort=False):
        t0 = trials["_start"].min()
        for name, group in trials.groupby("_front", sort=True):
            ended = group[group["status"].isin(ENDED)].sort_values(["_end", "trial_id"], kind="stable")
            points = np.empty((0, 2))
            epochs = 0
            for n, (_, t) in enumerate(ended.iterrows(), start=1):
                if t["_point"] and pd.notna(t[OBJECTIVES[0]]) and pd.notna(t[OBJECTIVES[1]]):
                    points = np.vstack([points, [float(t[OBJECTIVES[0]]), float(t[OBJECTIVES[1]])]])
                epochs += int(t["epoch"]) if "epoch" in t and pd.notna(t["epoch"]) else 0
                rows.append({"study": study, "front": name, "trials": n,
                             "seconds": float(t["_end"] - t0) if pd.notna(t["_end"]) else np.nan,
                             "epochs": epochs, "trial_id": t["trial_id"], "status": t["status"],
                             "hypervolume": hypervolume_2d(points)})
    return pd.DataFrame(rows, columns=COLUMNS)


def study_curves(study_dir: str | Path) -> pd.DataFrame:
    """One study's curves (`hypervolume_curves` of its trials, default chance margin): what
    `prunestudy bench samplers` compares (study.pareto's by_trials, at_budget, trials_to_reach)."""
    return hypervolume_curves(load_study(study_dir))


def plot(curves: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for (study, name), c in curves.groupby(["study", "front"], sort=False):
        label = f"{study}: {name}"
        axes[0].step(c["trials"], c["hypervolume"], where="post", label=label)
        axes[1].step(c["seconds"], c["hypervolume"], where="post", label=label)
    axes[0].set_xlabel("trials ended")
    axes[1].set_xlabel("seconds since the study began")
    axes[0].set_ylabel("hypervolume (val_accuracy x sparsity, ref. (0, 0))")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.hypervolume",
                                description=__doc__.splitlines()[0])
    p.add_argument("studies", nargs="+", metavar="STUDY", help="study folders")
    p.add_argument("--out", help="output folder (default: FIRST_STUDY/analysis)")
    add_chance_margin(p)
    args = p.parse_args(argv)
    try:
        df = load_results(args.studies)
    except (StudyError, ConfigError) as e:  # ConfigError: a study's stored --constraint
        print(f"error: {e}", file=sys.stderr)
        return 2
    curves = hypervolume_curves(df, args.chance_margin)
    out = Path(args.out) if args.out else layout.analysis_dir(args.studies[0])
    out.mkdir(parents=True, exist_ok=True)
    curves.to_csv(out / "hypervolume.csv", index=False)
    plot(curves, out / "hypervolume.png")
    last = curves.groupby(["study", "front"], sort=False).tail(1)
    print(last[["study", "front", "trials", "seconds", "epochs", "hypervolume"]].to_string(
        index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {out / 'hypervolume.csv'}, {out / 'hypervolume.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
