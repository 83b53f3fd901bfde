"""What `--resume` needs beyond `Tuner.restore`: a snapshot that loads (one cut short by a full disk
is set aside), letting a study grow and repairing a trial whose snapshot names a deleted
checkpoint (making Optuna agree with Ray afterwards is study.optuna_bridge's `reconcile_optuna`).

A killed driver leaves Ray's last experiment snapshot behind what happened on disk: trials may have
reported (and checkpointed) since, and Optuna may have been asked or told since. Each function here
repairs one such gap from what is on disk; none trusts what a method or Ray believed.
"""
from __future__ import annotations

import json
import pickletools
from pathlib import Path
from typing import Any

import pyarrow.fs
import ray.cloudpickle as pickle
from ray import tune

from study import layout, ray_compat
from study.config import ConfigError
from study.trainable import load_state

# the files of one snapshot of Ray's experiment, written together by each driver session S
SNAPSHOT_FILES = (layout.EXPERIMENT_STATE, layout.SEARCH_GEN_STATE, layout.SEARCHER_STATE)
SET_ASIDE = ".cut-short"  # suffix of a snapshot's files set aside (Ray's patterns miss them)


def _whole(path: Path) -> bool:
    """Whether one of Ray's state files is whole: its JSON parses, or its pickle runs to its STOP
    (read opcode by opcode, building nothing: unpickling the searcher's state would open the
    Optuna storage it names)."""
    try:
        data = path.read_bytes()
        if path.name.startswith("experiment_state-"):
            json.loads(data)
        else:  # Ray's search_gen_state-*.json are pickles despite their name
            end = max(pos for _, _, pos in pickletools.genops(data))
            if end != len(data) - 1:  # data after the STOP: not one pickle
                return False
    except (OSError, ValueError):  # cut short
        return False
    return True


def usable_snapshot(study_dir: Path) -> str | None:
    """Make `Tuner.restore` read a snapshot that loads whole. Ray uploads its snapshot files by
    rewriting them in place, so a disk that fills during an upload (or a kill) can leave a
    session's files cut short, and Ray would fail on them, or mix one session's trials with
    another's search state. The newest session whose three files all load is kept; the files of
    newer ones are set aside (renamed *.cut-short), as if those sessions had been killed before
    their first snapshot (their trials reconcile as a killed driver's do). Returns a line saying
    what was set aside, or None; ConfigError when nothing can be resumed."""
    if not _whole(study_dir / layout.TUNER_STATE):
        raise ConfigError(f"cannot resume {study_dir}: Ray's {layout.TUNER_STATE} there was cut "
                          "short (a full disk, or a kill while it was written); start the study "
                          "again under another --name")
    sessions: dict[str, list[Path]] = {}
    for pattern in SNAPSHOT_FILES:
        prefix, suffix = pattern.split("*")
        for path in study_dir.glob(pattern):
            sessions.setdefault(path.name[len(prefix):-len(suffix)], []).append(path)
    newest = sorted(sessions, reverse=True)
    kept = next((s for s in newest
                 if len(sessions[s]) == len(SNAPSHOT_FILES) and all(map(_whole, sessions[s]))),
                None)
    if kept is None:
        raise ConfigError(f"cannot resume {study_dir}: no snapshot of Ray's experiment there loads "
                          "whole (cut short by a full disk, or a kill while it was written); start "
                          "the study again under another --name")
    cut = [p for s in newest[:newest.index(kept)] for p in sessions[s]]
    for path in cut:
        path.rename(path.with_name(path.name + SET_ASIDE))
    if not cut:
        return None
    return (f"Ray's snapshot of a later driver session was cut short (a full disk, or a kill): "
            f"{', '.join(sorted(p.name for p in cut))} set aside as *{SET_ASIDE}; resuming from "
            f"its snapshot of {kept}")


def set_total_samples(study_dir: Path, total: int) -> None:
    """Let a resumed study grow: Ray keeps the number of samples in its search-generator state."""
    for path in layout.search_gen_states(study_dir):
        state = pickle.loads(path.read_bytes())
        ray_compat.set_total_samples(state, total)
        tmp = path.with_name(f"tmp-{path.name}")
        tmp.write_bytes(pickle.dumps(state))
        tmp.replace(path)


class CheckpointRepair(tune.Callback):
    """Points a resumed trial whose checkpoint no longer exists at the newest one that loads.

    With `CheckpointConfig(num_to_keep)`, Ray deletes a trial's previous checkpoint as soon as it
    registers the next one, and saves its experiment snapshot only afterwards. A driver killed in
    between leaves a snapshot naming a deleted checkpoint, and Ray would fail that trial on resume
    ("Could not recover from checkpoint as it does not exist"). Before a restored trial starts,
    this looks in the trial's folder (through the storage filesystem, so cluster storage too) and
    resumes it from its newest checkpoint that loads, or from the start when none does.
    """

    def __init__(self) -> None:
        self._checked: set[str] = set()

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        for trial in trials:
            if trial.trial_id in self._checked:
                continue
            self._checked.add(trial.trial_id)
            checkpoint = trial.checkpoint
            if trial.status != "PENDING" or checkpoint is None:
                continue
            if checkpoint.filesystem.get_file_info(checkpoint.path).type != pyarrow.fs.FileType.NotFound:
                continue
            print(repair_trial_checkpoint(trial, Path(checkpoint.path).name), flush=True)


def repair_trial_checkpoint(trial, missing: str) -> str:
    """Make `trial` resume from its newest loadable checkpoint; says what it did in one line."""
    fs, folder = trial.storage.storage_filesystem, trial.storage.trial_fs_path
    found = fs.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
    names = sorted((f.base_name for f in found
                    if f.type == pyarrow.fs.FileType.Directory and layout.CHECKPOINT.fullmatch(f.base_name)),
                   reverse=True)
    candidates = (tune.Checkpoint(f"{folder}/{name}", filesystem=fs) for name in names)
    chosen = next((c for c in candidates if _loads(c)), None)
    ray_compat.point_trial_at_checkpoint(
        trial, chosen, _result_row(fs, folder, Path(chosen.path).name) if chosen else {})
    if names:  # the next checkpoint goes past every existing folder, never into one
        ray_compat.set_checkpoint_index(trial, int(layout.CHECKPOINT.fullmatch(names[0]).group(1)))
    ray_compat.forget_cached_state(trial)
    return (f"trial {trial.trial_id}: its snapshot names {missing}, deleted after the last snapshot; "
            + (f"resuming from {Path(chosen.path).name}" if chosen else
               "no checkpoint loads, so it starts over"))


def _loads(checkpoint: tune.Checkpoint) -> bool:
    """Whether a checkpoint's saved state loads (one cut short by a kill does not)."""
    try:
        with checkpoint.as_directory() as d:
            load_state(d)
        return True
    except Exception:  # partly written when the driver died: skipped, left as it is
        return False


def _result_row(fs: pyarrow.fs.FileSystem, folder: str, checkpoint_name: str) -> dict[str, Any]:
    """The reported result saved with a checkpoint (Ray restores the trial's counters from it)."""
    try:
        with fs.open_input_stream(f"{folder}/{layout.RESULT}") as f:
            lines = f.read().decode().splitlines()
    except FileNotFoundError:
        return {}
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the kill
            continue
        if row.get("checkpoint_dir_name") == checkpoint_name:
            return row
    return {}

