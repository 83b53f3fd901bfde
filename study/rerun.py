"""Trial configs run again through Ray, outside any search: the one way analysis asks for training
(`prunestudy robust` re-runs a front with new seeds). Each config runs in the trainable every
search runs, with the same resources, as many at a time as they allow.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of a re-run's resources (`prunestudy robust`, `prunestudy sanity`)."""
    parser.add_argument("--cpus-per-trial", type=float, default=None,
                        help="CPUs per run (default: the study's)")
    parser.add_argument("--gpus-per-trial", type=float, default=None,
                        help="GPUs per run (default: the study's)")
    parser.add_argument("--max-concurrent", type=int, default=0,
                        help="runs at once (0: as many as fit)")
    parser.add_argument("--address", help="join this Ray cluster instead of starting one locally")


def resources(args: argparse.Namespace, info: dict[str, Any]) -> tuple[float, float]:
    """(CPUs, GPUs) per run: the flags' where given, else the study's (its study.json `info`)."""
    cpus = args.cpus_per_trial if args.cpus_per_trial is not None else info.get("cpus_per_trial", 1.0)
    gpus = args.gpus_per_trial if args.gpus_per_trial is not None else info.get("gpus_per_trial", 0.0)
    return cpus, gpus


def _run_config(config: dict[str, Any], data=None) -> None:
    """Ray's trainable for one config: the search's own (`config["run"]["config"]`)."""
    from study.trainable import run_trial

    run_trial(config["run"]["config"], data)


def rerun(configs: list[dict[str, Any]], dataset: str, data_dir: str | Path, storage: Path,
          name: str, cpus: float, gpus: float, max_concurrent: int = 0,
          address: str | None = None) -> list[dict[str, Any]]:
    """Train each of `configs` (whole trial configs, seed included) once, through Ray Tune, on
    `dataset` from `data_dir`: Ray's folders go to `storage`/`name`. Returns each config's last
    report, in the order of `configs` (study.outcome tells how each ended)."""
    import ray
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from study.data import load_dataset
    from study.search import init_ray, trial_dirname

    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # diverged runs report none
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    data = load_dataset(dataset, data_dir)
    init_ray(address, {})
    try:
        trainable = tune.with_resources(tune.with_parameters(_run_config, data=data),
                                        {"cpu": cpus, "gpu": gpus})
        runs = [{"index": i, "config": config} for i, config in enumerate(configs)]
        tuner = tune.Tuner(
            trainable, param_space={"run": tune.grid_search(runs)},
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent or None,
                                        reuse_actors=True, trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(name=name, storage_path=str(storage.resolve()), verbose=0,
                                      callbacks=[JsonLoggerCallback()]))
        grid = tuner.fit()
    finally:
        ray.shutdown()
    reports: list[dict[str, Any]] = [{} for _ in configs]
    for result in grid:
        reports[result.config["run"]["index"]] = result.metrics or {}
    return reports
