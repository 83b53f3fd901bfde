"""`prunestudy importance STUDY... [--fanova]`: which searched hyperparameters matter, per front.

For each front group (`analysis.pareto.front_names`: one (method, variant, dataset, model, epoch
budget, dense size) at a time, over all the studies given), the importance of every searched
setting, measured over the trials its front and hypervolume are over (complete, feasible, away
from chance accuracy: `analysis.pareto.fronts`), toward three targets:

  pareto_front  reaching the front of (val_accuracy, sparsity): the top `--target-quantile` of the
                trials ranked by non-domination rank, ties within the last rank broken by
                hypervolume subset selection (how multi-objective TPE splits trials, and what
                Optuna's PED-ANOVA does with a multi-objective study and no target); both
                objectives maximized, as the search maximized them
  val_accuracy  the top quantile by validation accuracy (highest first)
  sparsity      the top quantile by sparsity (highest first)

The measure is PED-ANOVA (Watanabe et al. 2023; `optuna.importance.PedAnovaImportanceEvaluator`,
evaluated on the trials the study sampled, `evaluate_on_local`): how far the distribution of a
setting's values among the top-quantile trials departs from its distribution among all of them
(Pearson divergence). PED-ANOVA ranks lower values first: the maximized objectives are negated
for it, so "top" is always the best. `importance` is normalized to sum to 1 per target (Optuna's
convention); `raw` is the divergence itself: all zero when no setting tells the top trials apart.
`--fanova` adds fANOVA (Hutter et al. 2014; needs scikit-learn): the share of the variance of a
random forest's prediction each setting explains, of the objective, and, toward the front, of the
non-domination rank (fANOVA has no direction, so no sign to get right).

Distributions come from the study's search space as `study.json` recorded it (never from its
Optuna storage, which also holds failed and pruned trials); each trial is placed in its own
study's space. The test split never enters: the targets are the search's objectives only.

Too few trials is a message, not a number: PED-ANOVA's top quantile must hold at least MIN_TOP
trials (Optuna's advice), so a group needs n with ceil(Q n) >= MIN_TOP, 41 at Optuna's default
Q = 0.1; a smaller group prints `needs at least N finished trials in group G (has M)`.

Writes `importance.csv` (a row per group, target, evaluator and setting; a group with too few
trials has one row with its `note`) and `importance.png` (a row of panels per group) to `--out`
(default: the first study's `analysis/` folder), prints a table per group, and logs the
importances beside the front to the study's analysis run in its W&B group
(`analysis.pareto.log_to_wandb`; `--no-wandb` to skip).
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.pareto import (
    add_chance_margin,
    at_chance,
    front_names,
    fronts,
    is_feasible,
    log_to_wandb,
    plot_png,
    save_figure,
)
from analysis.results import CONFIG_PREFIX, StudyError, load_results, study_info
from study import layout
from study.config import ConfigError
from study.metrics import CHANCE_MARGIN, OBJECTIVES, check_selectable, mode
from study.pareto import nondominated_ranks

FRONT = "pareto_front"  # the target "reaching the front of the objectives"
TARGETS = (FRONT, *OBJECTIVES)
TARGET_QUANTILE = 0.1  # PED-ANOVA's gamma': Optuna's default, the paper's
MIN_TOP = 5  # trials PED-ANOVA's top quantile must hold (Optuna's documented advice)
PED_ANOVA, FANOVA = "ped_anova", "fanova"
RUN_KIND = "param-importance"  # the W&B run's name suffix and tag: not `importance`, a method's tag
COLUMNS = ["front", "target", "evaluator", "param", "importance", "raw", "trials", "top_trials", "note"]
for _m in OBJECTIVES:  # what the targets rank by: never the test split
    check_selectable(_m, "importance targets")
del _m


def needed_trials(quantile: float = TARGET_QUANTILE, min_top: int = MIN_TOP) -> int:
    """The fewest trials whose top `quantile` holds `min_top` of them, counted as PED-ANOVA
    counts (ceil(quantile * n); the HSSP split of the front target takes exactly that many)."""
    n = min_top
    while math.ceil(quantile * n) < min_top:
        n += 1
    return n


def _quantile(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


# --- the search space -----------------------------------------------------------------------------

def _distribution(text: str, where: str):
    """One distribution as study.json records it (study.terms.read_distribution), or a StudyError
    naming where it was read."""
    from study.config import ConfigError
    from study.terms import read_distribution

    try:
        return read_distribution(text)
    except ConfigError:
        raise StudyError(f"{where}: cannot read the search distribution {text!r}") from None


def search_space(study_dir: str | Path) -> dict[str, Any]:
    """The settings a study searched, name -> Optuna distribution, from its study.json; settings
    with a single admissible value (a seed fixed by --set) are left out: nothing was searched."""
    info = study_info(Path(study_dir))
    if not isinstance(info.get("search"), dict):
        raise StudyError(f"{study_dir}: study.json records no search space")
    space = {k: _distribution(v, f"{study_dir}: search space entry {k!r}")
             for k, v in info["search"].items()}
    return {k: d for k, d in space.items() if not d.single()}


def _param_value(dist, value: Any, where: str) -> Any:
    """A trial's setting as its distribution holds it (the table's numbers are numpy's, floats
    where a column holds NaN)."""
    import optuna.distributions as od

    value = value.item() if hasattr(value, "item") else value
    if isinstance(dist, od.CategoricalDistribution):
        missing = value is None or (isinstance(value, float) and math.isnan(value))
        for choice in dist.choices:  # True is not 1 here: a choice matches its own kind
            if (choice is None and missing) or (choice is not None and choice == value and isinstance(
                    choice, bool) == isinstance(value, bool)):
                return choice
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value):
        value = int(value) if isinstance(dist, od.IntDistribution) else float(value)
        if dist._contains(dist.to_internal_repr(value)):
            return value
    raise StudyError(f"{where}: value {value!r} is outside its study's search space {dist!r}")


def _study(rows: pd.DataFrame, spaces: dict[str, dict[str, Any]]):
    """An in-memory Optuna study of `rows` (finished trials), both objectives maximized, each
    trial with its own study's distributions; its trials' numbers are the rows' positions."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize" if mode(m) == "max" else "minimize"
                                            for m in OBJECTIVES])
    trials = []
    for _, row in rows.iterrows():
        space = spaces[row["study_dir"]]
        where = f"trial {row['trial_id']} of {row['study']}, setting"
        params = {k: _param_value(d, row.get(CONFIG_PREFIX + k), f"{where} {k!r}")
                  for k, d in space.items()}
        trials.append(optuna.trial.create_trial(
            params=params, distributions=space, values=[float(row[m]) for m in OBJECTIVES]))
    study.add_trials(trials)
    return study


