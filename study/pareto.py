"""Fronts and hypervolume, numpy only: what the scheduler, the console and analysis all compute.

Every function takes points as rows of objectives, all maximized. Two objectives are what the
harness optimizes (`study.metrics.OBJECTIVES`), so the hypervolume is the exact 2-D sweep, a few
lines instead of Optuna's private `optuna._hypervolume` (tests/test_hypervolume.py checks both
agree). A row with a NaN is never on a front and adds no area.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def pareto_mask(points: np.ndarray | Sequence) -> np.ndarray:
    """Boolean mask of the non-dominated rows of `points` (n x k, all maximized). A row with a NaN
    is never on the front; identical rows do not dominate each other, so duplicates are all kept."""
    if len(points) == 0:  # no point: an empty front (reshape cannot infer a width from nothing)
        return np.zeros(0, dtype=bool)
    points = np.asarray(points, dtype=float).reshape(len(points), -1)
    valid = ~np.isnan(points).any(axis=1)
    others = points[valid]
    mask = np.zeros(len(points), dtype=bool)
    for i in np.flatnonzero(valid):
        dominated = ((others >= points[i]).all(axis=1) & (others > points[i]).any(axis=1)).any()
        mask[i] = not dominated
    return mask


def hypervolume_2d(points: np.ndarray, reference: tuple[float, float] = (0.0, 0.0)) -> float:
    """Area dominated by `points` (n x 2, both maximized) and bounded below by `reference`."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    pts = pts[~np.isnan(pts).any(axis=1)]
    pts = pts[(pts[:, 0] > reference[0]) & (pts[:, 1] > reference[1])]
    if len(pts) == 0:
        return 0.0
    pts = pts[pareto_mask(pts)]
    pts = pts[np.argsort(pts[:, 1])]  # sparsity ascending, so accuracy descends along the front
    area, prev = 0.0, reference[1]
    for acc, sp in pts:
        if sp > prev:
            area += (sp - prev) * (acc - reference[0])
            prev = sp
    return float(area)


def nondominated_ranks(points: np.ndarray) -> np.ndarray:
    """Front index of each row (0: non-dominated; all columns maximized). A row with a NaN is in a
    front of its own after every other."""
    points = np.asarray(points, dtype=float).reshape(len(points), -1)
    ranks = np.full(len(points), -1)
    valid = ~np.isnan(points).any(axis=1)
    left = np.flatnonzero(valid)
    rank = 0
    while len(left):
        on_front = pareto_mask(points[left])
        ranks[left[on_front]] = rank
        left = left[~on_front]
        rank += 1
    ranks[~valid] = rank
    return ranks


def hypervolume_contributions(points: np.ndarray, reference: tuple[float, float] = (0.0, 0.0)
                              ) -> np.ndarray:
    """Each row's exclusive hypervolume in the set: HV(all) - HV(all but it) (2 objectives,
    maximized; duplicates contribute nothing, as neither adds area the other lacks)."""
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    total = hypervolume_2d(points, reference)
    return np.array([total - hypervolume_2d(np.delete(points, i, axis=0), reference)
                     for i in range(len(points))])


# --- hypervolume curves: one study's hypervolume after each trial that ended (analysis.hypervolume
# builds them; `prunestudy bench samplers` compares them). A curve is a table (a DataFrame or any
# mapping of equal-length columns) with `trials` (1, 2, ...), `hypervolume` and its costs so far
# (`epochs`, `seconds`), one row per ended trial in the order they ended.

def by_trials(curve: Mapping, n: int) -> np.ndarray:
    """A curve as hypervolumes after 1..n trials ended (a study that ended fewer keeps its last
    value; none ended: 0)."""
    order = np.argsort(np.asarray(curve["trials"]), kind="stable")
    values = np.asarray(curve["hypervolume"], dtype=float)[order][:n]
    return np.concatenate([values, np.full(n - len(values), values[-1] if len(values) else 0.0)])


def at_budget(curve: Mapping, column: str, budget: float) -> float:
    """A curve's hypervolume once its cost `column` (`epochs`, `seconds`) had reached at most
    `budget`."""
    within = np.asarray(curve["hypervolume"], dtype=float)[np.asarray(curve[column]) <= budget]
    return float(within[-1]) if len(within) else 0.0


def trials_to_reach(curve: np.ndarray, target: float) -> int | None:
    """Trials a (mean) curve of hypervolumes after 1, 2, ... trials needs to reach `target`
    (1-based), None if it never does."""
    reached = np.flatnonzero(curve >= target - 1e-12)
    return int(reached[0]) + 1 if len(reached) else None
