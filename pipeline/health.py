"""Problem processes: when the disk, an inbox, the GPU or a model, not one file, stops a kind of work.

A *problem job* (this file is bad, a stage bug on it) fails as always. A *problem process* pauses what it
affects instead, the way print-workflow hot folders do: the workers leave the jobs it covers queued
(``Store.claim_next(skip_rules=..., skip_under=...)`` from ``Problems.blocked()``); a job that ran into it
goes back to the queue without being charged an attempt; it is logged once when it starts (ERROR,
"paused: ...") and once when it clears (WARNING, "resumed: ..."); one alert goes out each way, once it has
lasted ``problems.alert_after_seconds`` (a shorter blip is only logged); ``assetd jobs`` lists it ("paused
since HH:MM: ..."); and work resumes by itself.

Who starts problems (``Problems.start``, idempotent per key):
- the monitor (``run_monitor``, a daemon thread): every ``problems.check_seconds`` it measures each volume
  assetd writes to (channel folders, the manifest folder, the database's folder; one volume, one problem).
  Below ``min_free`` → ``disk:<mount point>`` pausing the rules that write there (every rule when the
  database or the manifest folder is on it: every job writes those); cleared once the volume has
  ``resume_free`` again (by default min_free and half of it again, so it does not flap at the line);
- the worker (``worker.classify``): ENOSPC/EDQUOT writing an output, a manifest or the database → that
  volume's ``disk:`` problem, cleared when a probe write there succeeds (and the watermark holds again);
  CUDA out of memory on ``gpu_oom_limit`` jobs in a row, or a lost GPU → ``gpu`` (the model-backed rules);
  a stage's ``prepare()`` (its model load) failing → ``model:<step>/<backend>`` (the rules using it);
- the daemon's start check, on a database that ran before, for a model that does not load
  (``model:<step>/<backend>`` as above: the other rules run; a first start exits 2 instead);
- the daemon, for the watcher's unreachable inboxes (``inbox:<root>``, ``Scope.inbox``) and a broken config
  file on reload (``config``, ``Scope.nothing()``: alert only, the last good set keeps running);
- executor: ray (``pipeline/scaleout.py``): the whole cluster away (``ray``, every job waits; the daemon restarts
  itself and waits for it) and one actor that cannot be had (``ray:actor-N``, ``Scope.nothing()``: the other
  actors go on; its worker clears it when the actor answers again).

How a problem clears: ``clear(key)`` by whoever knows, or its ``probe`` returning True when the monitor calls
it (every check_seconds). Some causes cannot be checked from outside a job (CUDA out of memory: a small
allocation succeeds while the job's big one fails; a model load: only loading it tells; a write refused for
space: a small probe write may pass where the job's large one does not). Those start with
``trial=True``: when the probe passes, their rules are tried again ("on trial": not paused, still listed), and
the problem clears (logged, alerted) when a job of its scope finishes; the same error during the trial pauses
them again quietly (no new log line or alert) and the next probe waits twice as long (up to 64 times).

Problems are kept in memory (the workers ask ``blocked()`` before each claim) and mirrored in the store's
``problems`` table for ``assetd jobs``; a store write that fails (the database's disk is full) is logged and
changes nothing else.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Collection, Iterable, Iterator, NamedTuple

from .errors import ProcessProblem
from .text import format_duration, printable

if TYPE_CHECKING:
    from .config import Config
    from .notify import Notifier
    from .rules import Rule
    from .store import Job, Store

log = logging.getLogger("assetd.health")

ALL_INPUTS = Path("/")  # every input path is absolute: a problem of every rule skips the jobs under /
PROBE_BYTES = 64 * 1024  # the probe write in a folder whose disk was full
MAX_BACKOFF = 6  # a problem that keeps coming back on trial is probed at most 2**6 × check_seconds apart


# ------------------------------------------------------------------------------------------ scope
NOTHING_PAUSED = "no jobs (alert only)"  # how a scope that pauses nothing describes itself (and is stored)


@dataclass(frozen=True)
class Scope:
    """What a problem pauses: every rule, some rules, the jobs whose input lies under some folders, or nothing
    (an alert only)."""

    everything: bool = False
    rule_names: frozenset[str] = frozenset()
    roots: tuple[Path, ...] = ()

    ALL: ClassVar["Scope"]

    @staticmethod
    def rules(names: Iterable[str]) -> "Scope":
        """The jobs of these rules."""
        return Scope(rule_names=frozenset(names))

    @staticmethod
    def inbox(root: Path) -> "Scope":
        """The jobs whose input lies under ``root`` (and nothing else)."""
        return Scope(roots=(Path(root),))

    @staticmethod
    def nothing() -> "Scope":
        """Nothing paused: the problem is logged and alerted only (a broken config file: the last good set runs)."""
        return Scope()

    @property
    def pauses(self) -> bool:
        """Whether it holds any job back (``nothing()`` does not: its problem is only logged and alerted)."""
        return bool(self.everything or self.rule_names or self.roots)

    def words(self) -> tuple[str, str]:
        """How its start and its end are logged and alerted: paused/resumed, or problem/cleared for ``nothing()``."""
        return ("paused", "resumed") if self.pauses else ("problem", "cleared")

    def covers(self, rule: str, input_path: str | Path) -> bool:
        if self.everything or rule in self.rule_names:
            return True
        path = str(input_path)
        return any(path.startswith(str(root).rstrip("/") + "/") for root in self.roots)

    def describe(self) -> str:
        """What waits, for messages: "all jobs", "jobs of rules cutouts, products", "jobs of files under /srv/in"."""
        if self.everything:
            return "all jobs"
        parts = []
        if self.rule_names:
            names = sorted(self.rule_names)
            parts.append(f"jobs of rule{'s' if len(names) > 1 else ''} {', '.join(names)}")
        if self.roots:
            parts.append("jobs of files under " + ", ".join(printable(str(r)) for r in self.roots))
        return " and ".join(parts) or NOTHING_PAUSED


Scope.ALL = Scope(everything=True)


# ------------------------------------------------------------------------------------------ amounts
_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3, "tb": 1000 ** 4,
          "k": 1024, "kib": 1024, "m": 1024 ** 2, "mib": 1024 ** 2, "g": 1024 ** 3, "gib": 1024 ** 3,
          "t": 1024 ** 4, "tib": 1024 ** 4}
_AMOUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*|%)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Amount:
    """Free space: bytes, or a percentage of the volume's size."""

    bytes: int = 0
    percent: float | None = None

    def of(self, total: int) -> int:
        """In bytes, for a volume of ``total`` bytes."""
        return int(total * self.percent / 100) if self.percent is not None else self.bytes

    def times(self, factor: float) -> "Amount":
        if self.percent is not None:
            return Amount(percent=min(self.percent * factor, 100.0))
        return Amount(bytes=int(self.bytes * factor))

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else format_bytes(self.bytes)


