"""`prunestudy compare STUDY... [--dense-params N] [--out DIR]`: methods side by side, like for like.

A comparison holds only on the same dataset, network and training budget, beside the standard
baselines (Blalock et al. 2020), and parameter sparsity and FLOPs are not interchangeable
(ShrinkBench): removing a neuron and zeroing a weight save different work. So every complete,
feasible trial away from chance of the studies given must share one group, (dataset, model,
epoch budget, dense architecture) (`analysis.pareto.group_names`: `fashion_mnist/lenet300/3ep`;
the dense architecture is the `dense_params` every trial reports, named in the group as
`bvae_cnn~69234p` only where one dataset, model and budget holds several, e.g. beta_vae's searched
latent_dim; older studies, without it, are not checked): otherwise the command names the groups
it found, on one line, and exits 2. `--dense-params N` keeps the trials of that one size.

Within the group, one front per procedure, `method[variant]`, pooled over the studies. For each
front and each of two views, accuracy (val_accuracy) against x = `sparsity` and against x = FLOPs
reduction (1 - flops / dense_flops, both reported; a zero weight costs nothing, as in a sparse
kernel: unstructured zeros count as saved work, which flatters unstructured pruning against
structured removal, and the view says so): the hypervolume of the pooled front, the same over
the test accuracy of the points that front chose on validation (the search maximised validation
accuracy, so the pooled front is optimistic; test accuracy chooses nothing, it is only reported),
the mean +- std (ddof 1; '-' for one study) of each study's own front's, and both minus the best
baseline's. Reference point (0, 0), as everywhere (study.pareto.hypervolume_2d). The pooled
hypervolume grows with a front's trials: the command warns when the fronts' trial counts differ.
Baselines: every front of method `magnitude` (magnitude or random pruning, global or per layer:
Blalock et al.'s baselines, and Frankle et al. 2021's bar of random masks at the same density),
drawn dashed. The methods' own baseline variants (reparam's mag and mag_ft, importance's random,
beta_vae's cnn) are not declared as baselines by their methods, so they are compared as
procedures of their own. The `control` method prunes nothing (search_spaces/control.yaml trains
the dense network): never a front; its trials that train the group's dense network (no mask, the
model's own widths) are the dense reference, their best validation accuracy drawn as a dotted
line and printed with its test accuracy.

Writes `compare.csv` (a row per front), `compare_points.csv` (a row per point of each pooled
front and view: the trial, its validation and test accuracy, sparsity and FLOPs reduction),
`compare.png` and `compare_flops.png` (every trial faint, each front as the boundary of the area
its hypervolume measures) and `compare.html` (both views) to `--out` (default: the first study's
`analysis/` folder), prints both views' tables, and logs the table to a summary run in the first
study's W&B group (`--no-wandb` to skip).
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
from analysis.results import CONFIG_PREFIX, StudyError, load_results, study_info
from study import layout
from study.config import ConfigError
from study.metrics import CHANCE_MARGIN, check_selectable
from study.pareto import hypervolume_2d, pareto_mask

ACCURACY = "val_accuracy"  # y of both views: the objective every search maximizes
TEST = "test_accuracy"  # reported at the fronts' points, never choosing one
FLOPS_REDUCTION = "flops_reduction"
VIEWS = {"hv": "sparsity", "flops_hv": FLOPS_REDUCTION}  # column prefix -> the view's x
for _m in (ACCURACY, *VIEWS.values()):  # what chooses the fronts' points: never the test split
    check_selectable(_m, "compare objectives")
del _m
# every front of these methods is a baseline (Blalock et al.'s magnitude and random pruning); no
# method declares baseline variants (reparam's mag, mag_ft, ...) yet: those are fronts of their own
BASELINE_METHODS = ("magnitude",)
# study/methods/control.py trains a network without pruning it (the dense network, or sanity's
# controls): never a front, at most the dense reference (`dense_reference`)
CONTROL = "control"
REFERENCE = "dense reference (control)"
FLOPS_CAVEAT = ("unstructured zeros are counted as saved work (a sparse kernel's view), which "
                "flatters unstructured methods against structured removal")


def flops_reduction(df: pd.DataFrame) -> pd.Series:
    """1 - flops / dense_flops per trial; NaN where a trial reported either not."""
    if not {"flops", "dense_flops"} <= set(df.columns):
        return pd.Series(np.nan, index=df.index, dtype=float)
    return 1.0 - pd.to_numeric(df["flops"], errors="coerce") / pd.to_numeric(
        df["dense_flops"], errors="coerce")


def _usable(df: pd.DataFrame, chance_margin: float) -> pd.DataFrame:
    """The trials fronts count: complete, feasible, away from chance, with both objectives."""
    ok = (df["status"] == "complete") & is_feasible(df) & ~at_chance(df, chance_margin)
    return df[ok].dropna(subset=[ACCURACY, "sparsity"])


def eligible(df: pd.DataFrame, chance_margin: float = CHANCE_MARGIN) -> pd.DataFrame:
    """The trials a comparison is over, as fronts count them: complete, feasible, away from chance,
    with both objectives, of a pruning method (never `control`'s); with their `front`
    (procedure), `group` and `flops_reduction`."""
    rows = _usable(df, chance_margin)
    rows = rows[rows["method"] != CONTROL]
    return rows.assign(front=procedure_names(rows), group=group_names(rows),
                       **{FLOPS_REDUCTION: flops_reduction(rows)})


def _sizes(rows: pd.DataFrame) -> pd.Series:
    return (pd.to_numeric(rows["dense_params"], errors="coerce") if "dense_params" in rows
            else pd.Series(np.nan, index=rows.index, dtype=float))


def of_size(rows: pd.DataFrame, dense_params: int) -> pd.DataFrame:
    """`eligible`'s rows of one dense architecture (`--dense-params`), regrouped; a trial of a study
    older than `dense_params` is kept, unchecked, as everywhere. A StudyError naming the sizes there
    are when none is `dense_params`."""
    sizes = _sizes(rows)
    if not (sizes == dense_params).any():
        found = ", ".join(str(int(p)) for p in sorted(sizes.dropna().unique())) or "none reported"
        raise StudyError(f"no trial to compare counts against dense_params {dense_params}: "
                         f"found {found}")
    kept = rows[(sizes == dense_params) | sizes.isna()]
    return kept.assign(group=group_names(kept))


def _holders(studies: np.ndarray) -> str:
    return (f"study {studies[0]}" if len(studies) == 1
            else f"studies {', '.join(map(str, studies))}")


def one_group(rows: pd.DataFrame) -> str:
    """The one group `rows` (`eligible`'s) share; a StudyError naming every group found (dense
    architecture included), when there are several."""
    if rows.empty:
        raise StudyError("no complete, feasible trial of a pruning method away from chance "
                         "accuracy: nothing to compare")
    groups = rows.groupby("group", sort=False)["study"].unique()
    if len(groups) > 1:
        found = ", ".join(f"{g} ({_holders(s)})" for g, s in groups.items())
        sized = bool(groups.index.str.contains("~", regex=False).any())  # group_names' `model~<size>p`
        raise StudyError(
            f"the studies hold {len(groups)} (dataset, model, budget{', dense_params' * sized}) "
            f"groups: {found}; compare one at a time"
            + (" (--dense-params N keeps one dense architecture)" if sized else ""))
    return str(groups.index[0])


def dense_reference(df: pd.DataFrame, rows: pd.DataFrame,
                    chance_margin: float = CHANCE_MARGIN) -> pd.DataFrame:
    """The `control` trials of df that train the dense network of `rows`' group (no mask, the
    model's own widths: search_spaces/control.yaml; sanity's masked or narrower controls are
    not it), complete, feasible and away from chance, best validation accuracy first."""
    ctrl = _usable(df, chance_margin)
    ctrl = ctrl[ctrl["method"] == CONTROL]
    for setting in ("masks", "widths"):
        column = CONFIG_PREFIX + setting
        if column in ctrl:
            ctrl = ctrl[ctrl[column].fillna("").astype(str) == ""]
    if ctrl.empty or rows.empty:
        return ctrl
    # named together: a control of another dense size is named apart from the group's trials
    names = group_names(pd.concat([rows, ctrl], ignore_index=True))
    same = names.iloc[len(rows):].isin(set(names.iloc[:len(rows)])).to_numpy()
    return ctrl[same].sort_values(ACCURACY, ascending=False, kind="stable")


def _hypervolume(trials: pd.DataFrame, x: str, y: str = ACCURACY) -> float:
    """The hypervolume of (y, x); NaN when no trial reported x (a study older than it), or when a
    trial lacks y."""
    if trials[x].isna().all() or y not in trials or trials[y].isna().any():
        return np.nan
    return hypervolume_2d(trials[[y, x]].to_numpy(dtype=float))


def _front_line(trials: pd.DataFrame, x: str) -> pd.DataFrame:
    """The pooled front of (val_accuracy, x), sorted by x: drawn as steps 'pre', the boundary of
    the area its hypervolume measures (no point is drawn where no trial is). Chosen on validation
    accuracy only: its test accuracy is read at these points, never used to choose them."""
    points = trials.dropna(subset=[x])
    return points[pareto_mask(points[[ACCURACY, x]].to_numpy(dtype=float))].sort_values(x)


def compare(rows: pd.DataFrame) -> pd.DataFrame:
    """A row per front (procedure) of one group's eligible trials: `baseline`, `studies`,
    `trials`, and per view (prefix `hv`: x = sparsity, `flops_hv`: x = FLOPs reduction) the
    pooled front's hypervolume of (val_accuracy, x); `_test`: of (test_accuracy, x) over the points
    that pooled front chose on val_accuracy (NaN when one lacks test_accuracy); `_mean` and `_std`
    over the studies' own fronts (val_accuracy); and `_vs_baseline` / `_mean_vs_baseline`: the
    pooled / mean minus the best baseline front's (NaN when the group has no baseline)."""
    table = []
    for name, trials in rows.groupby("front", sort=True):
        method = trials["method"].iloc[0]
        row = {"front": name, "method": method, "baseline": method in BASELINE_METHODS,
               "studies": trials["study"].nunique(), "trials": len(trials),
               "study_names": ",".join(trials["study"].unique())}
        for prefix, x in VIEWS.items():
            own = [_hypervolume(t, x) for _, t in trials.groupby("study", sort=True)]
            row[prefix] = _hypervolume(trials, x)
            row[f"{prefix}_test"] = _hypervolume(_front_line(trials, x), x, TEST)
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


