"""`python -m analysis.export STUDY --pick knee|max-accuracy|min-size --out DIR`: best configs.

Writes one YAML per chosen trial: `config` (every setting the trial ran with, ready for
`python -m study.train FILE.yaml`) and `provenance` (study, trial id, its metrics, the CPU threads
it ran on so a CPU retrain reproduces it). Only complete trials are chosen, never one at chance
validation accuracy (<= 1 / num_classes + `--chance-margin`; the command says how many it left out),
never one that misses a `--constraint` of its study.
- knee: per front (method, variant, dataset, model, epoch budget, dense size: analysis.pareto), the point
  farthest from the line joining the front's two ends on the side away from the origin
  (objectives scaled to [0, 1] over the front); top-k takes the next farthest;
- max-accuracy: highest val_accuracy (ties: higher sparsity);
- min-size: fewest nonzero parameters among trials with val_accuracy >= --min-accuracy.
`--min-sparsity` keeps only trials at least that sparse, for every pick.
No criterion reads the test split (study.metrics.check_selectable): test_accuracy is only written
beside, in the provenance.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from analysis.pareto import add_chance_margin, at_chance, chance_line, front, front_names, is_feasible
from analysis.results import StudyError, load_results, row_config, study_info
from study.config import ConfigError
from study.metrics import CHANCE_MARGIN, FINAL, OBJECTIVES, check_selectable

PICKS = ("knee", "max-accuracy", "min-size")
# every metric a pick ranks or filters on, in order (`--min-accuracy` reads MIN_ACCURACY,
# `--min-sparsity` MIN_SPARSITY): none of the test split, checked where `choose` reads them
CRITERIA = {"knee": OBJECTIVES, "max-accuracy": ("val_accuracy", "sparsity"),
            "min-size": ("nonzero_params", "val_accuracy")}
MIN_ACCURACY, MIN_SPARSITY = "val_accuracy", "sparsity"


def knee_order(f: pd.DataFrame) -> pd.DataFrame:
    """One front's rows ordered by signed distance from the chord between its two ends, positive on
    the side away from the origin (a bulge toward (1, 1)), farthest first; a point on the origin's
    side of the chord (a dent in the front) comes after the ends."""
    if len(f) <= 2:  # no chord to measure against: nearest to the utopia point (1, 1)
        d = -np.hypot(1 - f[OBJECTIVES[0]], 1 - f[OBJECTIVES[1]])
        return f.assign(_score=d.to_numpy()).sort_values("_score", ascending=False).drop(columns="_score")
    pts = f[list(OBJECTIVES)].to_numpy(dtype=float)
    span = pts.max(axis=0) - pts.min(axis=0)
    z = (pts - pts.min(axis=0)) / np.where(span > 0, span, 1)
    a, b = z[np.argmax(z[:, 0])], z[np.argmax(z[:, 1])]  # the two ends of the front
    chord = b - a
    norm = np.hypot(*chord) or 1.0

    def side(p: np.ndarray) -> np.ndarray:  # cross product: its sign tells the side of the chord
        return (chord[0] * (p[..., 1] - a[1]) - chord[1] * (p[..., 0] - a[0])) / norm

    origin = (0 - pts.min(axis=0)) / np.where(span > 0, span, 1)
    away = -np.sign(side(origin)) or 1.0
    return f.assign(_score=away * side(z)).sort_values("_score", ascending=False).drop(columns="_score")


def choose(df: pd.DataFrame, pick: str, top_k: int, min_sparsity: float = 0.0,
           min_accuracy: float = 0.0, chance_margin: float = CHANCE_MARGIN) -> pd.DataFrame:
    if pick not in CRITERIA:
        raise ValueError(f"unknown pick {pick!r}; choose one of {', '.join(PICKS)}")
    for m in (*CRITERIA[pick], MIN_ACCURACY, MIN_SPARSITY):  # the test split never chooses
        check_selectable(m, f"export --pick {pick}")
    done = df.assign(_front=front_names(df))[  # fronts named over every trial, as analysis.pareto
        (df["status"] == "complete") & (df[MIN_SPARSITY] >= min_sparsity)
        & ~at_chance(df, chance_margin) & is_feasible(df)].dropna(subset=list(OBJECTIVES))
    if pick == "knee":  # the knee of each front, then each front's next, and so on
        fronts = [front(g) for _, g in done.groupby("_front")]
        per_front = [knee_order(f).assign(_rank=range(len(f))) for f in fronts]
        ranked = (pd.concat(per_front).sort_values("_rank", kind="stable").drop(columns="_rank")
                  if per_front else done)
    elif pick == "max-accuracy":
        ranked = done.sort_values(list(CRITERIA[pick]), ascending=False)
    else:  # min-size
        ranked = done[done[MIN_ACCURACY] >= min_accuracy].sort_values(
            list(CRITERIA[pick]), ascending=[True, False])
    return ranked.head(top_k).drop(columns="_front")


def _plain(value):
    """A YAML-friendly scalar: counts stored as floats by pandas (NaN elsewhere) become ints."""
    value = value.item() if hasattr(value, "item") else value
    return int(value) if isinstance(value, float) and value.is_integer() else value


def export(row: pd.Series, pick: str, out: Path) -> Path:
    info = study_info(Path(row["study_dir"]))
    doc = {"config": row_config(row), "provenance": {
        "study": row["study"], "study_dir": row["study_dir"], "trial_id": row["trial_id"],
        "optuna_number": None if pd.isna(row["optuna_number"]) else int(row["optuna_number"]),
        "pick": pick, "threads": max(1, int(info.get("cpus_per_trial", 1))),
        "data_dir": info.get("data_dir"),  # `prunestudy train` reads the data from here by default
        "metrics": {m: _plain(row[m]) for m in (*FINAL, "epoch") if m in row and pd.notna(row[m])}}}
    path = out / f"{row['study']}-{row['trial_id']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.export", description=__doc__.splitlines()[0])
    p.add_argument("studies", nargs="+", metavar="STUDY", help="study folders")
    p.add_argument("--pick", choices=PICKS, default="knee")
    p.add_argument("--min-sparsity", type=float, default=0.0)
    p.add_argument("--min-accuracy", type=float, default=0.0,
                   help="for --pick min-size: val_accuracy at least this (never the test split)")
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--out", required=True, help="folder for the YAML files")
    add_chance_margin(p)
    args = p.parse_args(argv)
    if args.top_k < 1:
        p.error(f"--top-k must be at least 1, got {args.top_k}")
    try:
        df = load_results(args.studies)
        chosen = choose(df, args.pick, args.top_k, args.min_sparsity, args.min_accuracy,
                        args.chance_margin)
        print(chance_line(df, args.chance_margin))
        if chosen.empty:
            raise StudyError(f"no complete trial with sparsity >= {args.min_sparsity} to export")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
    except (StudyError, ConfigError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for _, row in chosen.iterrows():
        path = export(row, args.pick, out)
        print(f"{path}: trial {row['trial_id']} val_accuracy {row['val_accuracy']:.4f} "
              f"sparsity {row['sparsity']:.4f} test_accuracy {row.get('test_accuracy', float('nan')):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
