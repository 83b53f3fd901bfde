"""A study's terms: the configuration every one of its trials runs with, from its study.json.

A trial's config is the study's fixed settings (study.json `fixed`: every setting not searched,
defaults included) plus one value of each searched setting, inside its distribution (study.json
`search`). Ray builds new trials' configs from the experiment it restores and old trials' from
its snapshot, so a restore that lost part of that state (a full disk, a cut-short snapshot) could
run a trial with its method's defaults inside a study of other settings: the trainable checks each
trial against the terms before it trains (`StudyTerms.check`), and fails it naming the key.
"""
from __future__ import annotations

import ast
import json
import math
from dataclasses import dataclass
from typing import Any

import optuna.distributions as od

from study.config import ConfigError

_DISTRIBUTIONS = {c.__name__: c for c in (od.FloatDistribution, od.IntDistribution,
                                          od.CategoricalDistribution)}


def read_distribution(text: str) -> od.BaseDistribution:
    """A distribution as study.json records it, its repr (`FloatDistribution(high=20.0, log=True,
    low=1.0, step=None)`), read back from its literal keyword arguments, never evaluated."""
    try:
        call = ast.parse(text, mode="eval").body
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                and call.func.id in _DISTRIBUTIONS and not call.args):
            raise ValueError(text)
        return _DISTRIBUTIONS[call.func.id](**{k.arg: ast.literal_eval(k.value) for k in call.keywords})
    except (SyntaxError, ValueError, TypeError):
        raise ConfigError(f"cannot read the search distribution {text!r}") from None


def contains(dist: od.BaseDistribution, value: Any) -> bool:
    """Whether `value` is one Optuna could have drawn from `dist` (a choice of its own kind, or a
    number within the bounds, on the step)."""
    if isinstance(dist, od.CategoricalDistribution):
        return any(c == value and isinstance(c, bool) == isinstance(value, bool)  # True is not 1
                   for c in dist.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    if isinstance(dist, od.IntDistribution) and not float(value).is_integer():
        return False
    if not dist.low <= value <= dist.high:
        return False
    step = getattr(dist, "step", None)
    if not step:
        return True
    steps = (value - dist.low) / step
    return math.isclose(steps, round(steps), abs_tol=1e-8)


def _plain(value: Any) -> Any:
    """A value as JSON holds it (tuples as lists), so that a config and study.json compare."""
    return json.loads(json.dumps(value))


@dataclass(frozen=True)
class StudyTerms:
    fixed: dict[str, Any]
    search: dict[str, od.BaseDistribution]

    @classmethod
    def of(cls, info: dict[str, Any]) -> StudyTerms:
        """The terms recorded in a study.json (`layout.read_info`)."""
        return cls(dict(info["fixed"]), {k: read_distribution(v) for k, v in info["search"].items()})

    def check(self, config: dict[str, Any]) -> None:
        """ConfigError naming the first key in which a trial's config departs from the study's:
        a fixed setting missing or of another value, a searched one missing or outside its
        distribution, or a setting the study does not have."""
        where = "the trial's config departs from its study's (study.json)"
        for key, value in self.fixed.items():
            if key not in config:
                raise ConfigError(f"{where}: it lacks {key!r} (the study's: {value!r})")
            if _plain(config[key]) != _plain(value):
                raise ConfigError(f"{where}: {key!r} is {config[key]!r}, the study's is {value!r}")
        for key, dist in self.search.items():
            if key not in config:
                raise ConfigError(f"{where}: it lacks the searched setting {key!r}")
            if not contains(dist, config[key]):
                raise ConfigError(f"{where}: {key!r} = {config[key]!r} is outside the study's "
                                  f"search space {dist!r}")
        extra = sorted(set(config) - set(self.fixed) - set(self.search))
        if extra:
            raise ConfigError(f"{where}: {extra[0]!r} is not a setting of the study")
