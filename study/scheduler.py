"""Multi-objective asynchronous successive halving (MO-ASHA) on Ray Tune's scheduler interface.

Ray's ASHA and Optuna's pruners rank trials on one scalar; this scheduler ranks them on two. Rungs
sit at geometric epoch milestones (grace period g, reduction factor r: epochs g, g*r, g*r^2, ...).
A trial reaching a rung reports its *rung objectives* there (`RUNG_OBJECTIVES`, both maximized); it
continues only if it ranks in the top ceil(n / r) of the n trials that have reached that rung so
far (itself included), ranked by non-dominated sorting, then, within a front, by hypervolume
contribution (reference point (0, 0)), then by arrival (earlier first). It is the stop-on-arrival
variant of ASHA that Ray's AsyncHyperBandScheduler implements (Li et al. 2020), with Syne Tune's
multi-objective ranking (Schmucker et al. 2021) in place of the scalar cutoff.

Why rung objectives: beta_vae and reparam reach their final sparsity only at their last epoch, so
their reported `val_accuracy`/`sparsity` mid-run are not comparable with each other's nor with final
ones. At a rung, every trial is measured by one rule: its method's `probe_model()` (a copy of the
network pruned to the trial's final target, not fine-tuned; None: its inference network as it is),
evaluated on the validation split and counted from its tensors (`rung_objectives`). The trainable
reports them at the epochs the search passes in the trial setting `rung_epochs`. The rankings are
study.pareto's.

A trial stopped here is told to Optuna as PRUNED with its rung (study.optuna_bridge's
`record_stopped`): samplers learn from it as from any pruned trial, and analysis shows it as
`stopped`, never as a front point.
"""
from __future__ import annotations

import math
import pickle
from typing import Any

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from study.metrics import RUNG_OBJECTIVES
from study.outcome import outcome
from study.pareto import hypervolume_contributions, nondominated_ranks

GRACE_PERIOD = 1  # epochs before the first rung
REDUCTION_FACTOR = 3.0  # 1 in r trials continues at each rung
MAX_RUNG_EPOCH = 10_000  # rungs are listed up to here; a trial ignores those at or past its end


def rung_epochs(grace_period: int = GRACE_PERIOD, reduction_factor: float = REDUCTION_FACTOR,
                up_to: int = MAX_RUNG_EPOCH) -> list[int]:
    """The rung milestones: round(g * r^k) for k = 0, 1, ... up to `up_to`, distinct, increasing."""
    if grace_period < 1:
        raise ValueError(f"grace period must be at least 1 epoch, got {grace_period}")
    if not reduction_factor > 1:
        raise ValueError(f"reduction factor must be above 1, got {reduction_factor}")
    out: list[int] = []
    k = 0
    while (m := round(grace_period * reduction_factor ** k)) <= up_to:
        if not out or m > out[-1]:
            out.append(m)
        k += 1
    return out


def format_rung_epochs(epochs: list[int]) -> str:
    """The trial setting `rung_epochs`: milestones as a comma-separated string."""
    return ",".join(str(e) for e in epochs)


def parse_rung_epochs(text: str) -> list[int]:
    """The trial setting `rung_epochs` read back: positive epochs, comma-separated ('': none)."""
    from study.config import ConfigError

    try:
        epochs = [int(e) for e in text.split(",") if e.strip()]
    except ValueError:
        epochs = [0]
    if any(e < 1 for e in epochs):
        raise ConfigError(f"setting 'rung_epochs' must list positive epochs separated by commas, "
                          f"got {text!r}")
    return epochs


def rung_objectives(method, dense, x, y, batch_size: int, measured: tuple[float, float]
                    ) -> dict[str, float]:
    """The rung objectives of a trial now: its method's `probe_model()` (a copy of its network
    pruned to the trial's final target, not fine-tuned), evaluated on (x, y), its sparsity counted
    from the tensors as the trainable counts `sparsity`; when the probe is None (the network as it
    is is its final state), that network: `measured`, the epoch's own (val_accuracy, sparsity).
    Reads the method's state, never changes it (nor any RNG)."""
    from study.metrics import accuracy
    from study.sparsity import sparsity

    model = method.probe_model()
    if model is None:
        return dict(zip(RUNG_OBJECTIVES, measured, strict=True))
    return {RUNG_OBJECTIVES[0]: accuracy(model, x, y, batch_size),
            RUNG_OBJECTIVES[1]: sparsity(model, dense)}


# --- the promotion rule (pure) --------------------------------------------------------------------

