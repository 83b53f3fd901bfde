"""The one trainable every method runs in.

`run_trial` is the Ray Tune function trainable; `train` is the same loop with its reporting and
checkpoint source passed in, so `python -m study.train` and tests run exactly what a search runs.
The trainable owns everything common: config checks, seeding, data on the device, the epoch loop,
validation accuracy, the independent size count, per-epoch checkpoints and the final test.
`train` is a sequence of named steps: `start` (or `restore`), then per epoch `train_pass`, the
divergence check, `evaluate`, the degenerate rule and `checkpoint_or_report`. `restore_method`
gives readers (study.reproduce) a trial's method from a state it saved.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from study import config as cfgmod
from study.config import ConfigError, TrialConfig
from study.data import Dataset, batches, load_dataset, resolve_augment
from study.methods import METHODS
from study.methods.base import Batches, DataInfo, EpochEnd, Method
from study.metrics import accuracy, near_chance
from study.outcome import DEGENERATE_KEY, DEGENERATE_REASON_KEY, DIVERGED_KEY, FINAL_KEY
from study.sparsity import DenseReference, size_metrics

if TYPE_CHECKING:
    from study.terms import StudyTerms

STATE_FILE = "state.pt"
AUGMENT_STREAM = 1  # mixed with the trial's seed into the augmentation generator's seed
# (metrics, folder holding this epoch's state, or None when there is no state worth keeping)
Report = Callable[[dict[str, Any], Path | None], None]


def parse_config(config: dict[str, Any]) -> tuple[TrialConfig, Any]:
    """Split a flat trial config into (TrialConfig, the method's config); any unknown key, bad type
    or out-of-range value raises ConfigError naming it."""
    method = config.get("method", TrialConfig.method)
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    method_cls = METHODS[method].Config
    known = set(cfgmod.fields(TrialConfig)) | set(cfgmod.fields(method_cls))
    unknown = sorted(set(config) - known)
    for key in unknown:
        cfgmod.check_not_renamed(key)
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r} for method {method}; known: "
                          f"{', '.join(sorted(known))}")
    trial = cfgmod.build(TrialConfig, config)
    return trial, cfgmod.build(method_cls, config)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state(batch_rng: torch.Generator, augment_rng: torch.Generator | None = None) -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
             "torch": torch.get_rng_state(), "batches": batch_rng.get_state(),
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    if augment_rng is not None:  # only trials that augment: the others' states are as they were
        state["augment"] = augment_rng.get_state()
    return state


def _set_rng_state(state: dict[str, Any], batch_rng: torch.Generator,
                   augment_rng: torch.Generator | None = None) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    batch_rng.set_state(state["batches"])
    if augment_rng is not None:
        if "augment" not in state:
            raise ValueError("the checkpoint has no augmentation state: it was saved by a trial "
                             "that did not augment (set augment: none to resume it)")
        augment_rng.set_state(state["augment"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _trial_resources() -> tuple[float, float]:
    """(CPUs, GPUs) Ray gave this trial; outside Ray, OMP_NUM_THREADS or the whole machine."""
    try:
        import ray

        if ray.is_initialized():
            res = ray.get_runtime_context().get_assigned_resources()
            return res.get("CPU", 1.0), res.get("GPU", 0.0)
    except Exception:  # not inside a Ray worker
        pass
    return float(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1), float(torch.cuda.device_count())


def _device(choice: str, gpus: float) -> torch.device:
    if choice == "cuda" or (choice == "auto" and gpus > 0 and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def phase_at(schedule: list[tuple[str, int]], epoch: int) -> tuple[str, bool]:
    """(phase of 0-based `epoch`, whether it is the phase's first epoch)."""
    start = 0
    for phase, n in schedule:
        if epoch < start + n:
            return phase, epoch == start
        start += n
    raise IndexError(epoch)


class Stopwatch:
    """Seconds spent in named blocks (`with watch("eval_seconds"): ...`), summed per name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def train_epoch(method: Method, phase: str, first: bool, batches: Batches) -> dict[str, float]:
    """One training pass of `method` over `batches`: its loss terms per batch, one optimizer step
    each, and every term averaged over the samples (summed on the device: no host sync per batch).
    Nothing is trained, and no batch drawn, when the method's `begin_epoch` says so."""
    if not method.begin_epoch(phase, first):
        return {}
    sums: dict[str, torch.Tensor] = {}
    n = 0
    for x, y in batches:
        terms = method.loss_terms(phase, x, y)
        method.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        method.optimizer.step()
        for k, v in terms.items():
            v = v.detach().double() * len(x)
            sums[k] = sums[k] + v if k in sums else v
        n += len(x)
    return {k: float(v) / max(n, 1) for k, v in sums.items()}


def autocast_on(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; nothing on CPU (no speed-up there, and exact CPU reproducibility)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_channels_last(method: Method) -> None:
    """The method's networks with convolution weights in channels_last (NHWC), the layout CUDA's
    tensor-core convolutions run fastest in; batches on CUDA come in it too (`data.batches`). The
    parameters stay the same objects, so the method's optimizer still holds them."""
    for network in method.networks().values():
        network.to(memory_format=torch.channels_last)


def _build_method(trial: TrialConfig, method_cfg: Any, data: Dataset, device: torch.device) -> Method:
    """The trial's method on `device`, for `data` (its labels and statistics), its initial weights
    drawn from the trial's seed."""
    seed_everything(trial.seed)
    info = DataInfo(data.input_shape, data.num_classes, data.mean, data.std)
    method = METHODS[trial.method](method_cfg, info, device)
    if device.type == "cuda":
        to_channels_last(method)
    return method


def setup(config: dict[str, Any], data: Dataset | None, data_dir: str | None = None
          ) -> tuple[TrialConfig, Dataset, Method, list[tuple[str, int]]]:
    """A trial's settings, its data on its device, its seeded method and its non-empty phases."""
    trial, method_cfg = parse_config(config)
    cpus, gpus = _trial_resources()
    torch.set_num_threads(max(1, int(cpus)))  # Ray may pass a stale thread count
    device = _device(trial.device, gpus)
    if data is None:
        data = load_dataset(trial.dataset, data_dir)
    data = data.with_label(trial.label_factor).subset_train(trial.train_subset).to(device)
    method = _build_method(trial, method_cfg, data, device)
    phases = [p for p, _ in method.schedule()]
    if any(p not in phases for p in method.chance_rule_skips):
        raise TypeError(f"method {trial.method}: `chance_rule_skips` = {method.chance_rule_skips!r} "
                        f"names a phase not in its schedule {phases}")
    schedule = [(p, n) for p, n in method.schedule() if n > 0]
    if not schedule:
        raise ConfigError(f"method {trial.method} has no epoch to run: its schedule is {method.schedule()}")
    return trial, data, method, schedule


@contextlib.contextmanager
def _random_state_kept():
    """Python's, NumPy's and torch's global random states put back on exit, so that a block that
    seeds them (building a method) changes no draw of whatever runs around it."""
    python, numpy = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng():
            yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)


def build_method(config: dict[str, Any], data: Dataset) -> Method:
    """The method of the trial `config` as `setup` builds it, before training, on the device `data`
    is on. The caller's random draws are left as they were."""
    trial, method_cfg = parse_config(config)
    with _random_state_kept():
        return _build_method(trial, method_cfg, data.with_label(trial.label_factor), data.train_x.device)


def restore_method(config: dict[str, Any], state: dict[str, Any] | str | Path, data: Dataset) -> Method:
    """The method of the trial `config` (`build_method`) with a state `train` saved (the state, or
    the folder holding it) loaded by the method's own `load_state_dict`. Readers ask a trial's
    method what it kept through its public methods, never through a checkpoint's keys."""
    if not isinstance(state, dict):
        state = load_state(state)
    method = build_method(config, data)
    method.load_state_dict(state["method"])
    return method


@dataclass(frozen=True)
class Epoch:
    """Where one epoch sits in a trial's schedule."""
    number: int  # 1-based, as reported
    phase: str
    first: bool  # the phase's first epoch
    phase_end: bool  # the phase's last epoch
    last: bool  # the trial's last epoch


@dataclass
class Run:
    """What a trial's epochs share, from `start`."""
    config: dict[str, Any]  # as given (saved with each checkpoint)
    trial: TrialConfig
    data: Dataset  # on the trial's device
    method: Method
    schedule: list[tuple[str, int]]  # its non-empty phases
    dense: DenseReference  # the dense architecture every size is counted against
    rungs: set[int]  # epochs that also report the rung objectives (--scheduler mo-asha)
    batch_rng: torch.Generator  # draws the batches' order, apart from the global generators
    autocast: contextlib.AbstractContextManager
    # draws the training batches' crops and flips (TrialConfig.augment); None: not augmented
    augment_rng: torch.Generator | None = None

    @property
    def total(self) -> int:
        return sum(n for _, n in self.schedule)

    def epoch(self, index: int) -> Epoch:
        """The epoch at 0-based `index`."""
        phase, first = phase_at(self.schedule, index)
        last = index == self.total - 1
        return Epoch(index + 1, phase, first, last or phase_at(self.schedule, index + 1)[1], last)


def start(config: dict[str, Any], data: Dataset | None, data_dir: str | None = None) -> Run:
    """A trial at its start: `setup`, the dense reference measured on the initial network, the
    rung epochs, the batch generator seeded with the trial's seed and, when the trial augments
    (`resolve_augment` of its `augment` and dataset), the augmentation's own generator, seeded from
    the trial's seed too but a stream apart from the batch order's."""
    trial, data, method, schedule = setup(config, data, data_dir)
    dense = DenseReference.of(method.inference_model(), data.input_shape)
    rungs: set[int] = set()
    if trial.rung_epochs:  # study.scheduler imports Ray: only trials with rungs load it
        from study.scheduler import parse_rung_epochs

        rungs = set(parse_rung_epochs(trial.rung_epochs))
    augment_rng = None
    if resolve_augment(trial.augment, trial.dataset) == "crop_flip":
        seed = int(np.random.SeedSequence([trial.seed, AUGMENT_STREAM]).generate_state(1, np.uint64)[0])
        augment_rng = torch.Generator().manual_seed(seed)
    return Run(config, trial, data, method, schedule, dense, rungs,
               torch.Generator().manual_seed(trial.seed), autocast_on(data.train_x.device),
               augment_rng)


def restore(run: Run, state: dict[str, Any]) -> tuple[int, int]:
    """`run` as it was when `state` was saved: the method, the dense reference and every random
    generator; returns (epochs done, consecutive epochs at chance accuracy up to then)."""
    run.method.load_state_dict(state["method"])
    run.dense = DenseReference(**state["dense"])
    _set_rng_state(state["rng"], run.batch_rng, run.augment_rng)
    return state["epoch"], state.get("at_chance", 0)


def train_pass(run: Run, epoch: Epoch) -> tuple[dict[str, float], float]:
    """The epoch's training pass and the method's work after it (e.g. pruning): the averaged loss
    terms with the method's metrics, and the seconds both took (`epoch_seconds`)."""
    t0 = time.perf_counter()
    with run.autocast:
        terms = train_epoch(run.method, epoch.phase, epoch.first, batches(
            run.data.train_x, run.data.train_y, run.trial.batch_size, run.batch_rng,
            augment=run.augment_rng))
        terms.update(run.method.end_pass(epoch.phase, epoch.last, dict(terms)))
    return terms, time.perf_counter() - t0


def diverged_report(epoch: Epoch, terms: dict[str, float]) -> dict[str, Any]:
    """The last report of a trial whose loss became NaN/inf: its metrics so far and no objectives,
    so Optuna records the trial as pruned, not as a point (no retry could help)."""
    return {"epoch": epoch.number, "phase": epoch.phase, DIVERGED_KEY: 1, "loss": terms["loss"]}


def evaluate(run: Run, epoch: Epoch) -> tuple[dict[str, Any], dict[str, float], dict[str, float]]:
    """The epoch's measures of the inference network, in report order: validation accuracy, size,
    rung objectives and the method's diagnostics (which get the validation accuracy); the test
    accuracy, on the last epoch only (measured once, only reported, never optimized); the seconds
    each kind took."""
    watch = Stopwatch()
    data, trial, method = run.data, run.trial, run.method
    test: dict[str, float] = {}
    with run.autocast:
        model = method.inference_model()
        with watch("eval_seconds"):
            val_accuracy = accuracy(model, data.val_x, data.val_y, trial.eval_batch_size)
        end = EpochEnd(epoch.phase, epoch.phase_end, val_accuracy, data.val_x, data.val_y,
                       data.val_factors, trial.eval_batch_size)
        with watch("size_seconds"):
            size = size_metrics(model, run.dense, data.input_shape)
        rung = {}
        if epoch.number in run.rungs and not epoch.last:  # the last epoch reports the final state itself
            from study.scheduler import rung_objectives

            with watch("rung_seconds"):
                rung = rung_objectives(method, run.dense, data.val_x, data.val_y,
                                       trial.eval_batch_size, (val_accuracy, size["sparsity"]))
        with watch("diagnostics_seconds"):
            diagnostics = method.end_epoch(end)
        if epoch.last:
            with watch("eval_seconds"):
                test[FINAL_KEY] = accuracy(model, data.test_x, data.test_y, trial.eval_batch_size)
    validation = {"val_accuracy": val_accuracy, "num_classes": data.num_classes, **size, **rung,
                  **diagnostics}
    return validation, test, watch.seconds


def count_at_chance(run: Run, index: int, val_accuracy: float, at_chance: int) -> int:
    """Consecutive epochs at chance accuracy up to 0-based epoch `index`, `at_chance` up to the
    one before: counted from the second epoch on, and never in the phases the method's
    `chance_rule_skips` names (chance there is what the study measures, e.g. beta_vae's collapsed
    VAE phase: such an epoch breaks the count, as an epoch away from chance does)."""
    epoch = run.epoch(index)
    if index == 0 or epoch.phase in run.method.chance_rule_skips:
        return 0
    return at_chance + 1 if near_chance(val_accuracy, run.data.num_classes, run.trial.chance_margin) else 0


def degenerate_reason(trial: TrialConfig, epoch: Epoch, metrics: dict[str, Any], at_chance: int
                      ) -> str | None:
    """Why the trial ends early after this epoch as degenerate, or None: never on its last epoch
    or with `degenerate_epochs` = 0; a dead network, or `at_chance` consecutive epochs at chance
    accuracy reaching `degenerate_epochs`."""
    if epoch.last or not trial.degenerate_epochs:
        return None
    if metrics.get("dead_network"):
        return "dead network"
    if at_chance >= trial.degenerate_epochs:
        return f"val_accuracy at chance for {at_chance} epochs"
    return None


def checkpoint_or_report(run: Run, epoch: Epoch, metrics: dict[str, Any], at_chance: int,
                         report: Report, checkpoint: bool) -> dict[str, float]:
    """Report `metrics`, with the trial's state when `checkpoint` (everything `restore` needs to
    go on after this epoch); returns the seconds saving and reporting took."""
    watch = Stopwatch()
    if checkpoint:
        state = {"epoch": epoch.number, "method": run.method.state_dict(),
                 "rng": _rng_state(run.batch_rng, run.augment_rng), "dense": vars(run.dense),
                 "config": dict(run.config), "metrics": metrics, "at_chance": at_chance}
        with tempfile.TemporaryDirectory(prefix="prunestudy-ckpt-") as d:
            with watch("save_seconds"):
                torch.save(state, Path(d) / STATE_FILE)
            with watch("report_seconds"):  # Ray persists the checkpoint in report
                report(metrics, Path(d))
    else:
        with watch("report_seconds"):
            report(metrics, None)
    return watch.seconds


def train(config: dict[str, Any], data: Dataset | None, report: Report,
          resume: dict[str, Any] | None = None, data_dir: str | None = None,
          checkpoint_every: float = 0.0) -> dict[str, Any]:
    """Run one trial: every epoch trains, evaluates, counts and reports; the last report also
    holds `test_accuracy`. An epoch's report carries the trial's state (a checkpoint) when
    `checkpoint_every` seconds have passed since the last one (0: every epoch), and always at the
    trial's end. `resume` is a state saved with an earlier epoch's report.

    A trial ends early as diverged (NaN/inf loss: reported without objectives) or as degenerate
    (`degenerate` = 1 and `degenerate_reason`, reported with this epoch's metrics but no test
    accuracy): its validation accuracy stayed within `chance_margin` of chance for
    `degenerate_epochs` consecutive epochs from the second on, outside the phases its method's
    `chance_rule_skips` names (beta_vae's VAE phase: a collapse is measured, not cut short), or its
    method reported `dead_network` (`degenerate_epochs` = 0: never). The last epoch is never cut
    short."""
    run = start(config, data, data_dir)
    done, at_chance = 0, 0  # epochs done; consecutive epochs at chance accuracy, up to now
    if resume is not None:
        done, at_chance = restore(run, resume)
        if done >= run.total or DEGENERATE_KEY in resume["metrics"]:
            # resumed from the final checkpoint (the trial ended after Ray's last snapshot): nothing
            # to train or report again; Ray ends it with that checkpoint's metrics
            return resume["metrics"]
    previous: dict[str, float] = {}  # seconds to checkpoint and report the previous epoch
    checkpointed = time.perf_counter()  # when the last checkpoint was taken (or the trial began)
    for index in range(done, run.total):
        epoch = run.epoch(index)
        terms, seconds = train_pass(run, epoch)
        if not math.isfinite(terms["loss"]):
            metrics = diverged_report(epoch, terms)
            report(metrics, None)
            return metrics
        validation, test, timings = evaluate(run, epoch)
        metrics = {"epoch": epoch.number, "total_epochs": run.total, "phase": epoch.phase,
                   "epoch_seconds": seconds, **terms, **validation, **timings, **previous, **test}
        at_chance = count_at_chance(run, index, metrics["val_accuracy"], at_chance)
        degenerate = degenerate_reason(run.trial, epoch, metrics, at_chance)
        if degenerate:  # end early, as diverged trials do, but with the metrics of this epoch
            metrics.update({DEGENERATE_KEY: 1, DEGENERATE_REASON_KEY: degenerate})
        checkpoint = bool(epoch.last or degenerate
                          or time.perf_counter() - checkpointed >= checkpoint_every)
        previous = checkpoint_or_report(run, epoch, metrics, at_chance, report, checkpoint)
        if checkpoint:
            checkpointed = time.perf_counter()
        if degenerate:
            return metrics
    return metrics


def load_state(folder: str | Path) -> dict[str, Any]:
    """A state saved by `train`: tensors and plain values only (weights_only: no code runs)."""
    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)


def run_trial(config: dict[str, Any], data: Dataset | None = None, checkpoint_every: float = 0.0,
              terms: StudyTerms | None = None) -> None:
    """Ray Tune function trainable: resumes from Tune's checkpoint when there is one. With the
    study's `terms`, a config that departs from them (whatever state Ray restored it from) fails
    the trial before anything is built or trained, naming the key."""
    if terms is not None:
        terms.check(config)
    from ray import tune

    checkpoint = tune.get_checkpoint()
    resume = None
    if checkpoint is not None:
        # Ray only hands back this trial's own checkpoints; refuse anything else, and load
        # tensors and plain values only (no pickled code) whatever the path.
        own = f"/{tune.get_context().get_experiment_name()}/{Path(tune.get_context().get_trial_dir()).name}/"
        if own not in checkpoint.path:
            raise RuntimeError(f"refusing checkpoint {checkpoint.path}: not under this trial's folder")
        with checkpoint.as_directory() as d:
            resume = load_state(d)

    import ray

    node_id = ray.get_runtime_context().get_node_id()  # which machine ran it, for clusters

    def report(metrics: dict[str, Any], folder: Path | None) -> None:
        tune.report({**metrics, "node_id": node_id},
                    checkpoint=tune.Checkpoint.from_directory(str(folder)) if folder else None)

    train(config, data, report, resume, checkpoint_every=checkpoint_every)
