"""The driver of a study: one per study folder; stopped by Ctrl-C, SIGTERM or a full disk, then
resumed with Optuna and Ray agreeing; and no trial run with a config other than its study's.

In-process checks (the lock, the config terms, reconciling, a cut-short snapshot, SIGTERM and a
full disk reaching the driver) run on copies of the CLI's tiny study. On demand (`-m slow`, ~60 s
of a 2-core machine each), the background study ("ctrl-c") runs a study through two real drivers:
the first, while a second driver tries the same
study, is Ctrl-C'd mid-trial (SIGINT to its process group, as a terminal sends it); the second,
`--resume`, finishes it; "stops" does the same with SIGTERM (as `kill` or a
scheduler's time limit sends it) and then a full disk: the study lives on a small tmpfs (root can
mount one; elsewhere that part is skipped) that the test fills while a trial runs.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from study import layout
from study.config import ConfigError
from study.lock import DriverLock
from study.terms import StudyTerms
from tests.conftest import ROOT, StudyContext, background_study, ray_pids, run_main

# the CNN baseline, 4 epochs in 3 phases, a checkpoint after each epoch, never ended early
FAST = ["--set", "variant=cnn", "--set", "beta=0", "--set", "epochs=2", "--set", "head_epochs=1",
        "--set", "prune_epochs=1", "--set", "degenerate_epochs=0", "--checkpoint-every", "0",
        "--set", "train_subset=400", "--set", "batch_size=100"]
TOTAL_EPOCHS = 4
TMPFS_SIZE = "64m"


def _digest(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _epochs(trial_dir: Path) -> list[int]:
    return [r["epoch"] for r in layout.trial_history(trial_dir)]


def _trials(study_dir: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=layout.storage_url(study_dir)).get_trials()


def _holder(study_dir: Path) -> subprocess.Popen:
    """Another driver holding the study's lock (a process that takes it and waits)."""
    code = ("import sys, time; from study.lock import DriverLock; lock = DriverLock(sys.argv[1]); "
            "lock.acquire(create=True); lock.record(['holder']); print('held', flush=True); "
            "time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(study_dir)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


# --- one driver per study -------------------------------------------------------------------------

def test_a_study_another_driver_holds_is_refused_with_one_line_and_nothing_written(
        tmp_path, data_dir, tiny_study, capsys):
    """A second driver, new study of the same name or --resume, exits 2 naming the holder (pid,
    host) before it reads or writes anything; once the holder is killed, its lock is free; the
    lock of one study leaves the others of the storage folder free."""
    study_dir = tmp_path / "held"
    shutil.copytree(tiny_study[0], study_dir)
    holder = _holder(study_dir)
    try:
        before = _digest(study_dir)
        capsys.readouterr()
        for args in (["--name", "held"], ["--resume", "held"]):
            code = run_main("study.search", "beta_vae", *args, "--storage-dir", str(tmp_path),
                            "--data-dir", str(data_dir))
            err = capsys.readouterr().err
            assert code == 2, err
            assert len(err.strip().splitlines()) == 1, err
            assert f"in use by another prunestudy driver (pid {holder.pid} on host " in err
            assert "--address" in err
        assert _digest(study_dir) == before  # nothing written, the lock file included
        other = DriverLock(tmp_path / "other")  # another study of the same storage folder
        other.acquire(create=True)
        other.release()
    finally:
        holder.kill()
        holder.wait()
    # the killed holder's lock is free: the driver goes on to its own checks
    code = run_main("study.search", "beta_vae", "--resume", "held", "--num-samples", "1",
                    "--storage-dir", str(tmp_path), "--data-dir", str(data_dir))
    assert code == 2 and "can only grow" in capsys.readouterr().err
    lock = DriverLock(study_dir)
    lock.acquire(create=False)
    assert lock.held
    lock.release()


# --- every trial runs its study's config ------------------------------------------------------------

def test_a_trial_whose_config_departs_from_its_study_fails_before_training(tiny_study):
    """study.json's terms accept every trial the study ran and refuse, naming the key, a config
    that lacks a fixed setting (a restore that lost the search state: the method's defaults),
    changes one, or draws a searched one outside its distribution; the trainable checks before
    it builds anything."""
    from study.trainable import run_trial

    study_dir = tiny_study[0]
    terms = StudyTerms.of(layout.read_info(study_dir))
    configs = [layout.trial_params(d) for _, d in layout.trial_dirs(study_dir)]
    assert len(configs) == 2
    for config in configs:
        terms.check(config)
    config = configs[0]
    searched = next(iter(terms.search))
    cases = {"lacks 'epochs'": {k: v for k, v in config.items() if k != "epochs"},
             "'epochs' is 34, the study's is 1": {**config, "epochs": 34},
             f"{searched!r} = -1.0 is outside": {**config, searched: -1.0},
             "'bogus' is not a setting of the study": {**config, "bogus": 1}}
    for message, bad in cases.items():
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            terms.check(bad)
        with pytest.raises(ConfigError, match="departs from its study's"):
            run_trial(bad, data=None, terms=terms)  # before Ray, data or a model is touched


# --- in-process: reconciling, a cut-short snapshot, SIGTERM, a full disk ----------------------------

def _snapshot(study_dir: Path, session: str, statuses: dict[str, str]) -> None:
    """A snapshot of Ray's experiment for driver session `session`: the study's newest one, with
    the trials `statuses` names (in Ray's format: one JSON-encoded trial per entry)."""
    newest = max(study_dir.glob(layout.EXPERIMENT_STATE))
    old_session = newest.name[len("experiment_state-"):-len(".json")]
    state = json.loads(newest.read_text())
    state["trial_data"] = [[json.dumps({"trial_id": t, "status": status}), "{}"]
                           for t, status in statuses.items()]
    for pattern in (layout.SEARCH_GEN_STATE, layout.SEARCHER_STATE):
        (old,) = study_dir.glob(pattern.replace("*", old_session))
        shutil.copy2(old, old.with_name(old.name.replace(old_session, session)))
    (study_dir / f"experiment_state-{session}.json").write_text(json.dumps(state))


def test_reconciling_leaves_running_what_a_resume_finishes_and_fails_orphans(tmp_path, tiny_study):
    """After an interrupted run, an Optuna trial still RUNNING whose Ray trial the newest snapshot
    holds unfinished stays RUNNING (Ray continues it on --resume and then tells Optuna: a FAIL
    could never become COMPLETE); one the snapshot does not hold (asked by a killed driver after
    it) is told FAIL."""
    from study.optuna_bridge import reconcile_optuna

    study_dir = tmp_path / "tiny"
    shutil.copytree(tiny_study[0], study_dir)
    study = optuna.load_study(study_name="tiny", storage=layout.storage_url(study_dir))
    for ray_id in ("interrupted", "orphan"):
        study.ask().set_user_attr("ray_trial_id", ray_id)
    finished = {t.user_attrs["ray_trial_id"]: "TERMINATED" for t in study.get_trials()[:2]}
    _snapshot(study_dir, "9999-12-31_23-59-59", {**finished, "interrupted": "RUNNING"})
    assert reconcile_optuna(study_dir, "tiny") == 1
    states = {t.user_attrs["ray_trial_id"]: t.state.name for t in study.get_trials()}
    assert states == {**dict.fromkeys(finished, "COMPLETE"), "interrupted": "RUNNING",
                      "orphan": "FAIL"}


def test_resume_sets_aside_a_snapshot_cut_short(tmp_path, tiny_study):
    """Ray rewrites its snapshot files in place: a disk that fills during an upload (or a kill)
    leaves them cut short. `--resume` then takes the newest driver session whose snapshot loads
    whole, and says so; with none, it says in one line that the study cannot resume."""
    from study.resume import SET_ASIDE, usable_snapshot

    study_dir = tmp_path / "tiny"
    shutil.copytree(tiny_study[0], study_dir)
    (first,) = study_dir.glob(layout.EXPERIMENT_STATE)
    trials = layout.snapshot_trials(study_dir)
    _snapshot(study_dir, "9999-12-31_23-59-59", trials)
    assert usable_snapshot(study_dir) is None  # both sessions' snapshots load
    newest = max(study_dir.glob(layout.EXPERIMENT_STATE))
    newest.write_bytes(newest.read_bytes()[:100])  # cut short
    note = usable_snapshot(study_dir)
    assert note and newest.name in note and first.name[len("experiment_state-"):-5] in note
    assert (study_dir / (newest.name + SET_ASIDE)).exists()
    assert {p.name for p in study_dir.glob("*-9999-12-31_23-59-59*")} == {
        f"{n}-9999-12-31_23-59-59{ext}{SET_ASIDE}" for n, ext in (
            ("experiment_state", ".json"), ("search_gen_state", ".json"), ("searcher-state", ".pkl"))}
    assert layout.snapshot_trials(study_dir) == trials  # what Ray restores: the earlier session
    first.write_bytes(first.read_bytes()[:-1])
    with pytest.raises(ConfigError, match="no snapshot of Ray's experiment there loads whole"):
        usable_snapshot(study_dir)


def test_sigterm_does_what_sigint_does():
    """SIGTERM calls whatever handles SIGINT at that moment (inside Tuner.fit: Ray's graceful
    stop), and the driver's deadline is disarmed once it stops in time."""
    from study.interrupts import terminate_as_interrupt

    seen: list[int] = []
    before = signal.getsignal(signal.SIGTERM)
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        with terminate_as_interrupt(grace=30) as received:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler runs in this thread, between two bytecodes
        assert received == [signal.SIGTERM] and seen == [signal.SIGINT]
        assert signal.getsignal(signal.SIGTERM) == before
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_full_disk_that_a_library_only_logs_ends_the_search():
    """Ray logs a trial's failed checkpoint (a RayTaskError around the OSError) and OptunaSearch
    logs a failed tell; either, logged, raises DiskFull in the driver's thread; other errors do
    not."""
    import errno
    import logging
    import sqlite3

    from study.interrupts import DiskFull, disk_full, watch_disk

    assert disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert not disk_full(RuntimeError("commit failed"))
    try:
        raise RuntimeError("An exception is raised during the commit") from sqlite3.OperationalError(
            "database or disk is full")
    except RuntimeError as e:
        assert disk_full(e)
    raise_exceptions = logging.raiseExceptions
    try:
        with watch_disk() as watch:
            logging.getLogger("ray.tune").error("Trial task failed", exc_info=ValueError("other"))
            time.sleep(0.05)
            assert not watch.full.is_set()
            with pytest.raises(DiskFull):
                logging.getLogger("ray.tune.execution").error(
                    "Trial task failed", exc_info=OSError(errno.ENOSPC, "No space left on device"))
                time.sleep(0.05)
            assert watch.full.is_set()
    finally:
        logging.raiseExceptions = raise_exceptions  # the watch leaves it off after a full disk


# --- real drivers: Ctrl-C, SIGTERM, a full disk, and resumes ---------------------------------------

def _mount_tmpfs(folder: Path) -> str | None:
    """Mounts a small tmpfs on `folder`; None, or why it could not."""
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs",
                               str(folder)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot run mount: {e}"
    return None if done.returncode == 0 else f"mount -t tmpfs refused: {done.stderr.strip()}"


def _fill(folder: Path) -> Path:
    """Fill the filesystem of `folder` to its last byte with a ballast file."""
    ballast = folder / "ballast"
    chunk = b"\0" * (1 << 20)
    with open(ballast, "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    f.write(chunk[:size])
            except OSError:
                pass
    return ballast


class _Drivers:
    """Real drivers of one study `name` in `storage`, and the waits between them."""

    def __init__(self, ctx: StudyContext, storage: Path, name: str):
        self.ctx, self.name, self.study_dir = ctx, name, storage / name
        self.ray_dir = ctx.ray_dir()
        self.env = {"RAY_TMPDIR": str(self.ray_dir)}
        self.flags = ["--storage-dir", str(storage), "--data-dir", str(ctx.data_dir)]

    def start(self, *args: str) -> subprocess.Popen:
        return self.ctx.popen("study.search", "beta_vae", *args, *self.flags, env=self.env)

    def resume(self) -> subprocess.Popen:
        return self.start("--resume", self.name)

    def epochs(self) -> list[list[int]]:
        return [_epochs(d) for _, d in layout.trial_dirs(self.study_dir)]

    def reported(self) -> int:
        return sum(map(len, self.epochs())) if self.study_dir.is_dir() else 0

    def wait_progress(self, proc: subprocess.Popen, since: int) -> None:
        """Until more epochs are reported than `since` and a trial is mid-way (polled faster than
        ctx.wait: a trial takes seconds); fails with the driver's output if it ended first."""
        end = time.time() + 600
        while not (self.reported() > since and any(0 < len(e) < TOTAL_EPOCHS for e in self.epochs())):
            if proc.poll() is not None:
                raise AssertionError(f"the driver ended (code {proc.returncode}) first: "
                                     f"{proc.communicate()[1][-3000:]}")
            if time.time() > end or self.ctx.cancelled.is_set():
                raise AssertionError(f"timed out waiting for progress; epochs: {self.epochs()}")
            time.sleep(0.2)

    def wait_lock(self, proc: subprocess.Popen) -> None:
        """Until `proc` holds the study (its lock file names it)."""
        end = time.time() + 600
        while time.time() < end and proc.poll() is None:
            try:
                if json.loads(layout.driver_lock(self.study_dir).read_text())["pid"] == proc.pid:
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"the driver never held the study: {proc.communicate()[1][-3000:]}")

    @staticmethod
    def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
        stdout, stderr = proc.communicate(timeout=600)
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)

    def states(self) -> list[str]:
        return [t.state.name for t in _trials(self.study_dir, self.name)]

    def outcome(self, done: subprocess.CompletedProcess) -> dict:
        """The finished study, as the tests read it."""
        return {"done": done, "trials": _trials(self.study_dir, self.name),
                "epochs": {d.name: _epochs(d) for _, d in layout.trial_dirs(self.study_dir)},
                "params": [layout.trial_params(d) for _, d in layout.trial_dirs(self.study_dir)],
                "finals": {d.name[len(layout.TRIAL_PREFIX):]: layout.trial_history(d)[-1]
                           for _, d in layout.trial_dirs(self.study_dir)},
                "info": layout.read_info(self.study_dir), "ray_left": ray_pids(self.ray_dir),
                "study_dir": self.study_dir}


