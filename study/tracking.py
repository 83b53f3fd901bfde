"""Weights & Biases: one run per trial, grouped by study, epoch as the step metric.

Online when credentials exist and WANDB_MODE allows; otherwise offline under the study folder
(`layout.wandb_dir`), never waiting on a network.
"""
from __future__ import annotations

import netrc
import numbers
import os
import sys
import time
from pathlib import Path
from typing import Any

from study import layout

DEFAULT_PROJECT = "prunestudy"


def run_tags(*values: Any) -> list[str]:
    """W&B tags of a run: the values given, as text cut to 64 characters, empty ones left out (W&B
    refuses a run whose tags are empty or longer: a `folder:` dataset's path can be)."""
    return [str(v)[:64] for v in values if v not in (None, "")]


def has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = netrc.netrc().authenticators("api.wandb.ai")
        return bool(host and host[2])
    except (OSError, netrc.NetrcParseError):
        return False


def configure(study_dir: Path) -> tuple[str, dict[str, str]]:
    """Choose the W&B mode before Ray starts; returns (mode, env vars Ray passes to its workers).
    Runs offline without credentials so nothing ever waits on the network."""
    if os.environ.get("WANDB_MODE") not in ("online", "offline", "disabled"):
        os.environ["WANDB_MODE"] = "online" if has_credentials() else "offline"
    env = {"WANDB_MODE": os.environ["WANDB_MODE"], "WANDB_SILENT": "true", "WANDB_DIR": str(study_dir)}
    os.environ.update(env)
    return os.environ["WANDB_MODE"], env


def define_epoch_step(run: Any) -> None:
    """Plot every metric of a run against `epoch`."""
    run.define_metric("epoch")
    run.define_metric("*", step_metric="epoch")


def logger_callback(study_dir: Path, study_name: str, method: str, dataset: str):
    """The Ray Tune callback that logs every trial to W&B (`TrialRuns`)."""
    from ray.tune.logger import LoggerCallback

    class TrialRuns(LoggerCallback):
        """One W&B run per trial, all written from the driver (wandb's several runs per process,
        `reinit="create_new"`: one wandb-core for the whole study), on one thread of their own:
        a trial's report waits for the driver's loop, which must not wait on W&B (`wandb.init`
        takes seconds). Ray's WandbLoggerCallback starts, per running trial, a logging actor, a
        queue actor, a wandb-core and its system monitor: a third of a core on a 2-core machine,
        taken from training (docs/benchmarks.md, issue 11)."""

        def __init__(self) -> None:
            self.runs: dict[str, Any] = {}  # trial id -> its run (touched on the W&B thread only)
            self.started: set[str] = set()
            self._thread = None
            self.seconds = 0.0  # spent on the W&B thread

        def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks with the tuner
            return {"runs": {}, "started": set(), "_thread": None, "seconds": 0.0}

        def _submit(self, work, *args) -> None:
            """Run `work` on the W&B thread; a W&B failure is printed, never raised in the study."""
            if self._thread is None:
                from concurrent.futures import ThreadPoolExecutor

                self._thread = ThreadPoolExecutor(1, thread_name_prefix="prunestudy-wandb")

            def safely() -> None:
                t0 = time.perf_counter()
                try:
                    work(*args)
                except Exception as e:  # noqa: BLE001 - logging must not end a study
                    print(f"W&B: {work.__name__.strip('_')} failed for trial {args[0]}: {e}",
                          file=sys.stderr, flush=True)
                self.seconds += time.perf_counter() - t0

            self._thread.submit(safely)

        def _init(self, trial_id: str, name: str, config: dict[str, Any], path: str) -> None:
            import wandb

            run = wandb.init(
                project=os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT), group=study_name,
                tags=run_tags(method, dataset), dir=str(study_dir.resolve()), job_type="trial",
                id=trial_id, name=name, config=config, reinit="create_new", allow_val_change=True,
                settings=wandb.Settings(silent=True, x_disable_stats=True, disable_git=True,
                                        console="off"))
            run.config.update({"trial_log_path": path}, allow_val_change=True)
            define_epoch_step(run)
            self.runs[trial_id] = run

        def _log(self, trial_id: str, values: dict[str, Any], step: int | None) -> None:
            self.runs[trial_id].log(values, step=step)

        def _finish(self, trial_id: str, exit_code: int, final: dict[str, Any] | None = None) -> None:
            run = self.runs.pop(trial_id, None)
            if run is not None:
                if final:
                    run.summary.update(final)
                run.finish(exit_code=exit_code)

        def log_trial_start(self, trial) -> None:
            if trial.trial_id in self.started:  # restarted after a failure: the same run
                return
            self.started.add(trial.trial_id)
            self._submit(self._init, trial.trial_id, str(trial), _plain(trial.config),
                         trial.local_path)

        def log_trial_result(self, iteration: int, trial, result: dict) -> None:
            if trial.trial_id not in self.started:
                self.log_trial_start(trial)
            self._submit(self._log, trial.trial_id,
                         {k: v for k, v in result.items()
                          if k not in _NOT_LOGGED and isinstance(v, numbers.Number)},
                         result.get("training_iteration"))

        def log_trial_end(self, trial, failed: bool = False) -> None:
            self.started.discard(trial.trial_id)
            self._submit(self._finish, trial.trial_id, 1 if failed else 0,
                         final_summary(trial.last_result, failed))

        def on_experiment_end(self, trials, **info) -> None:
            for trial_id in list(self.started):
                self._submit(self._finish, trial_id, 0)
            if self._thread is not None:  # every run written before the study returns
                self._thread.shutdown(wait=True)
                self._thread = None
            # the W&B part of the harness's time (`prunestudy bench overhead` reads it)
            if (study_dir / layout.STUDY_JSON).exists():
                info = layout.read_info(study_dir)
                layout.write_info(study_dir, {**info, "wandb_seconds": round(self.seconds, 2)})

    return TrialRuns()


# Ray's bookkeeping in every result (the config is logged once, as the run's config)
_NOT_LOGGED = {"config", "done", "should_checkpoint", "trial_id", "experiment_tag", "node_ip",
               "hostname", "pid", "date"}


def final_summary(last: dict[str, Any] | None, failed: bool = False) -> dict[str, Any]:
    """A trial run's summary at its end: its last report's metrics, what W&B's parallel-coordinates
    and parameter-importance panels read beside the config's settings (set explicitly: a trial
    restarted from a checkpoint logs steps W&B has already seen, which it drops), and `status`,
    how it ended (study.outcome's word; `failed` when it raised), so panels can keep complete ones."""
    from study.outcome import outcome

    last = last or {}
    return {**{k: v for k, v in last.items() if k not in _NOT_LOGGED and isinstance(v, numbers.Number)},
            "status": "failed" if failed else outcome(last)}


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's config as W&B stores it: plain values; anything else as its text."""
    import json

    out = {}
    for k, v in config.items():
        try:
            json.dumps(v)
            out[k] = v
        except TypeError:
            out[k] = str(v)
    return out
