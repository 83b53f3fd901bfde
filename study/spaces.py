"""Search spaces: `search_spaces/<method>.yaml` read (safely), checked, and turned into Optuna
distributions for OptunaSearch.

    method: beta_vae
    fixed:                      # settings every trial gets
      epochs: 3
    search:                     # searched settings, one distribution each
      beta: {distribution: loguniform, low: 0.1, high: 20}
      latent_dim: {distribution: categorical, choices: [2, 4, 8, 16]}

Distributions: uniform, loguniform (float settings), int, logint (int settings), low/high
inclusive, an optional step dividing high - low for uniform and int; and categorical (choices,
each once). Every key must be a setting of the trial or of the method, and every bound or choice
an admissible value of that setting. `check_trials` then checks that the space's trials can start.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import optuna.distributions as od
import torch
import yaml

from study import config as cfgmod
from study.config import ConfigError, TrialConfig
from study.data import DataError, Dataset
from study.methods import METHODS
from study.methods.base import DataInfo
from study.trainable import parse_config

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
_BOUNDED = {"uniform", "loguniform", "int", "logint"}
_ENTRY_KEYS = {"distribution", "low", "high", "step", "choices"}
PROBES = 8  # configurations of a space drawn (seeded) by check_trials to see its trials can run


@dataclass
class StudySpace:
    method: str
    fixed: dict[str, Any] = field(default_factory=dict)
    search: dict[str, od.BaseDistribution] = field(default_factory=dict)

    def set(self, key: str, value: Any) -> None:
        """Fix `key` (searched or not) to `value`, checked like any setting."""
        self.fixed[key] = _check(self.method, key, value)
        self.search.pop(key, None)

    def fill_defaults(self) -> None:
        """Fix every setting neither fixed nor searched to its default, so each trial's config
        (params.json, W&B, exports) holds every setting it ran with, defaults included."""
        for cls in (TrialConfig, METHODS[self.method].Config):
            for name, f in cfgmod.fields(cls).items():
                if name not in self.search:
                    self.fixed.setdefault(name, f.default)


def default_space_file(method: str) -> Path:
    return SPACES_DIR / f"{method}.yaml"


def _setting_class(method: str, key: str):
    if key == "method":
        raise ConfigError("'method' is chosen on the command line, not in a search space")
    cfgmod.check_not_renamed(key)
    if key in cfgmod.fields(TrialConfig):
        return TrialConfig
    method_cls = METHODS[method].Config
    if key in cfgmod.fields(method_cls):
        return method_cls
    known = sorted((set(cfgmod.fields(TrialConfig)) | set(cfgmod.fields(method_cls))) - {"method"})
    raise ConfigError(f"unknown setting {key!r} for method {method}; known: {', '.join(known)}")


def _check(method: str, key: str, value: Any) -> Any:
    return cfgmod.check_value(_setting_class(method, key), key, value)


def _distribution(method: str, key: str, entry: Any) -> od.BaseDistribution:
    where = f"search space entry {key!r}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a mapping with 'distribution', got {entry!r}")
    extra = set(entry) - _ENTRY_KEYS
    if extra:
        raise ConfigError(f"{where} has unknown field {sorted(extra, key=repr)[0]!r}; allowed: "
                          f"{', '.join(sorted(_ENTRY_KEYS))}")
    kind = entry.get("distribution")
    if kind == "categorical":
        choices = entry.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: categorical needs a non-empty list 'choices', got {choices!r}")
        choices = [_check(method, key, c) for c in choices]
        twice = [c for i, c in enumerate(choices) if c in choices[:i]]
        if twice:  # the sampler would draw it twice as often
            raise ConfigError(f"{where}: choice {twice[0]!r} is listed twice")
        return od.CategoricalDistribution(choices)
    if not isinstance(kind, str) or kind not in _BOUNDED:
        raise ConfigError(f"{where}: unknown distribution {kind!r}; use one of "
                          f"{', '.join(sorted(_BOUNDED | {'categorical'}))}")
    if "low" not in entry or "high" not in entry:
        raise ConfigError(f"{where}: {kind} needs 'low' and 'high'")
    low, high = _check(method, key, entry["low"]), _check(method, key, entry["high"])
    if not isinstance(low, (int, float)) or isinstance(low, bool):
        raise ConfigError(f"{where}: setting {key!r} is not numeric; use a categorical distribution")
    if low >= high:
        raise ConfigError(f"{where}: low must be below high, got low={low!r} high={high!r}")
    log = kind.startswith("log")
    if log and low <= 0:
        raise ConfigError(f"{where}: {kind} needs low > 0, got {low!r}")
    integer = kind in ("int", "logint")
    if integer != isinstance(low, int):  # a float drawn for an int setting fails every trial
        raise ConfigError(f"{where}: setting {key!r} is {type(low).__name__}: use "
                          f"{'int or logint' if isinstance(low, int) else 'uniform or loguniform'}, "
                          f"not {kind}")
    step = entry.get("step")
    if step is not None:
        if log or isinstance(step, bool) or not isinstance(step, int if integer else (int, float)) \
                or not 0 < step <= high - low:
            raise ConfigError(f"{where}: step must be a positive {'integer' if integer else 'number'} "
                              f"no larger than high - low, and not used with {kind}; got {step!r}")
        try:  # Optuna's own arithmetic (decimal): otherwise it moves `high` with a warning
            divides = (Decimal(str(high)) - Decimal(str(low))) % Decimal(str(step)) == 0
        except ArithmeticError:
            divides = False
        if not divides:
            raise ConfigError(f"{where}: step {step!r} must divide high - low ({low!r} to {high!r})")
    if integer:
        return od.IntDistribution(low, high, log=log, step=step or 1)
    return od.FloatDistribution(float(low), float(high), log=log,
                                step=None if step is None else float(step))


def load_space(method: str, path: str | Path | None = None) -> StudySpace:
    """Read and check a search space file (default: search_spaces/<method>.yaml)."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    path = Path(path) if path is not None else default_space_file(method)
    doc = cfgmod.read_yaml_mapping(path, "search space")
    extra = set(doc) - {"method", "fixed", "search"}
    if extra:
        raise ConfigError(f"search space {path}: unknown top-level key {sorted(extra, key=repr)[0]!r}")
    if doc.get("method", method) != method:
        raise ConfigError(f"search space {path} is for method {doc['method']!r}, not {method!r}")
    fixed, search = doc.get("fixed") or {}, doc.get("search") or {}
    if not isinstance(fixed, dict) or not isinstance(search, dict):
        raise ConfigError(f"search space {path}: 'fixed' and 'search' must be mappings")
    both = sorted(set(fixed) & set(search), key=repr)
    if both:
        raise ConfigError(f"search space {path}: {both[0]!r} is both fixed and searched")
    space = StudySpace(method)
    for key, value in fixed.items():
        space.fixed[key] = _check(method, key, value)
    for key, entry in search.items():
        space.search[key] = _distribution(method, key, entry)
    return space


