"""`prunestudy sanity STUDY [--seeds 3]`: does each front trial beat the controls of its own mask?

Frankle et al. 2021 ("Pruning neural networks at initialization: why are we missing the mark?")
and Liu et al. 2019 ("Rethinking the value of network pruning"): a pruned network's accuracy
credits its method only if it beats, at the same epoch budget, (a) `shuffle`: its final mask
shuffled within each layer (the same layer-wise density), fresh weights; (b) `reinit`: its final
mask, fresh weights; (c) `small_dense`, for structured trials (neurons removed, as importance
does): the smaller dense network of its final widths trained from scratch; there (b) is (c), run
once as (c), and (a) is a random mask of the dense network with the trial's density per layer.
Every front trial of the study (feasible, away from chance, as `analysis.pareto` draws them)
gets each control with `--seeds` seeds (its seed + 1, + 2, ...), trained by the engine
(study.sanity, through study.rerun: analysis never trains).

Per front trial and control: mean +- std (sample std; 0 for one seed) over the seeds of val and
test accuracy, beside the trial's own; `kept_equal`: every control run kept exactly the trial's
weights per layer (counted from its tensors); `beats`: the trial's test accuracy > the control's
test mean + its std. The verdict reads the test split because the front chose its trials on
validation accuracy (lucky draws rise to it); the test accuracy, measured once at each run's end,
is only reported here: nothing is chosen on it. Writes `sanity.csv` to `--out` (default:
STUDY/analysis/), the masks and the control runs' Ray folders under `--out`/sanity-runs/.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.pareto import fronts
from analysis.results import StudyError, load_results, study_info
from study import layout
from study.outcome import is_final
from study.sanity import ControlRun, SanityError, run_controls

RULE = ("beats: the trial's test accuracy > the control's test mean + std over its seeds (the "
        "test split is only reported here: nothing is chosen on it)")


def summarize(front: pd.DataFrame, runs: list[ControlRun]) -> pd.DataFrame:
    """A row per (front trial, control): the trial's own accuracies, the control's mean and std
    over its complete runs (`runs_complete` of `seeds`), `kept_equal` and `beats` (RULE)."""
    rows = []
    for index, (_, trial) in enumerate(front.iterrows()):
        mine = [r for r in runs if r.of == index]
        for control in dict.fromkeys(r.control for r in mine):  # in the engine's order
            these = [r for r in mine if r.control == control]
            done = [r.report for r in these if is_final(r.report)]
            row = {"front": trial["front"], "trial_id": trial["trial_id"], "control": control,
                   "seeds": len(these), "runs_complete": len(done),
                   "kept_equal": bool(done) and len(done) == len(these) and all(
                       r.report.get(f"control/kept/{layer}") == n
                       for r in these for layer, n in r.kept.items()),
                   "val_accuracy": trial["val_accuracy"], "test_accuracy": trial["test_accuracy"]}
            for m in ("val_accuracy", "test_accuracy"):
                values = [float(r[m]) for r in done]
                row[f"control_{m}_mean"] = statistics.fmean(values) if values else np.nan
                row[f"control_{m}_std"] = (statistics.stdev(values) if len(values) > 1
                                           else 0.0 if values else np.nan)
            bar = row["control_test_accuracy_mean"] + row["control_test_accuracy_std"]
            row["beats"] = bool(row["test_accuracy"] > bar) if done else None
            rows.append(row)
    return pd.DataFrame(rows)


def _table(summary: pd.DataFrame) -> str:
    def pm(row: pd.Series, m: str) -> str:
        return f"{row[f'control_{m}_mean']:.4f} +- {row[f'control_{m}_std']:.4f}"

    shown = pd.DataFrame({
        "front": summary["front"], "trial": summary["trial_id"], "control": summary["control"],
        "runs": summary["runs_complete"].astype(str) + "/" + summary["seeds"].astype(str),
        "kept_equal": summary["kept_equal"],
        "val (trial)": summary["val_accuracy"].map("{:.4f}".format),
        "val (control)": summary.apply(pm, axis=1, m="val_accuracy"),
        "test (trial)": summary["test_accuracy"].map("{:.4f}".format),
        "test (control)": summary.apply(pm, axis=1, m="test_accuracy"),
        "beats": summary["beats"].map({True: "yes", False: "NO", None: "-"})})
    return shown.to_string(index=False)


def verdicts(summary: pd.DataFrame) -> list[str]:
    """One line per front trial: the controls it beats and those it does not."""
    lines = []
    for (front, trial), g in summary.groupby(["front", "trial_id"], sort=False):
        beaten = [c for c, b in zip(g["control"], g["beats"], strict=True) if b is True]
        not_beaten = [c for c in g["control"] if c not in beaten]  # None (no run complete) too
        lines.append(f"{front} trial {trial}: " + (
            "beats every control" if not not_beaten else
            f"does not beat {', '.join(not_beaten)}" + (f" (beats {', '.join(beaten)})"
                                                        if beaten else "")))
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.sanity", description=__doc__.splitlines()[0],
                                epilog=RULE)
    p.add_argument("study", help="study folder")
    p.add_argument("--seeds", type=int, default=3, help="seeds per control (default 3)")
    p.add_argument("--out", help="output folder (default: STUDY/analysis); on a multi-node cluster, "
                                 "storage every node reads (the controls read their masks there)")
    p.add_argument("--cpus-per-trial", type=float, default=None,
                   help="CPUs per run (default: the study's)")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPUs per run (default: the study's)")
    p.add_argument("--max-concurrent", type=int, default=0, help="runs at once (0: as many as fit)")
    p.add_argument("--address", help="join this Ray cluster instead of starting one locally")
    args = p.parse_args(argv)
    if args.seeds < 1 or args.max_concurrent < 0:
        p.error(f"--seeds must be at least 1 and --max-concurrent not negative, got {args.seeds} "
                f"and {args.max_concurrent}")
    study_dir = Path(args.study)
    out = Path(args.out) if args.out else layout.analysis_dir(study_dir)
    try:
        info = study_info(study_dir)
        front = fronts(load_results([study_dir]))[0].drop_duplicates(["study", "trial_id"])
        if front.empty:
            raise StudyError(f"{study_dir} has no front trial to control (no complete, feasible "
                             "trial away from chance)")
        cpus = args.cpus_per_trial if args.cpus_per_trial is not None else info.get("cpus_per_trial", 1.0)
        gpus = args.gpus_per_trial if args.gpus_per_trial is not None else info.get("gpus_per_trial", 0.0)
        print(f"training the controls of {len(front)} front trials, {args.seeds} seeds each",
              flush=True)
        runs = run_controls([layout.trial_dir(study_dir, t) for t in front["trial_id"]], args.seeds,
                            out / "sanity-runs", info["dataset"], info["data_dir"], cpus, gpus,
                            args.max_concurrent, args.address)
    except (StudyError, SanityError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = summarize(front.reset_index(drop=True), runs)
    summary.to_csv(out / "sanity.csv", index=False)
    print(_table(summary))
    if (summary["control"] == "small_dense").any():
        print("small_dense: the smaller dense network of a trial that removed neurons; for such a "
              "trial reinit (its mask, fresh weights) is this very network, reported once")
    print(RULE)
    print("\n".join(verdicts(summary)))
    if not summary["kept_equal"].all():
        print("warning: some control runs did not keep exactly the trial's weights per layer "
              "(kept_equal False: a run did not complete, or a count differs)")
    print(f"wrote {out / 'sanity.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
