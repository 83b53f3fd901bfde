"""Constraints inside the search: `--constraint 'val_accuracy>=0.95'` (repeatable).

A constraint bounds one reported metric (`>=` or `<=` a number). Its *violation* for a trial is
how far the trial's last report is on the wrong side (<= 0: satisfied), Optuna's convention: the
search sets each one on the Optuna trial with `Trial.set_constraint(text, violation)` before
telling it, which TPE and NSGA-II read to prefer feasible trials (Optuna 5.0 deprecates the
samplers' `constraints_func` in favour of it), and records `constraints` and `feasible` as user
attributes. The study keeps its constraints in study.json; analysis recomputes feasibility from
each trial's last report, so fronts, hypervolumes and exports honour them without Optuna.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from study.config import ConfigError
from study.methods import TRAINABLE_PREFIXES, metric_prefixes
from study.metrics import VOCABULARY, check_selectable

MISSING_VIOLATION = 1.0  # a trial whose report lacks the metric violates the constraint by this
_PATTERN = re.compile(r"\s*([A-Za-z_][\w/.-]*)\s*(>=|<=)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*")


@dataclass(frozen=True)
class Constraint:
    metric: str
    op: str  # ">=" or "<="
    bound: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.bound:g}"

    def violation(self, metrics: dict[str, Any]) -> float:
        """How far `metrics` is on the wrong side of the bound (<= 0: satisfied); a missing or
        non-numeric value violates by MISSING_VIOLATION."""
        value = metrics.get(self.metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return MISSING_VIOLATION
        return self.bound - value if self.op == ">=" else value - self.bound


def parse_constraint(text: str) -> Constraint:
    """`METRIC>=NUMBER` or `METRIC<=NUMBER`; METRIC: a name of the vocabulary (study.metrics) or
    under a method's prefix, never one of the test split (study.metrics.check_selectable: a
    constraint chooses). Anything else: a one-line ConfigError naming the text."""
    match = _PATTERN.fullmatch(text)
    if not match:
        raise ConfigError(f"--constraint {text!r} is not METRIC>=NUMBER or METRIC<=NUMBER "
                          "(e.g. 'val_accuracy>=0.95')")
    metric, op, bound = match.group(1), match.group(2), float(match.group(3))
    # each registered method's diagnostics, and the trainable's loss terms and rung objectives
    prefixes = (*metric_prefixes(), *TRAINABLE_PREFIXES)
    if metric not in VOCABULARY and not metric.startswith(prefixes):
        raise ConfigError(f"--constraint {text!r}: unknown metric {metric!r}; use one of "
                          f"{', '.join(VOCABULARY)} or a method metric ({', '.join(prefixes)}...)")
    check_selectable(metric, f"--constraint {text!r}")
    if not math.isfinite(bound):
        raise ConfigError(f"--constraint {text!r}: the bound must be finite")
    return Constraint(metric, op, bound)


def parse_constraints(texts: list[str] | None) -> list[Constraint]:
    return [parse_constraint(t) for t in texts or []]


def violations(constraints: list[Constraint], metrics: dict[str, Any]) -> dict[str, float]:
    """{constraint text: violation} for a trial's last report."""
    return {str(c): c.violation(metrics) for c in constraints}


def feasible(constraints: list[Constraint], metrics: dict[str, Any]) -> bool:
    return all(v <= 0 for v in violations(constraints, metrics).values())


def tell_constraints(trial, constraints: list[Constraint], metrics: dict[str, Any]) -> None:
    """Set each constraint's violation on the live Optuna `trial` (read by TPE and NSGA-II) and
    record the constraints and the verdict as user attributes; call before the trial is told."""
    values = violations(constraints, metrics)
    for text, value in values.items():
        trial.set_constraint(text, value)
    trial.set_user_attr("constraints", list(values))
    trial.set_user_attr("feasible", all(v <= 0 for v in values.values()))
