"""`python -m study.search METHOD`: a multi-objective study with Ray Tune + OptunaSearch + W&B.

A study is one folder, `<storage-dir>/<name>/`: Ray's experiment (trial folders, checkpoints,
results), the Optuna study in `optuna.db` (SQLite, open it with optuna-dashboard), W&B runs under
`wandb/`, and `study.json` (what was asked). search.py owns Ray and Optuna; it never trains.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna.distributions as od

from study import layout
from study.config import ConfigError, TrialConfig, describe, one_line
from study.constraints import Constraint, parse_constraints
from study.data import DATASETS, DataError, Dataset, default_data_dir, load_dataset
from study.lock import DriverLock
from study.methods import METHODS
from study.metrics import OBJECTIVES, mode
from study.spaces import StudySpace, check_trials, load_space, parse_assignment

# --sampler NAME: Optuna's sampler class, and the settings prunestudy gives it unless
# --sampler-arg says otherwise. TPE: 5 random start-up trials instead of Optuna's 10, so that the
# default 8-trial study is not random search; measured at 64 trials x 3 seeds on the importance
# and reparam studies against Optuna's defaults and multivariate TPE (docs/benchmarks.md, "Sampler
# settings"). NSGA-II keeps Optuna's population of 50: 16 did no better than random search.
# GP: Optuna's Gaussian-process sampler (multi-objective through log EHVI, constraints through the
# trials' constraint values), for small budgets; its fit grows with the trials. 3 start-up trials:
# fewer trials to random search's 64-trial hypervolume than with 5 (14 / 20 against 17 / 23 on
# importance / reparam) and ahead of 5 after 8 (docs/benchmarks.md, "`--sampler gp`").
SAMPLERS = {"tpe": "TPESampler", "gp": "GPSampler", "nsga2": "NSGAIISampler", "random": "RandomSampler"}
SAMPLER_DEFAULTS: dict[str, dict[str, Any]] = {"tpe": {"n_startup_trials": 5},
                                               "gp": {"n_startup_trials": 3}}
# the end-of-study summary of a study folder: analysis work, given by the composition root (study.cli)
Summarize = Callable[[Path], str]
SCHEDULERS = ("fifo", "mo-asha")  # mo-asha: multi-objective successive halving (study.scheduler)
CHECKPOINT_EVERY = 30.0  # seconds: a checkpoint (and Ray's experiment snapshot) costs ~1 s here

# The admissible values of every numeric flag, (lowest, highest): argparse takes any int or float,
# nan and inf included, and a value past these fails after the study folder exists or never ends.
RESOURCE_UNIT = 1e-4  # Ray counts CPUs and GPUs in 0.0001s and refuses less, mid-study
MAX_TRIALS = 100_000
FLAG_BOUNDS: dict[str, tuple[float, float]] = {
    "num_samples": (1, MAX_TRIALS),
    "max_concurrent": (0, MAX_TRIALS),  # 0: as many as the resources allow
    "cpus_per_trial": (RESOURCE_UNIT, 10_000),
    "gpus_per_trial": (0, 10_000),  # and 0 or at least RESOURCE_UNIT
    "grace_period": (1, 10_000),  # epochs: study.scheduler lists rungs up to its MAX_RUNG_EPOCH
    "reduction_factor": (1.01, 10_000),  # nearer 1, listing the rungs up to there never ends
    "seed": (0, 2**32 - 1),  # NumPy's seeds: Optuna's samplers and every trial seed with it
    "max_failures": (0, 1_000),
    "checkpoint_every": (0, 7 * 24 * 3600),  # seconds: a week
}
_BELOW = {"grace_period": "at least 1 epoch", "reduction_factor": "above 1 (at least 1.01)",
          "cpus_per_trial": f"at least {RESOURCE_UNIT:g} (Ray's unit of resource)"}
PATH_FLAGS = ("storage_dir", "data_dir", "space")  # and --dataset folder:PATH
NAME_MAX = 255  # bytes of one file name (Linux, macOS)
PATH_MAX = 4095  # bytes of a whole path (Linux)
# the Optuna sampler settings Optuna itself takes unchecked (a huge n_ei_candidates stalls every
# trial's suggestion; a negative prior_weight gives NaN densities): (lowest, highest)
SAMPLER_ARG_BOUNDS: dict[str, tuple[float, float]] = {
    "n_startup_trials": (0, MAX_TRIALS), "n_ei_candidates": (1, 10_000),
    "prior_weight": (1e-6, 1e6),
    "population_size": (-math.inf, MAX_TRIALS)}  # below 2: Optuna's own check


class OneLineErrors(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (`--help` still shows the usage), whatever the
    bad argument holds (a line break is written as \\n)."""

    def error(self, message: str):
        self.exit(2, f"error: {one_line(message)} (see --help)\n")


