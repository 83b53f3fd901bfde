"""One table of trials from one or more study folders (read only: never trains, never writes).

A row per Ray trial: study, trial_id, optuna_number, method, variant (the values of the settings
its method declares as `variant_settings`, comma-separated: `reparam`, `magnitude,global,oneshot`),
dataset, model (the value of the setting its method declares as its `architecture`), status, every
setting as `config/<key>`, and every metric at its last reported value (`epoch` tells how far the
trial got; `total_epochs`, the epochs of its schedule, is its budget). Fronts are keyed on these
(analysis.pareto.FRONT_KEY); a setting an old study did not record reads '-'. Status: the trial's
outcome (study.outcome): `complete` (finished its schedule), `diverged` (its loss became NaN/inf),
`degenerate` (ended early by the trainable: chance accuracy for `degenerate_epochs` epochs, or a
dead network; `degenerate_reason` says which), `stopped` (stopped at a rung by `--scheduler
mo-asha`: its metrics are a mid-run epoch's, `stopped_at_epoch` says which), `failed` (raised, or
Optuna recorded it failed), `running` (none of these: still running, or interrupted). Trials still
running or half-written are read as far as they go. `feasible`: whether the trial's last report
meets every `--constraint` of its study (True when the study has none).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from study import layout
from study.constraints import feasible, parse_constraints
from study.methods import METHODS
from study.metrics import STOPPED_ATTR
from study.outcome import RAY_TRIAL_ID_ATTR, outcome

CONFIG_PREFIX = "config/"  # a trial's setting KEY is the column `config/KEY`


class StudyError(ValueError):
    """A folder that is not a study, or a study with nothing to read; one line naming it."""


def study_info(study_dir: Path) -> dict[str, Any]:
    if not Path(study_dir).is_dir():
        raise StudyError(f"study folder {study_dir} does not exist")
    if not (Path(study_dir) / layout.STUDY_JSON).exists():
        raise StudyError(f"{study_dir} is not a study folder (no {layout.STUDY_JSON})")
    try:
        return layout.read_info(study_dir)
    except layout.StudyInfoError as e:
        raise StudyError(str(e)) from None


def _optuna_trials(study_dir: Path) -> dict[str, Any]:
    """Ray trial id -> Optuna FrozenTrial, from every study in the folder's Optuna storage."""
    if not (study_dir / layout.OPTUNA_DB).exists():
        return {}
    import optuna

    storage = layout.storage_url(study_dir)
    out = {}
    for name in optuna.study.get_all_study_names(storage):
        for t in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False):
            if RAY_TRIAL_ID_ATTR in t.user_attrs:
                out[t.user_attrs[RAY_TRIAL_ID_ATTR]] = t
    return out


def _status(last: dict[str, Any], trial_dir: Path, optuna_trial: Any) -> str:
    """study.outcome's word for a trial that ended by its own last report (complete even after
    an earlier error); else `stopped` only as Optuna recorded it (a rung report is also the last
    one of a trial still running), `failed` from its error.txt or Optuna's FAIL, or `running`."""
    how = outcome(last)
    if how in ("complete", "diverged", "degenerate"):
        return how
    if optuna_trial is not None and STOPPED_ATTR in optuna_trial.user_attrs:
        return "stopped"  # by the scheduler at a rung: a mid-run report, never a front point
    if layout.trial_errored(trial_dir) or (
            optuna_trial is not None and optuna_trial.state.name == "FAIL"):
        return "failed"
    return "running"


def load_study(study_dir: str | Path) -> pd.DataFrame:
    study_dir = Path(study_dir)
    info = study_info(study_dir)
    constraints = parse_constraints(info.get("constraints"))
    optuna_trials = _optuna_trials(study_dir)
    rows = []
    for trial_id, trial_dir in layout.trial_dirs(study_dir):
        history = layout.trial_history(trial_dir)
        config = layout.trial_params(trial_dir)
        if config is None:
            config = history[-1].get("config", {}) if history else {}
        last: dict[str, Any] = {}
        for result in history:  # every metric at its last reported value
            last.update({k: v for k, v in result.items() if k != "config" and v is not None})
        ot = optuna_trials.get(trial_id)
        method = config.get("method", info.get("method"))
        declared = METHODS.get(method)
        rows.append({
            "study": study_dir.name, "study_dir": str(study_dir), "trial_id": trial_id,
            "optuna_number": ot.number if ot is not None else None,
            "method": method,
            # what fronts compare on: the settings its method declares make another procedure,
            # and the one it declares names its network
            "variant": (",".join(str(config.get(k, "-")) for k in declared.variant_settings)
                        if declared else config.get("variant")),
            "dataset": config.get("dataset", info.get("dataset")),
            "model": config.get(declared.architecture) if declared else None,
            "status": _status(history[-1] if history else {}, trial_dir, ot),
            "feasible": feasible(constraints, last),
            **({STOPPED_ATTR: ot.user_attrs[STOPPED_ATTR]}
               if ot is not None and STOPPED_ATTR in ot.user_attrs else {}),
            **{f"{CONFIG_PREFIX}{k}": v for k, v in config.items()},
            **{k: v for k, v in last.items() if not isinstance(v, (dict, list))},
        })
    return pd.DataFrame(rows)


def row_config(row: pd.Series | dict[str, Any]) -> dict[str, Any]:
    """The settings a trial ran with, from its row of the table (its `config/` columns, as plain
    Python values; NaN: a setting of another study's trials, left out)."""
    return {k[len(CONFIG_PREFIX):]: (v.item() if hasattr(v, "item") else v) for k, v in row.items()
            if k.startswith(CONFIG_PREFIX) and not (isinstance(v, float) and np.isnan(v))}


def compute_saved(df: pd.DataFrame) -> dict[str, float]:
    """What ending degenerate trials early saved: `degenerate` (trials), `epochs_run`,
    `epochs_saved` (sum of `total_epochs` - `epoch`) and `seconds_saved` (each trial's epochs saved
    times its mean epoch time, Ray's `time_total_s` / `epoch`; trials without it add no seconds)."""
    rows = df[df["status"] == "degenerate"] if "status" in df else df.iloc[:0]

    def col(name: str) -> pd.Series:
        return pd.to_numeric(rows[name], errors="coerce") if name in rows else pd.Series(
            float("nan"), rows.index)

    epoch = col("epoch")
    saved = (col("total_epochs") - epoch).clip(lower=0)
    seconds = saved * col("time_total_s") / epoch.where(epoch > 0)
    return {"degenerate": len(rows), "epochs_run": int(epoch.fillna(0).sum()),
            "epochs_saved": int(saved.fillna(0).sum()), "seconds_saved": float(seconds.fillna(0).sum())}


def saved_line(df: pd.DataFrame) -> str:
    """'N degenerate trials ended early, saving E epochs (~S s)', or '' when there is none."""
    s = compute_saved(df)
    if not s["degenerate"]:
        return ""
    return (f"{s['degenerate']} degenerate trial{'s' * (s['degenerate'] != 1)} ended early, saving "
            f"{s['epochs_saved']} epochs (~{s['seconds_saved']:.0f} s)")


def load_results(study_dirs: list[str | Path]) -> pd.DataFrame:
    """All trials of all the given studies; raises StudyError if there is none to read."""
    frames = [load_study(d) for d in study_dirs]
    df = pd.concat([f for f in frames if not f.empty], ignore_index=True) if any(
        not f.empty for f in frames) else pd.DataFrame()
    if df.empty:
        raise StudyError(f"no trial found in {', '.join(str(d) for d in study_dirs)}")
    return df
