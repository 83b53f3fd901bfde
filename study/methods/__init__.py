"""Registry of pruning methods: name -> class implementing study.methods.base.Method.

`register` checks a method's declaration when the package is imported, so a method that leaves
something out fails there, with a message saying what to add, not in the middle of a study. What
the harness derives from the declaration: the metric prefixes `--constraint` accepts
(`metric_prefixes`), the settings fronts are grouped by (`architecture`, `variant_settings`), the
phases whose chance accuracy the degenerate rule does not count (`chance_rule_skips`: a tuple of
phase names, checked against `schedule()` when a trial starts), the networks laid out on the
device (`networks()`), MO-ASHA's rung probe (`probe_model()`) and the networks each method runs
on (`supported_models`: its architecture setting's choices).
"""
from __future__ import annotations

import dataclasses

from study.config import TrialConfig, fields
from study.methods.base import Method
from study.methods.beta_vae import BetaVAE
from study.methods.control import Control
from study.methods.importance import Importance
from study.methods.magnitude import Magnitude
from study.methods.reparam import Reparam
from study.metrics import VOCABULARY

# the trainable's own prefixes: loss terms (`train/ce`) and MO-ASHA's rung objectives (`rung/...`)
TRAINABLE_PREFIXES = ("train/", "rung/")

# what each member of the interface is for, said when a class lacks it
_MEMBERS = {
    "schedule": "its phases in order, with their number of epochs",
    "begin_epoch": "before an epoch's training pass; False skips it",
    "loss_terms": "the loss of one batch, `loss` and any terms to report beside it",
    "end_pass": "after the training pass, before evaluation; returns metrics",
    "inference_model": "the network the trainable evaluates and counts",
    "end_epoch": "after evaluation: its diagnostics under its metric_prefix",
    "state_dict": "everything needed to continue after any epoch",
    "load_state_dict": "restores what state_dict returned",
    "networks": "every network it holds, by attribute name, the inference model's among them",
    "probe_model": "return None when the network as it is is its final state",
}

METHODS: dict[str, type[Method]] = {}


def register(cls: type, name: str) -> type:
    """Add `cls` to METHODS as `name` once its declaration (study.methods.base.Method) holds;
    otherwise a TypeError saying what to add."""
    where = f"method {name!r} ({cls.__name__})"
    if name in METHODS:
        raise TypeError(f"{where}: the name is taken by {METHODS[name].__name__}")
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)
            and config.__dataclass_params__.frozen):
        raise TypeError(f"{where}: Config must be a frozen dataclass of study.config.setting fields "
                        "(@dataclass(frozen=True) class MyConfig: x: float = setting(...))")
    settings = {f.name: f for f in dataclasses.fields(config)}
    for key, field in settings.items():
        if "help" not in field.metadata:
            raise TypeError(f"{where}: Config field {key!r} is not a study.config.setting "
                            "(declare it with setting(default, help, ...))")
        if key in {f.name for f in dataclasses.fields(TrialConfig)} or key in VOCABULARY:
            raise TypeError(f"{where}: Config setting {key!r} shares its name with a trial setting "
                            "or a metric (study.config.TrialConfig, study.metrics.VOCABULARY); "
                            "rename it")
    architecture = getattr(cls, "architecture", None)
    if architecture not in settings:
        raise TypeError(f"{where}: `architecture` = {architecture!r} names no setting of its Config; "
                        "add `architecture = 'NAME'`, NAME the setting whose value names its network "
                        f"(fronts are grouped by it), one of {sorted(settings)}")
    variants = getattr(cls, "variant_settings", None)
    if not isinstance(variants, tuple) or any(v not in settings or v == architecture for v in variants):
        raise TypeError(f"{where}: `variant_settings` = {variants!r} must be a tuple of settings of "
                        "its Config other than its architecture, those whose values make another "
                        "procedure (fronts hold one value of each; () when none), from "
                        f"{sorted(settings)}")
    skips = getattr(cls, "chance_rule_skips", None)
    if not isinstance(skips, tuple) or not all(isinstance(p, str) and p for p in skips):
        raise TypeError(f"{where}: `chance_rule_skips` = {skips!r} must be a tuple of phase names "
                        "(those of schedule()) whose epochs at chance validation accuracy the "
                        "degenerate rule does not count, because chance there is what the study "
                        "measures (beta_vae: ('train',), its VAE phase); () when none")
    prefix = getattr(cls, "metric_prefix", None)
    taken = [*metric_prefixes(), *TRAINABLE_PREFIXES]
    # unique: no prefix may start another's either ('vae/end/' would read as beta_vae's)
    if (not isinstance(prefix, str) or not prefix.endswith("/") or len(prefix) < 2
            or any(prefix.startswith(p) or p.startswith(prefix) for p in taken)
            or any(metric.startswith(prefix) for metric in VOCABULARY)):
        raise TypeError(f"{where}: `metric_prefix` = {prefix!r}: metric_prefix must end with '/' "
                        f"and be unique (e.g. metric_prefix = '{name}/'); taken: {taken}")
    for member, purpose in _MEMBERS.items():
        if not callable(getattr(cls, member, None)):
            raise TypeError(f"{where}: missing `{member}()` ({purpose})")
    METHODS[name] = cls
    return cls


def metric_prefixes() -> tuple[str, ...]:
    """Every registered method's metric_prefix, in registration order."""
    return tuple(cls.metric_prefix for cls in METHODS.values())


def supported_models() -> dict[str, list[str]]:
    """method -> the models it runs on, in registration order: the choices of the setting its
    `architecture` names (README's "Which method runs on which network" table is this)."""
    return {name: list(fields(cls.Config)[cls.architecture].metadata["choices"])
            for name, cls in METHODS.items()}


register(BetaVAE, "beta_vae")
register(Importance, "importance")
register(Reparam, "reparam")
register(Magnitude, "magnitude")
register(Control, "control")
