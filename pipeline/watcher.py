"""Watch the inbox folders and hand over files once they have stopped changing.

This module only *finds* files; it never processes them. The flow:

1. A watchdog observer per inbox (inotify, or polling for SMB/NFS shares where inotify never fires)
   feeds ``_InboxEventHandler``, which only records the path as a *candidate* with a stamp from
   the settle clock. Nothing slow runs in the observer's thread.
2. The settle thread runs a pass of the ``SettleTracker`` (``pipeline/settle.py``) each tick. A
   candidate is *settled* once it is a regular file (``lstat``; symlinks are never followed) whose
   ``(size, mtime_ns)`` has not changed for ``settle_seconds``; any change, or any new event for it,
   restarts the clock. Settled files are handed to ``on_settled(path, inbox)`` exactly once per
   ``(path, size, mtime_ns)``.
3. A reconciliation scan at start, and a rescan every ``rescan_seconds``, add files the events
   missed (files that arrived while the daemon was down, events the OS dropped).
4. The settle thread also supervises the observers: an observer whose thread ended, or whose inbox
   folder vanished or was replaced, is restarted with a capped back-off and the inbox is rescanned.
   A folder is created only with ``create: true``, at the start, and only when it was never watched on this
   database (``watched_before``, the store's record): one that is missing later, or at a restart (a share
   unmounted, a folder renamed away), is waited for, never recreated, because on a mount point that would make a
   local folder under it. A folder that was a mount point when it was watched and is not one now (the empty
   folder under an unmounted share) is away too, not "replaced": watching it would take nothing while the share's
   files wait. ``on_unreachable(root, reason)`` is called once when an inbox folder cannot be watched,
   ``on_reachable(root)`` once when it is watched again.
5. An inbox's done and error folders (``after: move``) are never watched or taken.
6. A mask a retoucher puts beside a shot (``shot.remove.png``, ``pipeline.stages.masks``) is never taken, but it is
   part of what the shot's job is: once a new or changed mask settles, or one is deleted, its shot(s) are handed
   over in its place (the intake queues the shot with its new masks as a job of its own).

A zero-byte file is handed over like any other once it has stayed zero bytes for
``settle_seconds``: a copy that is still at zero bytes after that long is not going to grow, and the
daemon reports it as a bad file rather than letting it sit in the inbox unexplained.

``on_settled`` runs on the settle thread, so it must be quick (record a job, no image work).
If it raises (the database full or locked), the error is logged once and the hand-over is tried again with a
short back-off (``HANDOVER_RETRY_FIRST`` doubling to ``HANDOVER_RETRY_MAX``) for as long as the file is unchanged.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from .config import InboxConfig
from .health import UNMOUNTED, is_disk_full, is_mount
from .ignore import is_ignored, is_ignored_name, is_sidecar_mask
from .settle import Settled, SettleTracker
from .stages.masks import shots_of

__all__ = ["InboxWatcher", "is_ignored"]

log = logging.getLogger(__name__)

#: First delay before an observer that died (or could not start) is started again; doubles per failure.
RESTART_BACKOFF_FIRST = 0.5
#: Longest delay between restart attempts; an observer healthy this long gets the short delay back.
RESTART_BACKOFF_MAX = 60.0
#: How often the settle thread checks that every observer is still alive.
SUPERVISE_SECONDS = 1.0

#: First delay before a hand-over that failed (the database full or locked) is tried again; doubles per failure.
HANDOVER_RETRY_FIRST = 1.0
#: Longest delay between tries of a failed hand-over: a database that takes writes again gets the file this soon.
HANDOVER_RETRY_MAX = 8.0

# Errors that mean "inotify ran out of watches or descriptors": polling still works then.
_INOTIFY_LIMIT_ERRNOS = frozenset({errno.ENOSPC, errno.EMFILE, errno.ENFILE})

@dataclass
class _Watch:
    """One inbox and the observer currently watching it (None while down)."""

    inbox: InboxConfig
    root: Path  # the configured folder; paths handed over are under it
    observer: BaseObserver | None = None
    watched: Path | None = None  # the real folder the observer watches (root with symlinks resolved)
    identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the folder when it was scheduled
    backoff: float = RESTART_BACKOFF_FIRST
    next_attempt: float = 0.0
    started_at: float = 0.0
    use_polling: bool = False  # inotify ran out of watches: this inbox falls back to polling
    watched_once: bool = False  # an observer has watched the folder (it is not the first start any more)
    outage: str | None = None  # why the folder cannot be watched, once on_unreachable was called for it
    known: bool = False  # watched before on this database (``watched_before``): never created, even at the start
    mount: bool = False  # the folder was a mount point when last watched: not being one now is an outage


@dataclass
class _Retry:
    """A settled file whose hand-over failed, and when it is tried again."""

    settled: Settled
    due: float
    delay: float


class _Unmounted(Exception):
    """The inbox folder was a mount point when watched and is not one now."""


class _InboxEventHandler(FileSystemEventHandler):
    """Runs in the observer's thread: records candidate paths and nothing else."""

    _FILE_EVENTS = (FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileAttribEvent, FileDeletedEvent)

    def __init__(self, watcher: InboxWatcher, watch: _Watch, watched: Path):
        self._watcher = watcher
        self._watch = watch
        self._watched = watched

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileMovedEvent):
            # write-then-rename: the destination is the new file; the source is gone
            self._record(event.src_path, gone=True)
            self._record(event.dest_path)
        elif isinstance(event, self._FILE_EVENTS):
            self._record(event.src_path, gone=isinstance(event, FileDeletedEvent))
        elif isinstance(event, (DirCreatedEvent, DirMovedEvent)) and self._watch.inbox.recursive:
            # a folder moved or copied in: its files may predate the new folder watch
            target = event.dest_path if isinstance(event, DirMovedEvent) else event.src_path
            path = self._map(target)
            if path is not None and not is_ignored(path, self._watch.root) and not self._watcher._sets_aside(path):
                self._watcher._request_scan(self._watch, path)

    def _map(self, raw: bytes | str) -> Path | None:
        """The event's path under the configured inbox path, or None when outside it."""
        if not raw:
            return None
        try:
            rel = Path(os.fsdecode(raw)).relative_to(self._watched)
        except ValueError:
            return None
        if not rel.parts or (not self._watch.inbox.recursive and len(rel.parts) > 1):
            return None
        return self._watch.root / rel

    def _record(self, raw: bytes | str, gone: bool = False) -> None:
        path = self._map(raw)
        if path is None or self._watcher._sets_aside(path):
            return
        if is_sidecar_mask(path, self._watch.root):
            if gone:  # a deleted mask never settles: its shots are handed over on the settle thread
                self._watcher._mask_gone(path, self._watch)
            else:
                self._watcher._settle.add(path, self._watch.inbox)
        elif not is_ignored(path, self._watch.root):
            self._watcher._settle.add(path, self._watch.inbox)


