"""How a search ends before its trials do: Ctrl-C, SIGTERM and a full disk.

Ctrl-C (SIGINT): Ray Tune catches it, stops its trials, saves its experiment snapshot a last time
and returns from `Tuner.fit`; a second Ctrl-C ends the driver at once. SIGTERM (what Slurm sends
at a job's time limit, then SIGKILL after its KillWait) is made to do the same (`terminate_as_interrupt`):
without it, Ray's own handler aborts the process. Either way the study is left as a killed driver
leaves it, or better: `--resume` continues its unfinished trials, and Optuna keeps them RUNNING
until they finish (study.optuna_bridge.reconcile_optuna).

A full disk shows up in many places at once: Optuna's SQLite ("database or disk is full"), Ray's
snapshot uploads and trial checkpoints, W&B, the log file. `watch_disk` notices it wherever Ray,
Optuna or W&B report it (an exception the driver sees, or one they only log) and ends the search
at once with `DiskFull`, writing nothing more: a last snapshot written to a full disk would cut
short the one the study resumes from. The driver then says what filled in one line
(`disk_full_message`).
"""
from __future__ import annotations

import _thread
import contextlib
import errno
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_TEXTS = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT),
                   "database or disk is full")  # SQLite's SQLITE_FULL
ABORT_SIGNAL = signal.SIGUSR2  # how the watch ends the driver's main thread (Ray does not use it)
WATCHED_LOGGERS = ("ray", "optuna", "wandb")
TERM_GRACE = 20.0  # seconds a driver has to stop after SIGTERM (Slurm kills after 30 by default)


class DiskFull(Exception):
    """The search ended because a disk filled."""


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """`exc`, its causes and contexts, and the remote errors Ray wraps (RayTaskError.cause)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]


def disk_full(exc: BaseException | None) -> bool:
    """Whether `exc` comes from a full disk (or a quota), however a library wrapped it."""
    for e in _chain(exc):
        if isinstance(e, DiskFull) or (isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS):
            return True
        if isinstance(e, BaseException) and any(t in str(e) for t in DISK_FULL_TEXTS):
            return True
    return False


class DiskWatch(logging.Handler):
    """Ends the search (DiskFull in the main thread) at the first record that reports a full
    disk: Ray logs and carries on after a failed upload or a trial's failed checkpoint, and
    OptunaSearch logs a failed `tell`. `full` says whether it did; after `stop` (the search is
    over: Ray shuts down) records are only noted, never interrupt."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.full = threading.Event()
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    def emit(self, record: logging.LogRecord) -> None:
        if self.full.is_set():
            return
        exc = record.exc_info[1] if record.exc_info else None
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is not ours to fix
            text = str(record.msg)
        if disk_full(exc) or (isinstance(record.msg, BaseException) and disk_full(record.msg)) or any(
                t in text for t in DISK_FULL_TEXTS):
            self.full.set()
            if not self._stopped:
                _thread.interrupt_main(ABORT_SIGNAL)


def _abort(signum: int, frame: object) -> None:
    raise DiskFull("a disk filled")


@contextlib.contextmanager
def watch_disk() -> Iterator[DiskWatch]:
    """While open, a full disk reported by Ray, Optuna or W&B (even only in their logs) raises
    DiskFull in the main thread (until the watch's `stop`). Logging's own failures (a log file
    on the full disk) are dropped rather than printed as tracebacks, after a full disk until the
    process ends (libraries log on at exit)."""
    watch = DiskWatch()
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(ABORT_SIGNAL, _abort) if main else None
    raise_exceptions, logging.raiseExceptions = logging.raiseExceptions, False
    loggers = [logging.getLogger(name) for name in WATCHED_LOGGERS]
    for logger in loggers:
        logger.addHandler(watch)
    try:
        yield watch
    finally:
        for logger in loggers:
            logger.removeHandler(watch)
        if not watch.full.is_set():
            logging.raiseExceptions = raise_exceptions
        if main:
            signal.signal(ABORT_SIGNAL, previous)


@contextlib.contextmanager
def terminate_as_interrupt(grace: float = TERM_GRACE) -> Iterator[list[int]]:
    """While open, SIGTERM does what SIGINT does at that moment (Ray's graceful stop inside
    `Tuner.fit`, KeyboardInterrupt elsewhere); yields the list of signals received. Open it after
    `ray.init`, whose handler it replaces, and keep it open until Ray is shut down: a driver still
    in it `grace` seconds after SIGTERM ends at once, as kill -9 would end it (the study resumes
    the same). When SIGTERM reached Ray's own processes too (a process group's or a job's
    SIGTERM), the graceful stop waits on a Ray that is gone, and a scheduler's SIGKILL follows
    anyway (Slurm's KillWait: 30 s)."""
    received: list[int] = []
    deadline: list[threading.Timer] = []

    def give_up() -> None:
        print(f"SIGTERM: the search did not stop within {grace:g} s (Ray's own processes were "
              "signalled too?); ending it at once, as a killed driver ends: `--resume` continues "
              "the study", file=sys.stderr, flush=True)
        os._exit(128 + signal.SIGTERM)

    def handler(signum: int, frame: object) -> None:
        received.append(signum)
        if not deadline:
            deadline.append(threading.Timer(grace, give_up))
            deadline[0].daemon = True  # never what keeps the process alive
            deadline[0].start()
        interrupt = signal.getsignal(signal.SIGINT)
        if callable(interrupt):
            interrupt(signal.SIGINT, frame)
        else:  # SIGINT ignored or left to the OS: end the driver as Python's default would
            raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        for timer in deadline:
            timer.cancel()


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def full_filesystem(exc: BaseException | None, places: list[Path]) -> Path:
    """Where the disk filled: the file the error names, else the place among `places` (the study
    folder first, then Ray's and the trials' temporary folders) with the least room left."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS and e.filename:
            return Path(os.fsdecode(e.filename))
    existing = [p for p in places if p.exists()]
    if not existing:
        return places[0]
    return min(existing, key=lambda p: shutil.disk_usage(p).free)


def disk_full_message(where: Path, study_dir: Path, finished: int, resume: str) -> str:
    """The one line a search ends with when a disk filled."""
    place = where if where.exists() else study_dir
    mount = _mount_point(place)
    try:
        usage = shutil.disk_usage(mount)
        room = f" ({_size(usage.free)} free of {_size(usage.total)})"
    except OSError:
        room = ""
    return (f"error: no space left on the filesystem at {mount}{room}, which holds {where}: the "
            f"search stopped; its {finished} finished trial{'s' if finished != 1 else ''} "
            f"{'are' if finished != 1 else 'is'} kept in {study_dir}; free space there, then "
            f"continue the study with `{resume}`")
