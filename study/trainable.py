"""The one trainable every method runs in.

`run_trial` is the Ray Tune function trainable; `train` is the same loop with its reporting and
checkpoint source passed in, so `python -m study.train` and tests run exactly what a search runs.
The trainable owns everything common: config checks, seeding, data on the device, the epoch loop,
validation accuracy, the independent size count, per-epoch checkpoints and the final test.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from study import config as cfgmod
from study.config import ConfigError, TrialConfig
from study.data import Dataset, batches, load_dataset
from study.methods import METHODS
from study.methods.base import Batches, DataInfo, EpochEnd, Method
from study.metrics import accuracy, near_chance
from study.sparsity import DenseReference, size_metrics

STATE_FILE = "state.pt"
# (metrics, folder holding this epoch's state, or None when there is no state worth keeping)
Report = Callable[[dict[str, Any], Path | None], None]
# Tests only: "nan@E" makes epoch E's loss NaN; "raise@E@MARKER" raises at epoch E once (while the
# file MARKER does not exist), so retries and resumes can be tested on real processes.
FAULT_ENV = "PRUNESTUDY_INJECT_FAULT"


def _inject_fault(epoch: int, terms: dict[str, float]) -> None:
    kind, _, rest = os.environ.get(FAULT_ENV, "").partition("@")
    at, _, marker = rest.partition("@")
    if not kind or int(at) != epoch:
        return
    if kind == "nan":
        terms["loss"] = float("nan")
    elif kind == "raise" and marker and not os.path.exists(marker):
        Path(marker).touch()
        raise RuntimeError(f"injected fault at epoch {epoch}")


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


def _rng_state(batch_rng: torch.Generator) -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            "torch": torch.get_rng_state(), "batches": batch_rng.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict[str, Any], batch_rng: torch.Generator) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    batch_rng.set_state(state["batches"])
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
    for value in vars(method).values():
        if isinstance(value, torch.nn.Module):
            value.to(memory_format=torch.channels_last)


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
    seed_everything(trial.seed)
    info = DataInfo(data.input_shape, data.num_classes, data.mean, data.std)
    method = METHODS[trial.method](method_cfg, info, device)
    if device.type == "cuda":
        to_channels_last(method)
    schedule = [(p, n) for p, n in method.schedule() if n > 0]
    if not schedule:
        raise ConfigError(f"method {trial.method} has no epoch to run: its schedule is {method.schedule()}")
    return trial, data, method, schedule


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
    `degenerate_epochs` consecutive epochs from the second on, or its method reported
    `dead_network` (`degenerate_epochs` = 0: never). The last epoch is never cut short."""
    trial, data, method, schedule = setup(config, data, data_dir)
    total = sum(n for _, n in schedule)
    dense = DenseReference.of(method.inference_model(), data.input_shape)
    rungs: set[int] = set()  # epochs that also report the rung objectives (--scheduler mo-asha)
    if trial.rung_epochs:
        from study.scheduler import parse_rung_epochs, rung_objectives

        rungs = set(parse_rung_epochs(trial.rung_epochs))
    batch_rng = torch.Generator().manual_seed(trial.seed)
    start, at_chance = 0, 0  # at_chance: consecutive epochs at chance accuracy, up to now
    if resume is not None:
        method.load_state_dict(resume["method"])
        dense = DenseReference(**resume["dense"])
        _set_rng_state(resume["rng"], batch_rng)
        start, at_chance = resume["epoch"], resume.get("at_chance", 0)
    autocast = autocast_on(data.train_x.device)
    metrics: dict[str, Any] = {}
    previous: dict[str, float] = {}  # seconds to checkpoint and report the previous epoch
    checkpointed = time.perf_counter()  # when the last checkpoint was taken (or the trial began)
    if start >= total or (resume and "degenerate" in resume["metrics"]):
        # resumed from the final checkpoint (the trial ended after Ray's last snapshot): nothing
        # to train or report again; Ray ends it with that checkpoint's metrics
        return resume["metrics"]
    for epoch in range(start, total):
        phase, first = phase_at(schedule, epoch)
        last = epoch == total - 1
        t0 = time.perf_counter()
        with autocast:
            terms = train_epoch(method, phase, first, batches(data.train_x, data.train_y,
                                                              trial.batch_size, batch_rng))
            terms.update(method.end_pass(phase, last, dict(terms)))
        seconds = time.perf_counter() - t0
        _inject_fault(epoch + 1, terms)
        if not math.isfinite(terms["loss"]):
            # Diverged: end the trial (no retry could help) with its metrics so far. The last
            # report has no objectives, so Optuna records the trial as pruned, not as a point.
            metrics = {"epoch": epoch + 1, "phase": phase, "diverged": 1, "loss": terms["loss"]}
            report(metrics, None)
            return metrics
        watch = Stopwatch()
        with autocast:
            model = method.inference_model()
            with watch("eval_seconds"):
                val_accuracy = accuracy(model, data.val_x, data.val_y, trial.eval_batch_size)
            end = EpochEnd(phase, last or phase_at(schedule, epoch + 1)[1], val_accuracy,
                           data.val_x, data.val_y, data.val_factors, trial.eval_batch_size)
            with watch("size_seconds"):
                size = size_metrics(model, dense, data.input_shape)
            rung = {}
            if epoch + 1 in rungs and not last:  # the last epoch reports the final state itself
                with watch("rung_seconds"):
                    rung = rung_objectives(method, dense, data.val_x, data.val_y,
                                           trial.eval_batch_size, (val_accuracy, size["sparsity"]))
            with watch("diagnostics_seconds"):
                diagnostics = method.end_epoch(end)
            if last:  # measured once, at the end; only reported, never optimized
                with watch("eval_seconds"):
                    test_accuracy = accuracy(model, data.test_x, data.test_y, trial.eval_batch_size)
        metrics = {"epoch": epoch + 1, "total_epochs": total, "phase": phase,
                   "epoch_seconds": seconds, **terms, "val_accuracy": val_accuracy,
                   "num_classes": data.num_classes, **size, **rung, **diagnostics, **watch.seconds,
                   **previous}
        if last:
            metrics["test_accuracy"] = test_accuracy
        at_chance = at_chance + 1 if epoch > 0 and near_chance(
            val_accuracy, data.num_classes, trial.chance_margin) else 0
        degenerate = None if last or not trial.degenerate_epochs else (
            "dead network" if metrics.get("dead_network") else
            f"val_accuracy at chance for {at_chance} epochs"
            if at_chance >= trial.degenerate_epochs else None)
        if degenerate:  # end early, as diverged trials do, but with the metrics of this epoch
            metrics.update(degenerate=1, degenerate_reason=degenerate)
        watch = Stopwatch()
        if last or degenerate or time.perf_counter() - checkpointed >= checkpoint_every:
            state = {"epoch": epoch + 1, "method": method.state_dict(), "rng": _rng_state(batch_rng),
                     "dense": vars(dense), "config": dict(config), "metrics": metrics,
                     "at_chance": at_chance}
            with tempfile.TemporaryDirectory(prefix="prunestudy-ckpt-") as d:
                with watch("save_seconds"):
                    torch.save(state, Path(d) / STATE_FILE)
                with watch("report_seconds"):  # Ray persists the checkpoint in report
                    report(metrics, Path(d))
            checkpointed = time.perf_counter()
        else:
            with watch("report_seconds"):
                report(metrics, None)
        previous = watch.seconds  # shown with the next epoch's metrics
        if degenerate:
            return metrics
    return metrics


def load_state(folder: str | Path) -> dict[str, Any]:
    """A state saved by `train`: tensors and plain values only (weights_only: no code runs)."""
    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)


def run_trial(config: dict[str, Any], data: Dataset | None = None, checkpoint_every: float = 0.0) -> None:
    """Ray Tune function trainable: resumes from Tune's checkpoint when there is one."""
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
