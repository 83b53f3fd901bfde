"""Search spaces: `search_spaces/<method>.yaml` read (safely), checked, and turned into Optuna
distributions for OptunaSearch.

    method: beta_vae
    fixed:                      # settings every trial gets
      epochs: 3
    search:                     # searched settings, one distribution each
      beta: {distribution: loguniform, low: 0.1, high: 20}
      latent_dim: {distribution: categorical, choices: [2, 4, 8, 16]}

Distributions: uniform, loguniform, int, logint (low/high inclusive, optional step for uniform
and int) and categorical (choices). Every key must be a setting of the trial or of the method, and
every bound or choice an admissible value of that setting.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna.distributions as od
import yaml

from study import config as cfgmod
from study.config import ConfigError, TrialConfig
from study.methods import METHODS

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
_BOUNDED = {"uniform", "loguniform", "int", "logint"}
_ENTRY_KEYS = {"distribution", "low", "high", "step", "choices"}


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
        raise ConfigError(f"{where} has unknown field {sorted(extra)[0]!r}; allowed: "
                          f"{', '.join(sorted(_ENTRY_KEYS))}")
    kind = entry.get("distribution")
    if kind == "categorical":
        choices = entry.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: categorical needs a non-empty list 'choices', got {choices!r}")
        return od.CategoricalDistribution([_check(method, key, c) for c in choices])
    if kind not in _BOUNDED:
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
    step = entry.get("step")
    if step is not None and (log or not isinstance(step, (int, float)) or step <= 0):
        raise ConfigError(f"{where}: step must be a positive number and not used with {kind}")
    if kind in ("int", "logint"):
        if not isinstance(low, int):
            raise ConfigError(f"{where}: {kind} needs an integer setting; {key!r} is "
                              f"{type(low).__name__}")
        return od.IntDistribution(low, high, log=log, step=int(step or 1))
    return od.FloatDistribution(float(low), float(high), log=log, step=step)


def load_space(method: str, path: str | Path | None = None) -> StudySpace:
    """Read and check a search space file (default: search_spaces/<method>.yaml)."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    path = Path(path) if path is not None else default_space_file(method)
    doc = cfgmod.read_yaml_mapping(path, "search space")
    extra = set(doc) - {"method", "fixed", "search"}
    if extra:
        raise ConfigError(f"search space {path}: unknown top-level key {sorted(extra)[0]!r}")
    if doc.get("method", method) != method:
        raise ConfigError(f"search space {path} is for method {doc['method']!r}, not {method!r}")
    fixed, search = doc.get("fixed") or {}, doc.get("search") or {}
    if not isinstance(fixed, dict) or not isinstance(search, dict):
        raise ConfigError(f"search space {path}: 'fixed' and 'search' must be mappings")
    both = sorted(set(fixed) & set(search))
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
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw
    return key.strip(), value