def parse_assignment(text: str, flag: str = "--set") -> tuple[str, Any]:
    """`key=value` from --set (or `flag`); the value is read as YAML (numbers, booleans, strings)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{flag} expects key=value, got {text!r}")
    try:
        value = cfgmod.load_yaml(raw) if raw.strip() else raw
    except (yaml.YAMLError, ValueError, RecursionError):  # not YAML (an integer of 5000 digits,
        value = raw  # deep nesting): the text itself, checked as any value
    return key.strip(), value


def _draw(dist: od.BaseDistribution, rng: random.Random) -> Any:
    """A value of `dist` drawn from `rng` (Optuna's samplers need a study; this needs nothing)."""
    if isinstance(dist, od.CategoricalDistribution):
        return rng.choice(dist.choices)
    low, high = dist.low, dist.high
    if dist.log:
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
    elif getattr(dist, "step", None):
        value = low + rng.randint(0, round((high - low) / dist.step)) * dist.step
    else:
        value = rng.uniform(low, high)
    value = min(max(value, low), high)
    return round(value) if isinstance(dist, od.IntDistribution) else value


def check_trials(space: StudySpace, data: Dataset, gpus_per_trial: float = 0.0,
                 probes: int = PROBES) -> None:
    """ConfigError unless every one of `probes` configurations drawn from the space (seeded: the
    same verdict every time) makes a trial that can start: its settings as the trainable parses
    them (the methods' cross-checks among them: magnitude's finetune_epochs < epochs, importance's
    rounds within its epochs), its method built for `data`'s images (on the meta device: no
    memory used), a schedule with an epoch to train, a device it is given. Otherwise every
    such trial would fail, retried from nothing --max-failures times, after the study had begun."""
    rng = random.Random(0)
    for _ in range(probes if space.search else 1):
        drawn = {k: _draw(d, rng) for k, d in space.search.items()}
        try:
            trial, method_cfg = parse_config({**space.fixed, **drawn})
            if trial.device == "cuda" and not gpus_per_trial > 0:
                raise ConfigError("setting 'device' = 'cuda' needs --gpus-per-trial above 0: a trial "
                                  "holds no GPU otherwise")
            if trial.rung_epochs:
                from study.scheduler import parse_rung_epochs  # imports Ray: only when rungs are set

                parse_rung_epochs(trial.rung_epochs)
            labelled = data.with_label(trial.label_factor)
            info = DataInfo(labelled.input_shape, labelled.num_classes, labelled.mean, labelled.std)
            method = METHODS[trial.method](method_cfg, info, torch.device("meta"))
            if not any(n > 0 for _, n in method.schedule()):
                raise ConfigError(f"method {trial.method} has no epoch to train: its schedule is "
                                  f"{method.schedule()}")
        except Exception as e:  # whatever would stop the trial at its start stops the study now
            what = str(e) if isinstance(e, ConfigError | DataError) else f"{type(e).__name__}: {e}"
            values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v!r}"
                               for k, v in drawn.items())
            at = f" (searched: {values})" if drawn else ""
            raise ConfigError(f"a trial of this search space cannot run{at}: {what}") from None