def _bounds_error(flag: str, value: float, low: float, high: float) -> str | None:
    """Why `value` is not admissible for `flag` (FLAG_BOUNDS, SAMPLER_ARG_BOUNDS), or None."""
    if low <= value <= high:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"{flag} must be a finite number, got {value}"
    got = f"got {value:g}" if isinstance(value, float) else f"got {value}"  # ints: any size
    if value > high:
        return f"{flag} must be at most {high:g}, {got}"
    if low == 0:
        return f"{flag} must not be negative, {got}"
    return f"{flag} must be {_BELOW.get(flag[2:].replace('-', '_'), f'at least {low:g}')}, {got}"


def path_error(text: str) -> str | None:
    """Why `text` cannot name a file on this system (a NUL or a line break in it, a name or path
    too long), or None. Found here, not as a traceback of the first call that uses it."""
    if one_line(text) != text:
        return "it holds a NUL, a line break or another control character"
    try:
        raw = os.fsencode(text)
    except UnicodeEncodeError:
        return "it holds a character this file system's encoding cannot write"
    if len(raw) > PATH_MAX:
        return f"{len(raw)} bytes, more than the {PATH_MAX} of a path"
    longest = max(raw.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        return f"a name of {len(longest)} bytes in it, more than the {NAME_MAX} of a file name"
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineErrors(prog="python -m study.search", description=__doc__.splitlines()[0])
    p.add_argument("method", help=f"pruning method: {', '.join(METHODS)}")
    p.add_argument("--settings", action="store_true",
                   help="print every setting a trial of METHOD takes (for --set and search spaces): "
                   "its default, admissible values and meaning; then exit, starting nothing")
    p.add_argument("--dataset", help=f"{', '.join(DATASETS)} or folder:PATH (default: the space's, "
                   "else mnist)")
    p.add_argument("--data-dir", default=None, help="dataset root (default: $PRUNESTUDY_DATA_DIR or "
                   "./data); datasets missing there are downloaded when the network allows")
    p.add_argument("--num-samples", type=int, default=None,
                   help="trials in the study (default 8); with --resume, a larger number extends it")
    p.add_argument("--max-concurrent", type=int, default=0,
                   help="trials at once (0: as many as the resources allow)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractions pack trials on a GPU")
    p.add_argument("--sampler", choices=list(SAMPLERS), default="tpe")
    p.add_argument("--sampler-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a bool, int or float setting of the sampler's Optuna class (e.g. "
                   "n_startup_trials=8, population_size=16; repeatable); the value is read as YAML")
    p.add_argument("--scheduler", choices=SCHEDULERS, default="fifo",
                   help="fifo: every trial runs its whole schedule; mo-asha: multi-objective "
                   "successive halving stops trials at rung epochs (README)")
    p.add_argument("--grace-period", type=int, default=None, metavar="EPOCHS",
                   help="mo-asha: epochs before the first rung (default 1)")
    p.add_argument("--reduction-factor", type=float, default=None, metavar="R",
                   help="mo-asha: rungs at grace * R^k epochs; 1 trial in R continues at each "
                   "(default 3)")
    p.add_argument("--constraint", action="append", default=[], metavar="'METRIC>=X'",
                   help="feasible trials meet it (METRIC>=X or METRIC<=X, any reported metric; "
                   "repeatable): Optuna's samplers prefer them; fronts, hypervolumes and exports "
                   "count only them")
    p.add_argument("--seed", type=int, default=0, help="seeds the sampler and, unless set, the trials")
    p.add_argument("--name", help="study name (default: METHOD-DATASET-TIMESTAMP)")
    p.add_argument("--storage-dir", default="runs", help="parent folder of studies")
    p.add_argument("--space", help="search space YAML (default: search_spaces/METHOD.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a setting, searched or not (repeatable)")
    p.add_argument("--address", help="join this Ray cluster instead of starting one locally")
    p.add_argument("--resume", metavar="NAME",
                   help="continue the interrupted study NAME of --storage-dir: finished trials are "
                   "kept, running ones continue from their last checkpoint")
    p.add_argument("--max-failures", type=int, default=2,
                   help="retries of a crashed trial, each from its last checkpoint")
    p.add_argument("--verbose", action="store_true",
                   help="Ray's own console output (its trial tables, worker logs) instead of the "
                   f"study's view; otherwise it goes to the study folder's {layout.SEARCH_LOG}")
    p.add_argument("--checkpoint-every", type=float, default=None, metavar="SECONDS",
                   help="a trial checkpoints at the first epoch end this many seconds after its "
                   f"last checkpoint, and at its end (default {CHECKPOINT_EVERY:g}; 0: every "
                   "epoch); a resumed trial redoes at most this much work plus one epoch")
    args = p.parse_args(argv)
    for action in p._actions:  # argparse reads `--flag=--` as an empty list, never a value
        value = getattr(args, action.dest, None)
        if any(isinstance(v, list) for v in (value if isinstance(action.default, list) else [value])):
            p.error(f"argument {'/'.join(action.option_strings)}: expected one value, got '--'")
    for flag, (low, high) in FLAG_BOUNDS.items():
        value = getattr(args, flag)
        problem = None if value is None else _bounds_error(f"--{flag.replace('_', '-')}", value, low, high)
        if problem:
            p.error(problem)
    if 0 < args.gpus_per_trial < RESOURCE_UNIT:
        p.error(f"--gpus-per-trial must be 0 or at least {RESOURCE_UNIT:g} (Ray's unit of resource), "
                f"got {args.gpus_per_trial:g}")
    for flag in PATH_FLAGS:
        value = getattr(args, flag)
        if value is not None and (problem := path_error(value)):
            p.error(f"--{flag.replace('_', '-')} {value!r} cannot be a path here: {problem}")
    if args.dataset and args.dataset.startswith("folder:") and (
            problem := path_error(args.dataset[len("folder:"):])):
        p.error(f"--dataset {args.dataset!r} cannot be a path here: {problem}")
    if args.scheduler != "mo-asha" and (args.grace_period, args.reduction_factor) != (None, None):
        p.error("--grace-period and --reduction-factor need --scheduler mo-asha")
    if args.resume and (args.scheduler != "fifo" or args.constraint or args.sampler_arg):
        p.error("--scheduler, --constraint and --sampler-arg are the study's: they cannot change "
                "on --resume")
    return args


STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
STUDY_NAME_MAX = 128  # characters: a folder name ends at 255 bytes; Ray and W&B name things after it


def check_study_name(flag: str, name: str | None) -> None:
    """A study name is one plain folder name inside --storage-dir, never a path."""
    if name is not None and not STUDY_NAME.fullmatch(name):
        raise ConfigError(f"--{flag} {name!r} is not a plain folder name (letters, digits, '.', "
                          "'_', '-', starting with a letter or digit)")
    if name is not None and len(name) > STUDY_NAME_MAX:
        raise ConfigError(f"--{flag} {name[:20]!r}... is {len(name)} characters long; a study "
                          f"name has at most {STUDY_NAME_MAX}")


def default_study_name(method: str, dataset: str) -> str:
    """METHOD-DATASET-TIMESTAMP, a plain folder name whatever the dataset (folder:PATH's path)."""
    plain = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset).strip("._-")[:40] or "data"
    return f"{method}-{plain}-{time.strftime('%Y%m%d-%H%M%S')}"


