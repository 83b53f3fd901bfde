"""`prunestudy sanity STUDY [--seeds 3]`: does each front trial's method beat the controls of its own mask?

Frankle et al. 2021 ("Pruning neural networks at initialization: why are we missing the mark?")
and Liu et al. 2019 ("Rethinking the value of network pruning"): a pruned network's accuracy
credits its method only if it beats, at the same epoch budget, (a) `shuffle`: its final mask
shuffled within each layer (the same layer-wise density), fresh weights; (b) `reinit`: its final
mask, fresh weights; (c) `small_dense`, for structured trials (neurons removed, as importance
does): the smaller dense network of its final widths trained from scratch; there (b) is (c), run
once as (c), and (a) is a random mask of the dense network with the trial's density per layer.
Every front trial of the study (feasible, away from chance, as `analysis.pareto` draws them)
gets each control with `--seeds` seeds (its seed + 1, + 2, ..., the new seeds of `prunestudy
robust`), and its own config is trained again with the same seeds (`method`: its method's own
procedure), all in one Ray run by the engine (study.sanity, through study.rerun: analysis never
trains).

Per front trial and control: the selected run's (the front trial's own) val and test accuracy,
shown only (the front selected it for its luck); mean +- std (sample std; 0 for one seed) over
the seeds of the val and test accuracy of the method's re-runs and of the control, and of the
paired difference method - control, seed by seed; `kept_equal`: every control run kept exactly
the trial's weights per layer (counted from its tensors); `beats`: the method's re-run has a
higher test accuracy than the control's run of the same seed on every seed. That is a sign rule:
with no true difference each seed is a coin flip, so N seeds all pass by chance with probability
1/2^N (1/8 with 3 seeds; with `--seeds 1` the verdict rests on one seed). No verdict where the
control or the method has no complete run (diverged, degenerate or failed), or a seed lacks one
of its pair. The test accuracy, measured once at each run's end, is only reported: nothing is
chosen on it. The controls train at a constant learning rate (study.sanity's optimizer rule)
while the method keeps its own schedule and tuned settings: the comparison favours the method.
Writes `sanity.csv` to `--out` (default: STUDY/analysis/), the masks and the runs' Ray folders
under `--out`/sanity-runs/.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.pareto import fronts
from analysis.results import StudyError, load_results, study_info
from study import layout
from study.methods.control import KEPT_WEIGHTS
from study.outcome import is_final, outcome
from study.rerun import add_arguments as rerun_flags
from study.rerun import resources as rerun_resources
from study.sanity import METHOD, ControlRun, SanityError, run_controls

MEASURED = ("val_accuracy", "test_accuracy")
ASYMMETRY = ("Asymmetry: the controls train at a constant learning rate (the trial's lr) for the "
             "trial's scheduled epochs, while the method's re-runs keep its own schedule and tuned "
             "settings, so a control may lose to the schedule rather than to the mask")


def rule(seeds: int | None) -> str:
    """The verdict's rule, for `seeds` seeds (None: for N, as --help says it)."""
    chance = "1/2^N (1/8 with 3 seeds)" if seeds is None else f"1/{2 ** seeds}" + (
        " (the verdict rests on one seed)" if seeds == 1 else "")
    which = "seed trial seed + 1" if seeds == 1 else f"seeds trial seed + 1..{seeds or 'N'}"
    return (f"beats: the method's re-run (the trial's config, {which}) has a higher test accuracy "
            "than the control's run of the same seed on every seed; a sign rule: with no true "
            f"difference it passes by chance with probability {chance}. The selected run (the "
            "front trial itself) is shown, not compared: the front chose it for its luck. Test "
            "accuracy is only reported: nothing is chosen on it")


def not_complete(runs: list[ControlRun]) -> str:
    """How the runs of `runs` that did not complete ended, e.g. '2 diverged, 1 failed' ('': all
    did). `failed`: the run raised or never reported its end."""
    def ended(report: dict[str, Any]) -> str:
        how = outcome(report)
        return how if how in ("diverged", "degenerate") else "failed"

    counts = Counter(ended(r.report) for r in runs if not is_final(r.report))
    return ", ".join(f"{n} {how}" for how, n in sorted(counts.items()))


def _mean_std(values: list[float]) -> tuple[float, float]:
    return (statistics.fmean(values) if values else np.nan,
            statistics.stdev(values) if len(values) > 1 else 0.0 if values else np.nan)


