"""`python -m study.bench ...`: speed figures, printed (speed is never a timed test).

    python -m study.bench epoch --method beta_vae --set variant=vae      # seconds per epoch
    python -m study.bench overhead beta_vae                             # harness vs bare training
    python -m study.bench throughput beta_vae --per-device 1 2 4 8      # packed trials per device
    python -m study.bench samplers reparam --samplers tpe nsga2 random --trials 64 --seeds 3

Every figure comes from the trainable users run (`study.trainable.train`), outside Ray. The
papers' tables are `python -m study.reproduce PAPER`.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from study.data import batches, default_data_dir, load_dataset
from study.methods import METHODS
from study.spaces import parse_assignment
from study.trainable import autocast_on, phase_at, setup, train, train_epoch


def bench_epoch(args: argparse.Namespace) -> None:
    """Training seconds per epoch (evaluation excluded); the first epoch is warm-up."""
    config = {"method": args.method, "dataset": args.dataset, **dict(map(parse_assignment, args.set))}
    data = load_dataset(args.dataset, args.data_dir)
    seconds: list[float] = []
    train(config, data, lambda m, _: seconds.append(m["epoch_seconds"]))
    timed = seconds[1:] or seconds
    print(f"{args.method} {config} on {args.dataset} ({len(data.train_y)} training samples, "
          f"{torch.get_num_threads()} threads): {statistics.median(timed):.2f} s/epoch "
          f"(median of {len(timed)} after warm-up; all: {[round(s, 2) for s in seconds]})")


# --- overhead: the same trials through study.search and as bare training loops -------------------

PARTS = {"epoch_seconds": "training", "eval_seconds": "evaluation (val, test)",
         "diagnostics_seconds": "method diagnostics", "size_seconds": "size metrics",
         "save_seconds": "checkpoint save", "report_seconds": "Ray report (+ checkpoint persist)"}


def bare_trial(config: dict[str, Any], data, epochs: int) -> tuple[float, float]:
    """The trial's first `epochs` training epochs and nothing else (no evaluation, diagnostics,
    size, checkpoint or report): (start, end) wall-clock times, after its set-up."""
    trial, data, method, schedule = setup(config, data)
    batch_rng = torch.Generator().manual_seed(trial.seed)
    total = sum(n for _, n in schedule)
    start = time.time()
    with autocast_on(data.train_x.device):
        for epoch in range(epochs):
            phase, first = phase_at(schedule, epoch)
            terms = train_epoch(method, phase, first, batches(data.train_x, data.train_y,
                                                              trial.batch_size, batch_rng))
            method.end_pass(phase, epoch == total - 1, terms)
    return start, time.time()


_worker_data: dict[str, Any] = {}


def _bare_job(job: tuple[dict[str, Any], int]) -> tuple[float, float]:
    config, epochs = job
    return bare_trial(config, _worker_data[config["dataset"]], epochs)


def _init_bare_worker(data_dir: str, threads: int, dataset: str) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    _worker_data[dataset] = load_dataset(dataset, data_dir)


def _timed_study(args: argparse.Namespace, name: str, storage: Path, trials: int, at_once: int,
                 flags: list[str]) -> tuple[float, float]:
    """Run one study through study.search (the bench's method, data, seed and --set); its start
    and end (wall-clock times)."""
    from study.cli import main as prunestudy  # the search as users run it, its summary included

    argv = [args.method, "--name", name, "--storage-dir", str(storage), "--data-dir",
            str(args.data_dir), "--num-samples", str(trials), "--max-concurrent", str(at_once),
            "--seed", str(args.seed), *flags]
    for kv in args.set:
        argv += ["--set", kv]
    t0 = time.time()
    if prunestudy(["search", *argv]) != 0:
        raise SystemExit(f"the study failed: python -m study.search {' '.join(argv)}")
    return t0, time.time()


def bench_overhead(args: argparse.Namespace) -> None:
    """One study through `study.search` (the harness: Ray, Optuna, W&B, evaluation, diagnostics,
    checkpoints), then the same trials (their resolved configs, as many epochs as each ran) as bare
    training loops in as many processes as the study ran trials at once; wall times and where the
    harness's extra time went."""
    import tempfile

    from study import layout

    if args.study:  # a study run before (e.g. by an older version), timed from outside
        study_dir, harness, span = Path(args.study), args.harness_seconds, None
    else:
        storage = Path(args.storage_dir or tempfile.mkdtemp(prefix="prunestudy-overhead-"))
        name = f"overhead-{args.method}-{time.strftime('%Y%m%d-%H%M%S')}"
        span = _timed_study(args, name, storage, args.num_samples, args.max_concurrent,
                            shlex.split(args.search_flags))
        harness = span[1] - span[0]
        study_dir = storage / name
    trials = []
    for _, trial_dir in layout.trial_dirs(study_dir):
        history = layout.trial_history(trial_dir)
        trials.append((layout.trial_params(trial_dir), history))
    configs = [(config, history[-1]["epoch"]) for config, history in trials if history]
    dataset = configs[0][0]["dataset"]
    threads = max(1, int(layout.read_info(study_dir)["cpus_per_trial"]))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(args.max_concurrent, initializer=_init_bare_worker,
                  initargs=(str(args.data_dir), threads, dataset)) as pool:
        spans = pool.map(_bare_job, configs, chunksize=1)
    bare = max(end for _, end in spans) - min(start for start, _ in spans)

    parts = {label: sum(r.get(key, 0.0) for _, h in trials for r in h) for key, label in PARTS.items()}
    in_trials = sum(h[-1].get("time_total_s", 0.0) for _, h in trials if h)
    print(f"\n{args.method}: {len(trials)} trials, {args.max_concurrent} at a time, "
          f"{threads} thread(s) each; study folder {study_dir}")
    print(f"{'seconds (summed over trials)':<44}{'':>10}")
    for label, seconds in parts.items():
        print(f"  {label:<42}{seconds:>10.1f}")
    print(f"  {'other, inside trials (start-up, data, W&B)':<42}{in_trials - sum(parts.values()):>10.1f}")
    print(f"  {'trials in all (Ray time_total_s)':<42}{in_trials:>10.1f}")
    wandb = layout.read_info(study_dir).get("wandb_seconds")
    if wandb is not None:
        print(f"  {'W&B, on the driver (beside the trials)':<42}{wandb:>10.1f}")
    print(f"wall: harness {harness:.1f} s (its {args.max_concurrent} slots x wall - trial time = "
          f"{harness * args.max_concurrent - in_trials:.1f} s of Ray start-up, scheduling and idle "
          f"slots); bare {bare:.1f} s")
    edges = {}
    if span is not None:  # Ray's timestamps are whole seconds
        edges = {"startup_seconds": min(h[0]["timestamp"] - h[0]["time_total_s"] for _, h in trials if h)
                 - span[0], "shutdown_seconds": span[1] - max(h[-1]["timestamp"] for _, h in trials if h)}
        print(f"  start-up to the first trial (imports, data, Ray, Tuner, the trial's actor): "
              f"{edges['startup_seconds']:.0f} s; after the last trial (summary, Ray shutdown): "
              f"{edges['shutdown_seconds']:.0f} s")
    print(json.dumps({"method": args.method, "trials": len(trials), "max_concurrent": args.max_concurrent,
                      "bare_seconds": round(bare, 2), "harness_seconds": round(harness, 2),
                      "ratio": round(harness / bare, 4), "training_seconds": round(parts["training"], 2),
                      **{k: round(v, 2) for k, v in parts.items() if k != "training"},
                      **({"wandb_seconds": wandb} if wandb is not None else {}),
                      **{k: round(v, 1) for k, v in edges.items()}}))


def bench_throughput(args: argparse.Namespace) -> None:
    """Studies of k trials packed on one device (a GPU shared by k, or the CPUs split k ways), one
    per k: trials per hour and training samples per second, from the study's wall time."""
    import tempfile

    from study import layout

    storage = Path(args.storage_dir or tempfile.mkdtemp(prefix="prunestudy-throughput-"))
    gpu = torch.cuda.is_available() and not args.cpu
    rows = []
    for k in args.per_device:
        name = f"throughput-{args.method}-{k}"
        share = ["--gpus-per-trial", f"{1 / k:g}", "--cpus-per-trial", f"{max(1, (os.cpu_count() or 1) // k)}"
                 ] if gpu else ["--cpus-per-trial", f"{(os.cpu_count() or 1) / k:g}"]
        start, end = _timed_study(args, name, storage, k, k, share)
        wall = end - start
        samples = 0
        for _, trial_dir in layout.trial_dirs(storage / name):
            config, history = layout.trial_params(trial_dir), layout.trial_history(trial_dir)
            subset = config.get("train_subset") or 0
            samples += (subset or 54000) * (history[-1]["epoch"] if history else 0)
        rows.append({"per_device": k, "device": "cuda" if gpu else f"cpu x{os.cpu_count()}",
                     "wall_seconds": round(wall, 1), "trials_per_hour": round(k / wall * 3600, 1),
                     "samples_per_second": round(samples / wall, 1)})
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["trials_per_hour"]
    print("\n".join(f"{r['per_device']} per device: {r['trials_per_hour']:.1f} trials/h "
                     f"({r['trials_per_hour'] / base:.2f}x of {rows[0]['per_device']}), "
                     f"{r['samples_per_second']:.0f} samples/s" for r in rows))


def sampling_seconds(study_dir: Path) -> list[float]:
    """The seconds the study's sampler took to suggest each trial, in trial order (trials from
    before the searcher timed its suggestions are left out)."""
    import optuna

    from study import layout
    from study.optuna_bridge import SAMPLING_SECONDS_ATTR

    (name,) = optuna.get_all_study_names(layout.storage_url(study_dir))
    study = optuna.load_study(study_name=name, storage=layout.storage_url(study_dir))
    return [t.user_attrs[SAMPLING_SECONDS_ATTR] for t in study.get_trials(deepcopy=False)
            if SAMPLING_SECONDS_ATTR in t.user_attrs]


def sampler_spec(spec: str) -> tuple[str, list[str]]:
    """`NAME[:KEY=VALUE,...]` (bench samplers' --samplers): the sampler's name and its
    --sampler-arg assignments; ConfigError for an unknown name."""
    from study.config import ConfigError
    from study.search import SAMPLERS

    name, _, settings = spec.partition(":")
    if name not in SAMPLERS:
        raise ConfigError(f"{name!r} is not a sampler ({', '.join(SAMPLERS)})")
    return name, [kv for kv in settings.split(",") if kv]


def bench_samplers(args: argparse.Namespace, study_curves: Callable[[Path], Any]) -> None:
    """Studies of the same method, one per (sampler, scheduler, seed), through study.search; per
    (sampler, scheduler): the mean +- std hypervolume after 1..N trials, the trials its mean curve
    (and each seed) needs to reach random search's (fifo) N-trial mean hypervolume, and the hypervolume each
    reaches within the smallest total epochs any of them ran (schedulers compared at equal cost)."""
    import tempfile

    import numpy as np

    from study.config import ConfigError
    from study.pareto import at_budget, by_trials, trials_to_reach
    from study.search import sampler_settings

    flags = {}  # each sampler spec's study.search flags, every one checked before a study runs
    for sampler in args.samplers:
        try:
            name_, assignments = sampler_spec(sampler)
            sampler_settings(name_, assignments)
        except ConfigError as e:
            raise SystemExit(f"--samplers {sampler}: {e}") from None
        flags[sampler] = ["--sampler", name_,
                          *(a for kv in assignments for a in ("--sampler-arg", kv))]
    storage = Path(args.storage_dir or tempfile.mkdtemp(prefix="prunestudy-samplers-"))
    curves: dict[tuple[str, str], list] = {}
    asking: dict[tuple[str, str], list[list[float]]] = {}  # sampling seconds per study, per trial
    for scheduler in args.schedulers:
        for sampler in args.samplers:
            for k in range(args.seeds):
                name = f"samplers-{args.method}-{re.sub('[:,=]', '-', sampler)}-{scheduler}-{k}"
                if not (storage / name / "study.json").exists():  # a bench interrupted: kept
                    args.seed = k
                    _timed_study(args, name, storage, args.trials, args.max_concurrent,
                                 [*flags[sampler], "--scheduler", scheduler,
                                  *shlex.split(args.search_flags)])
                c = study_curves(storage / name)
                fronts = c["front"].unique()
                if len(fronts) != 1:
                    raise SystemExit(f"study {name} has {len(fronts)} fronts; the bench compares one")
                curves.setdefault((sampler, scheduler), []).append(c)
                asking.setdefault((sampler, scheduler), []).append(sampling_seconds(storage / name))
    budget = min(c["epochs"].max() for runs in curves.values() for c in runs)
    table = {}
    for (sampler, scheduler), runs in curves.items():
        hv = np.array([by_trials(c, args.trials) for c in runs])
        table[(sampler, scheduler)] = {
            "mean": hv.mean(axis=0), "std": hv.std(axis=0, ddof=1) if len(runs) > 1 else 0 * hv[0],
            "per_seed": hv,
            "at_budget": [at_budget(c, "epochs", budget) for c in runs],
            "seconds": [float(c["seconds"].max()) for c in runs],
            "epochs": [int(c["epochs"].max()) for c in runs]}
    reference = table.get(("random", "fifo"))
    target = float(reference["mean"][-1]) if reference else float("nan")
    print(f"\n{args.method}: {args.trials} trials x {args.seeds} seeds; hypervolume mean +- std "
          f"after n trials (val_accuracy x sparsity, reference (0, 0)); studies in {storage}")
    marks = sorted({1, *range(8, args.trials + 1, 8), args.trials})
    width = max(20, *(len(f"{a}/{b}") + 1 for a, b in table))
    print(f"{'sampler/scheduler':<{width}}" + "".join(f"{f'n={n}':>16}" for n in marks))
    for (sampler, scheduler), row in table.items():
        print(f"{sampler + '/' + scheduler:<{width}}" + "".join(
            f"{row['mean'][n - 1]:>9.4f} +- {row['std'][n - 1]:.3f}" for n in marks))
    rows = []
    for (sampler, scheduler), row in table.items():
        needed = trials_to_reach(row["mean"], target) if reference else None
        rows.append({"method": args.method, "sampler": sampler, "scheduler": scheduler,
                     "trials": args.trials, "seeds": args.seeds,
                     "hypervolume_mean": round(float(row["mean"][-1]), 5),
                     "hypervolume_std": round(float(row["std"][-1]), 5),
                     "trials_to_reach_random": needed,
                     "trials_to_reach_random_per_seed": [trials_to_reach(h, target) for h in
                                                         row["per_seed"]] if reference else None,
                     "epoch_budget": int(budget),
                     "hypervolume_at_budget_mean": round(statistics.fmean(row["at_budget"]), 5),
                     "epochs_mean": round(statistics.fmean(row["epochs"]), 1),
                     "seconds_mean": round(statistics.fmean(row["seconds"]), 1),
                     **_sampling_row(asking[(sampler, scheduler)], args.trials)})
        print(json.dumps(rows[-1]))
    if reference:
        print(f"random search (fifo) reaches {target:.4f} after {args.trials} trials (mean)")


def _sampling_row(per_study: list[list[float]], trials: int) -> dict[str, float | None]:
    """Seconds the sampler took per suggestion, mean over the seeds' studies: over all trials, the
    first 8 and the last 8 (a GP's fit grows with the trials it models)."""
    def mean(part: list[list[float]]) -> float | None:
        values = [v for study in part for v in study]
        return round(statistics.fmean(values), 3) if values else None

    return {"sampling_seconds_mean": mean(per_study),
            "sampling_seconds_first_8": mean([s[:8] for s in per_study]),
            f"sampling_seconds_last_8_of_{trials}": mean([s[-8:] for s in per_study])}


def main(argv: list[str] | None = None, study_curves: Callable[[Path], Any] | None = None) -> int:
    """`study_curves(study_dir)`: a study's hypervolume curves, which `samplers` compares (handed
    over by study.cli, the composition root: they are analysis's work)."""
    from study.search import SCHEDULERS

    p = argparse.ArgumentParser(prog="python -m study.bench", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    sub = p.add_subparsers(dest="bench", required=True)
    e = sub.add_parser("epoch", help="seconds per training epoch")
    e.add_argument("--method", default="beta_vae", choices=sorted(METHODS))
    e.add_argument("--dataset", default="mnist")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    o = sub.add_parser("overhead", help="a study through study.search vs the same trials as bare "
                       "training loops: wall times, ratio, where the time went")
    o.add_argument("method", choices=sorted(METHODS))
    o.add_argument("--num-samples", type=int, default=8)
    o.add_argument("--max-concurrent", type=int, default=2)
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--storage-dir", help="where the study goes (default: a temporary folder)")
    o.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    o.add_argument("--study", help="measure the bare side of this finished study instead of running "
                   "one (with --harness-seconds, its wall time measured from outside)")
    o.add_argument("--harness-seconds", type=float, default=float("nan"))
    o.add_argument("--search-flags", default="", metavar="'FLAGS'",
                   help="more flags for study.search, quoted (e.g. '--checkpoint-every 60')")
    h = sub.add_parser("throughput", help="k trials packed per device (GPU fraction or CPU share): "
                       "trials per hour and samples per second for each k")
    h.add_argument("method", choices=sorted(METHODS))
    h.add_argument("--per-device", nargs="+", type=int, default=[1, 2, 4, 8])
    h.add_argument("--cpu", action="store_true", help="pack on the CPUs even when a GPU exists")
    h.add_argument("--seed", type=int, default=0)
    h.add_argument("--storage-dir", help="where the studies go (default: a temporary folder)")
    h.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    m = sub.add_parser("samplers", help="studies per sampler (and scheduler) and seed: hypervolume "
                       "curves, trials to reach random search's, hypervolume at equal epochs")
    m.add_argument("method", choices=sorted(METHODS))
    m.add_argument("--samplers", nargs="+", default=["tpe", "nsga2", "random"],
                   metavar="NAME[:KEY=VALUE,...]",
                   help="samplers (tpe, gp, nsga2, random), each with --sampler-arg settings if given: "
                   "e.g. tpe:multivariate=true,n_startup_trials=5 nsga2:population_size=16")
    m.add_argument("--schedulers", nargs="+", default=["fifo"], choices=SCHEDULERS)
    m.add_argument("--trials", type=int, default=64, help="trials per study")
    m.add_argument("--seeds", type=int, default=3, help="studies per sampler (sampler seeds 0, 1, ...)")
    m.add_argument("--max-concurrent", type=int, default=2)
    m.add_argument("--storage-dir", help="where the studies go (default: a temporary folder); "
                   "studies already there are read, not run again")
    m.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    m.add_argument("--search-flags", default="", metavar="'FLAGS'",
                   help="more flags for study.search, quoted (e.g. '--grace-period 1')")
    args = p.parse_args(argv)
    args.data_dir = args.data_dir or default_data_dir()
    if args.bench == "samplers":
        if study_curves is None:
            raise SystemExit("bench samplers compares analysis's curves: run it as `prunestudy "
                             "bench samplers ...` (or python -m study.bench)")
        bench_samplers(args, study_curves)
    else:
        {"epoch": bench_epoch, "overhead": bench_overhead, "throughput": bench_throughput}[args.bench](args)
    return 0


if __name__ == "__main__":  # as `prunestudy bench`, through the composition root
    from study.cli import main as cli_main

    sys.exit(cli_main(["bench", *sys.argv[1:]]))