def build_space(args: argparse.Namespace) -> StudySpace:
    space = load_space(args.method, args.space)
    seed_fixed = "seed" in space.fixed
    space.fixed.setdefault("seed", args.seed)
    if args.dataset:
        space.set("dataset", args.dataset)
    space.fixed.setdefault("dataset", "mnist")
    for text in args.set:
        key, value = parse_assignment(text)
        space.set(key, value)
        seed_fixed = seed_fixed or key == "seed"
    space.fixed["method"] = args.method
    space.fill_defaults()
    if not space.search:  # nothing searched: num-samples trials of one configuration, each with
        # its own seed drawn by the sampler, or all with the seed that was fixed
        seed = space.fixed.pop("seed")
        space.search["seed"] = (od.CategoricalDistribution([seed]) if seed_fixed
                                else od.IntDistribution(0, 2**31 - 1))
    return space


def check(args: argparse.Namespace) -> tuple[Path, dict[str, Any], Dataset]:
    """Every check a study makes before it writes anything or starts Ray: the names, the resources
    (this machine's; a cluster's are known once joined), the space and its trials, the data, the
    sampler's settings. Returns (study folder, what study.json will hold, the data)."""
    for flag in ("name", "resume"):
        check_study_name(flag, getattr(args, flag))
    if not args.address:
        check_resources(args.cpus_per_trial, args.gpus_per_trial, [_local_node()])
    return _resumed_study(args) if args.resume else _new_study(args)