def parse_amount(value: str | int) -> Amount:
    """``500MB``, ``2GB`` (powers of 1000), ``2GiB`` or ``2G`` (of 1024), a plain integer (bytes), ``2%``.
    ValueError saying what is expected otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"expected bytes (500MB, 2GB, a plain integer) or a percentage (2%), got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"expected a size of 0 or more, got {value!r}")
        return Amount(bytes=int(value))
    match = _AMOUNT.match(str(value))
    unit = match.group(2).lower() if match else None
    if match is None or (unit != "%" and unit not in _UNITS):
        raise ValueError(f"expected bytes (500MB, 2GB, a plain integer) or a percentage (2%), got {value!r}")
    number = float(match.group(1))
    if unit == "%":
        if number > 100:
            raise ValueError(f"expected a percentage up to 100%, got {value!r}")
        return Amount(percent=number)
    return Amount(bytes=int(number * _UNITS[unit]))


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" or n >= 100 else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # unreachable


# ------------------------------------------------------------------------------------------ inboxes
#: Why an inbox that was a mount point when watched, and is not one now, cannot be reached.
UNMOUNTED = "the share mounted there is gone (the folder is no longer a mount point)"


def is_mount(folder: Path) -> bool:
    """Whether ``folder`` (symlinks resolved: an inbox path may link to the share) is a mount point."""
    return os.path.ismount(os.path.realpath(folder))


# ------------------------------------------------------------------------------------------ errors
def is_disk_full(exc: BaseException) -> bool:
    """A write refused for want of space or quota: ENOSPC/EDQUOT, or SQLite's "database or disk is full"."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "database or disk is full" in str(exc)


