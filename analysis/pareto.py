"""Pareto fronts of finished studies (maximize every objective)."""
from __future__ import annotations

import numpy as np
import pandas as pd

OBJECTIVES = ("val_accuracy", "sparsity")


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """Boolean mask of the non-dominated rows of `points` (n x k, all maximized). A row with a NaN
    is never on the front; identical rows do not dominate each other, so duplicates are all kept."""
    points = np.asarray(points, dtype=float)
    valid = ~np.isnan(points).any(axis=1)
    mask = np.zeros(len(points), dtype=bool)
    for i in np.flatnonzero(valid):
        others = points[valid]
        dominated = ((others >= points[i]).all(axis=1) & (others > points[i]).any(axis=1)).any()
        mask[i] = not dominated
    return mask


def front(df: pd.DataFrame, objectives: tuple[str, ...] = OBJECTIVES) -> pd.DataFrame:
    """The non-dominated rows of `df`, sorted by the first objective, best first."""
    if df.empty:
        return df
    return df[pareto_mask(df[list(objectives)].to_numpy())].sort_values(
        list(objectives), ascending=False)