_PLAIN_TYPES = {"bool": (bool,), "int": (int,), "float": (int, float)}


def _plain_settings(cls) -> dict[str, tuple[type, ...]]:
    """The settings of an Optuna sampler class that a command line can give (bool, int, float),
    each with the Python types it takes; callables, operators and the study's own (seed,
    constraints) are left out."""
    import inspect

    settings = {}
    for name, param in inspect.signature(cls).parameters.items():
        note = param.annotation if isinstance(param.annotation, str) else getattr(
            param.annotation, "__name__", "")
        kinds = [k.strip() for k in note.split("|") if k.strip() != "None"]
        if name != "seed" and kinds and all(k in _PLAIN_TYPES for k in kinds):
            settings[name] = tuple(t for k in kinds for t in _PLAIN_TYPES[k])
    return settings


def sampler_settings(name: str, assignments: list[str]) -> dict[str, Any]:
    """The keyword arguments of --sampler NAME's Optuna class: prunestudy's defaults, then each
    --sampler-arg KEY=VALUE; ConfigError for a key the class does not take from a command line or
    a value of the wrong type (found now, not when the sampler first uses it mid-study)."""
    import optuna

    cls = getattr(optuna.samplers, SAMPLERS[name])
    known = _plain_settings(cls)
    settings = dict(SAMPLER_DEFAULTS.get(name, {}))
    for text in assignments:
        key, value = parse_assignment(text, "--sampler-arg")
        if key not in known:
            raise ConfigError(f"--sampler-arg {key}: not a setting of optuna.samplers."
                              f"{cls.__name__} that a command line can give (settings: "
                              f"{', '.join(sorted(known)) or 'none'})")
        types = known[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ConfigError(f"--sampler-arg {key}={value!r}: optuna.samplers.{cls.__name__} "
                              f"takes {' or '.join(t.__name__ for t in types)} there")
        low, high = SAMPLER_ARG_BOUNDS.get(key, (-math.inf, math.inf))
        if not isinstance(value, bool) and (problem := _bounds_error(f"--sampler-arg {key}",
                                                                     value, low, high)):
            raise ConfigError(problem)
        settings[key] = value
    try:
        with warnings.catch_warnings():  # a trial construction: its warnings come with the real one
            warnings.simplefilter("ignore")
            cls(**settings)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--sampler-arg: optuna.samplers.{cls.__name__} refused {settings}: "
                          f"{e}") from None
    return settings


def make_sampler(name: str, seed: int, settings: dict[str, Any] | None = None):
    """--sampler NAME's Optuna sampler with `settings` (default: prunestudy's, sampler_settings)."""
    import optuna

    cls = getattr(optuna.samplers, SAMPLERS[name])
    return cls(seed=seed, **(sampler_settings(name, []) if settings is None else settings))


def make_searcher(space: StudySpace, study_dir: Path, name: str, sampler: str, seed: int,
                  constraints: list[Constraint] | None = None,
                  sampler_args: dict[str, Any] | None = None):
    """The study's searcher (study.optuna_bridge), its Optuna study created in the study folder
    with the fixed settings, the constraints and the objectives' names recorded on it."""
    import optuna

    from study.optuna_bridge import LinkedOptunaSearch

    storage = layout.optuna_storage(study_dir)
    searcher = LinkedOptunaSearch(space=space.search, metric=list(OBJECTIVES),
                                  mode=[mode(m) for m in OBJECTIVES],
                                  sampler=make_sampler(sampler, seed, sampler_args),
                                  storage=storage,
                                  study_name=name)
    # an attribute of the searcher: saved with its state (OptunaSearch pickles __dict__)
    searcher.study_constraints = constraints or []
    study = optuna.load_study(study_name=name, storage=storage)
    study.set_user_attr("fixed", space.fixed)
    study.set_user_attr("constraints", [str(c) for c in constraints or []])
    study.set_metric_names(list(OBJECTIVES))
    return searcher


def make_scheduler(info: dict[str, Any], study_dir: Path):
    """The study's Ray Tune scheduler: None (Ray's FIFO) or MO-ASHA (study.scheduler)."""
    if info["scheduler"] != "mo-asha":
        return None
    from study.scheduler import MultiObjectiveASHA

    return MultiObjectiveASHA(info["grace_period"], info["reduction_factor"], study_dir=str(study_dir))


