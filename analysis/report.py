"""`prunestudy report STUDY... [--out FILE.html]`: one self-contained page of the studies.

A page to mail: every figure an inline PNG (`data:` URI), the style inline, no script and no
address outside the file, so it opens offline in any browser. Titled with its studies, methods,
datasets, models and epoch budgets. Over the trials of all the studies given, it holds:

- *Trials left out, and why*: per study, how many trials the fronts count (complete, feasible,
  away from chance) and how many they leave out, by reason: complete at chance accuracy
  (`analysis.pareto.at_chance`), infeasible (`--constraint`), degenerate (with the trainable's
  reasons), diverged, stopped at a rung, failed, still running; with what ending degenerate trials
  early saved (`analysis.results.saved_line`).
- A section per comparison group (`analysis.pareto.group_names`: one dataset, model, epoch budget
  and dense size; trials that never reported an epoch belong to none and are only counted):
  the fronts, one per procedure pooled over the studies (`analysis.compare`), the magnitude
  baselines dashed, the dense reference dotted (control trials), the trials kept apart in grey,
  and, where a study's `analysis/robust.csv` exists (`prunestudy robust`), each re-run front
  trial's mean +- std over its new seeds as error bars; the fronts' hypervolumes and points; the
  hypervolume against trials ended and epochs run (`analysis.hypervolume`); the importances of
  the searched settings (`analysis.hyperparameters`, PED-ANOVA, or why there are none); the
  posterior-collapse flags of beta_vae trials (`analysis.collapse`); each trial's validation
  accuracy per epoch (its result.json); the left-out counts of the group; every trial.
- *Study settings*: each study's study.json: sampler, scheduler, constraints, seed, trials,
  search space, fixed settings and the command that ran it.

Writes `--out` (default: the first study's `analysis/report.html`). Reads only: never trains.

The W&B view: the page's figures, the page itself, the fronts and the importances also go to the
first study's analysis run `<study>-report` (job type `analysis`, tag `report`) in the study's W&B
group, beside its trial runs (`analysis.pareto.log_to_wandb`; `--no-wandb` to skip): per group
`report/<group>/front`, `report/<group>/hypervolume`, `report/<group>/curves` and, where assessed,
`report/<group>/importance` (wandb.Image, the page's PNGs); the page as `report/page` (wandb.Html,
in the run's summary); the fronts as `pareto/front` (as `prunestudy pareto`) and the importances
as `importance/table` and `importance/...` (as `prunestudy importance`).
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.collapse import collapse_by_beta, flag_collapse
from analysis.compare import (
    ACCURACY,
    BASELINE_METHODS,
    REFERENCE,
    compare,
    dense_reference,
    eligible,
    front_points,
    view_table,
)
from analysis.hypervolume import hypervolume_curves
from analysis.pareto import (
    INFEASIBLE,
    add_chance_margin,
    at_chance,
    chance_line,
    draw_left_out,
    fronts,
    group_names,
    is_feasible,
    save_figure,
)
from analysis.results import CONFIG_PREFIX, StudyError, load_results, saved_line, study_info
from study import layout
from study.config import ConfigError
from study.metrics import CHANCE_MARGIN, OBJECTIVES

RUN_KIND = "report"  # the W&B analysis run `<study>-report`, tagged `report`

ROBUST_CSV = "robust.csv"  # what `prunestudy robust` writes to a study's analysis folder
# why a trial is or is not on a front: each trial has exactly one (`reasons`), in this order
REASONS = {
    "counted": "complete, feasible, away from chance: what fronts, hypervolumes and importances count",
    "at_chance": "complete, at chance validation accuracy (<= 1/classes + the chance margin)",
    "infeasible": "complete, but misses a --constraint of its study",
    "degenerate": "ended early by the trainable: chance accuracy for degenerate_epochs, or a dead network",
    "diverged": "its loss became NaN or inf",
    "stopped": "stopped at a rung by --scheduler mo-asha (mid-run values)",
    "failed": "raised, or Optuna recorded it failed",
    "running": "still running, or interrupted",
}
STATUS_COLORS = {"degenerate": "0.55", "diverged": "tab:red", "failed": "k", "stopped": "0.75",
                 "running": "tab:purple"}


# --- what the page says --------------------------------------------------------------------------

def reasons(df: pd.DataFrame, chance_margin: float = CHANCE_MARGIN) -> pd.Series:
    """Each trial's REASONS key: `counted`, `at_chance` or `infeasible` for complete trials (as
    analysis.pareto.fronts counts them: at chance first), else its status."""
    chance = at_chance(df, chance_margin)
    out = df["status"].astype(object).copy()
    complete = df["status"] == "complete"
    out[complete] = "counted"
    out[complete & ~is_feasible(df)] = "infeasible"
    out[complete & chance] = "at_chance"
    return out


def left_out(df: pd.DataFrame, chance_margin: float = CHANCE_MARGIN) -> dict[str, int]:
    """Trials per REASONS key (every key, zeros included)."""
    counts = reasons(df, chance_margin).value_counts()
    return {k: int(counts.get(k, 0)) for k in REASONS}


def groups(df: pd.DataFrame) -> pd.Series:
    """Each trial's comparison group (`analysis.pareto.group_names`, named over the trials that
    reported an epoch); NaN for a trial that never did (no budget or size to place it by)."""
    reported = df["epoch"].notna() if "epoch" in df else pd.Series(False, index=df.index)
    out = pd.Series(np.nan, index=df.index, dtype=object)
    if reported.any():
        out[reported] = group_names(df[reported])
    return out


def _values(df: pd.DataFrame, column: str) -> list[str]:
    if column not in df:
        return []
    return [str(v) for v in dict.fromkeys(df[column].dropna())]


def _budgets(df: pd.DataFrame) -> list[str]:
    epochs = pd.to_numeric(df["total_epochs"], errors="coerce").dropna() if "total_epochs" in df else []
    return [f"{int(e)} epoch{'s' * (int(e) != 1)}" for e in sorted(set(epochs))]


def title(df: pd.DataFrame, studies: list[str]) -> str:
    """`Study NAME: method M, dataset D, model X, budget N epochs` (each a list where several)."""
    def joined(values: list[str]) -> str:
        return ", ".join(values) or "-"

    return (f"Stud{'ies' if len(studies) > 1 else 'y'} {joined(studies)}: "
            f"method {joined(_values(df, 'method'))}, dataset {joined(_values(df, 'dataset'))}, "
            f"model {joined(_values(df, 'model'))}, budget {joined(_budgets(df))}")


def robust_summaries(study_dirs: list[Path]) -> pd.DataFrame:
    """Every `analysis/robust.csv` of the studies (`prunestudy robust`), with its `study`."""
    parts = []
    for d in study_dirs:
        path = layout.analysis_dir(d) / ROBUST_CSV
        if path.exists():
            parts.append(pd.read_csv(path, dtype={"trial_id": str}).assign(study=Path(d).name))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["study", "trial_id"])


def searched(infos: dict[str, dict[str, Any]], df: pd.DataFrame) -> list[str]:
    """The `config/` columns of the settings any study searched (study.json's `search`)."""
    keys = dict.fromkeys(k for info in infos.values() for k in (info.get("search") or {}))
    return [CONFIG_PREFIX + k for k in keys if CONFIG_PREFIX + k in df]


# --- figures (PNG bytes, inlined) ----------------------------------------------------------------

def _figure(width: float, height: float, rows: int = 1, cols: int = 1):
    """(figure, 2-D array of axes), off-screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(rows, cols, figsize=(width, height), squeeze=False)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    save_figure(fig, buffer)  # every analysis PNG's layout and dpi
    return buffer.getvalue()


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_front(trials: pd.DataFrame, rows: pd.DataFrame, points: pd.DataFrame, table: pd.DataFrame,
               robust: pd.DataFrame, reference: pd.DataFrame, group: str,
               chance_margin: float = CHANCE_MARGIN) -> bytes:
    """The group's fronts (analysis.compare's, pooled per procedure; baselines dashed), the dense
    reference, the trials kept apart, and the robust re-runs' error bars."""
    y, x = OBJECTIVES
    fig, axes = _figure(5.8, 4.2)
    ax = axes[0][0]
    drawn = trials.dropna(subset=[x, y]) if {x, y} <= set(trials) else trials.iloc[:0]
    apart, _ = draw_left_out(ax, drawn, x, y, chance_margin)
    off = (drawn["status"] == "complete") & ~is_feasible(drawn) & ~apart
    if off.any():
        ax.scatter(drawn.loc[off, x], drawn.loc[off, y], s=26, facecolors="none", edgecolors="0.4",
                   label=INFEASIBLE)
    baseline = dict(zip(table["front"], table["baseline"], strict=True)) if len(table) else {}
    for i, (name, own) in enumerate(rows.groupby("front", sort=True)):
        color, dashed = f"C{i}", baseline.get(name, False)
        ax.scatter(own[x], own[y], s=16, alpha=0.4, color=color)
        f = points[points["front"] == name].sort_values(x)
        ax.step(f[x], f[ACCURACY], where="pre", color=color, lw=2, ls="--" if dashed else "-",
                marker="o", ms=4, label=f"{name}{' (baseline)' if dashed else ''} front")
    if len(robust):
        ax.errorbar(robust[f"{x}_mean"], robust[f"{y}_mean"], xerr=robust[f"{x}_std"],
                    yerr=robust[f"{y}_std"], fmt="D", ms=4, color="k", capsize=3, lw=1,
                    label="front trials re-run with new seeds: mean +- std")
    if len(reference):
        ax.axhline(reference[ACCURACY].iloc[0], color="k", ls=":", lw=1.5, label=REFERENCE)
    if not len(drawn) and not len(reference):
        _empty(ax, "no trial reported both objectives")
    else:
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax.set_title(group, fontsize=9)
    return _png(fig)


