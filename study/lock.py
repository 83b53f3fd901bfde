"""One driver per study folder: the lock `prunestudy search` holds on its study while it runs.

Two drivers on one study each ask Optuna for trials, each snapshot Ray's experiment over the
other's, and each "reconciles" the other's running trials as orphans. So a driver takes the
study's lock (`layout.driver_lock`: an advisory `flock` on `driver.lock` in the study folder)
before it writes anything, and holds it until it exits; a second driver, new or `--resume`, is
refused with one line naming the holder, which the lock file records (pid, host, start, command).

The kernel releases a `flock` when its holder dies, kill -9 included, so a killed driver's lock
is free again at once (nothing stale to clean up); the file is never deleted, because deleting a
lock file another process has open lets two drivers hold two different files. The descriptor is
not inherited by the processes the driver starts (Python opens files close-on-exec), so Ray's
processes that outlive a killed driver do not keep its lock.

On a cluster filesystem a `flock` excludes drivers on other hosts only where the filesystem
shares locks between clients: NFSv4, NFSv3 with lockd (Linux emulates `flock` there with POSIX
locks held by the server), Lustre or BeeGFS mounted with `flock`. Mounts that keep locks local
to each client (NFS `nolock`, Lustre `localflock`) grant every host its own lock: there, run a
study's driver from one host. Where the filesystem refuses locks outright (ENOLCK, EOPNOTSUPP),
the record decides alone: a live process on this host holds the study, one on another host is
trusted to (the message says to delete the file once sure it has ended); a dead one on this
host is taken over.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from study import layout
from study.config import ConfigError

NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # the filesystem has no locks


class StudyInUse(ConfigError):
    """Another live driver holds the study folder (exit code 2, one line)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def held_by_record(record: dict[str, Any], host: str | None = None) -> bool:
    """Whether a lock record names a driver that may still run, when no `flock` can say: a live
    process on this host, or any process on another host (its liveness cannot be seen from here)."""
    host = host or socket.gethostname()
    if not isinstance(record.get("pid"), int):
        return False
    if record.get("host") != host:
        return True
    return record["pid"] != os.getpid() and _alive(record["pid"])


def describe(record: dict[str, Any]) -> str:
    """'pid 123 on host h, since 2026-01-01 12:00:00' from a lock record (what is known of it)."""
    if not record.get("pid"):
        return "a driver starting right now"
    since = f", since {record['since']}" if record.get("since") else ""
    return f"pid {record['pid']} on host {record.get('host', '?')}{since}"


class DriverLock:
    """The lock on one study folder. `acquire` takes it (StudyInUse if another driver holds it),
    writing nothing unless `create`; `record` writes this driver into the lock file once the
    driver's checks have passed; `release` (or the driver's exit, however it ends) frees it."""

    def __init__(self, study_dir: str | Path) -> None:
        self.path = layout.driver_lock(study_dir)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, create: bool) -> None:
        """Take the lock, or raise StudyInUse naming its holder. Without `create`, a study folder
        or lock file that does not exist yet is left so (nothing is written: a refused or failing
        driver leaves no trace) and the lock is not held; `create` makes both."""
        if self.held:
            return
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
        except OSError as e:
            if create:
                raise ConfigError(f"cannot write the study folder {self.path.parent}: "
                                  f"{e.strerror}") from None
            return  # no study there yet, or one this driver cannot write: the checks will say
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            record = self._read(fd)
            os.close(fd)
            raise StudyInUse(self._refusal(record)) from None
        except OSError as e:
            if e.errno not in NO_LOCKS:
                os.close(fd)
                raise
            record = self._read(fd)
            if held_by_record(record):
                os.close(fd)
                raise StudyInUse(self._refusal(record, locks=False)) from None
        self._fd = fd

    def record(self, command: list[str] | None = None) -> None:
        """Write this driver into the lock file (the holder a refused driver names)."""
        if self._fd is None:
            raise RuntimeError(f"{self.path}: the lock is not held")
        data = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                           "command": command if command is not None else sys.argv}) + "\n"
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data.encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # frees the flock; the file stays (see the module's docstring)
            self._fd = None

    def __enter__(self) -> DriverLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @staticmethod
    def _read(fd: int) -> dict[str, Any]:
        try:
            record = json.loads(os.pread(fd, 65536, 0).decode() or "{}")
        except (ValueError, OSError):  # being written by its holder right now
            return {}
        return record if isinstance(record, dict) else {}

    def _refusal(self, record: dict[str, Any], locks: bool = True) -> str:
        study = self.path.parent
        text = (f"study folder {study} is in use by another prunestudy driver ({describe(record)}); "
                f"a study has one driver: wait for it to end (an interrupted study then continues "
                f"with --resume {study.name}) or start another study (--name); to run more trials "
                f"at once, give that one driver more machines: a Ray cluster, joined with --address")
        if not locks:
            text += (f". This filesystem has no file locks: if that driver has ended, delete "
                     f"{self.path}")
        return text