def _causes(exc: BaseException) -> Iterable[BaseException]:
    """The exception and what it was raised from (a stage's error wrapped by the chain, by ``gpu_errors``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def gpu_trouble(exc: BaseException) -> str | None:
    """``"oom"`` for CUDA out of memory, ``"lost"`` for a GPU error that no retry of the job fixes (a CUDA
    error, a lost device), else None. Looks through the exceptions it was raised from; never imports torch
    (an error from torch means torch is imported)."""
    from .models import is_gpu_lost

    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    for e in _causes(exc):
        if (oom is not None and isinstance(e, oom)) or "CUDA out of memory" in str(e):
            return "oom"
        if is_gpu_lost(e):
            return "lost"
    return None


def gpu_probe() -> bool:
    """Whether a small CUDA allocation succeeds (the cached memory emptied first). Without CUDA in this process
    (torch not imported, or no GPU) there is nothing to look at: True, and the trial decides (see the module)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return True
    try:
        torch.cuda.empty_cache()
        block = torch.empty(16 * 1024 * 1024, dtype=torch.uint8, device="cuda")
        del block
        torch.cuda.synchronize()
        return True
    except Exception:  # noqa: BLE001 - any failure means: not back yet
        return False


def probe_write(folder: Path) -> bool:
    """Whether a small file can be written, fsynced and removed in ``folder`` (or its nearest existing parent): an
    output's own way of writing (``outputs.write_temp``), so a probe cut short by a crash is cleaned up like one."""
    from .outputs import write_temp  # the codecs it imports are not needed to read the problems

    try:
        tmp = write_temp(_existing(folder) / ".assetd-probe", b"\0" * PROBE_BYTES)
    except OSError:
        return False
    try:
        tmp.unlink()
    except OSError:
        pass
    return True


def _existing(path: Path) -> Path:
    """``path``, or its nearest parent that exists (a channel folder is created with its first output)."""
    path = Path(path)
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


# ------------------------------------------------------------------------------------------ rules
def model_rules(rules: Iterable["Rule"]) -> set[str]:
    """The rules with a model-backed step (a stage's ``runs_model``): what a GPU problem pauses."""
    from .stages.base import stage_class

    return {r.name for r in rules if any(stage_class(s.step, s.backend).runs_model(s.options) for s in r.steps)}


def rules_using(rules: Iterable["Rule"], step: str, backend: str) -> set[str]:
    """The rules running ``step`` with ``backend`` and a model (``runs_model`` with their options: crops with
    ``fill: pad`` loads none): what a model that no longer loads pauses."""
    from .stages.base import stage_class

    return {r.name for r in rules for s in r.steps
            if s.step == step and stage_class(s.step, s.backend).backend == backend
            and stage_class(s.step, s.backend).runs_model(s.options)}


# ------------------------------------------------------------------------------------------ problems
@dataclass
class Problem:
    key: str
    message: str
    scope: Scope
    started_at: float  # by the Problems' clock (wall time)
    probe: Callable[[], bool] | None = None
    alert_after: float = 0.0
    trial: bool = False  # the probe only means "try again": cleared by a job of its scope finishing
    on_trial: bool = False  # the probe passed: its scope runs again, the problem is still listed
    alerted: bool = False
    row: int | None = None  # its row in the store's problems table
    next_probe: float = 0.0
    restarts: int = 0  # times it came back on trial (the probe interval doubles each time)


INHERIT_SECONDS = 30.0  # how long a restarted daemon looks for the outages its predecessor left open (``Problems``)


class Volume(NamedTuple):
    key: str  # disk:<mount point>
    mount: Path
    folders: list[Path]  # the configured folders on it: the first is where a probe write goes
    whole: bool  # the database or the manifest folder is on it: every job writes there
    rules: frozenset[str]  # the rules writing to its channel folders


