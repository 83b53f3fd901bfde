"""The metric vocabulary: one name, direction and meaning per metric, for Ray, Optuna, W&B and
analysis (as lm-evaluation-harness's registry declares `higher_is_better` beside each metric);
and the one pure `accuracy`.

Method diagnostics live under their method's prefix (`vae/`, `reparam/`, `importance/`) and are
described in the README; the names here are the ones every trial reports.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from study.data import batches


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool | None  # None: not a quality (a count, a time, a label)
    help: str
    test_split: bool = False  # measured on the test split: reported, never chooses anything


VOCABULARY = {m.name: m for m in (
    Metric("epoch", None, "epochs done (1-based)"),
    Metric("phase", None, "the method's phase of this epoch"),
    Metric("loss", False, "mean training loss of the epoch (the method's total)"),
    Metric("val_accuracy", True, "accuracy on the fixed 10% validation split"),
    Metric("test_accuracy", True, "accuracy on the test split, once at the end; never optimized",
           test_split=True),
    Metric("sparsity", True, "1 - nonzero parameters / parameters of the dense architecture"),
    Metric("prunable_sparsity", True, "the same over conv and linear weights only"),
    Metric("params", False, "parameters of the inference model"),
    Metric("nonzero_params", False, "its nonzero parameters"),
    Metric("compressed_bytes", False, "gzip of its saved weights"),
    Metric("flops", False, "2 x multiply-accumulates of nonzero weights per sample"),
    Metric("dense_flops", None, "the same for the dense architecture"),
    Metric("dense_params", None, "parameters of the dense architecture (sparsity's denominator; "
           "trials compared must share it)"),
    Metric("num_classes", None, "classes of the trial's labels (chance accuracy is 1 / it)"),
    Metric("epoch_seconds", None, "training seconds of the epoch (evaluation excluded)"),
    Metric("eval_seconds", None, "seconds of the epoch's evaluation (validation; test at the end)"),
    Metric("size_seconds", None, "seconds of the epoch's size metrics"),
    Metric("rung_seconds", None, "(--scheduler mo-asha) seconds of the rung objectives, at rungs"),
    Metric("diagnostics_seconds", None, "seconds of the method's end-of-epoch diagnostics"),
    Metric("save_seconds", None, "seconds to save the previous epoch's state, when it was "
           "checkpointed (--checkpoint-every)"),
    Metric("report_seconds", None, "seconds to report the previous epoch to Ray (which persists "
           "its checkpoint, if any)"),
    Metric("diverged", None, "1 when the loss became NaN or infinite (the trial ended)"),
    Metric("total_epochs", None, "epochs in the trial's schedule"),
    Metric("dead_network", None, "1 when the method reports its network can no longer learn "
           "(e.g. reparam: every apparent weight is zero)"),
    Metric("degenerate", None, "1 when the trial ended early as degenerate: chance accuracy for "
           "`degenerate_epochs` epochs, or a dead network (the trial ended)"),
    Metric("degenerate_reason", None, "why it was degenerate, in words"),
    Metric("rung/val_accuracy", True, "(--scheduler mo-asha) at a rung epoch: validation accuracy "
           "of the method's probe, its network pruned to the final target without fine-tuning"),
    Metric("rung/sparsity", True, "(--scheduler mo-asha) at a rung epoch: the probe's sparsity"),
)}

# the metrics measured on the test split: reported beside, never an input to a decision
TEST_METRICS = frozenset(m.name for m in VOCABULARY.values() if m.test_split)


def on_test_split(name: str) -> bool:
    """Whether metric `name` is measured on the test split: in TEST_METRICS, or a method's
    diagnostic named `test_*` under its prefix (e.g. `vae/test_accuracy`)."""
    return name in TEST_METRICS or ("/" in name and name.rsplit("/", 1)[1].startswith("test_"))


def check_selectable(name: str, where: str) -> str:
    """`name`, if it may choose something (a constraint, an objective, a knee, an export
    criterion); a metric of the test split: a one-line study.config.ConfigError starting with
    `where` (e.g. "--constraint 'test_accuracy>=0.9'"). The one place that decides it: the test
    split never chooses anything (DESIGN.md)."""
    if on_test_split(name):
        from study.config import ConfigError  # study.config imports this module

        raise ConfigError(f"{where}: {name} is measured on the test split, which never chooses "
                          "anything (constraints, objectives, knees, exports); use val_accuracy")
    return name


# what the search optimizes, both maximized: (accuracy, sparsity) fronts everywhere
OBJECTIVES = ("val_accuracy", "sparsity")
# what multi-objective successive halving ranks trials on at a rung (study.scheduler), maximized
RUNG_OBJECTIVES = ("rung/val_accuracy", "rung/sparsity")
# the Optuna user attribute of a trial stopped at a rung: its rung epoch
STOPPED_ATTR = "stopped_at_epoch"
# a finished trial's headline figures: retraining summaries, export provenance
FINAL = ("val_accuracy", "test_accuracy", "sparsity", "prunable_sparsity", "params", "nonzero_params",
         "compressed_bytes", "flops")


# a trial's accuracy within this of chance (1 / classes) is chance-level: the trainable ends such
# trials early (setting `chance_margin`), and fronts and exports leave complete ones out
CHANCE_MARGIN = 0.02


def near_chance(accuracy: float, num_classes: int, margin: float = CHANCE_MARGIN) -> bool:
    """Whether `accuracy` is at most chance (1 / num_classes) plus `margin`."""
    return accuracy <= 1.0 / num_classes + margin


def mode(name: str) -> str:
    """Ray/Optuna's direction of a metric: 'max' or 'min'."""
    better = VOCABULARY[name].higher_is_better
    if better is None:
        raise ValueError(f"metric {name!r} has no direction: it cannot be optimized")
    return "max" if better else "min"


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Fraction of correctly classified samples (eval mode; a pure function of weights and data)."""
    was_training = model.training
    model.eval()
    correct = sum(int((model(xb).argmax(dim=1) == yb).sum()) for xb, yb in batches(x, y, batch_size))
    model.train(was_training)
    return correct / max(len(y), 1)
