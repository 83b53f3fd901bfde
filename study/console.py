"""The search's live view: what a person watching a study wants, one plain line at a time.

Built on Ray Tune's Callback API (Ray's own console output is silenced, `verbose=0`; its logs and
the libraries' warnings go to the study's `search.log`, shown again with `--verbose`). Plain
lines, never redrawn, so the view reads the same in a terminal, under `| tee`, in CI logs and in a
nohup file:

    [00:00:12] trial 3f2a1b00 started: beta=5.21 layer_sparsity=0.61 latent_dim=16 lr=0.0015
    [00:00:51] trial 3f2a1b00 epoch 1/6 train: val 89.3%
    [00:01:30] study: 1 finished, 2 running, 5 pending; elapsed 1m30s, about 6m left
    [00:05:02] trial 3f2a1b00 complete: val 97.2% at sparsity 0.58 (test 97.0%)
    [00:05:02] front: 97.2% at 0.58 (3f2a1b00) | 96.1% at 0.80 (77c1d2e0)

(a study whose trials differ in their dense network, such as beta_vae's latent_dim, prints one
front per dense size, "front (69,450 dense parameters): ...").

Status lines come every `every` seconds and whenever a trial ends; the front (validation accuracy
against sparsity, complete trials away from chance accuracy) is printed whenever it changes.
"""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

from ray.tune import Callback

from study.config import TrialConfig
from study.metrics import RUNG_OBJECTIVES, near_chance
from study.outcome import DEGENERATE_REASON_KEY, FINAL_KEY, outcome
from study.pareto import pareto_mask


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def decimals_apart(values: list[float], least: int, most: int = 6) -> int:
    """The fewest decimals (from `least`, at most `most`) at which values that differ print
    differently: the front's points then never read as equal (97.55 / 97.53 / 97.47 are not
    "97.5% | 97.5% | 97.5%")."""
    distinct = len(set(values))
    for d in range(least, most + 1):
        if len({f"{v:.{d}f}" for v in values}) == distinct:
            return d
    return most


def front_lines(points: dict[str, tuple[float, float, int | None]]) -> dict[int | None, str]:
    """The fronts of complete trials, given as trial id -> (val accuracy, sparsity, dense
    parameters): one per dense network (sparsity counts against it, so trials of different dense
    sizes, such as beta_vae's latent_dim, are not one front), each a line of its points by falling
    accuracy, the dense size named where the study holds several."""
    groups: dict[int | None, list[str]] = {}
    for trial_id, (_, _, dense) in points.items():
        groups.setdefault(dense, []).append(trial_id)
    lines = {}
    for dense in sorted(groups, key=lambda d: (d is None, d or 0)):
        ids = groups[dense]
        front = [i for i, on in zip(ids, pareto_mask([points[i][:2] for i in ids]), strict=True) if on]
        front.sort(key=lambda i: -points[i][0])
        acc, sparsity = [100 * points[i][0] for i in front], [points[i][1] for i in front]
        a, s = decimals_apart(acc, 1), decimals_apart(sparsity, 2)
        name = f"front ({dense:,} dense parameters)" if len(groups) > 1 and dense else "front"
        lines[dense] = f"{name}: " + " | ".join(
            f"{v:.{a}f}% at {w:.{s}f} ({i})" for v, w, i in zip(acc, sparsity, front, strict=True))
    return lines


