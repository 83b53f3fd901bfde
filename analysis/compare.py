"""`prunestudy compare STUDY... [--out DIR] [--no-wandb]`: pruning methods side by side, like for like.

A comparison holds only on the same dataset, network and training budget, beside the standard
baselines (Blalock et al. 2020), and parameter sparsity and FLOPs are not interchangeable
(ShrinkBench): removing a neuron and zeroing a weight save different work. So every complete,
feasible trial away from chance of the studies given must share one group, (dataset, model,
epoch budget) (`analysis.pareto.group_names`: `fashion_mnist/lenet300/3ep`), and one dense
architecture (the `dense_params` every trial reports; older studies, without it, are not checked):
otherwise the command names the groups it found, on one line, and exits 2.

Within the group, one front per procedure, `method[variant]`, pooled over the studies. For each
front and each of two views, accuracy (val_accuracy) against x = `sparsity` and against x = FLOPs
reduction (1 - flops / dense_flops, both reported; a zero weight costs nothing, as in a sparse
kernel): the hypervolume of the pooled front, the mean +- std (ddof 1; '-' for one study) of each
study's own front's, and both minus the best baseline's. Reference point (0, 0), as everywhere
(study.pareto.hypervolume_2d). Baselines: every front of method `magnitude` (magnitude or random
pruning, global or per layer: Blalock et al.'s baselines, and Frankle et al. 2021's bar of random
masks at the same density), drawn dashed. The methods' own baseline variants (reparam's mag and
mag_ft, importance's random, beta_vae's cnn) are not declared as baselines by their methods, so
they are compared as procedures of their own.

Writes `compare.csv` (a row per front), `compare.png` and `compare_flops.png` (every trial faint,
each front as the boundary of the area its hypervolume measures) and `compare.html` (both views)
to `--out` (default: the first study's `analysis/` folder), prints both views' tables, and logs the
table to a summary run in the first study's W&B group (`--no-wandb` to skip).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.pareto import (
    add_chance_margin,
    at_chance,
    chance_line,
    group_names,
    is_feasible,
    procedure_names,
    save_figure,
)
from analysis.results import StudyError, load_results, study_info
from study import layout
from study.metrics import CHANCE_MARGIN
from study.pareto import hypervolume_2d, pareto_mask

ACCURACY = "val_accuracy"  # y of both views: the objective every search maximizes
FLOPS_REDUCTION = "flops_reduction"
VIEWS = {"hv": "sparsity", "flops_hv": FLOPS_REDUCTION}  # column prefix -> the view's x
# every front of these methods is a baseline (Blalock et al.'s magnitude and random pruning); no
# method declares baseline variants (reparam's mag, mag_ft, ...) yet: those are fronts of their own
BASELINE_METHODS = ("magnitude",)


def flops_reduction(df: pd.DataFrame) -> pd.Series:
    """1 - flops / dense_flops per trial; NaN where a trial reported either not."""
    if not {"flops", "dense_flops"} <= set(df.columns):
        return pd.Series(np.nan, index=df.index, dtype=float)
    return 1.0 - pd.to_numeric(df["flops"], errors="coerce") / pd.to_numeric(
        df["dense_flops"], errors="coerce")


def eligible(df: pd.DataFrame, chance_margin: float = CHANCE_MARGIN) -> pd.DataFrame:
    """The trials a comparison is over, as fronts count them: complete, feasible, away from chance,
    with both objectives; with their `front` (procedure), `group` and `flops_reduction`."""
    ok = (df["status"] == "complete") & is_feasible(df) & ~at_chance(df, chance_margin)
    rows = df[ok].dropna(subset=[ACCURACY, "sparsity"])
    return rows.assign(front=procedure_names(rows), group=group_names(rows),
                       **{FLOPS_REDUCTION: flops_reduction(rows)})


def _holders(studies: np.ndarray) -> str:
    return (f"study {studies[0]}" if len(studies) == 1
            else f"studies {', '.join(map(str, studies))}")


def one_group(rows: pd.DataFrame) -> str:
    """The one group `rows` (`eligible`'s) share; a StudyError naming every group and dense
    architecture found, when there are several."""
    if rows.empty:
        raise StudyError("no complete, feasible trial away from chance accuracy: nothing to compare")
    groups = rows.groupby("group", sort=False)["study"].unique()
    if len(groups) > 1:
        found = ", ".join(f"{g} ({_holders(s)})" for g, s in groups.items())
        raise StudyError(f"the studies hold {len(groups)} (dataset, model, budget) groups: {found}; "
                         "compare one at a time")
    sizes = (rows.dropna(subset=["dense_params"]).groupby("dense_params")["study"].unique()
             if "dense_params" in rows else pd.Series(dtype=object))
    if len(sizes) > 1:
        found = ", ".join(f"{int(p)} ({_holders(s)})" for p, s in sizes.items())
        raise StudyError(f"the studies' {groups.index[0]} trials count against {len(sizes)} dense "
                         f"architectures: dense_params {found}; compare one at a time")
    return str(groups.index[0])


def _hypervolume(trials: pd.DataFrame, x: str) -> float:
    """The hypervolume of (val_accuracy, x); NaN when no trial reported x (a study older than it)."""
    if trials[x].isna().all():
        return np.nan
    return hypervolume_2d(trials[[ACCURACY, x]].to_numpy(dtype=float))


def compare(rows: pd.DataFrame) -> pd.DataFrame:
    """A row per front (procedure) of one group's eligible trials: `baseline`, `studies`,
    `trials`, and per view (prefix `hv`: x = sparsity, `flops_hv`: x = FLOPs reduction) the
    pooled front's hypervolume, `_mean` and `_std` over the studies' own fronts, and
    `_vs_baseline` / `_mean_vs_baseline`: the pooled / mean minus the best baseline front's (NaN
    when the group has no baseline)."""
    table = []
    for name, trials in rows.groupby("front", sort=True):
        method = trials["method"].iloc[0]
        row = {"front": name, "method": method, "baseline": method in BASELINE_METHODS,
               "studies": trials["study"].nunique(), "trials": len(trials),
               "study_names": ",".join(trials["study"].unique())}
        for prefix, x in VIEWS.items():
            own = [_hypervolume(t, x) for _, t in trials.groupby("study", sort=True)]
            row[prefix] = _hypervolume(trials, x)
            row[f"{prefix}_mean"] = statistics.fmean(own)
            row[f"{prefix}_std"] = statistics.stdev(own) if len(own) > 1 else np.nan
        table.append(row)
    table = pd.DataFrame(table)
    baselines = table[table["baseline"]]
    for prefix in VIEWS:
        for stat in (prefix, f"{prefix}_mean"):
            best = baselines[stat].max() if len(baselines) else np.nan
            table[f"{stat}_vs_baseline"] = table[stat] - best
    return table


def view_table(table: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """One view's columns of `compare`'s table, as printed: '-' for a number there is not (one
    study's std, no baseline, no FLOPs reported)."""
    def text(v: float) -> str:
        return "-" if pd.isna(v) else f"{v:.4f}"

    names = table["front"] + np.where(table["baseline"], " (baseline)", "")
    return pd.DataFrame({
        "front": names.str.ljust(names.str.len().max()), "studies": table["studies"],
        "trials": table["trials"], "pooled": table[prefix].map(text),
        "mean": table[f"{prefix}_mean"].map(text), "std": table[f"{prefix}_std"].map(text),
        "pooled vs best baseline": table[f"{prefix}_vs_baseline"].map(text),
        "mean vs best baseline": table[f"{prefix}_mean_vs_baseline"].map(text)})


def _front_line(trials: pd.DataFrame, x: str) -> pd.DataFrame:
    """The pooled front of (val_accuracy, x), sorted by x: drawn as steps 'pre', the boundary of
    the area its hypervolume measures (no point is drawn where no trial is)."""
    points = trials.dropna(subset=[x])
    return points[pareto_mask(points[[ACCURACY, x]].to_numpy(dtype=float))].sort_values(x)


def plot_png(rows: pd.DataFrame, table: pd.DataFrame, x: str, group: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baseline = dict(zip(table["front"], table["baseline"], strict=True))
    fig, ax = plt.subplots(figsize=(7, 5))
    for i, (name, trials) in enumerate(rows.groupby("front", sort=True)):
        color, dashed = f"C{i}", baseline[name]
        ax.scatter(trials[x], trials[ACCURACY], s=14, alpha=0.35, color=color)
        f = _front_line(trials, x)
        ax.step(f[x], f[ACCURACY], where="pre", color=color, lw=2, ls="--" if dashed else "-",
                marker="o", ms=4, label=f"{name}{' (baseline)' if dashed else ''}")
    ax.set_xlabel("FLOPs reduction (1 - flops / dense_flops)" if x == FLOPS_REDUCTION else x)
    ax.set_ylabel(ACCURACY)
    ax.set_title(group)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_html(rows: pd.DataFrame, table: pd.DataFrame, group: str, path: Path) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    baseline = dict(zip(table["front"], table["baseline"], strict=True))
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True,
                        subplot_titles=("x = sparsity", "x = FLOPs reduction"))
    for i, (name, trials) in enumerate(rows.groupby("front", sort=True)):
        color = f"hsl({(i * 67) % 360}, 60%, 45%)"
        for col, x in enumerate(VIEWS.values(), start=1):
            f = _front_line(trials, x)
            fig.add_trace(go.Scatter(
                x=trials[x], y=trials[ACCURACY], mode="markers", name=name, legendgroup=name,
                marker={"color": color, "opacity": 0.35}, showlegend=False,
                text=trials["study"] + " " + trials["trial_id"],
                hovertemplate="%{text}<br>x %{x:.4f}<br>val_accuracy %{y:.4f}"), row=1, col=col)
            fig.add_trace(go.Scatter(
                x=f[x], y=f[ACCURACY], mode="lines+markers", line_shape="vh", name=name,
                legendgroup=name, showlegend=col == 1,
                line={"color": color, "dash": "dash" if baseline[name] else "solid"}), row=1, col=col)
    fig.update_layout(title=f"{group}: fronts (baselines dashed)", yaxis_title=ACCURACY)
    fig.write_html(str(path), include_plotlyjs=True)


def log_to_wandb(table: pd.DataFrame, group: str, study_dir: Path, info: dict) -> str:
    """The comparison as a table in a summary run of the first study's W&B group."""
    from study import tracking

    mode, _ = tracking.configure(study_dir)
    import wandb

    run = wandb.init(project=os.environ.get("WANDB_PROJECT", tracking.DEFAULT_PROJECT),
                     group=study_dir.name, job_type="analysis", name=f"{study_dir.name}-compare",
                     dir=str(study_dir), tags=[info.get("dataset", ""), group, "compare"],
                     reinit="finish_previous")
    run.log({"compare/fronts": wandb.Table(dataframe=table.reset_index(drop=True))})
    run.finish()
    return mode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.compare", description=__doc__.splitlines()[0])
    p.add_argument("studies", nargs="+", metavar="STUDY", help="study folders")
    p.add_argument("--out", help="output folder (default: FIRST_STUDY/analysis)")
    p.add_argument("--no-wandb", action="store_true", help="do not log the table to W&B")
    add_chance_margin(p)
    args = p.parse_args(argv)
    try:
        df = load_results(args.studies)
        rows = eligible(df, args.chance_margin)
        group = one_group(rows)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = compare(rows)
    out = Path(args.out) if args.out else layout.analysis_dir(args.studies[0])
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "compare.csv", index=False)
    plot_png(rows, table, "sparsity", group, out / "compare.png")
    plot_png(rows, table, FLOPS_REDUCTION, group, out / "compare_flops.png")
    plot_html(rows, table, group, out / "compare.html")
    dense = rows["dense_params"].dropna() if "dense_params" in rows else pd.Series(dtype=float)
    print(f"{group}{f' (dense_params {int(dense.iloc[0])})' if len(dense) else ''}: "
          f"{len(rows)} trials of {_holders(rows['study'].unique())}")
    print(chance_line(df, args.chance_margin))
    print(f"baselines (dashed): every front of method {', '.join(BASELINE_METHODS)}"
          if table["baseline"].any() else
          f"no baseline in this group (a front of method {', '.join(BASELINE_METHODS)}): "
          "run one beside, e.g. `prunestudy search magnitude` on the same dataset, model and budget")
    print("hypervolumes of (val_accuracy, x) from (0, 0): pooled, of a front over all its studies; "
          "mean and std, of each study's own")
    for prefix, x in VIEWS.items():
        print(f"\nx = {'FLOPs reduction (1 - flops / dense_flops)' if x == FLOPS_REDUCTION else x}:")
        print(view_table(table, prefix).to_string(index=False))
    if not args.no_wandb:
        first = Path(args.studies[0])
        mode = log_to_wandb(table, group, first, study_info(first))
        print(f"W&B ({mode}): comparison logged to group {first.name!r} under {layout.wandb_dir(first)}")
    files = ("compare.csv", "compare.png", "compare_flops.png", "compare.html")
    print(f"wrote {', '.join(str(out / f) for f in files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