class InboxWatcher:
    """Watches inbox folders and calls ``on_settled(path, inbox)`` once per settled new file.

    ``start()`` creates the missing inbox folders that have ``create: true``, starts the observers and
    the settle thread and runs the reconciliation scan; ``stop()`` ends and joins every thread it
    started. See the module docstring for the settle rule and the supervision of observers. ``clock``
    times the settle rule only (tests pass a fake one); supervision and rescans keep real time.

    ``on_unreachable(root, reason)`` / ``on_reachable(root)``: once per outage each, on the settle
    thread (keep them quick). Without ``on_unreachable`` the watcher logs the outage itself.
    ``on_mask_alone(mask, inbox)``: a mask settled (new or changed) with no shot beside it to hand over.
    ``watched_before(root)``: None when the folder was never watched on this database, else whether it was a mount
    point then (``Store.inbox_watched``); ``on_watching(root, mount)`` records a watch that started
    (``Store.record_inbox_watched``). Without them every ``create: true`` folder missing at the start is created.
    """

    def __init__(
        self,
        inboxes: list[InboxConfig],
        on_settled: Callable[[Path, InboxConfig], None],
        *,
        rescan_seconds: float = 300.0,
        tick_seconds: float = 0.25,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_unreachable: Callable[[Path, str], None] | None = None,
        on_reachable: Callable[[Path], None] | None = None,
        on_mask_alone: Callable[[Path, InboxConfig], None] | None = None,
        watched_before: Callable[[Path], bool | None] | None = None,
        on_watching: Callable[[Path, bool], None] | None = None,
    ):
        self._watched_before = watched_before
        self._on_watching = on_watching
        self._on_settled = on_settled
        self._on_mask_alone = on_mask_alone
        self._on_unreachable = on_unreachable
        self._on_reachable = on_reachable
        self._moving = [inbox for inbox in inboxes if inbox.after == "move"]  # inboxes with folders set aside
        self._rescan_seconds = rescan_seconds
        self._tick = tick_seconds
        self._log = logger or log
        self._watches = [_Watch(inbox, Path(os.path.abspath(inbox.path))) for inbox in inboxes]
        self._settle = SettleTracker(clock=clock, logger=self._log)
        self._lock = threading.Lock()  # guards the scan requests
        self._scan_requests: dict[Path, _Watch] = {}
        self._masks_gone: dict[Path, _Watch] = {}  # masks deleted (events): their shots are handed over again
        self._retries: dict[Path, _Retry] = {}  # failed hand-overs (settle thread only)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False

    # -- public -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching: folders created, observers and settle thread started, inboxes scanned."""
        if self._thread is not None:
            raise RuntimeError("InboxWatcher.start() called twice")
        now = time.monotonic()
        for watch in self._watches:
            self._recall(watch)
            self._start_watch(watch, now, first=True)
        self.rescan()
        self._thread = threading.Thread(target=self._run, name="assetd-watcher-settle", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the observers and the settle thread and wait for them (at most ``timeout`` each)."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._log.warning("inbox watcher: settle thread did not stop within %.1f s", timeout)
        for watch in self._watches:
            self._discard_observer(watch, timeout)

    def pending(self) -> int:
        """How many candidates are still waiting to settle or to be handed over again (0: the inboxes are quiet)."""
        with self._lock:  # requests first: a request becomes candidates, never the other way
            requests = len(self._scan_requests) + len(self._masks_gone)
        return requests + len(self._retries) + self._settle.pending()

    def rescan(self) -> None:
        """Walk every inbox now: files that are new or changed since they were handed over become
        candidates; the memory of handed-over files that no longer exist is dropped."""
        for watch in self._watches:
            self._scan(watch, watch.root)
        self._settle.forget_gone()

    # -- scanning -----------------------------------------------------------------------------

    def _request_scan(self, watch: _Watch, folder: Path) -> None:
        with self._lock:
            self._scan_requests[folder] = watch

    def _mask_gone(self, mask: Path, watch: _Watch) -> None:
        with self._lock:
            self._masks_gone[mask] = watch

    def _sets_aside(self, path: Path) -> bool:
        """True for a path in an inbox's done or error folder (``after: move``): never a candidate."""
        return any(inbox.sets_aside(path) for inbox in self._moving)

    def _scan(self, watch: _Watch, folder: Path) -> None:
        """Add the files under ``folder`` (inside ``watch``'s inbox) as candidates, without following
        symlinked folders or descending into ignored ones or done/error folders. Unchanged handed-over
        files are skipped."""
        now = self._settle.clock()
        stack = [] if self._sets_aside(folder) else [folder]
        while stack:
            current = stack.pop()
            try:
                with os.scandir(current) as entries:
                    found = list(entries)
            except FileNotFoundError:
                continue  # gone (the supervisor notices when it is the inbox itself)
            except OSError as exc:
                self._log.warning("inbox %s: cannot list %s: %s", watch.root, current, exc.strerror or exc)
                continue
            for entry in found:
                path = Path(entry.path)
                if self._sets_aside(path) or (is_ignored_name(entry.name) and not is_sidecar_mask(path, watch.root)):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if watch.inbox.recursive:
                            stack.append(path)
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        continue  # symlinks, sockets, fifos
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                self._settle.add(path, watch.inbox, now, (st.st_size, st.st_mtime_ns))

    # -- the settle thread --------------------------------------------------------------------

    def _run(self) -> None:
        next_rescan = time.monotonic() + self._rescan_seconds
        next_supervise = 0.0
        while not self._stop.wait(self._tick):
            try:
                now = time.monotonic()
                if now >= next_supervise:
                    self._supervise(now)
                    next_supervise = now + SUPERVISE_SECONDS
                if now >= next_rescan:
                    self.rescan()
                    next_rescan = time.monotonic() + self._rescan_seconds
                self._run_scan_requests()
                self._hand_over_masks_gone()
                self._settle_pass()
                self._retry_hand_overs(now)
            except Exception:  # the watcher must outlive any single bug or I/O surprise
                self._log.exception("inbox watcher: unexpected error; carrying on")

    def _run_scan_requests(self) -> None:
        with self._lock:
            requests = list(self._scan_requests.items())
            self._scan_requests.clear()
        for folder, watch in requests:
            self._scan(watch, folder)

    def _settle_pass(self) -> None:
        for settled in self._settle.settle_pass(stopping=self._stop.is_set):
            self._hand_over(settled)

    def _hand_over(self, settled: Settled) -> None:
        path, inbox, signature = settled
        try:
            if is_sidecar_mask(path, Path(os.path.abspath(inbox.path))):
                if not self._hand_over_shots(path, inbox) and self._on_mask_alone is not None:
                    self._on_mask_alone(path, inbox)
            else:
                self._on_settled(path, inbox)
        except Exception as exc:
            self._hand_over_failed(settled, exc)
            return
        self._retries.pop(path, None)
        self._settle.handed_over(path, signature)

    def _hand_over_failed(self, settled: Settled, exc: Exception) -> None:
        """Try the hand-over of ``settled`` again with back-off; say so once per file (a full database is no bug:
        no traceback then)."""
        path, inbox, _ = settled
        previous = self._retries.get(path)
        delay = HANDOVER_RETRY_FIRST if previous is None else min(previous.delay * 2, HANDOVER_RETRY_MAX)
        self._retries[path] = _Retry(settled, time.monotonic() + delay, delay)
        if previous is not None:
            self._log.debug("inbox %s: handing over %s failed again (%s); next try in %.0f s", inbox.path, path,
                            exc, delay)
        elif is_disk_full(exc):
            self._log.warning("inbox %s: the database is full; %s is queued once it takes writes again",
                              inbox.path, path.name)
        else:
            self._log.exception("inbox %s: handing over %s failed; it is tried again in a few seconds",
                                inbox.path, path)

    def _retry_hand_overs(self, now: float) -> None:
        """Hand over again the files whose hand-over failed and is due, while they are what settled (a file
        changed or gone since is left to its events and the rescan)."""
        for path, retry in list(self._retries.items()):
            if now < retry.due or self._stop.is_set():
                continue
            try:
                st = os.lstat(path)
                same = stat.S_ISREG(st.st_mode) and (st.st_size, st.st_mtime_ns) == tuple(retry.settled.signature)
            except OSError:
                same = False
            if not same:
                del self._retries[path]
                continue
            self._hand_over(retry.settled)
            if path not in self._retries:
                self._log.info("inbox %s: %s handed over after all", retry.settled.inbox.path, path.name)

    def _hand_over_shots(self, mask: Path, inbox: InboxConfig) -> bool:
        """A mask settled or was deleted: hand over its shot(s) in its place (never the mask itself). A shot that
        changed within its settle time is still arriving: it is handed over when it settles, with its masks.
        Returns whether a shot lies beside the mask (False: the mask is alone)."""
        shots = [shot for shot in shots_of(mask)
                 if not is_ignored(shot, Path(os.path.abspath(inbox.path))) and not self._sets_aside(shot)]
        for shot in shots:
            try:
                if time.time() - os.lstat(shot).st_mtime < inbox.settle_seconds:
                    continue
            except OSError:
                continue
            self._on_settled(shot, inbox)
        return bool(shots)

    def _hand_over_masks_gone(self) -> None:
        with self._lock:
            gone = list(self._masks_gone.items())
            self._masks_gone.clear()
        for mask, watch in gone:
            if os.path.lexists(mask):
                continue  # written again meanwhile (a save by rename): it settles as a candidate
            try:
                self._hand_over_shots(mask, watch.inbox)
            except Exception:
                self._log.exception("inbox %s: handing over the shot of %s (deleted) failed", watch.root, mask)

    # -- supervision --------------------------------------------------------------------------

    def _supervise(self, now: float) -> None:
        for watch in self._watches:
            if watch.observer is not None:
                problem, outage = self._problem(watch)
                if problem is None:
                    if now - watch.started_at >= RESTART_BACKOFF_MAX:
                        watch.backoff = RESTART_BACKOFF_FIRST
                    continue
                self._discard_observer(watch, timeout=2.0)
                if outage:
                    self._unreachable(watch, problem)
                else:
                    self._log.warning("inbox %s: %s; restarting the watch in %.1f s", watch.root, problem,
                                      watch.backoff)
                watch.next_attempt = now + watch.backoff
                watch.backoff = min(watch.backoff * 2, RESTART_BACKOFF_MAX)
            elif now >= watch.next_attempt:
                again = watch.watched_once
                if self._start_watch(watch, now):
                    if again:
                        self._log.warning("inbox %s: watching again", watch.root)
                    else:
                        self._log.warning("inbox %s: the folder is there now; watching it", watch.root)
                    self._scan(watch, watch.root)

    def _problem(self, watch: _Watch) -> tuple[str | None, bool]:
        """Why ``watch``'s observer no longer works, and whether that is an outage (the folder disappeared
        or cannot be reached); (None, False) when all is fine. A folder replaced by another one is no
        outage: the watch restarts on the new one."""
        observer = watch.observer
        assert observer is not None
        try:
            st = os.stat(watch.root)
        except FileNotFoundError:
            return "the folder disappeared", True
        except OSError as exc:
            return f"the folder cannot be reached ({exc.strerror or exc})", True
        if watch.mount and not is_mount(watch.root):
            return UNMOUNTED, True
        if (st.st_dev, st.st_ino) != watch.identity:
            return "the folder was replaced", False
        if not observer.is_alive():
            return "the observer thread ended", False
        try:
            emitters = list(observer.emitters)
        except RuntimeError:  # the set changed while copying: look again next time
            return None, False
        if not emitters or not all(emitter.is_alive() for emitter in emitters):
            return "the event emitter ended", False
        return None, False

    def _unreachable(self, watch: _Watch, reason: str) -> None:
        """The inbox folder cannot be watched: tell ``on_unreachable`` (or the log) once per outage."""
        if watch.outage is not None:
            return
        watch.outage = reason
        if self._on_unreachable is None:
            self._log.error("inbox %s: %s; files there wait until it is back (assetd does not recreate it)",
                            watch.root, reason)
            return
        try:
            self._on_unreachable(watch.root, reason)
        except Exception:
            self._log.exception("inbox %s: on_unreachable failed", watch.root)

    def _reachable(self, watch: _Watch) -> None:
        """The inbox folder is watched again after an outage: tell ``on_reachable`` once."""
        if watch.outage is None:
            return
        watch.outage = None
        self._settle.forget_under(watch.root)  # its files are offered again by the scan that follows
        if self._on_reachable is not None:
            try:
                self._on_reachable(watch.root)
            except Exception:
                self._log.exception("inbox %s: on_reachable failed", watch.root)

    def _recall(self, watch: _Watch) -> None:
        """Whether ``watch``'s folder was watched before on this database, and was a mount point then."""
        if self._watched_before is None:
            return
        try:
            mount = self._watched_before(watch.root)
        except Exception:  # the database cannot tell: never create the folder, rather than make one under a share
            self._log.warning("inbox %s: cannot tell whether it was watched before; not creating it if missing",
                              watch.root, exc_info=True)
            watch.known = True
            return
        watch.known, watch.mount = mount is not None, bool(mount)

    def _remember(self, watch: _Watch, mount: bool) -> None:
        """Record that ``watch``'s folder is watched now (and whether it is a mount point) for later starts."""
        if watch.known and watch.mount == mount:
            return
        watch.known, watch.mount = True, mount
        if self._on_watching is None:
            return
        try:
            self._on_watching(watch.root, mount)
        except Exception as exc:  # the database full: this process still knows; the next watch start records it
            watch.known = False
            self._log.warning("inbox %s: cannot record that it is watched (%s); recorded at its next watch start",
                              watch.root, "the database is full" if is_disk_full(exc) else exc)

    def _start_watch(self, watch: _Watch, now: float, first: bool = False) -> bool:
        """Start an observer on the inbox folder (at the ``first`` start, create it if missing when the inbox
        says ``create: true`` and it was never watched on this database); on failure report the outage once and
        schedule a retry with back-off. A folder that was a mount point and is not one now is not watched."""
        try:
            if first and watch.inbox.create and not watch.known:
                watch.root.mkdir(parents=True, exist_ok=True)
            st = os.stat(watch.root)
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a folder")
            mount = is_mount(watch.root)
            if watch.mount and not mount:
                raise _Unmounted()
            watched = Path(os.path.realpath(watch.root))
            try:
                observer = self._observe(watch, watched)
            except OSError as exc:
                if watch.use_polling or exc.errno not in _INOTIFY_LIMIT_ERRNOS:
                    raise
                self._log.warning("inbox %s: inotify limit reached (%s); polling every %.1f s instead "
                                  "(raise fs.inotify.max_user_watches to get events back)",
                                  watch.root, exc.strerror or exc, watch.inbox.poll_interval_seconds)
                watch.use_polling = True
                observer = self._observe(watch, watched)
        except FileNotFoundError:
            reason = "the folder does not exist" + (" (create: false)" if first and not watch.inbox.create else
                                                    " (it was watched before)" if first and watch.known else "")
        except _Unmounted:
            reason = UNMOUNTED
        except OSError as exc:
            reason = f"cannot watch the folder ({exc.strerror or exc})"
        else:
            if _identity(watch.root) == (st.st_dev, st.st_ino):
                watch.observer, watch.watched = observer, watched
                watch.identity = (st.st_dev, st.st_ino)
                watch.started_at = now
                watch.watched_once = True
                self._remember(watch, mount)
                self._reachable(watch)
                return True
            _stop_observer(observer, timeout=2.0)  # swapped while the observer started: it watches the wrong one
            reason = "the folder disappeared or was replaced while the watch started"
        self._log.debug("inbox %s: %s; trying again in %.1f s", watch.root, reason, watch.backoff)
        self._unreachable(watch, reason)
        watch.next_attempt = now + watch.backoff
        watch.backoff = min(watch.backoff * 2, RESTART_BACKOFF_MAX)
        return False

    def _observe(self, watch: _Watch, watched: Path) -> BaseObserver:
        if watch.inbox.polling or watch.use_polling:
            observer: BaseObserver = PollingObserver(timeout=watch.inbox.poll_interval_seconds)
        else:
            observer = Observer()
        try:
            handler = _InboxEventHandler(self, watch, watched)
            observer.schedule(handler, str(watched), recursive=watch.inbox.recursive)
            observer.start()
        except BaseException:
            _stop_observer(observer, timeout=2.0)
            raise
        return observer

    def _discard_observer(self, watch: _Watch, timeout: float) -> None:
        observer, watch.observer = watch.observer, None
        if observer is not None:
            _stop_observer(observer, timeout)
            if observer.is_alive():
                self._log.warning("inbox %s: observer did not stop within %.1f s", watch.root, timeout)


def _identity(folder: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of ``folder``, or None when it cannot be reached."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _stop_observer(observer: BaseObserver, timeout: float) -> None:
    """Stop an observer, started or not, and wait for its threads (its emitters are joined by stop)."""
    try:
        observer.stop()
    except Exception:  # a half-dead observer may fail to unschedule; its threads still end
        log.debug("stopping observer failed", exc_info=True)
    if observer.ident is not None:
        observer.join(timeout)
