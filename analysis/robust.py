"""`python -m analysis.robust STUDY --seeds 3`: the front with error bars over new seeds.

Every trial on a front of the study (one per (method, variant, dataset, model, epoch budget),
feasible and away from chance, as `analysis.pareto` draws them) is trained again with `--seeds`
new seeds (its seed + 1, + 2, ...), through Ray, in parallel, by the trainable every search runs
(study.rerun: analysis never trains itself). The new runs alone give each point's mean +-
standard deviation (sample std; 0 for one seed) of val_accuracy, sparsity and test_accuracy: the
original run is left out, since being on the front selected it for its luck. `survives`: the
point's means are still non-dominated among its front's means. Writes
`robust.csv` and `robust.png` (error bars, the original points hollow) to `--out` (default:
STUDY/analysis/), the new runs' Ray folders under `--out`/robust-runs/, and a summary table to the
study's W&B group (`--no-wandb` to skip).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.pareto import finish_scatter, fronts
from analysis.results import StudyError, load_results, row_config, study_info
from study import layout
from study.metrics import OBJECTIVES
from study.outcome import is_final
from study.pareto import pareto_mask
from study.rerun import add_arguments as rerun_flags
from study.rerun import rerun
from study.rerun import resources as rerun_resources

MEASURED = (*OBJECTIVES, "test_accuracy")


def front_configs(df: pd.DataFrame) -> pd.DataFrame:
    """The front trials of `df`, with their configs."""
    return fronts(df)[0]


def seed_runs(front: pd.DataFrame, seeds: int) -> list[dict[str, Any]]:
    """One config per (front trial, new seed); no rung probes (only final metrics are read)."""
    runs = []
    for _, row in front.iterrows():
        config = row_config(row)
        for k in range(1, seeds + 1):
            runs.append({"of": row["trial_id"], "front": row["front"],
                         "config": {**config, "seed": int(config.get("seed", 0)) + k,
                                    "rung_epochs": ""}})
    return runs


def summarize(front: pd.DataFrame, results: list[dict[str, Any]]) -> pd.DataFrame:
    """A row per front trial: its original objectives, the new runs' mean and std of each measured
    metric (complete runs only: `runs_complete` of `seeds`), and whether it `survives`."""
    rows = []
    for _, point in front.iterrows():
        mine = [r for r in results if r["of"] == point["trial_id"]]
        done = [r for r in mine if is_final(r)]
        row = {"front": point["front"], "trial_id": point["trial_id"], "seeds": len(mine),
               "runs_complete": len(done), **{m: point[m] for m in MEASURED if m in point}}
        for m in MEASURED:
            values = [float(r[m]) for r in done if m in r]
            row[f"{m}_mean"] = statistics.fmean(values) if values else np.nan
            row[f"{m}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0 if values else np.nan
        rows.append(row)
    out = pd.DataFrame(rows)
    out["survives"] = False
    for _, group in out.groupby("front"):
        means = group[[f"{m}_mean" for m in OBJECTIVES]].to_numpy(dtype=float)
        out.loc[group.index, "survives"] = pareto_mask(means)
    return out


def plot(summary: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y, x = OBJECTIVES
    fig, ax = plt.subplots(figsize=(7, 5))
    for i, (name, g) in enumerate(summary.groupby("front")):
        color = f"C{i}"
        ax.errorbar(g[f"{x}_mean"], g[f"{y}_mean"], xerr=g[f"{x}_std"], yerr=g[f"{y}_std"], fmt="o",
                    color=color, capsize=3, label=f"{name}: mean +- std over new seeds")
        ax.scatter(g[x], g[y], facecolors="none", edgecolors=color, s=40,
                   label=f"{name}: the study's run")
    finish_scatter(fig, ax, x, y, path)


def log_to_wandb(summary: pd.DataFrame, study_dir: Path, info: dict[str, Any]) -> str:
    """The robust front as a table in a summary run of the study's W&B group."""
    from study import tracking

    mode, _ = tracking.configure(study_dir)
    import wandb

    run = wandb.init(project=os.environ.get("WANDB_PROJECT", tracking.DEFAULT_PROJECT),
                     group=study_dir.name, job_type="analysis", name=f"{study_dir.name}-robust",
                     dir=str(study_dir), tags=tracking.run_tags(info.get("method"), info.get("dataset"),
                                                            "robust"), reinit="finish_previous")
    run.log({"robust/front": wandb.Table(dataframe=summary.reset_index(drop=True))})
    run.finish()
    return mode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.robust", description=__doc__.splitlines()[0])
    p.add_argument("study", help="study folder")
    p.add_argument("--seeds", type=int, default=3, help="new seeds per front trial (default 3)")
    p.add_argument("--out", help="output folder (default: STUDY/analysis)")
    rerun_flags(p)
    p.add_argument("--no-wandb", action="store_true", help="do not log the table to W&B")
    args = p.parse_args(argv)
    if args.seeds < 1 or args.max_concurrent < 0:
        p.error(f"--seeds must be at least 1 and --max-concurrent not negative, got {args.seeds} "
                f"and {args.max_concurrent}")
    study_dir = Path(args.study)
    try:
        info = study_info(study_dir)
        front = front_configs(load_results([study_dir]))
        if front.empty:
            raise StudyError(f"{study_dir} has no front trial to re-run (no complete, feasible "
                             "trial away from chance)")
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else layout.analysis_dir(study_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = seed_runs(front, args.seeds)
    print(f"re-running {len(front)} front trials with {args.seeds} new seeds each: {len(runs)} runs",
          flush=True)
    cpus, gpus = rerun_resources(args, info)
    reports = rerun([r["config"] for r in runs], info["dataset"], info["data_dir"],
                    out / "robust-runs", f"robust-{time.strftime('%Y%m%d-%H%M%S')}", cpus, gpus,
                    args.max_concurrent, args.address)
    results = [{"of": r["of"], "seed": r["config"]["seed"], **report}
               for r, report in zip(runs, reports, strict=True)]
    summary = summarize(front, results)
    summary.to_csv(out / "robust.csv", index=False)
    plot(summary, out / "robust.png")
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"{int(summary['survives'].sum())} of {len(summary)} front points survive the new seeds")
    if not args.no_wandb:
        mode = log_to_wandb(summary, study_dir, info)
        print(f"W&B ({mode}): robust front logged to group {study_dir.name!r}")
    print(f"wrote {out / 'robust.csv'}, {out / 'robust.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
