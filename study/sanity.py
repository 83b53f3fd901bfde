"""The controls of pruned networks, trained (the engine side of `prunestudy sanity`; the command,
analysis/sanity.py, picks the trials and reports: analysis never trains).

A pruning method's result means something only if it beats what its mask alone, or its layer
sizes alone, give. For each pruned trial, its final network is read through its method's own API
(study.trainable.restore_method, then `inference_model()`), its kept weights counted from the
effective tensors (nonzero), and controls are trained from scratch by the `control` method
(study/methods/control.py) for the trial's scheduled epoch budget (its reported `total_epochs`:
the whole schedule, also where the trial stopped early, as reparam's early stopping may: the budget
is the schedule), with seeds trial seed + 1, ..., + N. Beside them the trial's own config is
trained again (`method`: its method's own procedure, schedule and settings) with the same seeds,
so that each control is compared with the method seed by seed; the trial itself is not compared
(the front selected it for its luck). All of it is one Ray run (study.rerun):

  method       the trial's config as it ran, with the controls' seeds (as analysis/robust.py's
               new seeds: trial seed + k), ending early by its own rules as the trial could
  shuffle      (a) Frankle et al. 2021's layerwise shuffle: the trial's final mask permuted within
               each layer (exactly its kept count per layer), fresh weights
  reinit       (b) Frankle et al. 2021's reinitialize: the trial's final mask, fresh weights
  small_dense  (c) Liu et al. 2019's Scratch-E, for structured trials (a layer smaller than the
               dense network's: neurons removed, as importance does): the smaller dense network of
               the trial's final widths, trained from scratch. There (b) is (c) (the mask of a
               smaller dense network keeps all of it), so it is run once, as (c); and (a) is a
               random mask within the dense network keeping, per layer, as many weights as the
               trial's final layer has (its density against the dense layer).

Masks go to OUT/<study>-<trial folder>.pt: {layer name: bool keep-mask} in the shapes of the dense
network (the trial's method's inference network as built, before training: the trainable's dense
reference), its layers named as in the control's network (study.models), matched in module order
with equal shapes (beta_vae's inference network names the layers of study.models' bvae_cnn
apart). For a structured trial each layer keeps its first k entries, k its kept count: a density,
only ever used shuffled. On a multi-node cluster OUT must be on storage every node reads.

Optimizer rule: the control takes the trial's `lr`, `momentum` and `weight_decay` where its method
has those settings, and its `optimizer` setting where it has one; else SGD when the method has a
`momentum` setting (reparam), else Adam (beta_vae). The rate is constant: schedules (reparam's
reduce-on-plateau and early stopping, beta_vae's fresh Adam per phase) are not carried over: an
asymmetry in the method's favour (its `method` runs keep them), which `prunestudy sanity` states.
Controls never end early (`degenerate_epochs` = 0): a mask that cannot learn is a result, measured.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from study import config as cfgmod
from study import layout
from study.config import TrialConfig
from study.data import Dataset, load_dataset
from study.methods import METHODS
from study.outcome import is_final
from study.pruning import Masks, clone, hidden_layers, make_permanent, prunable_modules
from study.rerun import rerun
from study.trainable import build_method, load_state, parse_config, restore_method

SHUFFLE, REINIT, SMALL_DENSE = "shuffle", "reinit", "small_dense"
METHOD = "method"  # the trial's own config trained again with the controls' seeds
# trial settings the controls keep (the run's data, batches, device); the seed is new, and
# controls never end early or report rungs
KEPT_TRIAL_SETTINGS = tuple(k for k in cfgmod.fields(TrialConfig)
                            if k not in ("method", "seed", "degenerate_epochs", "rung_epochs"))
# the method settings a control takes where the trial's method has them (the optimizer rule, and
# beta_vae's network)
CARRIED = ("optimizer", "lr", "momentum", "weight_decay", "latent_dim", "encoder_hidden")


class SanityError(ValueError):
    """A trial whose final network cannot be read or controlled; one line naming it."""


@dataclass(frozen=True)
class Pruned:
    """What the controls need of one pruned trial's final network; layers by the control network's
    names (the same layers in the same order as the trial's dense network: beta_vae's inference
    network and study.models' bvae_cnn name them differently)."""
    config: dict[str, Any]  # the trial's, as it ran
    base: dict[str, Any]  # the settings its controls share (control_base)
    kept: dict[str, int]  # kept (nonzero) weights per conv/linear layer of its final network
    masks: Masks  # keep-masks in the dense network's shapes (structured: first-k densities)
    widths: dict[str, int] | None  # hidden widths of its final network when neurons were removed


@dataclass(frozen=True)
class ControlRun:
    """One control of one pruned trial, or the trial's own config again (METHOD), with one seed,
    and its last report."""
    of: int  # index of the pruned trial in run_controls' `trials`
    control: str  # METHOD, SHUFFLE, REINIT or SMALL_DENSE
    seed: int
    config: dict[str, Any]
    kept: dict[str, int]  # what a control must keep per layer: the pruned trial's counts ({}: METHOD)
    report: dict[str, Any]


def control_base(config: dict[str, Any], total_epochs: int) -> dict[str, Any]:
    """The settings every control of the trial `config` shares: its network, data and budget, and
    its optimizer by the rule of this module's docstring (each setting as the trial ran it,
    defaults included)."""
    trial, method_cfg = parse_config(config)
    own = cfgmod.fields(type(method_cfg))
    base = {"method": "control", "model": getattr(method_cfg, METHODS[trial.method].architecture),
            "epochs": total_epochs, "degenerate_epochs": 0, "rung_epochs": "",
            **{k: getattr(trial, k) for k in KEPT_TRIAL_SETTINGS},
            **{k: getattr(method_cfg, k) for k in CARRIED if k in own}}
    if "optimizer" not in own:
        base["optimizer"] = "sgd" if "momentum" in own else "adam"
    return base


def _shapes(model: nn.Module) -> dict[str, torch.Size]:
    return {name: m.weight.shape for name, m in prunable_modules(model).items()}


def _built(config: dict[str, Any], data: Dataset) -> nn.Module:
    """The inference network of the trial `config` as its method builds it, before training (for a
    pruned trial: the dense architecture its sizes are counted against); the caller's random draws
    are left as they were."""
    return build_method(config, data).inference_model()


def kept_masks(model: nn.Module) -> Masks:
    """{layer: nonzero} of every conv/linear weight as the forward pass uses it (held masks
    applied: a copy made permanent)."""
    plain = clone(model)
    make_permanent(plain)
    return {name: m.weight.detach().cpu() != 0 for name, m in prunable_modules(plain).items()}


def read_pruned(trial_dir: Path, data: Dataset) -> Pruned:
    """The final network of the trial in `trial_dir` (its last checkpoint, which a complete trial
    saves at its end; the trial ran on `data`), read through its method."""
    folders = layout.checkpoints(trial_dir) if trial_dir.is_dir() else []
    state = load_state(folders[-1]) if folders else None
    if state is None or not is_final(state["metrics"]):
        raise SanityError(f"trial {trial_dir} has no final state (its last checkpoint is not the "
                          "end of its schedule)")
    config = state["config"]
    if config.get("dataset") != data.name:
        raise SanityError(f"trial {trial_dir} ran on {config.get('dataset')!r}, not {data.name!r}")
    base = control_base(config, int(state["metrics"]["total_epochs"]))
    final = restore_method(config, state, data).inference_model()
    masks = kept_masks(final)
    dense, control = _shapes(_built(config, data)), _shapes(_built(base, data))
    if list(masks) != list(dense) or list(dense.values()) != list(control.values()):
        raise SanityError(f"trial {trial_dir}: the control's {base['model']} layers "
                          f"{[tuple(s) for s in control.values()]} are not the trial's dense "
                          f"network's {[tuple(s) for s in dense.values()]}")
    rename = dict(zip(dense, control, strict=True))
    kept = {rename[name]: int(keep.sum()) for name, keep in masks.items()}
    widths = None
    if any(masks[name].shape != shape for name, shape in dense.items()):  # neurons removed
        if not isinstance(getattr(final, "head", None), nn.Sequential):
            raise SanityError(f"trial {trial_dir}: layers shrank in a network without a head of "
                              "hidden layers (study.models' FeaturesHead)")
        widths = {rename[name]: final.head[i].out_features for name, i, _ in hidden_layers(final.head)}
        masks = {name: (torch.arange(shape.numel()) < int(masks[name].sum())).view(shape)
                 for name, shape in dense.items()}  # densities only: used shuffled
    return Pruned(config, base, kept, {rename[name]: m for name, m in masks.items()}, widths)


def controls(pruned: Pruned, masks_file: Path) -> dict[str, dict[str, Any]]:
    """control name -> its settings (seed aside): (a) and (b), or (a) and (c) when structured."""
    masked = {**pruned.base, "masks": str(masks_file.resolve())}
    if pruned.widths is None:
        return {SHUFFLE: {**masked, "shuffle": True}, REINIT: masked}
    widths = ",".join(f"{name}={w}" for name, w in pruned.widths.items())
    return {SHUFFLE: {**masked, "shuffle": True}, SMALL_DENSE: {**pruned.base, "widths": widths}}


def run_controls(trials: list[Path], seeds: int, out: Path, dataset: str, data_dir: str | Path,
                 cpus: float, gpus: float, max_concurrent: int = 0,
                 address: str | None = None) -> list[ControlRun]:
    """Train the controls of each trial folder in `trials` (complete trials that ran on `dataset`)
    and the trial's own config again (METHOD), with the same `seeds` seeds each (trial seed + 1,
    ..., + seeds), in one Ray run: the masks and Ray's folders (runs/) go under `out`. Every trial
    is read, and its masks written, before anything trains (else a SanityError)."""
    data = load_dataset(dataset, data_dir)
    out.mkdir(parents=True, exist_ok=True)
    planned: list[ControlRun] = []
    for index, trial_dir in enumerate(trials):
        pruned = read_pruned(trial_dir, data)
        masks_file = out / f"{trial_dir.parent.name}-{trial_dir.name}.pt"
        torch.save(pruned.masks, masks_file)
        # the method as it ran (no rung probes: only final metrics are read), then its controls
        runs = {METHOD: ({**pruned.config, "rung_epochs": ""}, {}),
                **{name: (settings, pruned.kept)
                   for name, settings in controls(pruned, masks_file).items()}}
        for name, (settings, kept) in runs.items():
            for k in range(1, seeds + 1):
                seed = int(pruned.config.get("seed", 0)) + k
                planned.append(ControlRun(index, name, seed, {**settings, "seed": seed}, kept, {}))
    reports = rerun([run.config for run in planned], dataset, data_dir, out / "runs",
                    f"sanity-{time.strftime('%Y%m%d-%H%M%S')}", cpus, gpus, max_concurrent, address)
    return [ControlRun(r.of, r.control, r.seed, r.config, r.kept, report)
            for r, report in zip(planned, reports, strict=True)]