def summarize(front: pd.DataFrame, runs: list[ControlRun]) -> pd.DataFrame:
    """A row per (front trial, control): the selected run's accuracies; the method's re-runs and
    the control's, mean and std over their complete runs (`method_complete`, `control_complete`
    of `seeds`); the paired difference method - control over the seeds where both completed
    (`paired`); `kept_equal` and `beats` (rule: True, False, or None for no verdict)."""
    rows = []
    for index, (_, trial) in enumerate(front.iterrows()):
        mine = [r for r in runs if r.of == index]
        method = [r for r in mine if r.control == METHOD]
        method_done = {r.seed: r.report for r in method if is_final(r.report)}
        for control in dict.fromkeys(r.control for r in mine if r.control != METHOD):  # engine's order
            these = [r for r in mine if r.control == control]
            done = {r.seed: r.report for r in these if is_final(r.report)}
            paired = [seed for seed in done if seed in method_done]
            row = {"front": trial["front"], "trial_id": trial["trial_id"], "control": control,
                   "seeds": len(these), "method_complete": len(method_done),
                   "control_complete": len(done), "paired": len(paired),
                   "method_not_complete": not_complete(method),
                   "control_not_complete": not_complete(these),
                   "kept_equal": bool(done) and len(done) == len(these) and all(
                       r.report.get(f"{KEPT_WEIGHTS}{layer}") == n
                       for r in these for layer, n in r.kept.items()),
                   "selected_val_accuracy": trial["val_accuracy"],
                   "selected_test_accuracy": trial["test_accuracy"]}
            for m in MEASURED:
                row[f"method_{m}_mean"], row[f"method_{m}_std"] = _mean_std(
                    [float(r[m]) for r in method_done.values()])
                row[f"control_{m}_mean"], row[f"control_{m}_std"] = _mean_std(
                    [float(r[m]) for r in done.values()])
                row[f"diff_{m}_mean"], row[f"diff_{m}_std"] = _mean_std(
                    [float(method_done[seed][m]) - float(done[seed][m]) for seed in paired])
            diffs = [float(method_done[seed]["test_accuracy"]) - float(done[seed]["test_accuracy"])
                     for seed in paired]
            row["beats"] = (False if any(d <= 0 for d in diffs) else  # lost (or tied) on a seed
                            True if paired and len(paired) == len(these) == len(method) else
                            None)  # a seed without its pair: no verdict
            rows.append(row)
    return pd.DataFrame(rows).astype({"beats": object})  # True, False or None, never cast


def _table(summary: pd.DataFrame) -> str:
    def pm(row: pd.Series, col: str, sign: str = "") -> str:
        mean, std = row[f"{col}_mean"], row[f"{col}_std"]
        return "-" if np.isnan(mean) else f"{mean:{sign}.4f} +- {std:.4f}"

    shown = pd.DataFrame({
        "front": summary["front"], "trial": summary["trial_id"], "control": summary["control"],
        "runs method/control/paired": summary.apply(
            lambda r: f"{r['method_complete']}/{r['control_complete']}/{r['paired']} of {r['seeds']}",
            axis=1),
        "kept_equal": summary["kept_equal"],
        "val (selected)": summary["selected_val_accuracy"].map("{:.4f}".format),
        "test (selected)": summary["selected_test_accuracy"].map("{:.4f}".format),
        "test (method)": summary.apply(pm, axis=1, col="method_test_accuracy"),
        "test (control)": summary.apply(pm, axis=1, col="control_test_accuracy"),
        "test (method - control)": summary.apply(pm, axis=1, col="diff_test_accuracy", sign="+"),
        "beats": summary["beats"].map({True: "yes", False: "NO", None: "-"})})
    return shown.to_string(index=False)


def verdicts(summary: pd.DataFrame) -> list[str]:
    """One line per front trial: the controls its method's re-runs beat on every seed, those they
    do not, and those with no verdict (no complete run, or seeds without their pair)."""
    lines = []
    for (front, trial), g in summary.groupby(["front", "trial_id"], sort=False):
        first = g.iloc[0]
        head = f"{front} trial {trial}: "
        if not first["method_complete"]:
            lines.append(head + f"the method's re-runs: no complete run "
                                f"({first['method_not_complete']}): no verdict")
            continue
        beats = list(g["beats"])
        beaten = [c for c, b in zip(g["control"], beats, strict=True) if b is True]
        lost = [c for c, b in zip(g["control"], beats, strict=True) if b is False]
        parts = (["beats every control"] if len(beaten) == len(g) else
                 [f"beats {', '.join(beaten)}"] if beaten else [])
        if lost:
            parts.append(f"does not beat {', '.join(lost)}")
        for _, row in g[[b is None for b in beats]].iterrows():
            if not row["control_complete"]:
                parts.append(f"{row['control']}: no complete run ({row['control_not_complete']})")
            else:
                why = "; ".join(f"{who} {what}" for who, what in (
                    ("method", row["method_not_complete"]),
                    (row["control"], row["control_not_complete"])) if what)
                parts.append(f"{row['control']}: no verdict, {row['paired']} of {row['seeds']} "
                             f"seeds with both runs complete ({why})")
        one_seed = (beaten or lost) and int(first["seeds"]) == 1
        lines.append(head + "; ".join(parts) + (" (the verdict rests on one seed)" if one_seed else ""))
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.sanity", description=__doc__.splitlines()[0],
                                epilog=f"{rule(None)}. {ASYMMETRY}.")
    p.add_argument("study", help="study folder")
    p.add_argument("--seeds", type=int, default=3,
                   help="seeds per control and per re-run of the trial's config, the same seeds for "
                        "both (default 3; `beats` needs every seed: chance 1/2^N with no true "
                        "difference, 1/8 with 3; with 1 the verdict rests on one seed)")
    p.add_argument("--out", help="output folder (default: STUDY/analysis); on a multi-node cluster, "
                                 "storage every node reads (the controls read their masks there)")
    rerun_flags(p)
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
        cpus, gpus = rerun_resources(args, info)
        print(f"training, for each of {len(front)} front trials, its config again and its controls, "
              f"{args.seeds} seeds each", flush=True)
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
    print(f"{rule(args.seeds)}.")
    print(f"{ASYMMETRY}.")
    print("\n".join(verdicts(summary)))
    if not summary["kept_equal"].all():
        print("warning: some control runs did not keep exactly the trial's weights per layer "
              "(kept_equal False: a run did not complete, or a count differs)")
    print(f"wrote {out / 'sanity.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
