"""The study folder, the one place its layout is spelled (in the spirit of OpenLTH's paths.py).

    <storage-dir>/<name>/
      study.json             what was asked: method, dataset, every fixed setting, the space
      optuna.db              the Optuna study (SQLite; `storage_url`)
      tuner.pkl, experiment_state-*.json, search_gen_state-*.json    Ray's experiment state
      driver.lock            held (flock) by the driver running the study; records its pid and host
      trial_<id>/            one Ray trial: params.json (its config), result.json (a JSON line per
                             report), error.txt (when it raised), checkpoint_NNNNNN/ (its state)
      wandb/                 W&B runs (offline ones: offline-run-*)
      search.log             the libraries' own output during the search (--verbose shows it)
      analysis/              what the analysis commands write by default

Every reader and writer of a study (search, resume, tracking, analysis, tests) goes through here.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

STUDY_JSON = "study.json"
OPTUNA_DB = "optuna.db"
TUNER_STATE = "tuner.pkl"
SEARCH_GEN_STATE = "search_gen_state-*.json"
EXPERIMENT_STATE = "experiment_state-*.json"  # Ray's snapshots, one per driver session
SEARCHER_STATE = "searcher-state-*.pkl"  # with them: the searcher's state, in the same session
DRIVER_LOCK = "driver.lock"
TRIAL_PREFIX = "trial_"
RESULT = "result.json"
PARAMS = "params.json"
ERROR = "error.txt"
CHECKPOINT = re.compile(r"checkpoint_(\d{6})")
WANDB = "wandb"
SEARCH_LOG = "search.log"  # Ray's, Optuna's and W&B's own output during the search
ANALYSIS = "analysis"


def storage_url(study_dir: str | Path) -> str:
    """The Optuna storage URL of the study's SQLite database (absolute)."""
    return f"sqlite:///{(Path(study_dir) / OPTUNA_DB).resolve()}"


def optuna_storage(study_dir: str | Path):
    """The study's Optuna storage object (OptunaSearch needs an object, not a URL)."""
    import optuna

    return optuna.storages.RDBStorage(storage_url(study_dir))


def holds_study(study_dir: str | Path) -> bool:
    """Whether a study was already created in this folder."""
    return (Path(study_dir) / STUDY_JSON).exists() or (Path(study_dir) / OPTUNA_DB).exists()


def resumable(study_dir: str | Path) -> bool:
    return (Path(study_dir) / STUDY_JSON).exists() and (Path(study_dir) / TUNER_STATE).exists()


class StudyInfoError(ValueError):
    """A study.json that cannot be read as a JSON object; one line naming it."""


def read_info(study_dir: str | Path) -> dict[str, Any]:
    path = Path(study_dir) / STUDY_JSON
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise StudyInfoError(f"{path} cannot be read: {str(e).splitlines()[0]}") from None
    if not isinstance(info, dict):
        raise StudyInfoError(f"{path} is not a JSON object (a {type(info).__name__})")
    return info


def write_info(study_dir: str | Path, info: dict[str, Any]) -> None:
    (Path(study_dir) / STUDY_JSON).write_text(json.dumps(info, indent=2))


def trial_dirname(trial_id: str) -> str:
    return f"{TRIAL_PREFIX}{trial_id}"


def trial_dir(study_dir: str | Path, trial_id: str) -> Path:
    return Path(study_dir) / trial_dirname(trial_id)


def trial_dirs(study_dir: str | Path) -> list[tuple[str, Path]]:
    """(trial id, folder) of every trial, sorted by folder name."""
    return [(d.name[len(TRIAL_PREFIX):], d) for d in sorted(Path(study_dir).glob(f"{TRIAL_PREFIX}*"))]


def trial_history(trial_dir: Path) -> list[dict[str, Any]]:
    """Every row a trial reported, in order (its result.json; a line being written is left out)."""
    path = Path(trial_dir) / RESULT
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line being written right now
                break
    return rows


def trial_params(trial_dir: Path) -> dict[str, Any] | None:
    """The config Ray gave the trial (params.json), or None before Ray wrote it."""
    path = Path(trial_dir) / PARAMS
    return json.loads(path.read_text()) if path.exists() else None


def trial_errored(trial_dir: Path) -> bool:
    return (Path(trial_dir) / ERROR).exists()


def checkpoints(trial_dir: Path) -> list[Path]:
    """The trial's checkpoint folders, oldest first."""
    return sorted(p for p in Path(trial_dir).iterdir() if p.is_dir() and CHECKPOINT.fullmatch(p.name))


def search_gen_states(study_dir: str | Path) -> list[Path]:
    return sorted(Path(study_dir).glob(SEARCH_GEN_STATE))


def snapshot_trials(study_dir: str | Path) -> dict[str, str] | None:
    """Ray trial id -> status (PENDING, RUNNING, PAUSED, TERMINATED, ERROR) in the experiment's
    newest snapshot, the one `Tuner.restore` resumes from (Ray takes the greatest file name);
    None when there is none, or it cannot be read (cut short by a full disk)."""
    states = sorted(Path(study_dir).glob(EXPERIMENT_STATE))
    if not states:
        return None
    try:
        trials = [json.loads(t) for t, _ in json.loads(states[-1].read_text())["trial_data"]]
        return {t["trial_id"]: t["status"] for t in trials}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def driver_lock(study_dir: str | Path) -> Path:
    return Path(study_dir) / DRIVER_LOCK


def wandb_dir(study_dir: str | Path) -> Path:
    return Path(study_dir) / WANDB


def search_log(study_dir: str | Path) -> Path:
    return Path(study_dir) / SEARCH_LOG


def analysis_dir(study_dir: str | Path) -> Path:
    return Path(study_dir) / ANALYSIS
