"""Failpoints: a testing aid for the fault-injection suite (``bench/reliability.py``), not a user setting.

A few places in the code call ``point(NAME, subject)``; when the environment variable ``ASSETD_FAULTS``
names that point, something goes wrong there on purpose, so the suite can prove what a real crash, a full
disk or a hung step at exactly that moment does to the jobs, the files and the database. Unset (always, in
production), ``point`` returns at once: the variable is read once, when this module is imported.

    ASSETD_FAULTS="output-write=kill@3,stage=kill%0.2,db-commit=raise-enospc@1,decode=sleep:30@2"
    ASSETD_FAULTS="stage=kill@name:bad*"      # every stage of the input bad.jpg kills the process
    ASSETD_FAULTS_SEED=7                      # makes the %P draws reproducible

Each entry is ``POINT=ACTION`` followed by at most one trigger and at most one filter:

- actions: ``kill`` (SIGKILL to this process: no handler, no clean-up, as a power cut or the OOM killer),
  ``raise-enospc`` (``OSError(ENOSPC)`` naming the subject, as a full disk; at ``db-commit`` what SQLite raises
  when the database's volume is full, ``sqlite3.OperationalError("database or disk is full")``), ``sleep:SECONDS``
  (a hung share or step);
- triggers: ``@N`` fires at the Nth hit of the point (counted in this process, among hits that pass the
  filter) and never again; ``%P`` fires at each hit with probability P; none: at every hit;
- filter: ``@name:GLOB`` counts only hits whose subject (the input or output file) has a file name or stem
  matching GLOB (``fnmatch``).

Points (the subject in brackets): ``decode`` (the input, before it is read: ``Worker._load``), ``stage``
(the input, before each stage runs: ``Chain.run``), ``output-write`` (the output or manifest, its temporary
file written and fsynced, before its rename: ``outputs.FileSet.publish``, so the Nth hit may fall between
two renames of one job's set), ``db-commit`` (the input, inside ``Store.finish``'s transaction, before
COMMIT), ``actor-start`` (the actor's name, on the actor before it loads the models: ``scaleout.ChainRunner``; a
slow start, or a box that never gets its actors ready). A subject may be a callable, called only when failpoints
are on.

Before acting, a failpoint writes one line to stderr (``assetd fault: kill at output-write #3 (a.png)``), so
a test can tell where the process died.
"""
from __future__ import annotations

import errno
import fnmatch
import os
import random
import signal
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import PurePath

ENV = "ASSETD_FAULTS"
SEED_ENV = "ASSETD_FAULTS_SEED"
POINTS = ("decode", "stage", "output-write", "db-commit", "actor-start")


class FaultSpecError(ValueError):
    """``ASSETD_FAULTS`` does not parse; the message names the entry."""


@dataclass
class Fault:
    point: str
    action: str  # kill | raise-enospc | sleep
    seconds: float = 0.0  # sleep
    nth: int | None = None  # @N
    probability: float | None = None  # %P
    name_glob: str | None = None  # @name:GLOB
    hits: int = 0

    def matches(self, subject: str | None) -> bool:
        if self.name_glob is None:
            return True
        if not subject:
            return False
        name = PurePath(str(subject)).name
        return any(fnmatch.fnmatchcase(n, self.name_glob) for n in (name, name.split(".", 1)[0]))


def parse(text: str | None) -> list[Fault]:
    """``ASSETD_FAULTS``'s entries; an empty or unset value gives none."""
    faults: list[Fault] = []
    for entry in (text or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        point, sep, rest = entry.partition("=")
        if not sep or point not in POINTS:
            raise FaultSpecError(f"{ENV}: {entry!r}: expected POINT=ACTION with POINT one of {', '.join(POINTS)}")
        name_glob = None
        if "@name:" in rest:
            rest, _, name_glob = rest.partition("@name:")
        fault = Fault(point=point, action="", name_glob=name_glob or None)
        try:
            if "@" in rest:
                rest, _, nth = rest.partition("@")
                fault.nth = int(nth)
                if fault.nth < 1:
                    raise ValueError(nth)
            elif "%" in rest:
                rest, _, p = rest.partition("%")
                fault.probability = float(p)
                if not 0.0 <= fault.probability <= 1.0:
                    raise ValueError(p)
            if rest.startswith("sleep:"):
                fault.action, fault.seconds = "sleep", float(rest.removeprefix("sleep:"))
            elif rest in ("kill", "raise-enospc"):
                fault.action = rest
            else:
                raise ValueError(rest)
        except ValueError:
            raise FaultSpecError(f"{ENV}: {entry!r}: expected ACTION (kill, raise-enospc, sleep:SECONDS), then "
                                 "@N or %P, then @name:GLOB") from None
        faults.append(fault)
    return faults


_faults: list[Fault] = parse(os.environ.get(ENV))
_lock = threading.Lock()
_random = random.Random(os.environ.get(SEED_ENV))


def point(name: str, subject: object = None) -> None:
    """A failpoint. Does nothing unless ``ASSETD_FAULTS`` names it (never in production). ``subject``: the file
    it is about (for ``@name:`` and the stderr line), or a callable giving it."""
    if not _faults:
        return
    _fire(name, subject)


def configure(text: str | None, seed: object = None) -> None:
    """Replace the active failpoints (tests in one process; the daemon reads the environment at import)."""
    global _faults, _random
    with _lock:
        _faults = parse(text)
        _random = random.Random(seed)


def _fire(name: str, subject: object) -> None:
    if callable(subject):  # computed only when failpoints are on (Store.finish looks up the job's input)
        subject = subject()
    shown = None if subject is None else str(subject)
    due: list[tuple[Fault, int]] = []
    with _lock:
        for fault in _faults:
            if fault.point != name or not fault.matches(shown):
                continue
            fault.hits += 1
            if fault.nth is not None:
                fires = fault.hits == fault.nth
            elif fault.probability is not None:
                fires = _random.random() < fault.probability
            else:
                fires = True
            if fires:
                due.append((fault, fault.hits))
    for fault, hit in due:
        about = f" ({PurePath(shown).name})" if shown else ""
        try:
            sys.stderr.write(f"assetd fault: {fault.action} at {name} #{hit}{about}\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        if fault.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(10)  # the signal is delivered before this returns
        elif fault.action == "raise-enospc" and name == "db-commit":
            raise sqlite3.OperationalError("database or disk is full")  # what SQLite says on a full volume
        elif fault.action == "raise-enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), shown)
        else:
            time.sleep(fault.seconds)
