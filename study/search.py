"""`python -m study.search METHOD`: a multi-objective study with Ray Tune + OptunaSearch + W&B.

A study is one folder, `<storage-dir>/<name>/`: Ray's experiment (trial folders, checkpoints,
results), the Optuna study in `optuna.db` (SQLite, open it with optuna-dashboard), W&B runs under
`wandb/`, and `study.json` (what was asked). search.py owns Ray and Optuna; it never trains.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd

from study.config import ConfigError
from study.data import DATASETS, DataError, default_data_dir, load_dataset
from study.methods import METHODS
from study.spaces import StudySpace, load_space, parse_assignment

OBJECTIVES = ["val_accuracy", "sparsity"]  # both maximized
MODES = ["max", "max"]
SAMPLERS = ("tpe", "nsga2", "random")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m study.search", description=__doc__.splitlines()[0])
    p.add_argument("method", help=f"pruning method: {', '.join(METHODS)}")
    p.add_argument("--dataset", help=f"{', '.join(DATASETS)} or folder:PATH (default: the space's, "
                   "else mnist)")
    p.add_argument("--data-dir", default=None, help="dataset root (default: $PRUNESTUDY_DATA_DIR or "
                   "./data); datasets missing there are downloaded when the network allows")
    p.add_argument("--num-samples", type=int, default=8, help="trials in the study")
    p.add_argument("--max-concurrent", type=int, default=0,
                   help="trials at once (0: as many as the resources allow)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractions pack trials on a GPU")
    p.add_argument("--sampler", choices=SAMPLERS, default="tpe")
    p.add_argument("--seed", type=int, default=0, help="seeds the sampler and, unless set, the trials")
    p.add_argument("--name", help="study name (default: METHOD-DATASET-TIMESTAMP)")
    p.add_argument("--storage-dir", default="runs", help="parent folder of studies")
    p.add_argument("--space", help="search space YAML (default: search_spaces/METHOD.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a setting, searched or not (repeatable)")
    p.add_argument("--address", help="join this Ray cluster instead of starting one locally")
    p.add_argument("--max-failures", type=int, default=2,
                   help="retries of a crashed trial, each from its last checkpoint")
    args = p.parse_args(argv)
    for flag in ("num_samples", "cpus_per_trial"):
        if getattr(args, flag) <= 0:
            p.error(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if args.gpus_per_trial < 0 or args.max_concurrent < 0 or args.max_failures < 0:
        p.error("--gpus-per-trial, --max-concurrent and --max-failures must not be negative")
    return args


def build_space(args: argparse.Namespace) -> StudySpace:
    space = load_space(args.method, args.space)
    space.fixed.setdefault("seed", args.seed)
    if args.dataset:
        space.set("dataset", args.dataset)
    space.fixed.setdefault("dataset", "mnist")
    for text in args.set:
        space.set(*parse_assignment(text))
    space.fixed["method"] = args.method
    return space


def make_sampler(name: str, seed: int):
    import optuna

    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_searcher(space: StudySpace, study_dir: Path, name: str, sampler: str, seed: int):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    class LinkedOptunaSearch(OptunaSearch):
        """OptunaSearch that records each Ray trial id on its Optuna trial, so the two agree."""

        def suggest(self, trial_id: str) -> dict | None:
            params = super().suggest(trial_id)
            self._ot_trials[trial_id].set_user_attr("ray_trial_id", trial_id)
            return params

    storage = optuna.storages.RDBStorage(f"sqlite:///{(study_dir / 'optuna.db').resolve()}")
    searcher = LinkedOptunaSearch(space=space.search, metric=OBJECTIVES, mode=MODES,
                                  sampler=make_sampler(sampler, seed), storage=storage,
                                  study_name=name)
    study = optuna.load_study(study_name=name, storage=storage)
    study.set_user_attr("fixed", space.fixed)
    study.set_metric_names(OBJECTIVES)
    return searcher


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def init_ray(address: str | None, env: dict[str, str]) -> None:
    import ray

    if address:
        ray.init(address=address, runtime_env={"env_vars": env})
    else:  # local: loopback only, no dashboard
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1",
                 runtime_env={"env_vars": env})


def summarize(df: pd.DataFrame, searched: list[str]) -> str:
    """The non-dominated trials as a table, with test accuracy and the searched settings beside."""
    from analysis.pareto import front

    done = df.dropna(subset=OBJECTIVES) if not df.empty else df
    if done.empty:
        return "no trial finished with both objectives"
    cols = ["trial_id", *OBJECTIVES, "test_accuracy"] + [f"config/{k}" for k in searched]
    table = front(done)[[c for c in cols if c in done.columns]]
    table = table.rename(columns={f"config/{k}": k if k not in OBJECTIVES else f"{k} (setting)"
                                  for k in searched})
    return (f"Pareto front (val_accuracy, sparsity): {len(table)} of {len(done)} finished trials\n"
            + table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))


def run(args: argparse.Namespace) -> int:
    space = build_space(args)
    dataset_name = space.fixed["dataset"]
    name = args.name or f"{args.method}-{dataset_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage_dir = Path(args.storage_dir).resolve()
    study_dir = storage_dir / name
    if (study_dir / "optuna.db").exists():
        raise ConfigError(f"study folder {study_dir} already holds a study; choose another --name")
    data = load_dataset(dataset_name, args.data_dir or default_data_dir())
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create study folder {study_dir}: {e.strerror}") from None
    (study_dir / "study.json").write_text(json.dumps({
        "method": args.method, "dataset": dataset_name, "fixed": space.fixed,
        "search": {k: repr(v) for k, v in space.search.items()}, "sampler": args.sampler,
        "seed": args.seed, "num_samples": args.num_samples, "cpus_per_trial": args.cpus_per_trial,
        "gpus_per_trial": args.gpus_per_trial, "argv": sys.argv[1:]}, indent=2))

    from study import tracking

    mode, env = tracking.configure(study_dir)
    import ray
    from ray import tune

    from study.trainable import run_trial

    init_ray(args.address, env)
    try:
        searcher = make_searcher(space, study_dir, name, args.sampler, args.seed)
        trainable = tune.with_resources(tune.with_parameters(run_trial, data=data),
                                        {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial})
        tuner = tune.Tuner(
            trainable, param_space=space.fixed,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=args.num_samples,
                                        max_concurrent_trials=args.max_concurrent or None,
                                        reuse_actors=True, trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(
                name=name, storage_path=str(storage_dir), verbose=1,
                callbacks=[tracking.logger_callback(study_dir, name, args.method, dataset_name)],
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=args.max_failures)))
        if mode == "offline":
            print(f"W&B is offline (no credentials): runs go to {study_dir / 'wandb'}; sync them "
                  f"later with `wandb sync {study_dir / 'wandb'}/offline-run-*`", flush=True)
        results = tuner.fit()
        df = results.get_dataframe()
        print()
        print(summarize(df, list(space.search)))
        failed = len(results.errors)
        print(f"\n{len(df)} trials, {failed} failed. Study folder: {study_dir}")
        print(f"Optuna storage: sqlite:///{study_dir / 'optuna.db'} (optuna-dashboard can open it)")
        print(f"W&B ({mode}): {len(tracking.offline_runs(study_dir)) if mode == 'offline' else 'see'} "
              f"runs in group {name!r} under {study_dir / 'wandb'}")
    finally:
        ray.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # every epoch checkpoints (num_to_keep=1 forces an experiment snapshot each time): by design
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    sys.exit(main())