class Problems:
    """The problem processes of one daemon: started and cleared from any thread (workers, watcher, monitor)."""

    def __init__(self, store: "Store | None", notifier: "Notifier | None", config: "Config",
                 clock: Callable[[], float] = time.time, *, rules: Iterable["Rule"] = (),
                 disk_usage: Callable[[Path], Any] = shutil.disk_usage,
                 device: Callable[[Path], Any] | None = None):
        """``rules``: the rules running now (which write where, which run models; the reloader may assign
        ``problems.rules``). ``disk_usage`` and ``device`` (a folder's volume id, ``st_dev``) are
        injectable for tests."""
        self.store = store
        self.notifier = notifier
        self.config = config
        self.clock = clock
        self.rules = list(rules)
        self.disk_usage = disk_usage
        self.device = device or (lambda path: os.stat(path).st_dev)
        self._lock = threading.RLock()
        self._active: dict[str, Problem] = {}
        self._oom_streak = 0
        self._next_disk_check = 0.0
        # the outages the previous daemon left open: one found again soon is the same outage (its alert is not sent
        # twice, its "resumed" goes out when it ends); the others end once the first checks are done (``check``)
        self._inherited: dict[str, dict[str, Any]] = {
            row["key"]: row for row in (self._record(lambda s: s.active_problems()) or [])}
        self._inherited_until = clock() + max(INHERIT_SECONDS, 3 * self.settings.check_seconds)

    @property
    def settings(self) -> Any:
        return self.config.problems

    # -- the API ----------------------------------------------------------------------------------
    def start(self, key: str, message: str, scope: Scope, *, probe: Callable[[], bool] | None = None,
              alert_after: float = 0.0, trial: bool = False) -> bool:
        """A problem process starts (idempotent per ``key``: True only when it is new).

        New: recorded, logged once at ERROR ("paused: <message>"; "problem: ..." when its scope pauses nothing), and one alert queued once it has lasted
        ``alert_after`` seconds (cleared before that: no alert at all). ``probe()``: True when the cause is
        gone; the monitor calls it every ``check_seconds`` and clears the problem (with ``trial``, see the
        module: its scope is tried again and a job of it finishing clears it). Already known: nothing
        changes, except that one on trial is paused again (quietly) and probed later."""
        now = self.clock()
        with self._lock:
            known = self._active.get(key)
            if known is not None and known.message != message and not known.on_trial:
                known.message = message  # its cause changed (a file broken another way): the record says the latest
                if known.row is not None:
                    row = known.row
                    self._record(lambda s: s.problem_changed(row, message))
            if known is not None:
                if known.on_trial:
                    known.on_trial = False
                    known.restarts += 1
                    known.next_probe = now + self._probe_interval(known)
                    log.info("paused again (tried again, same problem): %s", known.message)
                return False
            problem = self._active[key] = Problem(key, message, scope, now, probe, alert_after, trial,
                                                  next_probe=now + self.settings.check_seconds)
            before = self._inherited.pop(key, None)
            if before is not None:  # the outage a previous daemon recorded, still going
                problem.started_at, problem.row, problem.alerted = before["started_at"], before["id"], bool(
                    before["alerted"])
                log.error("%s (since %s, before assetd restarted): %s", scope.words()[0],
                          time.strftime("%H:%M", time.localtime(problem.started_at)), message)
                if before["message"] != message:
                    row = problem.row
                    self._record(lambda s: s.problem_changed(row, message))
            else:
                log.error("%s: %s", scope.words()[0], message)
                problem.row = self._record(lambda s: s.problem_started(key, message, scope.describe(), now))
            if not problem.alerted and now - problem.started_at >= alert_after:
                self._alert(problem)
        return True

    def clear(self, key: str, message: str | None = None) -> bool:
        """The problem ``key`` is over (idempotent: True only when it was active): logged once at WARNING
        ("resumed: <message>") and one "cleared" alert queued if its "on" alert went out."""
        now = self.clock()
        with self._lock:
            problem = self._active.pop(key, None)
            if problem is None:
                return False
            lasted = "paused" if problem.scope.pauses else "lasted"
            text = f"{message or problem.message + ' (cleared)'} ({lasted} {format_duration(now - problem.started_at)})"
            log.warning("%s: %s", problem.scope.words()[1], text)
            if problem.row is not None:
                row = problem.row
                self._record(lambda s: s.problem_cleared(row, now, text))
            if problem.alerted and self.notifier is not None:
                self._notify(False, f"{problem.scope.words()[1]}: {key}", text)
        return True

    def blocked(self) -> tuple[set[str], list[Path]]:
        """(rules paused, input folders paused) for ``Store.claim_next``; a problem of every rule gives the
        folder ``/`` (every input lies under it)."""
        rules: set[str] = set()
        roots: list[Path] = []
        with self._lock:
            for problem in self._active.values():
                if problem.on_trial:
                    continue
                rules |= problem.scope.rule_names
                roots += [ALL_INPUTS] if problem.scope.everything else problem.scope.roots
        return rules, list(dict.fromkeys(roots))

    def covering(self, rule: str, input_path: str | Path) -> Problem | None:
        """The active problem (not on trial) that pauses a job of ``rule`` on ``input_path``, or None."""
        with self._lock:
            return next((p for p in self._active.values() if not p.on_trial and p.scope.covers(rule, input_path)),
                        None)

    def active(self) -> list[Problem]:
        """The problems now, oldest first (for logs and tests; ``assetd jobs`` reads the store's mirror)."""
        with self._lock:
            return sorted(self._active.values(), key=lambda p: p.started_at)

    def job_done(self, job: "Job", model: bool) -> None:
        """A job finished its chain (``model``: one with a model-backed step): the GPU streak of out-of-memory
        errors ends, and the problems on trial that pause its kind clear (it works again)."""
        with self._lock:
            if model:
                self._oom_streak = 0
            done = [p for p in self._active.values() if p.on_trial and p.scope.covers(job.rule, job.input_path)]
        for problem in done:
            self.clear(problem.key, f"{problem.key}: works again (job {job.id} {printable(job.input_path)} "
                                    f"finished); {problem.scope.describe()} go on")

    # -- what the worker asks for (worker.classify) ---------------------------------------------------
    def gpu_oom(self) -> int:
        """One more job in a row ran out of GPU memory; returns how many in a row now."""
        with self._lock:
            self._oom_streak += 1
            return self._oom_streak

    def gpu_problem(self, job: "Job", exc: BaseException, lost: bool) -> ProcessProblem:
        """The ``gpu`` problem: CUDA out of memory ``gpu_oom_limit`` jobs in a row, or a lost GPU."""
        scope = Scope.rules(model_rules(self.rules) | {job.rule})
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if lost:
            cause = f"GPU error ({first}) on {printable(job.input_path)}"
            after = ("assetd tries the GPU again every " f"{self.settings.check_seconds:g}s (restart assetd if it "
                     "does not come back)")
        else:
            cause = (f"CUDA out of memory on {self._oom_streak} jobs in a row (the last: "
                     f"{printable(job.input_path)})")
            after = f"they are tried again in {self.settings.check_seconds:g}s"
        return ProcessProblem("gpu", f"gpu: {cause}; {scope.describe()} wait; {after}", scope, probe=gpu_probe,
                              alert_after=self.settings.alert_after_seconds, trial=True)

    def model_problem(self, job: "Job", step: str, backend: str, exc: BaseException) -> ProcessProblem:
        """``model:<step>/<backend>``: the stage's ``prepare()`` (its model load) failed; tried again after
        ``check_seconds`` by the next job of its rules (a trial: see the module)."""
        cause = exc.__cause__ or exc
        return self._model_problem(step, backend, rules_using(self.rules, step, backend) | {job.rule},
                                   f"{type(cause).__name__}: {cause}")

    def unloaded_model_problem(self, step: str, backend: str, rule_names: Iterable[str], why: str) -> ProcessProblem:
        """``model:<step>/<backend>`` found before any job: the daemon's start check could not load the model
        (``Daemon._pause_unloaded``; ``why``: what the check said, with what to do). The same problem as
        ``model_problem``: after ``check_seconds`` the next job of ``rule_names`` loads it again (a trial), and
        one that finishes clears it."""
        return self._model_problem(step, backend, set(rule_names), why)

    def _model_problem(self, step: str, backend: str, rule_names: set[str], why: str) -> ProcessProblem:
        scope = Scope.rules(rule_names)
        key = f"model:{step}/{backend}"
        message = (f"{key}: the model does not load ({' '.join(why.split())}); "
                   f"{scope.describe()} wait; loading is tried again in {self.settings.check_seconds:g}s, then less "
                   "often while it keeps failing")
        return ProcessProblem(key, message, scope, probe=lambda: True,
                              alert_after=self.settings.alert_after_seconds, trial=True)

    def disk_problem(self, job: "Job", exc: BaseException) -> ProcessProblem:
        """``disk:<mount point>`` for a write refused for want of space: the volume of the file named in the
        error (the database for SQLite's), else the one of the job's folders where a probe write fails, else
        the one of them with the least free space. Its rules are tried again when a probe write there succeeds
        and the volume is above ``resume_free`` again (a trial: a small write may pass where the job's did not;
        a job of them finishing clears it)."""
        path: Path | None = None  # the file being written
        if isinstance(exc, sqlite3.Error):
            path = self.config.database
        elif isinstance(exc, OSError) and exc.filename:
            path = Path(os.fsdecode(exc.filename))
        volume = self.volume_of(path.parent) if path is not None else self._full_volume(job.rule)
        why = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else "database or disk is full"
        scope = self._scope(volume)
        if not scope.covers(job.rule, job.input_path):  # a folder outside the configured ones: its rule at least
            scope = Scope.rules(scope.rule_names | {job.rule})
        message = (f"{volume.key}: {why} writing {printable(str(path or volume.folders[0]))} "
                   f"(job {job.id} {printable(job.input_path)}); {scope.describe()} wait until there is room again")
        return ProcessProblem(volume.key, message, scope, probe=lambda: self._room_again(volume),
                              alert_after=self.settings.alert_after_seconds, trial=True)

    def inbox_problem(self, root: Path, reason: str, probe: bool = True) -> ProcessProblem:
        """``inbox:<root>``: an inbox folder cannot be reached (``reason``); the jobs of its files wait.
        ``probe``: cleared once it is a folder again (the worker found it gone); without, whoever reported it
        clears it (the watcher, watching it again)."""
        root = Path(root)
        return ProcessProblem(f"inbox:{root}", f"inbox {printable(str(root))}: {reason}; its files wait until it is "
                                               "back (assetd does not recreate it)", Scope.inbox(root),
                              probe=(lambda: root.is_dir()) if probe else None,
                              alert_after=self.settings.alert_after_seconds)

    def unmounted_inbox_problem(self, root: Path) -> ProcessProblem:
        """``inbox:<root>`` for an inbox that was a share's mount point and is not one now: the folder is there all
        along (the empty one under the share), so it is back once it is a mount point again."""
        problem = self.inbox_problem(root, UNMOUNTED)
        problem.probe = lambda: is_mount(Path(root))
        return problem

    def start_problem(self, problem: ProcessProblem) -> bool:
        """``start`` with a ProcessProblem's key, message, scope, probe, alert_after and trial."""
        return self.start(problem.key, problem.message, problem.scope,  # type: ignore[arg-type]
                          probe=problem.probe, alert_after=problem.alert_after,  # type: ignore[arg-type]
                          trial=problem.trial)

    # -- the monitor ------------------------------------------------------------------------------
    def run_monitor(self, stop: threading.Event) -> None:
        """Thread body: volumes every ``check_seconds``, probes when due, delayed alerts; until ``stop``."""
        tick = min(self.settings.check_seconds, 1.0)
        while not stop.is_set():
            try:
                self.check()
            except Exception:  # the monitor must survive anything
                log.exception("the problem monitor failed; trying again")
            stop.wait(tick)

    def check(self) -> None:
        """One round of the monitor: volumes (when due), probes (when due), alerts (when due)."""
        now = self.clock()
        if now >= self._next_disk_check:
            self._next_disk_check = now + self.settings.check_seconds
            self.check_disks()
        with self._lock:
            due = [p for p in self._active.values() if not p.on_trial and (p.probe is not None or p.trial)
                   and now >= p.next_probe]
        for problem in due:
            try:
                ok = problem.probe() if problem.probe is not None else True
            except Exception:  # noqa: BLE001 - a failing probe means: not yet
                log.debug("probe of %s failed", problem.key, exc_info=True)
                ok = False
            with self._lock:
                if self._active.get(problem.key) is not problem:
                    continue  # cleared meanwhile
                if not ok:
                    problem.next_probe = now + self._probe_interval(problem)
                elif problem.trial:
                    problem.on_trial = True
                    log.info("trying again: %s", problem.message)
                    continue
            if ok:
                self.clear(problem.key, f"{problem.key}: the cause is gone; {problem.scope.describe()} go on")
        with self._lock:
            for problem in self._active.values():
                if not problem.alerted and not problem.on_trial and now - problem.started_at >= problem.alert_after:
                    self._alert(problem)
        if self._inherited and now >= self._inherited_until:
            self._end_inherited(now)

    def _end_inherited(self, now: float) -> None:
        """The outages the previous daemon left open that this one has not found again by now are over: each is
        closed, with its "resumed" alert when its "paused" one went out (a problem does not end in silence
        because assetd restarted meanwhile)."""
        with self._lock:
            ended, self._inherited = list(self._inherited.values()), {}
        for row in ended:
            began = time.strftime("%H:%M", time.localtime(row["started_at"]))
            what = row["message"].split("; ")[0]  # what it was, without what it made wait (that is over)
            text = f"{row['key']}: ended while assetd was stopped or restarting (it began at {began}: {what})"
            word = "cleared" if row["scope"] in (None, NOTHING_PAUSED) else "resumed"
            log.warning("%s: %s", word, text)
            self._record(lambda s, row=row, text=text: s.problem_cleared(row["id"], now, text))
            if row["alerted"] and self.notifier is not None:
                self._notify(False, f"{word}: {row['key']}", text)

    def volumes(self) -> list[Volume]:
        """The volumes assetd writes to (channel folders, the staging folders of channels publishing on approval,
        manifest folder, database folder), one per device."""
        writers: dict[Path, set[str]] = {}
        for rule in self.rules:
            for spec in rule.outputs:
                channel = self.config.channels.get(spec.channel)
                if channel is not None and channel.path is not None:
                    writers.setdefault(channel.path, set()).add(rule.name)
                if channel is not None and channel.publish == "on_approval":
                    writers.setdefault(self.config.staging_folder(channel), set()).add(rule.name)
        folders: list[tuple[Path, bool, set[str]]] = [(self.config.database.parent, True, set()),
                                                     (self.config.manifest_folder, True, set())]
        folders += [(ch.path, False, writers.get(ch.path, set())) for ch in self.config.channels.values()
                    if ch.path is not None]
        folders += [(self.config.staging_folder(ch), False, writers.get(self.config.staging_folder(ch), set()))
                    for ch in self.config.channels.values() if ch.publish == "on_approval"]
        found: dict[Any, tuple[Path, list[Path], bool, set[str]]] = {}
        for folder, whole, rules in folders:
            try:
                dev, mount = self._device_and_mount(folder)
            except OSError:  # unreachable: a job writing there says so
                continue
            _, listed, was_whole, was_rules = found.setdefault(dev, (mount, [], False, set()))
            listed.append(folder)
            found[dev] = (mount, listed, was_whole or whole, was_rules | rules)
        return [Volume(f"disk:{mount}", mount, listed, whole, frozenset(rules))
                for mount, listed, whole, rules in found.values()]

    def volume_of(self, path: Path) -> Volume:
        """The volume holding ``path`` (one of ``volumes()``, or one of its own when assetd does not write there
        by configuration)."""
        dev, mount = self._device_and_mount(path)
        for volume in self.volumes():
            if self._device_and_mount(volume.folders[0])[0] == dev:
                return volume
        return Volume(f"disk:{mount}", mount, [Path(path)], False, frozenset())

    def measure(self) -> Iterator[tuple[Volume, Any]]:
        """Each volume assetd writes to with its ``disk_usage`` now (one that cannot be measured is left out)."""
        for volume in self.volumes():
            try:
                usage = self.disk_usage(_existing(volume.folders[0]))
            except OSError:
                continue
            yield volume, usage

    def check_disks(self) -> None:
        """Start a ``disk:`` problem for each volume below ``min_free``; clear the ones above ``resume_free``."""
        low = parse_amount(self.settings.min_free)
        high = self._resume_amount()
        for volume, usage in self.measure():
            floor, resume = low.of(usage.total), self._resume_bytes(high, usage.total)
            with self._lock:
                problem = self._active.get(volume.key)
            if problem is None and usage.free < floor:
                scope = self._scope(volume)
                self.start(volume.key, f"{volume.key}: {format_bytes(usage.free)} free, below problems.min_free "
                                       f"{low} ({self._folders(volume)}); {scope.describe()} wait until it has "
                                       f"{format_bytes(resume)} free", scope,
                           alert_after=self.settings.alert_after_seconds)
            elif problem is not None and problem.probe is None and not problem.trial and usage.free >= resume:
                self.clear(volume.key, f"{volume.key}: {format_bytes(usage.free)} free again; "
                                       f"{problem.scope.describe()} go on")

    def setting_problems(self) -> list[str]:
        """What ``min_free`` and ``resume_free`` cannot mean on the volumes assetd writes to, measured now: more
        than a volume holds in all (its rules would stay paused for good), or ``resume_free`` below ``min_free``
        there (a percentage against bytes is known per volume only; the same units are refused when the config
        loads), which would pause and resume its rules over and over. ``assetd check`` and ``assetd run`` refuse
        them."""
        low = parse_amount(self.settings.min_free)
        high = parse_amount(self.settings.resume_free) if self.settings.resume_free is not None else None
        lines = []
        for volume, usage in self.measure():
            total = int(usage.total)
            where = f"the volume at {printable(str(volume.mount))} ({self._folders(volume)})"
            too_big = [(key, amount) for key, amount in (("min_free", low), ("resume_free", high))
                       if amount is not None and amount.of(total) > total]
            for key, amount in too_big:
                lines.append(f"problems.{key}: {amount} is more than {where} holds in all ({format_bytes(total)}); "
                             "the rules writing there would stay paused for good")
            if high is not None and not too_big and high.of(total) < low.of(total):
                def there(amount: Amount) -> str:  # a percentage in bytes on this volume
                    return f" ({format_bytes(amount.of(total))} there)" if amount.percent is not None else ""

                lines.append(f"problems.resume_free: {high}{there(high)} is below problems.min_free {low}{there(low)} "
                             f"on {where} "
                             f"({format_bytes(total)}); work there would pause and resume over and over: set "
                             "resume_free at or above min_free, or leave it out")
        return lines

    # -- inside -----------------------------------------------------------------------------------
    def _resume_amount(self) -> Amount:
        if self.settings.resume_free is not None:
            return parse_amount(self.settings.resume_free)
        return parse_amount(self.settings.min_free).times(1.5)

    def _resume_bytes(self, high: Amount, total: int) -> int:
        """The free bytes a paused volume needs to resume. The default (min_free and half of it again) never asks
        for more than min_free plus half the rest of the volume, so a high min_free (70%) can still be reached."""
        resume = high.of(total)
        floor = parse_amount(self.settings.min_free).of(total)
        if self.settings.resume_free is None:
            resume = min(resume, floor + max(total - floor, 0) // 2)
        return max(resume, floor)  # never below min_free (a volume other than at start): no flapping at the line

    def _room_again(self, volume: Volume) -> bool:
        """After a write refused for space: the volume is above ``resume_free`` and a probe write succeeds."""
        try:
            usage = self.disk_usage(_existing(volume.folders[0]))
        except OSError:
            return False
        resume = self._resume_bytes(self._resume_amount(), usage.total)
        return usage.free >= resume and probe_write(volume.folders[0])

    def _full_volume(self, rule_name: str) -> Volume:
        """The volume a rule's job could not write to when the error named no file."""
        rule = next((r for r in self.rules if r.name == rule_name), None)
        mine = [v for v in self.volumes() if v.whole or (rule is not None and rule.name in v.rules)]
        for volume in mine:
            if not probe_write(volume.folders[0]):
                return volume
        if not mine:
            return self.volume_of(self.config.database.parent)

        def free(volume: Volume) -> float:
            try:
                return self.disk_usage(_existing(volume.folders[0])).free
            except OSError:
                return float("inf")

        return min(mine, key=free)

    def _scope(self, volume: Volume) -> Scope:
        return Scope.ALL if volume.whole else Scope.rules(volume.rules)

    def _folders(self, volume: Volume) -> str:
        shown = [printable(str(f)) for f in volume.folders[:3]]
        return ", ".join(shown) + (f" and {len(volume.folders) - 3} more" if len(volume.folders) > 3 else "")

    def _device_and_mount(self, folder: Path) -> tuple[Any, Path]:
        """(device id, mount point) of a folder (of its nearest existing parent): the mount point is the
        topmost parent on the same device."""
        path = _existing(Path(folder))
        dev = self.device(path)
        mount = path
        while mount.parent != mount:
            try:
                if self.device(mount.parent) != dev:
                    break
            except OSError:
                break
            mount = mount.parent
        return dev, mount

    def _probe_interval(self, problem: Problem) -> float:
        return self.settings.check_seconds * 2 ** min(problem.restarts, MAX_BACKOFF)

    def _alert(self, problem: Problem) -> None:
        """The one "on" alert of a problem (called under the lock)."""
        problem.alerted = True
        if problem.row is not None:
            row = problem.row
            self._record(lambda s: s.problem_alerted(row))
        if self.notifier is not None:
            self._notify(True, f"{problem.scope.words()[0]}: {problem.key}", problem.message)

    def _notify(self, started: bool, title: str, body: str) -> None:
        try:
            self.notifier.problem(started, title, body)  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - the outbox is in the database, which may be the full disk
            log.warning("could not queue the alert %r: %s: %s", title, type(exc).__name__, exc)

    def _record(self, write: Callable[["Store"], Any]) -> Any:
        """A write to the store's problems table; a failure (the database's disk is full) is logged only."""
        if self.store is None:
            return None
        try:
            return write(self.store)
        except sqlite3.Error as exc:
            log.warning("could not record a problem in the database: %s", exc)
            return None


def claim_filters(problems: "Problems | None") -> dict[str, Collection[Any]]:
    """``Store.claim_next``'s keyword arguments leaving the paused jobs queued (none without Problems)."""
    if problems is None:
        return {}
    rules, roots = problems.blocked()
    return {"skip_rules": rules, "skip_under": roots}


__all__ = ["ALL_INPUTS", "UNMOUNTED", "Amount", "Problem", "Problems", "Scope", "Volume", "claim_filters",
           "format_bytes", "gpu_probe", "gpu_trouble", "is_disk_full", "is_mount", "model_rules", "parse_amount",
           "probe_write", "rules_using"]