# --- the importances ------------------------------------------------------------------------------

def _target(name: str, ranks: dict[int, int], evaluator: str):
    """The `target` callable of a target name, None for PED-ANOVA's own front split. PED-ANOVA
    takes lower as better: a maximized objective is negated. fANOVA is sign-free: the value, or
    the non-domination rank toward the front."""
    if name == FRONT:
        return None if evaluator == PED_ANOVA else (lambda t: float(ranks[t.number]))
    i = OBJECTIVES.index(name)
    sign = -1.0 if evaluator == PED_ANOVA and mode(name) == "max" else 1.0
    return lambda t: sign * t.values[i]


def _evaluate(study, params: list[str], target_name: str, evaluator: str, quantile: float,
              ranks: dict[int, int]) -> dict[str, float]:
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    ev = (PedAnovaImportanceEvaluator(target_quantile=quantile) if evaluator == PED_ANOVA
          else FanovaImportanceEvaluator(seed=0))
    with warnings.catch_warnings():  # "computes importance of low target": negated on purpose
        warnings.simplefilter("ignore")
        return ev.evaluate(study, params=params, target=_target(target_name, ranks, evaluator))


def finished(df: pd.DataFrame, chance_margin: float = CHANCE_MARGIN) -> pd.DataFrame:
    """The trials the importances are over, with their `front`: those `analysis.pareto.fronts`
    counts (complete, feasible, away from chance, both objectives reported)."""
    named = df.assign(front=front_names(df))  # named over every trial, as the fronts are
    done = named[named["status"] == "complete"].dropna(subset=list(OBJECTIVES))
    return done[~at_chance(done, chance_margin) & is_feasible(done)]


def too_few(group: str, has: int, quantile: float = TARGET_QUANTILE) -> str:
    need = needed_trials(quantile)
    return (f"needs at least {need} finished trials in group {group} (has {has}): PED-ANOVA at "
            f"--target-quantile {quantile:g} needs {MIN_TOP} in its top quantile")


