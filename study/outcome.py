"""One word for how a trial ended, decided in one place from its last report.

The trainable ends every trial with one report that says how it ended:
  complete     its schedule ran to the end: the report holds `test_accuracy` (measured only there)
  diverged     its loss became NaN/inf: `diverged` = 1, no objectives
  degenerate   ended early at chance accuracy or with a dead network: `degenerate` = 1 and
               `degenerate_reason`, this epoch's metrics, no test accuracy
  stopped      stopped at a rung by `--scheduler mo-asha`: a mid-run report holding the rung
               objectives and none of the above
  running      none of these: still running, or interrupted
The Optuna bridge (the states it tells, and their reconciliation on resume), the scheduler, the
console, `prunestudy train` and analysis all ask here; analysis adds `failed` (the trial raised, or
Optuna recorded it failed) from what lies beside the reports.
"""
from __future__ import annotations

from typing import Any

from study.metrics import RUNG_OBJECTIVES

# report keys that say how a trial ended
FINAL_KEY = "test_accuracy"  # in a trial's final report only (the test split is measured once)
DIVERGED_KEY = "diverged"
DEGENERATE_KEY = "degenerate"
DEGENERATE_REASON_KEY = "degenerate_reason"

# the Optuna user attribute naming a trial's Ray trial id (the two stores agree through it)
RAY_TRIAL_ID_ATTR = "ray_trial_id"

OUTCOMES = ("complete", "diverged", "degenerate", "stopped", "running")


def is_final(report: dict[str, Any] | None) -> bool:
    """Whether `report` is a trial's final report (its schedule ran to the end)."""
    return bool(report) and FINAL_KEY in report


def outcome(last: dict[str, Any] | None) -> str:
    """How a trial ended, from its last report (one of OUTCOMES). A rung report is `stopped`
    only as the last report of a trial that ended: callers ask once the trial is over."""
    if not last:
        return "running"
    if last.get(DIVERGED_KEY):
        return "diverged"
    if last.get(DEGENERATE_KEY):
        return "degenerate"
    if FINAL_KEY in last:
        return "complete"
    if all(last.get(m) is not None for m in RUNG_OBJECTIVES):
        return "stopped"
    return "running"
