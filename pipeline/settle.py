"""Decide when a file in an inbox has stopped changing: the settle rule, with no threads of its own.

A *candidate* is a path an event or a scan reported. Each settle pass re-stats every candidate
(``lstat``; symlinks are never followed). A candidate is *settled* once it is a regular file whose
``(size, mtime_ns)`` *signature* has not changed for its inbox's ``settle_seconds``; a different
signature, or a new event for the path, restarts its clock. A settled file is offered once per
``(path, size, mtime_ns)``: the tracker remembers what was handed over, and forgets it when the
file is gone (so the same bytes dropped again are a new drop).

Time comes from the injected ``clock`` and file status from the injected ``lstat``, so the rule is
tested with a fake clock and no sleeps. The tracker is safe to call from several threads (the
observers add candidates while the settle thread runs passes); it never holds its lock during I/O.
"""
from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .config import InboxConfig
from .ignore import is_ignored, is_sidecar_mask

__all__ = ["Settled", "SettleTracker", "Signature"]

log = logging.getLogger(__name__)

Signature = tuple[int, int]  # (size, mtime_ns)


class Settled(NamedTuple):
    """A file that has stopped changing, to be handed over."""

    path: Path
    inbox: InboxConfig
    signature: Signature


@dataclass
class _Candidate:
    """A path that may be a new file: waiting for its size and mtime to stop changing."""

    inbox: InboxConfig
    changed_at: float  # clock time of the last change seen (event or different signature)
    signature: Signature | None = None


class SettleTracker:
    """Candidates, their signatures and the "settled?" decision for every inbox."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        lstat: Callable[[Path], os.stat_result] = os.lstat,
        logger: logging.Logger | None = None,
    ):
        self.clock = clock
        self._lstat = lstat
        self._log = logger or log
        self._lock = threading.Lock()
        self._candidates: dict[Path, _Candidate] = {}
        self._announced: dict[Path, Signature] = {}  # handed over, with the signature it had then

    def pending(self) -> int:
        """How many candidates are still waiting to settle."""
        with self._lock:
            return len(self._candidates)

    def add(self, path: Path, inbox: InboxConfig, now: float | None = None,
            signature: Signature | None = None) -> None:
        """Record ``path`` as a candidate of ``inbox``, seen at ``now`` (default: the clock).

        Without ``signature`` (an event) the settle clock of a known candidate restarts. With one (a
        scan found the file) nothing restarts, and a file handed over with that signature is skipped.
        Nested inboxes: the innermost inbox that reported the path owns it.
        """
        if now is None:
            now = self.clock()
        with self._lock:
            if signature is not None and self._announced.get(path) == signature:
                return
            cand = self._candidates.get(path)
            if cand is None:
                self._candidates[path] = _Candidate(inbox, now, signature)
                return
            if signature is None:
                cand.changed_at = now  # a fresh event restarts the settle clock (a scan only finds it again)
            if len(Path(os.path.abspath(inbox.path)).parts) > len(Path(os.path.abspath(cand.inbox.path)).parts):
                cand.inbox = inbox  # nested inboxes: the innermost one owns the file

    def settle_pass(self, stopping: Callable[[], bool] = lambda: False) -> Iterator[Settled]:
        """Re-stat every candidate once; yield each one that has settled (it stops being a candidate).

        Lazy: a caller that hands each file over before asking for the next sees later candidates
        as they are after that hand-over. Ends early once ``stopping()`` is true.
        """
        with self._lock:
            candidates = list(self._candidates.items())
        for path, cand in candidates:
            if stopping():
                return
            settled = self._check(path, cand)
            if settled is not None:
                yield settled

    def handed_over(self, path: Path, signature: Signature) -> None:
        """Remember that ``path`` was handed over with ``signature``: not offered again unchanged."""
        with self._lock:
            self._announced[path] = signature

    def forget_under(self, root: Path) -> None:
        """Forget which files under ``root`` were handed over: an inbox back after an outage offers them all again
        (the intake knows those done; a file whose job ended while its share was away is then moved by ``after``)."""
        prefix = str(root).rstrip("/") + "/"
        with self._lock:
            for path in [p for p in self._announced if str(p).startswith(prefix)]:
                self._announced.pop(path, None)

    def forget_gone(self) -> None:
        """Drop the memory of handed-over files that are no longer regular files."""
        with self._lock:
            announced = list(self._announced)
        gone = [path for path in announced if not self._is_regular(path)]
        with self._lock:
            for path in gone:
                self._announced.pop(path, None)

    # -- one candidate ------------------------------------------------------------------------

    def _check(self, path: Path, cand: _Candidate) -> Settled | None:
        now = self.clock()
        root = Path(os.path.abspath(cand.inbox.path))
        try:
            ignored = is_ignored(path, root) and not is_sidecar_mask(path, root)  # a mask settles for its shot
        except ValueError:  # not under its inbox
            ignored = True
        try:
            st = None if ignored else self._lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            st = None
        except OSError as exc:  # share briefly unreachable: keep the candidate, try next pass
            self._log.debug("inbox: cannot stat %s: %s", path, exc)
            return None
        if st is None or not stat.S_ISREG(st.st_mode):
            with self._lock:  # gone, ignored, a symlink or a folder: not a file to take
                if self._candidates.get(path) is cand:
                    del self._candidates[path]
                if st is None and not ignored:
                    self._announced.pop(path, None)
            return None
        signature = (st.st_size, st.st_mtime_ns)
        with self._lock:
            if self._candidates.get(path) is not cand:
                return None
            if signature != cand.signature:
                cand.signature = signature
                cand.changed_at = now
                return None
            if now - cand.changed_at < cand.inbox.settle_seconds:
                return None
            del self._candidates[path]
            if self._announced.get(path) == signature:
                return None
        if not self._no_symlinked_folders(root, path):
            return None
        return Settled(path, cand.inbox, signature)

    def _is_regular(self, path: Path) -> bool:
        try:
            return stat.S_ISREG(self._lstat(path).st_mode)
        except OSError:
            return False

    def _no_symlinked_folders(self, root: Path, path: Path) -> bool:
        """True when every folder between ``root`` and ``path`` is a real folder, not a symlink."""
        folder = path.parent
        while folder != root and len(folder.parts) > len(root.parts):
            try:
                if not stat.S_ISDIR(self._lstat(folder).st_mode):
                    return False
            except OSError:
                return False
            folder = folder.parent
        return True