def plot_hypervolume(curves: pd.DataFrame) -> bytes:
    """Hypervolume (analysis.hypervolume's curves) against trials ended and epochs run."""
    fig, axes = _figure(11, 3.6, 1, 2)
    for (study, name), c in curves.groupby(["study", "front"], sort=False):
        for ax, by in zip(axes[0], ("trials", "epochs"), strict=True):
            ax.step(c[by], c["hypervolume"], where="post", marker=".", label=f"{study}: {name}")
    for ax, label in zip(axes[0], ("trials ended", "epochs run (all ended trials)"), strict=True):
        if curves.empty:
            _empty(ax, "no trial ended")
            continue
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    if not curves.empty:
        axes[0][0].set_ylabel("hypervolume (val_accuracy x sparsity, ref. (0, 0))", fontsize=8)
        axes[0][0].legend(fontsize=7)
    return _png(fig)


def plot_curves(trials: pd.DataFrame, histories: dict[tuple[str, str], list[dict]],
                on_front: set[tuple[str, str]]) -> bytes:
    """Each trial's validation accuracy per epoch: front trials in colour (named), the other
    counted trials thin, the others in their status's colour; chance dotted; the epochs' phases
    under the axis where every trial's schedule agrees."""
    fig, axes = _figure(11, 4.5)
    ax = axes[0][0]
    labelled: set[str] = set()
    phases: dict[int, str] = {}
    agree = True
    k = 0
    for _, t in trials.iterrows():
        key = (t["study"], t["trial_id"])
        rows = [r for r in histories.get(key, []) if r.get("val_accuracy") is not None]
        if not rows:
            continue
        epochs = [r.get("epoch", i + 1) for i, r in enumerate(rows)]
        values = [r["val_accuracy"] for r in rows]
        for e, r in zip(epochs, rows, strict=True):
            if r.get("phase") is not None and phases.setdefault(e, r["phase"]) != r["phase"]:
                agree = False
        if key in on_front:
            ax.plot(epochs, values, marker="o", ms=3, lw=1.8, color=f"C{k % 10}",
                    label=f"{t['trial_id']} (front)")
            k += 1
            continue
        status = t["status"]
        color = STATUS_COLORS.get(status, "tab:blue")
        label = status if status not in labelled else None
        labelled.add(status)
        ax.plot(epochs, values, marker=".", ms=3, lw=0.9, alpha=0.6, color=color,
                ls="--" if status in STATUS_COLORS else "-",
                label=("complete, not on a front" if status == "complete" else label) if label else None)
    if not ax.lines:
        _empty(ax, "no trial reported a validation accuracy")
        return _png(fig)
    classes = (pd.to_numeric(trials["num_classes"], errors="coerce").dropna() if "num_classes" in trials
               else [])
    if len(classes):
        ax.axhline(1.0 / classes.iloc[0], color="0.5", ls=":", lw=1, label="chance")
    if agree and phases:
        ticks = sorted(phases)
        ax.set_xticks(ticks, [f"{e}\n{phases[e]}" for e in ticks], fontsize=7)
    ax.set_xlabel("epoch (phase)")
    ax.set_ylabel("val_accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _png(fig)


# --- HTML ----------------------------------------------------------------------------------------

def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _img(png: bytes, alt: str, kind: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure data-figure="{_e(kind)}"><img alt="{_e(alt)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{_e(alt)}</figcaption></figure>')


def _number(v: Any) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (float, np.floating)):
        return f"{v:.4g}"
    return str(v)


def _table(df: pd.DataFrame, cls: str = "", **attrs: str) -> str:
    """A DataFrame as an HTML table, every cell escaped, numbers to 4 significant digits."""
    extra = "".join(f' data-{k.replace("_", "-")}="{_e(v)}"' for k, v in attrs.items())
    head = "".join(f"<th>{_e(c)}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(_number(v))}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    return f'<table class="{_e(cls)}"{extra}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _left_out_table(df: pd.DataFrame, chance_margin: float, **attrs: str) -> str:
    counts = left_out(df, chance_margin)
    why = dict(REASONS)
    if counts["degenerate"] and "degenerate_reason" in df:
        found = df.loc[df["status"] == "degenerate", "degenerate_reason"].fillna("?").value_counts()
        why["degenerate"] += " (here: " + "; ".join(f"{k}: {v}" for k, v in found.items()) + ")"
    rows = "".join(
        f'<tr data-reason="{_e(k)}"{" class=zero" if not n else ""}><td>{_e(k.replace("_", " "))}</td>'
        f'<td class="count">{n}</td><td>{_e(why[k])}</td></tr>' for k, n in counts.items())
    extra = "".join(f' data-{k}="{_e(v)}"' for k, v in attrs.items())
    return (f'<table class="left-out"{extra}><thead><tr><th>trials</th><th>n</th><th>why</th></tr>'
            f'</thead><tbody>{rows}</tbody><tfoot><tr><td>all</td><td class="count">{len(df)}</td>'
            f"<td></td></tr></tfoot></table>")


def _settings_section(name: str, info: dict[str, Any]) -> str:
    plain = {k: v for k, v in info.items() if not isinstance(v, (dict, list)) and k != "name"}
    parts = [f'<h3>{_e(name)}</h3>',
             _table(pd.DataFrame({"setting": list(plain), "value": [str(v) for v in plain.values()]}),
                    "settings")]
    for key in ("constraints", "sampler_args"):
        if key in info:
            parts.append(f'<p class="meta"><b>{_e(key)}</b>: {_e(info[key] or "none")}</p>')
    if info.get("search"):
        parts.append("<p><b>searched</b></p>" + _table(pd.DataFrame(
            {"setting": list(info["search"]), "distribution": list(info["search"].values())}), "space"))
    if info.get("fixed"):
        parts.append(f"<details><summary>fixed settings ({len(info['fixed'])})</summary>"
                     + _table(pd.DataFrame({"setting": list(info["fixed"]),
                                            "value": [str(v) for v in info["fixed"].values()]}),
                              "fixed") + "</details>")
    if info.get("argv"):
        command = "prunestudy search " + " ".join(shlex.quote(str(a)) for a in info["argv"])
        parts.append(f"<p><b>command</b></p><pre>{_e(command)}</pre>")
    return f'<div class="study-settings" data-study="{_e(name)}">' + "".join(parts) + "</div>"


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1280px;
box-sizing:border-box;
padding:12px 20px;color:#222;line-height:1.35}
h1{font-size:1.35em;margin:.3em 0}h2{font-size:1.15em;border-bottom:2px solid #ccd;padding-bottom:3px;
margin-top:1.6em}h3{font-size:1em;margin:1em 0 .3em}p.meta{color:#555;font-size:.85em;margin:.2em 0}
table{border-collapse:collapse;font-size:.78em;margin:.3em 0 .8em}th,td{border:1px solid #ddd;
padding:2px 6px;text-align:left;vertical-align:top}th{background:#eef}
tbody tr:nth-child(even){background:#f7f7fb}
tr.zero{color:#999}td.count{text-align:right;font-weight:600}figure{margin:.4em 0}
figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.75em;color:#666}
.note{font-size:.85em;color:#664;background:#ffd;padding:3px 8px;border-left:3px solid #cc6}
pre{background:#f4f4f4;padding:6px;font-size:.75em;white-space:pre-wrap}nav{font-size:.85em}
section.group{margin-bottom:2em}.row{display:flex;gap:18px;flex-wrap:wrap;align-items:flex-start}
.row>.side{flex:1 1 380px;min-width:0;overflow-x:auto}
details{font-size:.9em;margin:.4em 0}summary{cursor:pointer;color:#335}
"""


# --- the page ------------------------------------------------------------------------------------

def fronts_table(table: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    """analysis.compare's table of one group, x = sparsity, as the page shows it: per front its
    trials, points, pooled hypervolume (of val_accuracy; of test_accuracy at the same points), the
    per-study mean +- std, and the pooled and mean minus the best baseline's."""
    shown = view_table(table, "hv")
    return pd.DataFrame({
        "front": shown["front"].str.strip(), "trials": shown["trials"],
        "points": [int((points["front"] == f).sum()) for f in table["front"]],
        "hypervolume": shown["pooled"], "(test)": shown["pooled (test)"],
        "per study": [m if s == "-" else f"{m} ± {s}" for m, s in zip(shown["mean"], shown["std"],
                                                                     strict=True)],
        "vs best baseline (mean)": [f"{p} ({m})" if p != "-" else "-" for p, m in zip(
            shown["pooled vs best baseline"], shown["mean vs best baseline"], strict=True)]})


def _importance_part(table: pd.DataFrame | None, note: str, fronts: list[str],
                     figures: dict[str, bytes] | None = None) -> str:
    """The importances of the group's `fronts`; its figure, if any, also into `figures` as
    `importance`."""
    from analysis.hyperparameters import plot as plot_importances
    from analysis.hyperparameters import wide

    if table is None:
        return f'<p class="note">{_e(note)}</p>'
    mine = table[table["front"].isin(fronts)]
    if mine.empty:
        return '<p class="note">no complete trial away from chance: nothing to assess</p>'
    parts = []
    for front, rows in mine.groupby("front", sort=True):
        notes = sorted({n for n in rows["note"].dropna() if n})
        if rows["param"].isna().all():
            parts.append(f'<p class="note">{_e(front)}: {_e("; ".join(notes))}</p>')
            continue
        parts.append(f"<h4>{_e(front)}: {int(rows['trials'].iloc[0])} trials, PED-ANOVA over the "
                     f"top {int(rows['top_trials'].iloc[0])} (normalized per target)</h4>")
        shown = wide(rows, front)
        parts.append(_table(shown.reset_index(names="setting"), "importance"))
        parts += [f'<p class="note">{_e(n)}</p>' for n in notes]
    if mine["importance"].notna().any():
        buffer = io.BytesIO()
        plot_importances(mine[mine["front"].isin(mine.loc[mine["importance"].notna(), "front"])], buffer)
        if figures is not None:
            figures["importance"] = buffer.getvalue()
        parts.append(_img(buffer.getvalue(), "importance of each searched setting toward each target",
                          "importance"))
    return "".join(parts)


def _collapse_part(trials: pd.DataFrame) -> str:
    vae = trials[(trials["method"] == "beta_vae")
                 & (trials.get("variant", pd.Series("vae", index=trials.index)).fillna("vae") == "vae")]
    if vae.empty:
        return '<p class="note">no beta_vae (VAE) trial in this group: no collapse flags</p>'
    columns = ["study", "trial_id", "status", f"{CONFIG_PREFIX}beta", f"{CONFIG_PREFIX}latent_dim",
               "vae/end/val_accuracy", "vae/end/active_units", "vae/end/kl", "collapsed_dims",
               "active_units", "collapsed", "collapse", "val_accuracy"]
    shown = vae[[c for c in columns if c in vae]].assign(
        collapse=vae["collapse"].replace("", "-")).rename(columns=lambda c: c.removeprefix(CONFIG_PREFIX))
    flagged = int(vae["collapsed"].sum())
    return (f"<p>{flagged} of {len(vae)} VAE trials collapsed at the end of their VAE phase "
            f"(criteria of analysis.collapse; partial_collapse is listed, not counted)</p>"
            + _table(shown, "collapse") + "<p>by beta</p>"
            + _table(collapse_by_beta(vae), "collapse-by-beta"))


def group_section(n: int, group: str, trials: pd.DataFrame, df: pd.DataFrame, *,
                  curves: pd.DataFrame, robust: pd.DataFrame, importance: pd.DataFrame | None,
                  importance_note: str, setting_columns: list[str],
                  histories: dict[tuple[str, str], list[dict]], chance_margin: float,
                  figures: dict[str, bytes] | None = None) -> str:
    """One comparison group's section (`trials`: its rows of the flagged table `df`); its
    figures' PNGs also into `figures`, by kind (`front`, `hypervolume`, `importance`, `curves`)."""
    figures = {} if figures is None else figures
    rows = eligible(trials, chance_margin)
    rows = rows.assign(group=group)  # named over every reported trial, as the section is
    table = compare(rows) if len(rows) else pd.DataFrame(columns=["front", "baseline"])
    points = front_points(rows) if len(rows) else pd.DataFrame(columns=["front", "view", "study", "trial_id"])
    points = points[points["view"] == "sparsity"]
    reference = dense_reference(trials, rows, chance_margin)  # control trials of this group
    keys = set(zip(points["study"], points["trial_id"], strict=True))
    mine = robust[[k in keys for k in zip(robust["study"], robust["trial_id"], strict=True)]]
    parts = [f'<section class="group" id="group-{n}" data-group="{_e(group)}"><h2>{_e(group)}</h2>']
    counted = left_out(trials, chance_margin)["counted"]
    robust_note = f"; {len(mine)} front trials re-run with new seeds (prunestudy robust)" if len(mine) else ""
    parts.append(f'<p class="meta">{len(trials)} trials of {_e(", ".join(dict.fromkeys(trials["study"])))}'
                 f"; {counted} counted on the fronts{robust_note}</p>")

    # the front
    parts.append("<h3>Front: val_accuracy against sparsity</h3>")
    figures["front"] = plot_front(trials, rows, points, table, mine, reference, group, chance_margin)
    figure = _img(figures["front"], f"{group}: fronts (baselines dashed), trials kept apart in grey", "front")
    notes = []
    if not table.empty and not table["baseline"].any():
        notes.append(f"no baseline here (a front of method {', '.join(BASELINE_METHODS)}): give a "
                     "baseline study of the same dataset, model and budget beside")
    if len(reference):
        best = reference.iloc[0]
        notes.append(f"{REFERENCE}: val_accuracy {best[ACCURACY]:.4f} (trial {best['trial_id']})")
    side = "".join(f'<p class="note">{_e(n)}</p>' for n in notes)
    if not table.empty:
        side += ("<p>hypervolume from (0, 0) of each front, x = sparsity; (test): of test_accuracy "
                 "at the same points</p>") + _table(
            fronts_table(table, points), "fronts")
    parts.append(f'<div class="row"><div>{figure}</div><div class="side">{side}</div></div>')
    if len(points):
        shown = points.drop(columns=["view"])
        if len(mine):
            r = mine.drop_duplicates(["study", "trial_id"], keep="last").set_index(
                ["study", "trial_id"])
            for m in (*OBJECTIVES, "test_accuracy"):
                if f"{m}_mean" in r:
                    shown[f"{m} (new seeds)"] = [
                        (f"{r.loc[k, f'{m}_mean']:.4f} ± {r.loc[k, f'{m}_std']:.4f}" if k in r.index else "-")
                        for k in zip(shown["study"], shown["trial_id"], strict=True)]
            if "survives" in r:
                shown["survives"] = [r.loc[k, "survives"] if k in r.index else "-"
                                     for k in zip(shown["study"], shown["trial_id"], strict=True)]
        settings = trials.drop_duplicates(["study", "trial_id"]).set_index(["study", "trial_id"])
        for c in setting_columns:
            shown[c.removeprefix(CONFIG_PREFIX)] = [settings.loc[k, c] for k in zip(
                shown["study"], shown["trial_id"], strict=True)]
        parts.append("<details open><summary>front points (chosen on val_accuracy; test_accuracy "
                     "only reported)</summary>" + _table(shown, "points") + "</details>")

    # hypervolume
    parts.append("<h3>Hypervolume as the studies progressed</h3>")
    figures["hypervolume"] = plot_hypervolume(curves)
    parts.append(_img(figures["hypervolume"], f"{group}: hypervolume against trials ended and "
                      "epochs run", "hypervolume"))

    # importances
    parts.append("<h3>Importance of the searched settings (PED-ANOVA)</h3>")
    own_fronts = list(dict.fromkeys(trials["_front"].dropna()))  # the importances' groups
    parts.append(_importance_part(importance, importance_note, own_fronts, figures))

    # collapse
    parts.append("<h3>Posterior collapse (beta_vae)</h3>")
    parts.append(_collapse_part(trials))

    # validation curves
    parts.append("<h3>Validation accuracy per epoch, each trial</h3>")
    figures["curves"] = plot_curves(trials, histories, keys)
    parts.append(_img(figures["curves"], f"{group}: each trial's val_accuracy per "
                      "epoch", "curves"))

    # left out, every trial
    parts.append("<h3>Trials left out, and why</h3>")
    parts.append(_left_out_table(trials, chance_margin, group=group))
    listed = ["study", "trial_id", "status", "_reason", "epoch", "total_epochs", *OBJECTIVES,
              "test_accuracy", "degenerate_reason", "collapse", *setting_columns]
    every = trials[[c for c in listed if c in trials]].rename(
        columns=lambda c: "why" if c == "_reason" else c.removeprefix(CONFIG_PREFIX))
    parts.append(f"<details><summary>every trial ({len(trials)})</summary>"
                 + _table(every.sort_values(["study", "trial_id"]), "trials") + "</details>")
    parts.append("</section>")
    return "".join(parts)


@dataclass
class Report:
    """What `build` made: the page, and its figures' PNGs (the bytes inlined in the page) by W&B key
    `report/<group>/<kind>`; the flagged trials and the importances (None: not assessed) it is over."""
    html: str
    figures: dict[str, bytes] = field(default_factory=dict)
    trials: pd.DataFrame = field(default_factory=pd.DataFrame)
    importance: pd.DataFrame | None = None


def build(study_dirs: list[str | Path], chance_margin: float = CHANCE_MARGIN) -> Report:
    """The report over the studies' trials (StudyError: nothing to read)."""
    from analysis.hyperparameters import finished, importances, search_space

    study_dirs = [Path(d) for d in study_dirs]
    infos = {d.name: study_info(d) for d in study_dirs}
    df = flag_collapse(load_results(study_dirs), chance_margin=chance_margin)
    df = df.assign(_group=groups(df), _reason=reasons(df, chance_margin))
    importance_note = ""
    try:
        spaces = {d: search_space(d) for d in df["study_dir"].unique()}
        importance = importances(df, spaces, chance_margin=chance_margin)
    except (StudyError, ConfigError) as e:
        importance, importance_note = None, f"importances not assessed: {e}"
    done = finished(df, chance_margin)  # the fronts importances and hypervolumes are over
    df["_front"] = done["front"].reindex(df.index)
    curves = hypervolume_curves(df, chance_margin)
    group_of = dict(zip(zip(df["study"], df["trial_id"], strict=True), df["_group"], strict=True))
    curves = curves.assign(_group=[group_of.get(k) for k in zip(curves["study"], curves["trial_id"],
                                                                 strict=True)])
    robust = robust_summaries(study_dirs)
    histories = {(s, t): layout.trial_history(layout.trial_dir(d, t))
                 for s, t, d in zip(df["study"], df["trial_id"], df["study_dir"], strict=True)}
    setting_columns = searched(infos, df)
    names = list(infos)
    heading = title(df, names)

    counts = ", ".join(f"{v} {k}" for k, v in df["status"].value_counts().items())
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(heading)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>{_e(heading)}</h1>",
             f'<p class="meta">{len(df)} trials ({_e(counts)}); {_e(chance_line(df, chance_margin))}'
             + (f"; {_e(saved_line(df))}" if saved_line(df) else "") + "</p>",
             f'<p class="meta">generated {_e(time.strftime("%Y-%m-%d %H:%M"))} by prunestudy report '
             f'from {_e(", ".join(str(d) for d in study_dirs))}</p>']
    ordered = list(dict.fromkeys(sorted(df["_group"].dropna())))
    links = "".join(f'<li><a href="#group-{i}">{_e(g)}</a></li>' for i, g in enumerate(ordered, 1))
    parts.append(f"<nav><ul>{links}<li><a href=\"#left-out\">trials left out</a></li>"
                 f"<li><a href=\"#settings\">study settings</a></li></ul></nav>")
    parts.append('<h2 id="left-out">Trials left out, and why</h2><div class="row">')
    for name, trials in df.groupby("study", sort=False):
        parts.append(f"<div><h3>{_e(name)}</h3>" + _left_out_table(trials, chance_margin, study=name)
                     + "</div>")
    parts.append("</div>")
    unplaced = df[df["_group"].isna()]
    if len(unplaced):
        parts.append(f'<p class="note">{len(unplaced)} trial(s) never reported an epoch (in no group '
                     f'below): {_e(", ".join(unplaced["study"] + "/" + unplaced["trial_id"]))}</p>')
    figures: dict[str, bytes] = {}
    for i, group in enumerate(ordered, 1):
        trials = df[df["_group"] == group]
        own: dict[str, bytes] = {}
        parts.append(group_section(
            i, group, trials, df, curves=curves[curves["_group"] == group], robust=robust,
            importance=importance, importance_note=importance_note, setting_columns=setting_columns,
            histories=histories, chance_margin=chance_margin, figures=own))
        figures.update({f"{RUN_KIND}/{group}/{kind}": png for kind, png in own.items()})
    parts.append('<h2 id="settings">Study settings</h2>')
    parts += [_settings_section(name, info) for name, info in infos.items()]
    parts.append("</body></html>")
    return Report("\n".join(parts), figures, df, importance)


def log_to_wandb(report: Report, study_dir: Path, chance_margin: float = CHANCE_MARGIN) -> str:
    """The report into the study's W&B analysis run `<study>-report` (analysis.pareto.log_to_wandb,
    as `prunestudy pareto` and `prunestudy importance` log theirs): the figures as wandb.Image under
    their keys, the page as `report/page` (wandb.Html), the fronts and the importances. Returns
    the mode."""
    import wandb

    from analysis.hyperparameters import wandb_summary
    from analysis.pareto import log_to_wandb as log_analysis_run

    trials = report.trials.drop(columns=[c for c in report.trials if c.startswith("_")])
    try:
        table, volumes = fronts(trials, OBJECTIVES, chance_margin)
    except ValueError:  # no trial reported both objectives: no front to log
        table, volumes = pd.DataFrame(), None
    importance = report.importance if report.importance is not None else pd.DataFrame()
    summary = {f"{RUN_KIND}/page": wandb.Html(report.html, inject=False, data_is_not_path=True)}
    if not importance.empty:
        summary.update(wandb_summary(importance))
    with tempfile.TemporaryDirectory() as tmp:
        images = {}
        for i, (key, png) in enumerate(report.figures.items()):
            images[key] = Path(tmp) / f"{i}.png"
            images[key].write_bytes(png)
        return log_analysis_run(table, Path(study_dir), study_info(Path(study_dir)), volumes,
                                kind=RUN_KIND, images=images, summary=summary,
                                tables={"importance/table": importance} if not importance.empty else None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.splitlines()[0])
    p.add_argument("studies", nargs="+", metavar="STUDY", help="study folders")
    p.add_argument("--out", metavar="FILE.html",
                   help="the page to write (default: FIRST_STUDY/analysis/report.html)")
    p.add_argument("--no-wandb", action="store_true",
                   help="do not log the figures and the page to the study's W&B analysis run")
    add_chance_margin(p)
    args = p.parse_args(argv)
    try:
        report = build(args.studies, args.chance_margin)
    except (StudyError, ConfigError) as e:  # ConfigError: a study's stored --constraint
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else layout.analysis_dir(args.studies[0]) / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.html, encoding="utf-8")
    if not args.no_wandb:
        first = Path(args.studies[0])
        mode = log_to_wandb(report, first, args.chance_margin)
        print(f"W&B ({mode}): report's {len(report.figures)} figures and page logged to group "
              f"{first.name!r} under {layout.wandb_dir(first)}")
    print(f"wrote {out} ({len(report.html.encode()) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