def front_points(rows: pd.DataFrame) -> pd.DataFrame:
    """A row per point of each pooled front in each view (`view`: its x), as chosen on
    val_accuracy, with the point's test_accuracy beside (reported, never choosing)."""
    parts = []
    for name, trials in rows.groupby("front", sort=True):
        for x in VIEWS.values():
            f = _front_line(trials, x)
            parts.append(pd.DataFrame({
                "front": name, "view": x, "study": f["study"], "trial_id": f["trial_id"],
                ACCURACY: f[ACCURACY], TEST: f[TEST] if TEST in f else np.nan,
                "sparsity": f["sparsity"], FLOPS_REDUCTION: f[FLOPS_REDUCTION]}))
    return pd.concat(parts, ignore_index=True)


def _text(v: float) -> str:
    return "-" if pd.isna(v) else f"{v:.4f}"


def view_table(table: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """One view's columns of `compare`'s table, as printed: '-' for a number there is not (one
    study's std, no baseline, no FLOPs or test accuracy reported)."""
    names = table["front"] + np.where(table["baseline"], " (baseline)", "")
    return pd.DataFrame({
        "front": names.str.ljust(names.str.len().max()), "studies": table["studies"],
        "trials": table["trials"], "pooled": table[prefix].map(_text),
        "pooled (test)": table[f"{prefix}_test"].map(_text),
        "mean": table[f"{prefix}_mean"].map(_text), "std": table[f"{prefix}_std"].map(_text),
        "pooled vs best baseline": table[f"{prefix}_vs_baseline"].map(_text),
        "mean vs best baseline": table[f"{prefix}_mean_vs_baseline"].map(_text)})


HEADER = (  # what each printed column is
    "columns: trials, the front's complete, feasible trials away from chance over its studies;\n"
    "  pooled, the hypervolume from (0, 0) of (val_accuracy, x) of the front pooled over its "
    "studies (val_accuracy is what the search maximised: optimistic);\n"
    "  pooled (test), of (test_accuracy, x) at the points that front chose on val_accuracy "
    "(test_accuracy is only reported, never choosing);\n"
    "  mean, std, of each study's own front (val_accuracy; std ddof 1, '-' for one study);\n"
    "  vs best baseline, pooled or mean minus the best baseline front's (val_accuracy)")


def trials_warning(table: pd.DataFrame) -> str:
    """One line when the fronts compared hold different numbers of trials, else ''."""
    counts = table["trials"]
    if counts.nunique() <= 1:
        return ""
    return (f"warning: the fronts hold different numbers of trials ({counts.min()} to "
            f"{counts.max()}, column trials): a pooled hypervolume grows with trials; compare "
            "per-study means, or equal trial counts")


def reference_line(reference: pd.DataFrame, controls: int) -> str:
    """The dense reference's one line: its best control trial's val and test accuracy; ''
    when the studies hold no control trial."""
    if reference.empty:
        return (f"{REFERENCE}: none of the {controls} control trials trains this group's dense "
                "network (not drawn)") if controls else ""
    best = reference.iloc[0]
    return (f"{REFERENCE}, dotted: val_accuracy {best[ACCURACY]:.4f}, test_accuracy "
            f"{_text(best.get(TEST, np.nan))} (trial {best['trial_id']} of study {best['study']}, "
            f"the best val_accuracy of {len(reference)} control trial{'s' * (len(reference) != 1)}; "
            "not a front)")


def _x_label(x: str) -> str:
    return "FLOPs reduction (1 - flops / dense_flops)" if x == FLOPS_REDUCTION else x


def plot_png(rows: pd.DataFrame, table: pd.DataFrame, x: str, group: str, path: Path,
             reference: pd.DataFrame | None = None) -> None:
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
    if reference is not None and len(reference):
        ax.axhline(reference[ACCURACY].iloc[0], color="k", ls=":", lw=1.5, label=REFERENCE)
    ax.set_xlabel(_x_label(x))
    ax.set_ylabel(ACCURACY)
    if x == FLOPS_REDUCTION:  # the caveat in the figure itself: it travels without the console
        ax.set_title(f"{group}\nFLOPs view: {FLOPS_CAVEAT}", fontsize=8, wrap=True)
    else:
        ax.set_title(group)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_html(rows: pd.DataFrame, table: pd.DataFrame, group: str, path: Path,
              reference: pd.DataFrame | None = None) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    baseline = dict(zip(table["front"], table["baseline"], strict=True))
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, subplot_titles=(
        "x = sparsity", "x = FLOPs reduction (unstructured zeros counted as saved work)"))
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
    if reference is not None and len(reference):
        fig.add_hline(y=float(reference[ACCURACY].iloc[0]), line_dash="dot", line_color="black",
                      annotation_text=REFERENCE, row="all", col="all")
    fig.update_layout(title=f"{group}: fronts (baselines dashed). FLOPs view: {FLOPS_CAVEAT}",
                      yaxis_title=ACCURACY)
    fig.write_html(str(path), include_plotlyjs=True)