def trial_dirname(trial) -> str:
    return layout.trial_dirname(trial.trial_id)


def init_ray(address: str | None, env: dict[str, str], verbose: bool = False) -> None:
    import ray

    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=verbose)
    else:  # local, no dashboard. Ray 2.60 turns a 127.0.0.1 node address into the machine's and
        # binds its gRPC servers to all interfaces regardless; its token auth (on by default)
        # is what guards them (README: Safety, and how to firewall the ports)
        ray.init(include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=verbose)


def _new_study(args: argparse.Namespace) -> tuple[Path, dict[str, Any], Dataset]:
    """Check everything a new study needs, writing nothing."""
    space = build_space(args)
    dataset_name = space.fixed["dataset"]
    constraints = parse_constraints(args.constraint)  # never the test split: before any data
    if "://" in args.storage_dir:
        raise ConfigError(f"--storage-dir {args.storage_dir!r}: URI storage is not supported; give "
                          "a local folder (on a cluster, one every node can read, such as NFS)")
    name = args.name or default_study_name(args.method, dataset_name)
    study_dir = Path(args.storage_dir).resolve() / name
    if layout.holds_study(study_dir):
        raise ConfigError(f"study folder {study_dir} already holds a study; choose another --name "
                          f"or continue it with --resume {name}")
    data_dir = Path(args.data_dir or default_data_dir()).resolve()
    data = load_dataset(dataset_name, data_dir)  # fail before creating anything
    data.with_label(space.fixed.get("label_factor", ""))
    sampler_args = sampler_settings(args.sampler, args.sampler_arg)
    scheduler = {"scheduler": args.scheduler}
    if args.scheduler == "mo-asha":
        from study.scheduler import GRACE_PERIOD, REDUCTION_FACTOR, format_rung_epochs, rung_epochs

        scheduler.update(grace_period=args.grace_period or GRACE_PERIOD,
                         reduction_factor=args.reduction_factor or REDUCTION_FACTOR)
        # every trial reports its rung objectives at the rungs (the trial setting rung_epochs)
        space.fixed["rung_epochs"] = format_rung_epochs(
            rung_epochs(scheduler["grace_period"], scheduler["reduction_factor"]))
    check_trials(space, data, args.gpus_per_trial)
    info = {"name": name, "method": args.method, "dataset": dataset_name, "data_dir": str(data_dir),
            "fixed": space.fixed, "search": {k: repr(v) for k, v in space.search.items()},
            "sampler": args.sampler, "sampler_args": sampler_args, **scheduler,
            "constraints": [str(c) for c in constraints],
            "seed": args.seed, "num_samples": args.num_samples or 8,
            "cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": args.gpus_per_trial,
            "checkpoint_every": CHECKPOINT_EVERY if args.checkpoint_every is None
            else args.checkpoint_every, "argv": sys.argv[1:]}
    return study_dir, {**info, "space": space}, data


def _create_study(study_dir: Path, info: dict[str, Any]) -> None:
    """The study folder and its study.json: the first thing a study writes."""
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
        probe = study_dir / ".write-test"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write the study folder {study_dir}: {e.strerror}") from None
    layout.write_info(study_dir, {k: v for k, v in info.items() if k != "space"})


# what a resumed study reads from its study.json (_new_study writes it), and the types it takes
RESUMED_INFO = {"method": str, "dataset": str, "data_dir": str, "fixed": dict, "search": dict,
                "scheduler": str, "num_samples": int, "cpus_per_trial": (int, float),
                "gpus_per_trial": (int, float)}
NUMBER = (int, float)


def _check_info(info: dict[str, Any], study_dir: Path) -> None:
    """ConfigError naming the first key of study.json that is missing or of the wrong type."""
    from study.terms import StudyTerms

    wanted = dict(RESUMED_INFO)
    if info.get("scheduler") == "mo-asha":
        wanted.update(grace_period=int, reduction_factor=NUMBER)
    if "checkpoint_every" in info:  # studies from before it was a setting have none
        wanted["checkpoint_every"] = NUMBER
    for key, kind in wanted.items():
        value = info.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            found = "missing" if key not in info else f"{type(value).__name__} {value!r:.40}"
            raise ConfigError(f"{study_dir / layout.STUDY_JSON}: {key!r} is {found}, not "
                              f"{'a number' if kind is NUMBER else kind.__name__}; the study cannot "
                              "be resumed")
    try:
        StudyTerms.of(info)  # its searched distributions read back, never evaluated
    except ConfigError as e:
        raise ConfigError(f"{study_dir / layout.STUDY_JSON}: {e}; the study cannot be resumed") from None


