"""`python -m analysis.pareto STUDY [STUDY...]`: Pareto fronts of accuracy against sparsity.

One front per (method, variant, dataset, model, epoch budget, dense architecture) over all the
studies given: like with like only (Blalock et al. 2020), never mixing datasets, networks, budgets
or network sizes (beta_vae's latent_dim changes its network's parameters). The front's name says
its key, `method[variant]/dataset/model/<budget>ep`, the model followed by `~<dense_params>p` when
one (method, variant, dataset, model, budget) holds several sizes (`front_names`); `prunestudy compare`
sets fronts of different methods side by side. Per front: the non-dominated complete trials on
(val_accuracy, sparsity), their test accuracy beside, and the dominated hypervolume (reference
point accuracy 0, sparsity 0; study.pareto), one number to compare samplers.
Complete trials at chance validation accuracy (<= 1 / num_classes + `--chance-margin`) are left
out of fronts and hypervolumes (a dead network is trivially sparse), and the command says how many;
degenerate trials (ended early) and trials stopped at a rung (`--scheduler mo-asha`: mid-run values)
never count either. All three are drawn apart in the plots. A study with `--constraint`s counts
only its feasible trials (the constraints met by the last report); infeasible ones are drawn hollow.
Writes `pareto.csv`, `pareto.png` and `pareto.html` (default: the first study's `analysis/`
folder), prints the fronts, and logs them to a summary run in the study's W&B group (offline
without credentials).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd

from analysis.results import CONFIG_PREFIX, StudyError, load_results, saved_line, study_info
from study import layout
from study.config import ConfigError
from study.metrics import CHANCE_MARGIN, OBJECTIVES, check_selectable, near_chance
from study.pareto import hypervolume_2d, pareto_mask

# a front compares like with like: one of each at a time. `variant`: the values of the settings
# its method declares as `variant_settings`, `model`: of its `architecture` (analysis.results),
# `total_epochs`: the epoch budget of the trial's schedule, as the trainable reports it,
# `dense_params`: the dense architecture's size, reported every epoch (a searched setting such as
# beta_vae's latent_dim makes another network under the same model name; absent in older studies)
FRONT_KEY = ("method", "variant", "dataset", "model", "total_epochs", "dense_params")


def _text(df: pd.DataFrame, column: str) -> pd.Series:
    """A key column as text; '-' where a trial lacks it (a study older than the column)."""
    if column not in df:
        return pd.Series("-", index=df.index, dtype=object)
    return df[column].map(lambda v: "-" if pd.isna(v) else str(v)).astype(object)


def procedure_names(df: pd.DataFrame) -> pd.Series:
    """Each trial's procedure, `method[variant]` (`method` alone when its method declares no
    variant settings): what `prunestudy compare` sets side by side within one group."""
    variant = _text(df, "variant")
    return _text(df, "method") + variant.map(lambda v: f"[{v}]" if v else "")


def _budget(df: pd.DataFrame) -> pd.Series:
    budget = (pd.to_numeric(df["total_epochs"], errors="coerce") if "total_epochs" in df
              else pd.Series(float("nan"), index=df.index))
    return budget.map(lambda b: "-" if pd.isna(b) else f"{int(b)}ep").astype(object)


def _sizes(df: pd.DataFrame, keys: list[pd.Series]) -> pd.Series:
    """`~<dense_params>p` for the trials whose `keys` group counts against several dense
    architectures (`~?p`: a trial that did not report it), '' elsewhere: a size is named only where
    it tells two networks apart, and a study older than `dense_params` is never split."""
    if "dense_params" not in df or df.empty:
        return pd.Series("", index=df.index, dtype=object)
    size = pd.to_numeric(df["dense_params"], errors="coerce")
    several = size.groupby(keys, dropna=False).transform("nunique") > 1
    named = size.map(lambda p: "~?p" if pd.isna(p) else f"~{int(p)}p").astype(object)
    return named.where(several, "")


def group_names(df: pd.DataFrame) -> pd.Series:
    """Each trial's comparison group, `dataset/model/<total_epochs>ep` (the model as
    `model~<dense_params>p` where one dataset, model and budget holds several dense sizes among the
    trials of df): what any two fronts that are compared must share."""
    dataset, model, budget = _text(df, "dataset"), _text(df, "model"), _budget(df)
    return dataset + "/" + model + _sizes(df, [dataset, model, budget]) + "/" + budget


def front_names(df: pd.DataFrame) -> pd.Series:
    """The front each trial belongs to, named by its key (FRONT_KEY):
    `method[variant]/dataset/model/<budget>ep`, e.g. `reparam[reparam]/fashion_mnist/lenet300/3ep`;
    the model as `model~<dense_params>p` where one (method, variant, dataset, model, budget) holds
    several dense sizes among the trials of df (`beta_vae[vae]/mnist/bvae_cnn~69234p/6ep`). Name
    every trial of the studies at once (as `fronts` and the plots do): a size is shown or not by
    what all of them hold."""
    procedure, dataset, model, budget = (procedure_names(df), _text(df, "dataset"),
                                         _text(df, "model"), _budget(df))
    sizes = _sizes(df, [procedure, dataset, model, budget])
    return procedure + "/" + dataset + "/" + model + sizes + "/" + budget


def at_chance(df: pd.DataFrame, margin: float = CHANCE_MARGIN) -> pd.Series:
    """True for the complete trials whose val_accuracy is near chance (study.metrics.near_chance);
    a trial without `num_classes` is never flagged."""
    if df.empty or not {"status", "val_accuracy", "num_classes"} <= set(df.columns):
        return pd.Series(False, index=df.index)
    chance = near_chance(pd.to_numeric(df["val_accuracy"], errors="coerce"),
                         pd.to_numeric(df["num_classes"], errors="coerce"), margin)
    return (df["status"] == "complete") & chance  # NaN compares False: never flagged


def chance_line(df: pd.DataFrame, margin: float = CHANCE_MARGIN) -> str:
    """The one line that says how many complete trials fronts and exports left out, and why."""
    n = int(at_chance(df, margin).sum())
    return (f"left out {n} complete trial{'s' * (n != 1)} at chance accuracy "
            f"(val_accuracy <= 1/classes + {margin:g})")


def _margin(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def add_chance_margin(parser: argparse.ArgumentParser) -> None:
    """The `--chance-margin` flag of the commands that leave chance-level trials out."""
    parser.add_argument("--chance-margin", type=_margin, default=CHANCE_MARGIN, metavar="M",
                        help="leave out complete trials with val_accuracy <= 1/classes + M "
                             f"(default: {CHANCE_MARGIN})")


def is_feasible(df: pd.DataFrame) -> pd.Series:
    """The `feasible` column (analysis.results: the study's --constraints met), True where absent."""
    if "feasible" not in df:
        return pd.Series(True, index=df.index)
    return df["feasible"].fillna(True).astype(bool)


def front(df: pd.DataFrame, objectives: tuple[str, ...] = OBJECTIVES) -> pd.DataFrame:
    """The non-dominated rows of `df`, sorted by the first objective, best first."""
    if df.empty:
        return df
    return df[pareto_mask(df[list(objectives)].to_numpy())].sort_values(
        list(objectives), ascending=False)


def _first(df: pd.DataFrame, column: str):
    """The first value of a key column any trial reported (an old study's trials lack dense_params)."""
    known = df[column].dropna() if column in df else ()
    return known.iloc[0] if len(known) else None


def fronts(df: pd.DataFrame, objectives: tuple[str, ...] = OBJECTIVES,
           chance_margin: float = CHANCE_MARGIN) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(front rows, with a `front` column naming their front (`front_names`); one row per front
    with its key, `trials` (those the front and its hypervolume are over), `left_out_chance`
    (complete trials at chance, left out: `at_chance`), size and hypervolume) over the complete
    trials of df. A front whose trials are all at chance keeps its row, with no point. An
    objective of the test split: ConfigError (study.metrics.check_selectable)."""
    for m in objectives:
        check_selectable(m, f"--objectives {' '.join(objectives)}")
    missing = [m for m in objectives if m not in df.columns]
    if missing:
        raise ValueError(f"unknown metric {missing[0]!r}: not reported by any trial")
    named = df.assign(front=front_names(df))  # named over every trial: as the plots name them
    done = named[named["status"] == "complete"].dropna(subset=list(objectives))
    done = done.assign(_chance=at_chance(done, chance_margin), _infeasible=~is_feasible(done))
    parts, volumes = [], []
    for name, group in done.groupby("front", sort=True):
        kept = group[~group["_chance"] & ~group["_infeasible"]].drop(columns=["_chance", "_infeasible"])
        parts.append(front(kept, objectives))
        volumes.append({"front": name, **{k: _first(group, k) for k in FRONT_KEY},
                        "trials": len(kept), "left_out_chance": int(group["_chance"].sum()),
                        "left_out_infeasible": int((group["_infeasible"] & ~group["_chance"]).sum()),
                        "front_size": len(parts[-1]),
                        "hypervolume": hypervolume_2d(kept[list(objectives)].to_numpy())})
    parts = [p for p in parts if len(p)]
    table = (pd.concat(parts, ignore_index=True) if parts
             else done.drop(columns=["_chance", "_infeasible"]).iloc[:0])
    return table, pd.DataFrame(volumes, columns=["front", *FRONT_KEY, "trials", "left_out_chance",
                                                 "left_out_infeasible", "front_size", "hypervolume"])


APART = "degenerate / at chance (not on the front)"  # the plots' label for trials kept apart
STOPPED = "stopped at a rung (mid-run values, not on the front)"
INFEASIBLE = "infeasible (--constraint not met)"


def kept_apart(df: pd.DataFrame, margin: float = CHANCE_MARGIN) -> pd.Series:
    """True for the trials the plots draw apart: degenerate, or complete at chance."""
    return (df["status"] == "degenerate") | at_chance(df, margin)


def draw_left_out(ax, data: pd.DataFrame, x: str, y: str, chance_margin: float):
    """Draw the trials the fronts leave out: kept apart (degenerate / at chance) as grey crosses,
    stopped at a rung as grey triangles. Returns both masks."""
    apart = kept_apart(data, chance_margin)
    if apart.any():
        ax.scatter(data.loc[apart, x], data.loc[apart, y], s=30, marker="x", color="0.6", label=APART)
    stopped = data["status"] == "stopped"
    if stopped.any():
        ax.scatter(data.loc[stopped, x], data.loc[stopped, y], s=22, marker="v", color="0.75",
                   label=STOPPED)
    return apart, stopped


def plot_png(df: pd.DataFrame, table: pd.DataFrame, path: Path, objectives=OBJECTIVES,
             chance_margin: float = CHANCE_MARGIN) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y, x = objectives
    fig, ax = plt.subplots(figsize=(7, 5))
    data = df.assign(front=front_names(df)).dropna(subset=list(objectives))  # as `fronts` names
    apart, stopped = draw_left_out(ax, data, x, y, chance_margin)
    data = data[~apart & ~stopped]
    for i, (name, group) in enumerate(data.groupby("front")):
        color = f"C{i}"
        ok = is_feasible(group)
        ax.scatter(group.loc[ok, x], group.loc[ok, y], s=18, alpha=0.5, color=color,
                   label=f"{name} trials")
        if not ok.all():  # hollow: measured, but outside the constraints
            ax.scatter(group.loc[~ok, x], group.loc[~ok, y], s=24, facecolors="none",
                       edgecolors=color, label=f"{name} {INFEASIBLE}")
        if "collapsed" in group:
            c = group[group["collapsed"].astype(bool)]
            ax.scatter(c[x], c[y], s=60, marker="x", color="k",
                       label="collapsed" if i == 0 else None)
        f = table[table["front"] == name].sort_values(x)
        if not f.empty:
            # 'pre': each point's y holds back to the previous point's x, the boundary of the
            # area the hypervolume measures (never through a corner no trial attained)
            ax.step(f[x], f[y], where="pre", color=color, lw=2, label=f"{name} front")
    finish_scatter(fig, ax, x, y, path)


def finish_scatter(fig, ax, x: str, y: str, path: Path) -> None:
    """An objective plane's axes labelled, gridded and with its legend; written (`save_figure`)."""
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    """Every analysis PNG: laid out, written at 120 dpi, closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_html(df: pd.DataFrame, table: pd.DataFrame, path: Path, objectives=OBJECTIVES,
              chance_margin: float = CHANCE_MARGIN) -> None:
    import plotly.graph_objects as go

    y, x = objectives
    fig = go.Figure()
    data = df.assign(front=front_names(df)).dropna(subset=list(objectives))  # as `fronts` names
    hover = [c for c in data.columns if c.startswith(CONFIG_PREFIX) or c in (
        "trial_id", "study", "status", "degenerate_reason", "test_accuracy", "collapse")]

    def points(rows: pd.DataFrame, name: str, **style) -> None:
        fig.add_trace(go.Scatter(
            x=rows[x], y=rows[y], mode="markers", name=name, **style,
            customdata=rows[hover].astype(str).to_numpy(),
            hovertemplate="<br>".join(f"{c}: %{{customdata[{i}]}}" for i, c in enumerate(hover))))

    apart = kept_apart(data, chance_margin)
    if apart.any():
        points(data[apart], APART, marker={"symbol": "x", "color": "grey"})
    stopped = data["status"] == "stopped"
    if stopped.any():
        points(data[stopped], STOPPED, marker={"symbol": "triangle-down", "color": "lightgrey"})
    data = data[~apart & ~stopped]
    for name, group in data.groupby("front"):
        ok = is_feasible(group)
        points(group[ok], f"{name} trials")
        if not ok.all():
            points(group[~ok], f"{name} {INFEASIBLE}", marker={"symbol": "circle-open"})
        f = table[table["front"] == name].sort_values(x)
        fig.add_trace(go.Scatter(x=f[x], y=f[y], mode="lines", line_shape="vh",
                                 name=f"{name} front"))
    fig.update_layout(xaxis_title=x, yaxis_title=y, title="Pareto fronts")
    fig.write_html(str(path), include_plotlyjs=True)


def _plain_columns(table: pd.DataFrame) -> pd.DataFrame:
    """The columns of `table` a W&B table can hold (numbers, text, booleans, empty cells)."""
    return table[[c for c in table.columns if table[c].map(
        lambda v: isinstance(v, (int, float, str, bool)) or v is None).all()]].reset_index(drop=True)


def log_to_wandb(table: pd.DataFrame, study_dir: Path, info: dict,
                 volumes: pd.DataFrame | None = None, *, kind: str = "pareto",
                 tables: dict[str, pd.DataFrame] | None = None, summary: dict | None = None,
                 images: dict[str, Path] | None = None) -> str:
    """The study's analysis run: a run of job type `analysis` named `<study>-<kind>` in the study's
    W&B group, beside its trial runs, so the group's dashboard shows the answer next to the trials.
    It holds the front (`fronts`' table) as `pareto/front` with its scatter `pareto/scatter`, each
    front's hypervolume and size from `volumes` in the summary (`pareto/hypervolume`,
    `pareto/front_size`, with the front's name after `pareto/` when there are several), and what
    the command adds: `tables` (wandb.Table), `summary` (scalars, under keys that name them) and
    `images` (PNG files, as wandb.Image; files that do not exist are skipped). Returns the mode."""
    from study import tracking

    mode, _ = tracking.configure(study_dir)
    import wandb

    run = wandb.init(project=os.environ.get("WANDB_PROJECT", tracking.DEFAULT_PROJECT),
                     group=study_dir.name, job_type="analysis", name=f"{study_dir.name}-{kind}",
                     dir=str(study_dir),
                     tags=tracking.run_tags(info.get("method"), info.get("dataset"), kind),
                     reinit="finish_previous",
                     settings=wandb.Settings(silent=True, x_disable_stats=True, disable_git=True,
                                             console="off"))
    logged: dict = {}
    if not table.empty:
        wb_table = wandb.Table(dataframe=_plain_columns(table))
        logged.update({"pareto/front": wb_table,
                       "pareto/scatter": wandb.plot.scatter(wb_table, "sparsity", "val_accuracy",
                                                            title="Pareto front")})
    logged.update({k: wandb.Table(dataframe=_plain_columns(t)) for k, t in (tables or {}).items()})
    logged.update({k: wandb.Image(str(p)) for k, p in (images or {}).items() if Path(p).exists()})
    if logged:
        run.log(logged)
    keys = {}
    for v in volumes.itertuples() if volumes is not None else ():
        prefix = f"pareto/{v.front}/" if len(volumes) > 1 else "pareto/"
        keys.update({prefix + "hypervolume": float(v.hypervolume), prefix + "front_size": int(v.front_size)})
    run.summary.update({**keys, **(summary or {})})
    run.finish()
    return mode


def main(argv: list[str] | None = None) -> int:
    from analysis.collapse import flag_collapse

    p = argparse.ArgumentParser(prog="python -m analysis.pareto", description=__doc__.splitlines()[0])
    p.add_argument("studies", nargs="+", help="study folders")
    p.add_argument("--objectives", nargs=2, default=list(OBJECTIVES), metavar=("Y", "X"),
                   help="two metrics to maximize (default: val_accuracy sparsity); never one of "
                        "the test split (test_accuracy)")
    p.add_argument("--out", help="output folder (default: FIRST_STUDY/analysis)")
    p.add_argument("--no-wandb", action="store_true", help="do not log the front to W&B")
    add_chance_margin(p)
    args = p.parse_args(argv)
    objectives, margin = tuple(args.objectives), args.chance_margin
    try:
        for m in objectives:  # before reading anything: the test split never chooses
            check_selectable(m, f"--objectives {' '.join(objectives)}")
        df = flag_collapse(load_results(args.studies), chance_margin=margin)
        table, volumes = fronts(df, objectives, margin)
    except (StudyError, ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else layout.analysis_dir(args.studies[0])
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "pareto.csv", index=False)
    plot_png(df, table, out / "pareto.png", objectives, margin)
    plot_html(df, table, out / "pareto.html", objectives, margin)
    show = ["front", "study", "trial_id", *objectives, "test_accuracy", "collapse",
            "reparam/target_missed"] + sorted(
        c for c in df.columns if c.startswith(CONFIG_PREFIX) and df[c].nunique(dropna=True) > 1)
    counts = df["status"].value_counts().to_dict()
    print(f"{len(df)} trials ({', '.join(f'{v} {k}' for k, v in counts.items())})")
    print(chance_line(df, margin))
    if saved_line(df):
        print(saved_line(df))
    print(table[[c for c in show if c in table]].to_string(
        index=False, float_format=lambda v: f"{v:.4g}"))
    print()
    print(volumes.drop(columns=list(FRONT_KEY)).to_string(  # the front's name says its key
        index=False, float_format=lambda v: f"{v:.4f}"))
    if not args.no_wandb and not table.empty:
        first = Path(args.studies[0])
        mode = log_to_wandb(table, first, study_info(first), volumes,
                            images={"pareto/plot": out / "pareto.png"})
        print(f"W&B ({mode}): front logged to group {first.name!r} under {layout.wandb_dir(first)}")
    print(f"wrote {out / 'pareto.csv'}, {out / 'pareto.png'}, {out / 'pareto.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