class StudyConsole(Callback):
    def __init__(self, searched: list[str], total_trials: int, every: float = 30.0):
        self.searched = searched  # (pickled with the experiment: no open file kept here)
        self.total = total_trials
        self.every = every
        self.start = self.last_status = time.monotonic()
        self.progress: dict[str, dict[str, Any]] = {}  # trial id -> its latest result
        self.ended: dict[str, str] = {}  # trial id -> how it ended
        # complete trials: (val acc, sparsity, dense parameters)
        self.points: dict[str, tuple[float, float, int | None]] = {}
        self.fronts: dict[int | None, str] = {}  # dense parameters -> its front's line, as printed
        self.epoch_seconds: list[float] = []

    def _print(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S', time.gmtime(time.monotonic() - self.start))}] {text}",
              flush=True)

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        values = " ".join(f"{k}={_value(trial.config[k])}" for k in self.searched if k in trial.config)
        self._print(f"trial {trial.trial_id} started" + (f": {values}" if values else ""))

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        if "epoch" not in result:
            return
        self.progress[trial.trial_id] = result
        if "time_this_iter_s" in result:
            self.epoch_seconds.append(result["time_this_iter_s"])
        val = f": val {result['val_accuracy']:.1%}" if "val_accuracy" in result else ""
        total = f"/{result['total_epochs']}" if "total_epochs" in result else ""
        self._print(f"trial {trial.trial_id} epoch {result['epoch']}{total} {result.get('phase', '')}{val}")

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        last = self.progress.get(trial.trial_id, {})
        ended = outcome(last)
        if ended == "diverged":
            how = f"diverged at epoch {last['epoch']} (loss {last.get('loss')})"
        elif ended == "degenerate":
            how = f"degenerate at epoch {last['epoch']}: {last.get(DEGENERATE_REASON_KEY)}"
        elif ended == "complete":
            how = (f"complete: val {last['val_accuracy']:.1%} at sparsity {last['sparsity']:.2f} "
                   f"(test {last[FINAL_KEY]:.1%})")
            # a point of the front unless at chance, by the trial's own measure (the trainable's)
            margin = trial.config.get("chance_margin", TrialConfig.chance_margin)
            if not near_chance(last["val_accuracy"], last["num_classes"], margin):
                self.points[trial.trial_id] = (last["val_accuracy"], last["sparsity"],
                                               last.get("dense_params"))
        elif ended == "stopped":  # --scheduler mo-asha stopped it at a rung
            how = (f"stopped at rung epoch {last['epoch']}: probe val {last[RUNG_OBJECTIVES[0]]:.1%} "
                   f"at sparsity {last[RUNG_OBJECTIVES[1]]:.2f} (not in the rung's top)")
        else:
            how = "ended"
        self.ended[trial.trial_id] = how
        self._print(f"trial {trial.trial_id} {how}")
        self._show_front()
        self._status(trials)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.ended[trial.trial_id] = "failed"
        self._print(f"trial {trial.trial_id} failed (its error.txt holds the traceback; retries "
                    "continue from its last checkpoint while --max-failures allows)")
        self._status(trials)

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if time.monotonic() - self.last_status >= self.every:
            self._status(trials)

    def _show_front(self) -> None:
        fronts = front_lines(self.points)
        for dense, line in fronts.items():  # the fronts that changed (all, when a second size appears)
            if line != self.fronts.get(dense):
                self._print(line)
        self.fronts = fronts

    def _status(self, trials: list) -> None:
        self.last_status = time.monotonic()
        finished = len(self.ended)  # Ray marks a trial TERMINATED only after on_trial_complete
        running = sum(t.status == "RUNNING" and t.trial_id not in self.ended for t in trials)
        pending = max(0, self.total - finished - running)
        elapsed = time.monotonic() - self.start
        text = (f"study: {finished} finished, {running} running, {pending} pending; "
                f"elapsed {_duration(elapsed)}")
        totals = [r["total_epochs"] for r in self.progress.values() if "total_epochs" in r]
        if self.epoch_seconds and totals:
            per_trial = sum(totals) / len(totals)
            left = sum(max(0, r.get("total_epochs", per_trial) - r["epoch"])
                       for t, r in self.progress.items() if t not in self.ended)
            left += pending * per_trial
            slots = max(1, running)
            eta = left * (sum(self.epoch_seconds) / len(self.epoch_seconds)) / slots
            text += f", about {_duration(eta)} left"
        self._print(text)


def quiet_libraries(log_file: Path) -> None:
    """Ray's, Optuna's and W&B's log records and Python's warnings go to `log_file`, not the
    console (a trial's own errors still reach its error.txt and the view's 'failed' line)."""
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    logging.captureWarnings(True)
    warnings.simplefilter("default")
    for name in ("ray", "optuna", "wandb", "py.warnings", "filelock"):
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            logger.removeHandler(h)
        logger.addHandler(handler)
        logger.propagate = False