def _resumed_study(args: argparse.Namespace) -> tuple[Path, dict[str, Any], Dataset]:
    """Check an interrupted study can be resumed; nothing in it is modified here."""
    study_dir = Path(args.storage_dir).resolve() / args.resume
    if not layout.resumable(study_dir):
        raise ConfigError(f"{study_dir} is not a study folder that can be resumed "
                          f"(no {layout.STUDY_JSON} or {layout.TUNER_STATE})")
    try:
        info = layout.read_info(study_dir)
    except layout.StudyInfoError as e:
        raise ConfigError(f"{e}; the study cannot be resumed") from None
    _check_info(info, study_dir)
    if info["method"] != args.method:
        raise ConfigError(f"study {args.resume} ran method {info['method']!r}, not {args.method!r}")
    if args.num_samples is not None and args.num_samples < info["num_samples"]:
        raise ConfigError(f"--num-samples {args.num_samples} is below the study's "
                          f"{info['num_samples']}; a resumed study can only grow")
    if args.data_dir:
        info["data_dir"] = str(Path(args.data_dir).resolve())
    if args.checkpoint_every is not None:
        info["checkpoint_every"] = args.checkpoint_every
    data = load_dataset(info["dataset"], info["data_dir"])
    if not os.access(study_dir, os.W_OK):
        raise ConfigError(f"cannot write the study folder {study_dir}")
    return study_dir, info, data


def check_resources(cpus_per_trial: float, gpus_per_trial: float, nodes: list[dict[str, float]]) -> None:
    """A trial's resources must fit on one node, or it would wait forever: ConfigError if not."""
    for flag, key, want in (("--cpus-per-trial", "CPU", cpus_per_trial),
                            ("--gpus-per-trial", "GPU", gpus_per_trial)):
        most = max((n.get(key, 0.0) for n in nodes), default=0.0)
        if want > most:
            where = "this machine has" if len(nodes) == 1 else "the largest node of the cluster has"
            raise ConfigError(f"{flag} {want:g} cannot run: {where} {most:g} {key}s")


def _local_node() -> dict[str, float]:
    """The CPUs and GPUs a local Ray instance will have: Ray's own count of CPUs, which reads a
    container's CPU quota (os.cpu_count gives the host's, and a trial sized to it would wait
    forever); the process's CPU affinity where Ray's helper is missing."""
    import torch

    try:
        from ray._private.utils import get_num_cpus

        cpus = float(get_num_cpus())
    except (ImportError, AttributeError):
        cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                     else os.cpu_count() or 1)
    return {"CPU": cpus, "GPU": float(torch.cuda.device_count())}


def _cluster_nodes() -> list[dict[str, float]]:
    import ray

    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def run(args: argparse.Namespace, summarize: Summarize | None = None) -> int:
    # one driver per study folder (study.lock): a folder another live driver holds is refused
    # first, before anything is read or written; the lock is then held until the driver exits
    lock = None
    try:
        for flag in ("name", "resume"):
            check_study_name(flag, getattr(args, flag))  # a plain name: no lock file elsewhere
        named = args.resume or args.name
        if named:
            lock = DriverLock(Path(args.storage_dir).resolve() / named)
            lock.acquire(create=False)
        study_dir, info, data = check(args)
        lock = lock or DriverLock(study_dir)
        return _drive(args, summarize, study_dir, info, data, lock)
    finally:
        if lock is not None:
            lock.release()


def _hold(lock: DriverLock, study_dir: Path, new: bool) -> None:
    """Take the study's lock for good (creating its file) and record this driver in it; a new
    study that another driver created since the checks is refused as any existing one is."""
    lock.acquire(create=True)
    if new and layout.holds_study(study_dir):
        raise ConfigError(f"study folder {study_dir} already holds a study; choose another --name "
                          f"or continue it with --resume {study_dir.name}")
    lock.record()