STUDY = ["--num-samples", "2", "--max-concurrent", "1", "--sampler", "random", *FAST]


@background_study("ctrl-c", cost=60)
def _ctrl_c_study(ctx: StudyContext) -> dict:
    """A driver Ctrl-C'd mid-trial while a second one tries its study; then --resume."""
    drivers = _Drivers(ctx, ctx.folder, "ctrl-c")
    proc = drivers.start("--name", "ctrl-c", *STUDY)
    drivers.wait_lock(proc)
    second = ctx.run("study.search", "beta_vae", "--name", "ctrl-c", *drivers.flags, *FAST,
                     env=drivers.env)
    drivers.wait_progress(proc, 0)
    os.killpg(proc.pid, signal.SIGINT)
    out = {"second": second, "driver_pid": proc.pid, "stopped": drivers.finish(proc),
           "after_stop": drivers.states()}
    return {**out, **drivers.outcome(drivers.finish(drivers.resume()))}


@background_study("stops", cost=60)
def _stops_study(ctx: StudyContext) -> dict:
    """SIGTERM mid-trial; then --resume, and its disk fills mid-trial; then --resume."""
    disk = ctx.folder / "disk"
    disk.mkdir()
    no_tmpfs = _mount_tmpfs(disk)
    drivers = _Drivers(ctx, disk, "stops")
    try:
        proc = drivers.start("--name", "stops", *STUDY)
        drivers.wait_progress(proc, 0)
        proc.send_signal(signal.SIGTERM)
        out = {"no_tmpfs": no_tmpfs, "stopped": drivers.finish(proc), "after_stop": drivers.states()}
        if no_tmpfs is None:
            since = drivers.reported()
            proc = drivers.resume()
            drivers.wait_progress(proc, since)
            ballast = _fill(disk)
            out["full"] = drivers.finish(proc)
            ballast.unlink()
        return {**out, **drivers.outcome(drivers.finish(drivers.resume()))}
    finally:
        if no_tmpfs is None:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def _check_interrupted_and_resumed(run: dict, sig: signal.Signals) -> None:
    """The interrupted driver said so and exited 128 + sig, leaving its trial RUNNING in Optuna
    (never FAIL); after --resume Optuna holds every trial COMPLETE with its finished result,
    agreeing with Ray's, and no Ray process is left."""
    stopped = run["stopped"]
    assert stopped.returncode == 128 + sig, stopped.stderr[-3000:]
    assert f"interrupted ({sig.name}): " in stopped.stdout and " left; " in stopped.stdout
    assert f"--resume {run['study_dir'].name} " in stopped.stdout
    assert "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    *finished, interrupted = run["after_stop"]
    assert interrupted == "RUNNING" and set(finished) <= {"COMPLETE"}

    done = run["done"]
    assert done.returncode == 0, done.stderr[-3000:]
    trials = run["trials"]
    assert [t.state.name for t in trials] == ["COMPLETE"] * 2  # none FAIL, none RUNNING
    assert {t.user_attrs["ray_trial_id"] for t in trials} == set(run["finals"])
    for t in trials:  # Optuna holds each trial's finished result
        final = run["finals"][t.user_attrs["ray_trial_id"]]
        assert final["epoch"] == TOTAL_EPOCHS and "test_accuracy" in final
        assert t.values == [final["val_accuracy"], final["sparsity"]]
    for epochs in run["epochs"].values():  # no trial ran twice from its start
        assert epochs.count(1) == 1 and epochs[-1] == TOTAL_EPOCHS, epochs
    assert not run["ray_left"]