def rung_order(points: np.ndarray) -> np.ndarray:
    """Row indices of `points` (rows in arrival order), best first: by non-dominated front, then
    by hypervolume contribution within the front (largest first), then by arrival."""
    points = np.asarray(points, dtype=float).reshape(len(points), -1)
    ranks = nondominated_ranks(points)
    contribution = np.zeros(len(points))
    for rank in np.unique(ranks):
        members = np.flatnonzero(ranks == rank)
        if not np.isnan(points[members]).any():
            contribution[members] = hypervolume_contributions(points[members])
    # lexsort: the last key is the primary one
    return np.lexsort((np.arange(len(points)), -contribution, ranks))


def promoted(points: np.ndarray, index: int, reduction_factor: float) -> bool:
    """Whether row `index` of a rung's points ranks in the top ceil(n / r) of its n rows."""
    keep = math.ceil(len(points) / reduction_factor)
    return int(np.flatnonzero(rung_order(points) == index)[0]) < keep


# --- the Ray Tune scheduler -----------------------------------------------------------------------

class MultiObjectiveASHA(FIFOScheduler):
    """MO-ASHA (module docstring). Trials are started first-in first-out; a trial is stopped at a
    rung epoch (its result's `epoch`) when its rung objectives do not rank in the rung's top
    1 / reduction_factor. Results without rung objectives never stop a trial."""

    def __init__(self, grace_period: int = GRACE_PERIOD,
                 reduction_factor: float = REDUCTION_FACTOR,
                 objectives: tuple[str, str] = RUNG_OBJECTIVES, study_dir: str | None = None) -> None:
        super().__init__()
        self.grace_period, self.reduction_factor = grace_period, reduction_factor
        self.objectives = objectives
        self.milestones = rung_epochs(grace_period, reduction_factor)
        # epoch -> {trial id: rung objectives}, in arrival order (dicts keep insertion order)
        self.rungs: dict[int, dict[str, tuple[float, ...]]] = {m: {} for m in self.milestones}
        self.stopped: dict[str, int] = {}  # trial id -> the rung epoch it was stopped at
        # Ray keeps no scheduler state across Tuner.restore (it unpickles the scheduler as it was
        # built): the rungs are read back from the study folder's results at the first decision
        self.study_dir = study_dir
        self._history_read = study_dir is None

    def _read_history(self) -> None:
        """Fill the rungs from the rung reports already in the study folder, in the order they
        were reported (Ray's `timestamp`, then the trial's own order)."""
        from study import layout

        self._history_read = True
        seen = []
        for trial_id, folder in layout.trial_dirs(self.study_dir):
            for i, row in enumerate(layout.trial_history(folder)):
                if row.get("epoch") in self.rungs and all(row.get(m) is not None
                                                           for m in self.objectives):
                    seen.append((row.get("timestamp", 0), i, trial_id, row))
        for _, _, trial_id, row in sorted(seen, key=lambda s: s[:2]):
            self.rungs[row["epoch"]].setdefault(
                trial_id, tuple(float(row[m]) for m in self.objectives))

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        # its objectives are its own (the rung metrics); the searcher's metric list is for Optuna
        return True

    def decide(self, trial_id: str, epoch: int, point: tuple[float, ...]) -> str:
        """Record `point` at rung `epoch` and return CONTINUE or STOP. A trial seen at this rung
        before (restored from a checkpoint, reporting it again) continues: it was promoted."""
        if not self._history_read:
            self._read_history()
        rung = self.rungs[epoch]
        if trial_id in rung:
            return TrialScheduler.CONTINUE
        rung[trial_id] = tuple(float(v) for v in point)
        if promoted(np.array(list(rung.values())), len(rung) - 1, self.reduction_factor):
            return TrialScheduler.CONTINUE
        self.stopped[trial_id] = epoch
        return TrialScheduler.STOP

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        epoch = result.get("epoch")
        if epoch not in self.rungs or any(result.get(m) is None for m in self.objectives):
            return TrialScheduler.CONTINUE
        return self.decide(trial.trial_id, epoch, tuple(result[m] for m in self.objectives))

    def debug_string(self) -> str:
        reached = ", ".join(f"epoch {m}: {len(r)}" for m, r in self.rungs.items() if r)
        return (f"MO-ASHA (grace {self.grace_period}, factor {self.reduction_factor:g}): "
                f"{len(self.stopped)} stopped; trials per rung: {reached or 'none yet'}")

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


def stopped_at(result: dict[str, Any] | None) -> int | None:
    """The rung epoch of a trial's last result when that result ended the trial at a rung (its
    outcome is `stopped`: study.outcome); else None."""
    return int(result["epoch"]) if outcome(result) == "stopped" else None
