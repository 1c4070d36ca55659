"""Who owns the database and its running jobs: the daemon's instance lock, and the owner a claim records.

A claim records its owner as ``"<name> pid <pid> on <host>"``: ``worker-1`` ... for the daemon's workers,
``process`` for ``assetd process``. A running job is *orphaned* when its owner is on this host and gone: its
pid has exited or, for a daemon worker, its pid no longer holds the database lock. ``assetd process`` and
``assetd retry`` release such a job at once instead of waiting for its lease to run out; the job of a live
owner, or of one on another host (its pid means nothing here), is left to its owner and its lease.
"""
from __future__ import annotations

import fcntl
import os
import re
import socket
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from .errors import ConfigError

HOST = socket.gethostname()
DAEMON_WORKER = "worker-"  # the daemon's workers are worker-1, worker-2, ...
_LABEL = re.compile(r"(?P<name>\S+) pid (?P<pid>\d+) on (?P<host>.+)")


def owner_label(name: str) -> str:
    """What a claim made by this process under ``name`` records as its owner."""
    return f"{name} pid {os.getpid()} on {HOST}"


@dataclass(frozen=True)
class Owner:
    name: str
    pid: int
    host: str

    @classmethod
    def parse(cls, label: str | None) -> "Owner | None":
        """The owner a claim recorded; None for a label from an older assetd (a bare worker name)."""
        m = _LABEL.fullmatch(label or "")
        return cls(m["name"], int(m["pid"]), m["host"]) if m else None

    @property
    def is_daemon_worker(self) -> bool:
        return self.name.startswith(DAEMON_WORKER)


def describe(label: str | None) -> str:
    """The owner of a claim in words, for messages."""
    owner = Owner.parse(label)
    if owner is None:
        return f"{label or 'an unknown owner'} (an older assetd)"
    if owner.is_daemon_worker:
        return f"the assetd daemon ({owner.name}, pid {owner.pid} on {owner.host})"
    return f"assetd {owner.name} (pid {owner.pid} on {owner.host})"


class OwnerState(str, Enum):
    ALIVE = "alive"
    GONE = "gone"
    UNKNOWN = "unknown"  # another host, or a label from an older assetd: only the lease can tell


def owner_state(label: str | None, database: Path) -> OwnerState:
    """Whether the owner of a claim on ``database`` is still running."""
    owner = Owner.parse(label)
    if owner is None or owner.host != HOST:
        return OwnerState.UNKNOWN
    if owner.is_daemon_worker:  # the lock, not the pid: a reused pid cannot pass for the daemon
        try:
            alive = InstanceLock(database).holder() == owner.pid
        except OSError:  # the lock file cannot be read from here
            return OwnerState.UNKNOWN
    else:
        alive = pid_alive(owner.pid)
    return OwnerState.ALIVE if alive else OwnerState.GONE


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host and has not exited (a zombie has)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (macOS): kill(0) is all we know
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


class InstanceLock:
    """One daemon per database: a second one would fight over the same jobs.

    An exclusive ``flock`` on ``<database>.lock``, which holds the daemon's pid while it runs."""

    def __init__(self, database: Path):
        self.database = database
        self.path = database.with_name(database.name + ".lock")
        self._fh: Any = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        for attempt in range(5):  # a holder() probe may hold it shared for an instant
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 4:
                    pid = _read_pid(fh)
                    fh.close()
                    who = f"another assetd (pid {pid})" if pid else "another assetd"
                    raise ConfigError(f"{who} is already running on this database {self.database}") from None
                time.sleep(0.05)
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh

    @property
    def held(self) -> bool:
        return self._fh is not None

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def holder(self) -> int | None:
        """The pid of the daemon holding the lock (0 when it has not written it yet), or None when free."""
        try:
            fh = open(self.path)
        except FileNotFoundError:
            return None
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _read_pid(fh)
            fcntl.flock(fh, fcntl.LOCK_UN)
            return None


def _read_pid(fh: Any) -> int:
    fh.seek(0)
    text = fh.read().strip()
    return int(text) if text.isdigit() else 0