def _drive(args: argparse.Namespace, summarize: Summarize | None, study_dir: Path,
           info: dict[str, Any], data: Dataset, lock: DriverLock) -> int:
    """The study once every check has passed: its folder, Ray, the search (`_search`) and how it
    ended. Returns the exit code: 0; 128 + the signal that interrupted it (SIGINT, SIGTERM:
    `--resume` continues); 1 when a disk filled (one line says what filled and how to go on)."""
    import signal

    import ray

    from study import tracking
    from study.console import quiet_libraries
    from study.interrupts import (
        disk_full,
        disk_full_message,
        full_filesystem,
        terminate_as_interrupt,
        watch_disk,
    )
    from study.resume import usable_snapshot

    name = info.get("name", study_dir.name)
    resume = f"prunestudy search {args.method} --resume {name} --storage-dir {study_dir.parent}"
    mode, env = tracking.configure(study_dir)
    watch, terminated = None, []
    try:
        if args.resume:
            _hold(lock, study_dir, new=False)
            note = usable_snapshot(study_dir)
            if note:
                print(note, flush=True)
        elif not args.address:
            _hold(lock, study_dir, new=True)
            _create_study(study_dir, info)
        if not args.verbose and study_dir.is_dir():
            quiet_libraries(layout.search_log(study_dir))
        with watch_disk() as watch:
            init_ray(args.address, env, args.verbose)
            with terminate_as_interrupt() as terminated:
                try:
                    return _search(args, summarize, study_dir, info, data, lock, mode, resume,
                                   watch, terminated)
                finally:  # within SIGTERM's deadline; a full disk no longer interrupts it
                    watch.stop()
                    ray.shutdown()
    except (Exception, KeyboardInterrupt) as e:
        if isinstance(e, ConfigError) or not (disk_full(e) or (watch and watch.full.is_set())):
            if not isinstance(e, KeyboardInterrupt):
                raise
            # a second Ctrl-C (or SIGTERM) while Ray stopped, or one before or after the run
            received = signal.Signals(terminated[-1] if terminated else signal.SIGINT)
            print(f"\ninterrupted ({received.name}) at once; continue the study with `{resume}`",
                  file=sys.stderr, flush=True)
            return 128 + received.value
        where = full_filesystem(e, [study_dir, Path(os.environ.get("RAY_TMPDIR") or "/tmp/ray"),
                                    Path(tempfile.gettempdir())])
        print(disk_full_message(where, study_dir, _finished_trials(study_dir), resume),
              file=sys.stderr, flush=True)
        return 1
    finally:
        ray.shutdown()  # after a failed start; nothing once shut down