def log_to_wandb(table: pd.DataFrame, group: str, study_dir: Path, info: dict) -> str:
    """The comparison as a table in a summary run of the first study's W&B group."""
    from study import tracking

    mode, _ = tracking.configure(study_dir)
    import wandb

    run = wandb.init(project=os.environ.get("WANDB_PROJECT", tracking.DEFAULT_PROJECT),
                     group=study_dir.name, job_type="analysis", name=f"{study_dir.name}-compare",
                     dir=str(study_dir), tags=tracking.run_tags(info.get("dataset"), group, "compare"),
                     reinit="finish_previous")
    run.log({"compare/fronts": wandb.Table(dataframe=table.reset_index(drop=True))})
    run.finish()
    return mode


def _size(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive parameter count, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.compare", description=__doc__.splitlines()[0])
    p.add_argument("studies", nargs="+", metavar="STUDY", help="study folders")
    p.add_argument("--dense-params", type=_size, metavar="N",
                   help="compare only the trials of the dense architecture of N parameters (their "
                        "`dense_params`), when the studies hold several (e.g. beta_vae's latent_dim)")
    p.add_argument("--out", help="output folder (default: FIRST_STUDY/analysis)")
    p.add_argument("--no-wandb", action="store_true", help="do not log the table to W&B")
    add_chance_margin(p)
    args = p.parse_args(argv)
    try:
        df = load_results(args.studies)
        rows = eligible(df, args.chance_margin)
        if args.dense_params is not None:
            rows = of_size(rows, args.dense_params)
        group = one_group(rows)
    except (StudyError, ConfigError) as e:  # ConfigError: a study's stored --constraint
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = compare(rows)
    reference = dense_reference(df, rows, args.chance_margin)
    out = Path(args.out) if args.out else layout.analysis_dir(args.studies[0])
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "compare.csv", index=False)
    front_points(rows).to_csv(out / "compare_points.csv", index=False)
    plot_png(rows, table, "sparsity", group, out / "compare.png", reference)
    plot_png(rows, table, FLOPS_REDUCTION, group, out / "compare_flops.png", reference)
    plot_html(rows, table, group, out / "compare.html", reference)
    dense = _sizes(rows).dropna()
    print(f"{group}{f' (dense_params {int(dense.iloc[0])})' if len(dense) else ''}: "
          f"{len(rows)} trials of {_holders(rows['study'].unique())}")
    print(chance_line(df, args.chance_margin))
    print(f"baselines (dashed): every front of method {', '.join(BASELINE_METHODS)}"
          if table["baseline"].any() else
          f"no baseline in this group (a front of method {', '.join(BASELINE_METHODS)}): "
          "run one beside, e.g. `prunestudy search magnitude` on the same dataset, model and budget")
    controls = int((_usable(df, args.chance_margin)["method"] == CONTROL).sum())
    for line in (reference_line(reference, controls), trials_warning(table), HEADER):
        if line:
            print(line)
    for prefix, x in VIEWS.items():
        caveat = f": {FLOPS_CAVEAT}" if x == FLOPS_REDUCTION else ":"
        print(f"\nx = {_x_label(x)}{caveat}")
        print(view_table(table, prefix).to_string(index=False))
    if not args.no_wandb:
        first = Path(args.studies[0])
        mode = log_to_wandb(table, group, first, study_info(first))
        print(f"W&B ({mode}): comparison logged to group {first.name!r} under {layout.wandb_dir(first)}")
    files = ("compare.csv", "compare_points.csv", "compare.png", "compare_flops.png", "compare.html")
    print(f"wrote {', '.join(str(out / f) for f in files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
