"""Typed settings: dataclasses whose defaults are the papers' settings, checked with precise errors.

A trial's config is one flat dict: the common settings of `TrialConfig` plus those of its method's
config class. Each field declares its help text and its admissible values (a closed range or a set
of choices) once, in `setting(...)`; search spaces and `--set` are checked against the same.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from study.metrics import CHANCE_MARGIN

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # what str.splitlines() splits at


def one_line(text: str) -> str:
    """`text` with line breaks and other control characters written as escapes (`\\n`): an error
    message stays one line whatever the bad value it quotes (a path, a --set value) holds."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class ConfigError(ValueError):
    """A bad setting; the message is one line naming the key and the value."""

    def __str__(self) -> str:
        return one_line(super().__str__())


YAML_LIMIT = 1 << 20  # bytes: search spaces and exported configs are a few kB
# libyaml's parser where PyYAML has it (its wheels do): it refuses nesting past 1,000 levels at
# once, where the pure-Python parser's time grows faster than the square of the depth (3,000
# brackets: 7 s; a 100 kB --set value: hours) before it ends in a RecursionError
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# |int setting| at most this: Optuna holds every parameter as a float, exact to 2**53
INT_LIMIT = 2**53

# settings renamed so that no setting shares a name with a metric: old name -> new name
RENAMED = {"sparsity": "layer_sparsity"}


# settings whose role another took, so configs of older studies (exports, re-runs) say what to set
REPLACED = {"recovery_epochs": "importance's 'epochs' is now the trial's total budget: the rounds "
                               "fit inside it and the rest is recovery, spread over the rounds",
            "ce_reduction": "beta_vae's cross-entropy weight no longer depends on the batch size: "
                            "set 'ce_weight' (sum at batch B = ce_weight B; mean = ce_weight 1)"}


def check_not_renamed(key: str) -> None:
    if key in RENAMED:
        raise ConfigError(f"setting {key!r} is now {RENAMED[key]!r} ({key!r} is the metric "
                          f"measured on the whole model)")
    if key in REPLACED:
        raise ConfigError(f"setting {key!r} is gone: {REPLACED[key]}")


def setting(default: Any, help: str, low: float | None = None, high: float | None = None,
            choices: tuple | None = None) -> Any:
    """A dataclass field with its help and admissible values (low <= value <= high, or in choices)."""
    return dataclasses.field(default=default, metadata={
        "help": help, "low": low, "high": high, "choices": choices})


@dataclass(frozen=True)
class TrialConfig:
    """Settings every trial has, whatever its method."""
    method: str = setting("beta_vae", "pruning method (study.methods.METHODS)")
    dataset: str = setting("mnist", "dataset name (study.data.DATASETS) or folder:PATH")
    seed: int = setting(0, "seeds model init, batch order and sampling", low=0,
                        high=2**32 - 1)  # NumPy's seeds (np.random.seed) end there
    batch_size: int = setting(128, "training batch size (samples)", low=1)
    eval_batch_size: int = setting(128, "evaluation batch size (samples); no effect on results "
                                   "(on a CPU 128 decodes 2x faster than 256, 5x than 1024, "
                                   "measured; raise it on a GPU)", low=1)
    train_subset: int = setting(0, "train on this many samples of the training split (0: all)", low=0)
    augment: str = setting("auto", "training batches only: crop_flip = zero-pad 4 px, random crop "
                           "back to size, random horizontal flip, per image, drawn from the "
                           "seed; none; auto = crop_flip on cifar10 and cifar10_jpeg, none on "
                           "every other dataset (folder:PATH included)",
                           choices=("auto", "none", "crop_flip"))
    label_factor: str = setting("", "class label from this generative factor, for datasets that have "
                                "them (dsprites: shape, scale, orientation, pos_x, pos_y); '': the "
                                "dataset's own label (dsprites: shape)")
    degenerate_epochs: int = setting(2, "consecutive epochs at chance validation accuracy, counted "
                                     "from the second epoch, that end a trial early as "
                                     "degenerate, as does a dead network at any epoch (0: never "
                                     "end early)", low=0)
    chance_margin: float = setting(CHANCE_MARGIN, "validation accuracy within this of chance "
                                   "(1 / classes) counts as chance", low=0.0, high=1.0)
    device: str = setting("auto", "auto: CUDA when the trial holds a GPU, else CPU",
                          choices=("auto", "cpu", "cuda"))
    rung_epochs: str = setting("", "epochs (comma-separated) after which the trial also reports its "
                               "rung objectives rung/val_accuracy and rung/sparsity, those of its "
                               "method's probe (study.scheduler; set by --scheduler mo-asha); '': none")


def fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def check_value(cls, key: str, value: Any) -> Any:
    """Coerce `value` to the field's type and check it is admissible; returns the coerced value."""
    field = fields(cls).get(key)
    if field is None:
        raise ConfigError(f"unknown setting {key!r} for {cls.__name__}; known: {', '.join(fields(cls))}")
    kind = get_type_hints(cls)[key]
    meta = field.metadata
    try:
        if kind is bool:
            if not isinstance(value, bool):
                raise TypeError
        elif kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            value = int(value)
        elif kind is float:
            if isinstance(value, bool):
                raise TypeError
            value = float(value)
        elif kind is str:
            if not isinstance(value, str):
                raise TypeError
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int past float's range
        raise ConfigError(f"setting {key!r} must be {kind.__name__}, got {value!r}") from None
    if kind is int and abs(value) > INT_LIMIT:
        raise ConfigError(f"setting {key!r} must be within +-2**53, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"setting {key!r} must be finite, got {value!r}")
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise ConfigError(f"setting {key!r} must be one of {list(meta['choices'])}, got {value!r}")
    low, high = meta.get("low"), meta.get("high")
    if low is not None and value < low or high is not None and value > high:
        raise ConfigError(f"setting {key!r} must be in [{low}, {high}], got {value!r}")
    return value


def build(cls, values: dict[str, Any]):
    """An instance of `cls` from the keys of `values` it declares (checked); the rest are ignored."""
    own = fields(cls)
    return cls(**{k: check_value(cls, k, v) for k, v in values.items() if k in own})


def describe(cls) -> str:
    """One line per setting: name, type, default, admissible values, help (`prunestudy search
    METHOD --settings`)."""
    hints = get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        m = f.metadata
        low, high = m.get("low"), m.get("high")
        allowed = (f", one of {', '.join(map(repr, m['choices']))}" if m.get("choices") else
                   f", in [{low}, {high}]" if low is not None and high is not None else
                   f", >= {low}" if low is not None else f", <= {high}" if high is not None else "")
        lines.append(f"  {f.name}: {hints[f.name].__name__} = {f.default!r}{allowed}: "
                     f"{m.get('help', '')}")
    return "\n".join(lines)


def load_yaml(text: str | bytes) -> Any:
    """A YAML document read with the safe loader: no code runs, only plain values are built."""
    return yaml.load(text, Loader=_YAML_LOADER)


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """A YAML file read with the safe loader (no code runs) that must hold a mapping; any problem
    is a one-line ConfigError naming `what` and the path. Only a regular file of at most
    YAML_LIMIT bytes is read: a FIFO or /dev/stdin would wait forever, /dev/zero would never end."""
    problem = None
    try:
        info = os.stat(path)  # before opening: opening a FIFO waits for a writer
        if not stat.S_ISREG(info.st_mode):
            problem = "not a regular file"
        elif info.st_size > YAML_LIMIT:
            problem = f"{info.st_size} bytes, more than {YAML_LIMIT} for a YAML file of settings"
        else:
            text = Path(path).read_bytes()[:YAML_LIMIT]
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        problem = getattr(e, "strerror", None) or str(e)
    if problem:
        raise ConfigError(f"cannot read {what} {path}: {problem}")
    try:
        doc = load_yaml(text)  # bytes: PyYAML checks the encoding (a YAMLError)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{what} {path} is not valid YAML: {problem}{where}") from None
    except (ValueError, RecursionError) as e:  # an integer past Python's 4300 digits; deep nesting
        raise ConfigError(f"{what} {path} is not valid YAML: {type(e).__name__}: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{what} {path} must be a mapping")
    return doc