def _search(args: argparse.Namespace, summarize: Summarize | None, study_dir: Path,
            info: dict[str, Any], data: Dataset, lock: DriverLock, mode: str, resume: str,
            watch, terminated: list[int]) -> int:
    """The tuner (new, or restored with `--resume`), its run, reconciling Optuna with it and
    the summary; Ray is running. Returns 0, or 128 + the signal that interrupted the run."""
    import signal

    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from study import tracking
    from study.console import StudyConsole, quiet_libraries
    from study.interrupts import DiskFull
    from study.optuna_bridge import reconcile_optuna
    from study.resume import CheckpointRepair, set_total_samples
    from study.terms import StudyTerms
    from study.trainable import run_trial

    name = info.get("name", study_dir.name)
    if args.address:  # the cluster's resources are known once joined
        check_resources(info["cpus_per_trial"], info["gpus_per_trial"], _cluster_nodes())
        if not args.resume:
            _hold(lock, study_dir, new=True)
            _create_study(study_dir, info)
            if not args.verbose:
                quiet_libraries(layout.search_log(study_dir))
    terms = StudyTerms.of(info)  # every trial is checked against them before it trains
    trainable = tune.with_resources(tune.with_parameters(
        run_trial, data=data, checkpoint_every=info.get("checkpoint_every", 0.0), terms=terms),
        {"cpu": info["cpus_per_trial"], "gpu": info["gpus_per_trial"]})
    if args.resume:
        if args.num_samples and args.num_samples > info["num_samples"]:
            set_total_samples(study_dir, args.num_samples)
            info["num_samples"] = args.num_samples
            layout.write_info(study_dir, info)
        # the study's fixed settings given again: tuner.pkl does not keep them, and when Ray
        # cannot load its snapshot it logs it and starts the experiment over from that param
        # space: without it, new trials held the searched values alone and ran the method's
        # defaults (a snapshot cut short by a full disk; study.resume.usable_snapshot)
        tuner = tune.Tuner.restore(str(study_dir), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True, param_space=dict(terms.fixed))
    else:
        space = info.pop("space")
        tuner = tune.Tuner(
            trainable, param_space=space.fixed,
            tune_config=tune.TuneConfig(
                search_alg=make_searcher(space, study_dir, name, args.sampler, args.seed,
                                         parse_constraints(info["constraints"]),
                                         info["sampler_args"]),
                scheduler=make_scheduler(info, study_dir),
                num_samples=info["num_samples"], max_concurrent_trials=args.max_concurrent or None,
                reuse_actors=True, trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(
                name=name, storage_path=str(study_dir.parent), verbose=int(args.verbose),
                callbacks=[tracking.logger_callback(study_dir, name, args.method, info["dataset"]),
                           CheckpointRepair(), JsonLoggerCallback(),
                           StudyConsole(list(space.search), info["num_samples"])],
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=args.max_failures)))
    print(f"study {name}: {args.method} on {info['dataset']}, {info['num_samples']} trials; "
          f"folder {study_dir}" + ("" if args.verbose else
                                   f"; libraries' output in {layout.search_log(study_dir)}"),
          flush=True)
    if mode == "offline":
        print(f"W&B is offline (no credentials): runs go to {layout.wandb_dir(study_dir)}; sync "
              f"them later with `wandb sync {layout.wandb_dir(study_dir)}/offline-run-*`", flush=True)
    results = tuner.fit()
    if watch.full.is_set():  # noticed as Ray returned: nothing more is written
        raise DiskFull("a disk filled")
    # trials an interrupted run left (a signal stopped Ray), started or not, by Ray's last snapshot
    statuses = layout.snapshot_trials(study_dir)
    left = 0 if statuses is None else info["num_samples"] - sum(
        status in ("TERMINATED", "ERROR") for status in statuses.values())
    reconciled = reconcile_optuna(study_dir, name)
    if summarize is not None:
        print()
        print(summarize(study_dir))
    print(f"\n{len(results)} trials, {len(results.errors)} failed"
          + (f", {reconciled} Optuna trials reconciled with Ray's" if reconciled else "")
          + f". Study folder: {study_dir}")
    print(f"Optuna storage: {layout.storage_url(study_dir)} (optuna-dashboard can open it)")
    print(f"W&B ({mode}): runs in group {name!r} under {layout.wandb_dir(study_dir)}")
    if left > 0:  # Optuna keeps the trials Ray stopped RUNNING: the resume ends them
        received = signal.Signals(terminated[-1] if terminated else signal.SIGINT)
        print(f"interrupted ({received.name}): {left} trial{'s' if left != 1 else ''} left; "
              f"continue the study with `{resume}`", flush=True)
        return 128 + received.value
    return 0


def _finished_trials(study_dir: Path) -> int:
    """Trials whose last report ended them (kept whatever happens to the driver)."""
    from study.outcome import outcome

    ended = 0
    for _, trial_dir in layout.trial_dirs(study_dir):
        rows = layout.trial_history(trial_dir)
        ended += bool(rows) and outcome(rows[-1]) != "running"
    return ended


def settings_text(method: str, space_file: str | None = None) -> str:
    """`--settings`: every setting of a trial of `method` (study.config.TrialConfig and the
    method's Config) with its default, admissible values and help, and what the search space
    searches."""
    space = load_space(method, space_file)  # checks the method's name as a study does
    config = METHODS[method].Config
    return (f"settings of every trial (study.config.TrialConfig):\n{describe(TrialConfig)}\n\n"
            f"settings of {method} ({config.__module__}.{config.__name__}):\n{describe(config)}\n\n"
            f"searched by {space_file or f'search_spaces/{method}.yaml'} (--space, --set change "
            f"it): {', '.join(space.search) or 'nothing'}")


def main(argv: list[str] | None = None, summarize: Summarize | None = None) -> int:
    """`prunestudy search`; `summarize` (given by study.cli: analysis's end-of-study summary) is
    printed once the study ends."""
    args = parse_args(argv)
    # each checkpoint (num_to_keep=1) forces an experiment snapshot: by design (--checkpoint-every)
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # a diverged trial's last report has no objectives (Optuna records it as pruned): allowed
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # of Ray's default loggers only the JSON one (result.json, params.json) is read: no CSV or
    # TensorBoard files written at every report
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    if not args.verbose:  # Ray's newer console output prints its heading even when silent
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    try:
        if args.settings:
            print(settings_text(args.method, args.space))
            return 0
        return run(args, summarize)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # as `prunestudy search`, through the composition root (its summary)
    from study.cli import main as cli_main

    sys.exit(cli_main(["search", *sys.argv[1:]]))