def importances(df: pd.DataFrame, spaces: dict[str, dict[str, Any]],
                quantile: float = TARGET_QUANTILE, fanova: bool = False,
                chance_margin: float = CHANCE_MARGIN) -> pd.DataFrame:
    """A row per (front group, target, evaluator, searched setting) of the trials of `df`
    (analysis.results' table), COLUMNS; `spaces`: study folder (the `study_dir` column) -> its
    `search_space`. A group with too few trials, or none searched, is one row with its `note`; a
    setting with one value in its group has rows with a note and no importance."""
    rows = []
    for group, trials in finished(df, chance_margin).groupby("front", sort=True):
        trials = trials.reset_index(drop=True)
        params = sorted({p for d in trials["study_dir"].unique() for p in spaces[d]})
        base = {"front": group, "trials": len(trials)}
        if not params:
            rows.append({**base, "note": f"group {group}: no setting was searched"})
            continue
        if len(trials) < needed_trials(quantile):
            rows.append({**base, "note": too_few(group, len(trials), quantile)})
            continue
        study = _study(trials, spaces)
        ranks = dict(enumerate(nondominated_ranks(trials[list(OBJECTIVES)].to_numpy(float))))
        # a setting with one value in the group tells nothing apart (e.g. beta_vae's latent_dim,
        # which makes the group: its dense size is in the front key)
        fixed = [p for p in params if trials[CONFIG_PREFIX + p].nunique(dropna=True) <= 1]
        params = [p for p in params if p not in fixed]
        rows += [{**base, "target": target, "evaluator": PED_ANOVA, "param": p,
                  "top_trials": math.ceil(quantile * len(trials)),
                  "note": f"{p} has one value in this group"} for p in fixed for target in TARGETS]
        # fANOVA assesses only the settings every trial of the group has (one space per study)
        everywhere = [p for p in params if all(p in spaces[d] for d in trials["study_dir"].unique())]
        for evaluator in (PED_ANOVA, FANOVA) if fanova else (PED_ANOVA,):
            for target in TARGETS:
                values = (trials[target] if target != FRONT else pd.Series(ranks)).to_numpy(float)
                top = math.ceil(quantile * len(trials)) if evaluator == PED_ANOVA else len(trials)
                keys = params if evaluator == PED_ANOVA else everywhere
                if np.unique(values).size == 1:
                    rows += [{**base, "target": target, "evaluator": evaluator, "param": p,
                              "top_trials": top, "note": f"{target} is the same for every trial"}
                             for p in keys]
                    continue
                raw = _evaluate(study, keys, target, evaluator, quantile, ranks)
                total = sum(raw.values())
                rows += [{**base, "target": target, "evaluator": evaluator, "param": p,
                          "importance": raw[p] / total if total > 0 else np.nan, "raw": raw[p],
                          "top_trials": top,
                          "note": "" if total > 0 else "no setting tells the top trials apart"}
                         for p in sorted(keys, key=lambda k: -raw[k])]
    return pd.DataFrame(rows, columns=COLUMNS)


# --- outputs --------------------------------------------------------------------------------------

def wide(table: pd.DataFrame, group: str) -> pd.DataFrame:
    """One group's importances as a table: a row per setting, a column per (evaluator) target."""
    rows = table[(table["front"] == group) & table["param"].notna()]
    label = rows["target"] + rows["evaluator"].map(lambda e: "" if e == PED_ANOVA else f" ({e})")
    shown = rows.assign(column=label).pivot(index="param", columns="column", values="importance")
    order = [c for c in label.drop_duplicates()]
    return shown[order].sort_values(order[0], ascending=False).rename_axis(None, axis=1)


