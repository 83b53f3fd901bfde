"""The end-of-study summary `prunestudy search` prints (study.cli hands it to the search)."""
from __future__ import annotations

from pathlib import Path

from study.metrics import OBJECTIVES


def summarize(study_dir: Path) -> str:
    """The finished trials' Pareto fronts, one per (method, variant, dataset, model, epoch budget,
    dense size) (analysis.pareto.front_names), each headed by its budget, with test accuracy and the settings
    that differ between trials beside; read back from the study folder as
    `analysis.pareto` reads it, so a trial that failed, diverged or was degenerate is never a
    point, nor is a finished one at chance accuracy (counted on a line of its own)."""
    # imported here: the search hands this over before its flag checks, which must stay quick
    import pandas as pd

    from analysis.pareto import at_chance, chance_line, fronts
    from analysis.results import CONFIG_PREFIX, load_study, saved_line

    df = load_study(study_dir)
    counts = ", ".join(f"{v} {k}" for k, v in df["status"].value_counts().items()) if len(df) else "none"
    notes = [line for line in (saved_line(df) if len(df) else "",
                               chance_line(df) if len(df) and at_chance(df).any() else "") if line]
    counts = "\n".join([counts, *notes])
    done = df[df["status"] == "complete"] if len(df) else df
    if done.empty:
        return f"no trial finished (trials: {counts})"
    table, volumes = fronts(df)
    if table.empty:
        return f"trials: {counts}\nno front: every finished trial is at chance accuracy"
    volumes = volumes.assign(total_epochs=pd.to_numeric(volumes["total_epochs"], errors="coerce")
                             ).set_index("front")
    searched = [c for c in done.columns
                if c.startswith(CONFIG_PREFIX) and done[c].nunique(dropna=True) > 1]
    cols = ["trial_id", *OBJECTIVES, "test_accuracy", *searched]
    parts = []
    for name, rows in table.groupby("front", sort=False):
        shown = rows[[c for c in cols if c in rows]].rename(
            columns={c: c[len(CONFIG_PREFIX):] for c in searched})
        epochs = volumes.loc[name, "total_epochs"]
        budget = ("budget not reported" if pd.isna(epochs)
                  else f"a budget of {int(epochs)} epoch{'s' * (int(epochs) != 1)}")
        parts.append(f"Pareto front (val_accuracy, sparsity) of {name} ({budget}): {len(rows)} of "
                     f"{volumes.loc[name, 'trials']} finished trials\n"
                     + shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return f"trials: {counts}\n" + "\n\n".join(parts)