@pytest.mark.slow  # a real study stopped and resumed (~60 s of the 2-core machine): the suite keeps
# its parts (the lock's refusal, reconciliation, SIGTERM's handler = SIGINT's) in the tests above
@pytest.mark.study("ctrl-c")
def test_a_second_driver_is_refused_and_ctrl_c_then_resume_leave_optuna_and_ray_agreeing(studies):
    run = studies.result("ctrl-c")
    second = run["second"]  # tried while the first driver ran: refused, naming it
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"in use by another prunestudy driver (pid {run['driver_pid']} " in _one_line(second.stderr)
    _check_interrupted_and_resumed(run, signal.SIGINT)


@pytest.mark.slow
@pytest.mark.study("stops")
def test_sigterm_then_resume_leave_optuna_and_ray_agreeing(studies):
    _check_interrupted_and_resumed(studies.result("stops"), signal.SIGTERM)


@pytest.mark.slow
@pytest.mark.study("stops")
def test_a_full_disk_stops_with_one_line_and_the_resume_runs_the_studys_config(studies):
    run = studies.result("stops")
    if run["no_tmpfs"]:
        pytest.skip(f"no tmpfs to fill: {run['no_tmpfs']}")
    full = run["full"]
    assert full.returncode == 1, full.stderr[-3000:]
    line = _one_line(full.stderr)  # no traceback from Optuna, W&B, Ray or the log file
    disk = run["study_dir"].parent
    assert line.startswith(f"error: no space left on the filesystem at {disk} "), line
    assert "finished trial" in line and "kept" in line, line
    assert f"--resume stops --storage-dir {disk}" in line, line
    # the resume after it: every trial ran the study's config, and finished
    terms = StudyTerms.of(run["info"])
    assert len(run["params"]) == 2
    for config in run["params"]:
        terms.check(config)
    assert [t.state.name for t in run["trials"]] == ["COMPLETE"] * 2