def plot(table: pd.DataFrame, path: Path) -> None:
    """A row of panels per group (a panel per target; fANOVA's bars hatched beside PED-ANOVA's);
    a group with too few trials is its note."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(table["front"]))
    nparams = max([table.loc[table["front"] == g, "param"].nunique() for g in groups] + [1])
    fig, axes = plt.subplots(max(len(groups), 1), len(TARGETS), squeeze=False,
                             figsize=(4.2 * len(TARGETS), (0.35 * nparams + 1.4) * max(len(groups), 1)))
    for row, group in zip(axes, groups or [None], strict=False):
        rows = table[table["front"] == group]
        if group is None or rows["param"].isna().all():
            for ax in row:
                ax.axis("off")
            row[0].text(0, 0.5, rows["note"].iloc[0] if len(rows) else "no finished trial",
                        fontsize=9, va="center", in_layout=False)  # wider than its panel
            continue
        evaluators = [e for e in (PED_ANOVA, FANOVA) if (rows["evaluator"] == e).any()]
        height = 0.8 / len(evaluators)
        for ax, target in zip(row, TARGETS, strict=True):
            part = rows[rows["target"] == target]
            params = list(dict.fromkeys(part.loc[part["evaluator"] == PED_ANOVA, "param"]))[::-1]
            for k, evaluator in enumerate(evaluators):
                bars = part[part["evaluator"] == evaluator].set_index("param").reindex(params)
                ax.barh(np.arange(len(params)) + height * (k - (len(evaluators) - 1) / 2),
                        bars["importance"].fillna(0), height=height, color=f"C{k}", alpha=0.8,
                        hatch="//" if evaluator == FANOVA else None,
                        label="fANOVA" if evaluator == FANOVA else "PED-ANOVA")
            ax.set_yticks(np.arange(len(params)), params, fontsize=8)
            ax.set_xlim(0, 1)
            ax.set_xlabel(f"importance toward {target}", fontsize=8)
            ax.grid(alpha=0.3, axis="x")
        row[0].set_title(group, fontsize=9, loc="left")
        row[-1].legend(fontsize=7)
    save_figure(fig, path)


def wandb_summary(table: pd.DataFrame) -> dict[str, Any]:
    """The summary keys of the analysis run: `importance/<target>/<setting>` (PED-ANOVA) and
    `importance/fanova/<target>/<setting>`, normalized; `importance/trials`; a group with too few
    trials `importance/note`. With several groups, each key has the group after `importance/`."""
    several = table["front"].nunique() > 1
    out: dict[str, Any] = {}
    for group, rows in table.groupby("front", sort=True):
        prefix = f"importance/{group}/" if several else "importance/"
        out[prefix + "trials"] = int(rows["trials"].iloc[0])
        notes = [n for n in rows["note"].dropna().unique() if n]
        if notes:
            out[prefix + "note"] = "; ".join(notes)
        for r in rows[rows["importance"].notna()].itertuples():
            kind = "" if r.evaluator == PED_ANOVA else f"{r.evaluator}/"
            out[f"{prefix}{kind}{r.target}/{r.param}"] = float(r.importance)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.hyperparameters",
                                description=__doc__.splitlines()[0])
    p.add_argument("studies", nargs="+", metavar="STUDY", help="study folders")
    p.add_argument("--target-quantile", type=_quantile, default=TARGET_QUANTILE, metavar="Q",
                   help=f"PED-ANOVA's top quantile (default {TARGET_QUANTILE}); a group needs "
                        f"ceil(Q n) >= {MIN_TOP} trials in it")
    p.add_argument("--fanova", action="store_true",
                   help="also fANOVA (a random forest's variance decomposition; needs scikit-learn)")
    p.add_argument("--out", help="output folder (default: FIRST_STUDY/analysis)")
    p.add_argument("--no-wandb", action="store_true", help="do not log to W&B")
    add_chance_margin(p)
    args = p.parse_args(argv)
    if args.fanova:
        try:
            import sklearn  # noqa: F401 - Optuna's fANOVA fits scikit-learn's forests
        except ImportError:
            print("error: --fanova needs scikit-learn (pip install scikit-learn)", file=sys.stderr)
            return 2
    try:
        df = load_results(args.studies)
        spaces = {d: search_space(d) for d in df["study_dir"].unique()}
        table = importances(df, spaces, args.target_quantile, args.fanova, args.chance_margin)
    except (StudyError, ConfigError) as e:  # ConfigError: a study's stored --constraint
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else layout.analysis_dir(args.studies[0])
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "importance.csv", index=False)
    plot(table, out / "importance.png")
    if table.empty:
        print("no finished trial: nothing to assess")
    for group, rows in table.groupby("front", sort=True):
        if rows["param"].isna().all():
            print(rows["note"].iloc[0])
            continue
        top = int(rows["top_trials"].iloc[0])
        print(f"{group}: {rows['trials'].iloc[0]} finished trials; PED-ANOVA over the top "
              f"{args.target_quantile:.0%} ({top} trials), normalized per target")
        print(wide(rows, group).to_string(float_format=lambda v: f"{v:.3f}", na_rep="-"))
        for note in sorted({n for n in rows["note"].dropna() if n}):
            print(f"  note: {note}")
        print()
    if not args.no_wandb:
        first = Path(args.studies[0])
        front_table, volumes = fronts(df, OBJECTIVES, args.chance_margin)
        with tempfile.TemporaryDirectory() as tmp:
            plot_png(df, front_table, Path(tmp) / "pareto.png", OBJECTIVES, args.chance_margin)
            mode_ = log_to_wandb(front_table, first, study_info(first), volumes, kind=RUN_KIND,
                                 tables={"importance/table": table}, summary=wandb_summary(table),
                                 images={"importance/plot": out / "importance.png",
                                         "pareto/plot": Path(tmp) / "pareto.png"})
        print(f"W&B ({mode_}): importances and front logged to group {first.name!r} under "
              f"{layout.wandb_dir(first)}")
    print(f"wrote {out / 'importance.csv'}, {out / 'importance.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
