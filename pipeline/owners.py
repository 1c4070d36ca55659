"""Who owns the database: the daemon's instance lock."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from .errors import ConfigError


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
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fh)
            fh.close()
            who = f"another assetd (pid {pid})" if pid else "another assetd"
            raise ConfigError(f"{who} is already running on this database {self.database}") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def _read_pid(fh: Any) -> int:
    fh.seek(0)
    text = fh.read().strip()
    return int(text) if text.isdigit() else 0
