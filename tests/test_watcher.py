"""The inbox watcher against real folders, real watchdog observers and its real settle thread.

The settle rule itself (settling, renames, ignored names, symlinks, sub-folders, rescans finding
changes, nested inboxes) is tested on a fake clock, without threads, in test_settle.py.

Timings: settle 0.4 s, tick 0.05 s, supervision check every 1 s (module constant), polling every 0.1 s.
Every test must leave no thread behind (``no_leaked_threads``, as watchdog's own suite does).
"""
from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mounts import Tmpfs
from pipeline.config import InboxConfig
from pipeline.health import UNMOUNTED
from pipeline.store import Store
from pipeline.watcher import InboxWatcher
from recorders import Recorder

SETTLE = 0.4
TICK = 0.05
# watchdog's recursive inotify watch warns when a folder made with mkdir -p is added twice (its own race)
pytestmark = pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")

TIMEOUT = 10.0  # generous upper bound for anything that should happen; tests pass in ~1 s when healthy


@pytest.fixture
def no_leaked_threads() -> Iterator[None]:
    """Fails a test that leaves a thread running: stop() joins everything, so no grace period."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before]
    assert not leaked, f"threads leaked: {leaked}"


def wait_for(condition: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def wait_quiet(watcher: InboxWatcher) -> None:
    """Until nothing is pending, then a little longer than one settle period with nothing pending."""
    assert wait_for(lambda: watcher.pending() == 0)
    time.sleep(SETTLE + 4 * TICK)
    assert wait_for(lambda: watcher.pending() == 0)


@pytest.fixture
def make_watcher(no_leaked_threads: None) -> Iterator[Callable[..., tuple[InboxWatcher, Recorder]]]:
    started: list[InboxWatcher] = []

    def make(*inboxes: InboxConfig, recorder: Recorder | None = None, start: bool = True,
             rescan_seconds: float = 300.0, **callbacks: Callable) -> tuple[InboxWatcher, Recorder]:
        recorder = recorder or Recorder()
        watcher = InboxWatcher(list(inboxes), recorder, rescan_seconds=rescan_seconds, tick_seconds=TICK,
                               **callbacks)
        started.append(watcher)
        if start:
            watcher.start()
        return watcher, recorder

    yield make
    for watcher in started:
        watcher.stop()


def inbox_at(path: Path, **kwargs: object) -> InboxConfig:
    return InboxConfig(path=path, settle_seconds=kwargs.pop("settle_seconds", SETTLE), **kwargs)


# -- reconciliation and rescans ---------------------------------------------------------------

def test_periodic_rescan_finds_files_no_event_reported(tmp_path: Path, make_watcher) -> None:
    # a polling observer that never gets round to looking stands in for an OS that dropped the event
    inbox = inbox_at(tmp_path, polling=True, poll_interval_seconds=60.0)
    watcher, rec = make_watcher(inbox, rescan_seconds=0.5)
    (tmp_path / "missed.jpg").write_bytes(b"missed")
    assert wait_for(lambda: rec.count("missed.jpg") == 1)
    time.sleep(1.2)  # two more rescans
    assert rec.count("missed.jpg") == 1


def test_polling_observer_hands_over_files(tmp_path: Path, make_watcher) -> None:
    watcher, rec = make_watcher(inbox_at(tmp_path, polling=True, poll_interval_seconds=0.1))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "polled.jpg").write_bytes(b"p" * 1000)
    (tmp_path / "tmp.jpg.part").write_bytes(b"p")
    (tmp_path / "tmp.jpg.part").rename(tmp_path / "renamed.jpg")
    assert wait_for(lambda: rec.names() == ["polled.jpg", "renamed.jpg"])
    wait_quiet(watcher)
    assert rec.names() == ["polled.jpg", "renamed.jpg"]


# -- robustness -------------------------------------------------------------------------------

def test_a_raising_callback_does_not_stop_the_watcher_and_the_file_is_tried_again_soon(tmp_path: Path, make_watcher,
                                                                                       caplog) -> None:
    caplog.set_level(logging.ERROR, logger="pipeline.watcher")
    watcher, rec = make_watcher(inbox_at(tmp_path), recorder=Recorder(fail_first=1))  # rescan_seconds: 300
    (tmp_path / "first.jpg").write_bytes(b"1")
    assert wait_for(lambda: "first.jpg" in caplog.text)
    assert "job store unavailable" in caplog.text and "tried again in a few seconds" in caplog.text
    (tmp_path / "second.jpg").write_bytes(b"2")
    assert wait_for(lambda: rec.count("second.jpg") == 1)
    assert wait_for(lambda: rec.count("first.jpg") == 1)  # tried again without waiting for the rescan
    wait_quiet(watcher)
    assert rec.names() == ["first.jpg", "second.jpg"]


def test_a_full_database_is_one_line_and_the_file_is_queued_once_it_takes_writes(tmp_path: Path, make_watcher,
                                                                                 caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="pipeline.watcher")
    full = {"left": 2}
    rec = Recorder()

    def on_settled(path: Path, inbox: InboxConfig) -> None:  # what the intake meets on a full database volume
        if full["left"]:
            full["left"] -= 1
            raise sqlite3.OperationalError("database or disk is full")
        rec(path, inbox)

    watcher = InboxWatcher([inbox_at(tmp_path)], on_settled, tick_seconds=TICK)  # rescan_seconds: 300
    watcher.start()
    try:
        (tmp_path / "d03.jpg").write_bytes(b"d03")
        assert wait_for(lambda: rec.count("d03.jpg") == 1)
        assert watcher.pending() == 0
    finally:
        watcher.stop()
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in said] == [
        f"inbox {tmp_path}: the database is full; d03.jpg is queued once it takes writes again"]
    assert said[0].exc_info is None  # no traceback: nothing is broken
    assert "d03.jpg handed over after all" in caplog.text


def test_missing_inbox_is_created_at_start_with_create_true(tmp_path: Path, make_watcher) -> None:
    inbox = tmp_path / "not" / "yet"
    watcher, rec = make_watcher(inbox_at(inbox, create=True))
    assert inbox.is_dir()
    (inbox / "x.jpg").write_bytes(b"x")
    assert wait_for(lambda: rec.count("x.jpg") == 1)


def test_missing_inbox_is_waited_for_not_created(tmp_path: Path, make_watcher, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="pipeline.watcher")
    inbox = tmp_path / "share" / "inbox"
    watcher, rec = make_watcher(inbox_at(inbox))  # create: false, the default
    assert "inbox" in caplog.text and "the folder does not exist (create: false)" in caplog.text
    time.sleep(1.2)  # restart attempts
    assert not inbox.exists() and not inbox.parent.exists()
    inbox.mkdir(parents=True)
    (inbox / "early.jpg").write_bytes(b"early")  # before the watch starts: found by its first scan
    assert wait_for(lambda: rec.count("early.jpg") == 1)
    assert "the folder is there now; watching it" in caplog.text
    (inbox / "late.jpg").write_bytes(b"late")
    assert wait_for(lambda: rec.count("late.jpg") == 1)


def test_inbox_that_cannot_be_created_at_start_is_waited_for(tmp_path: Path, make_watcher, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="pipeline.watcher")
    blocker = tmp_path / "share"
    blocker.write_bytes(b"a file where the share's folder should be")
    inbox = blocker / "inbox"
    watcher, rec = make_watcher(inbox_at(inbox, create=True))  # must not raise
    assert "cannot watch the folder" in caplog.text
    blocker.unlink()
    time.sleep(1.2)
    assert not blocker.exists()  # create: true is for the first start only
    inbox.mkdir(parents=True)
    (inbox / "late.jpg").write_bytes(b"late")
    assert wait_for(lambda: rec.count("late.jpg") == 1)


class Outages:
    """on_unreachable / on_reachable, recorded."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Path, str | None]] = []

    def unreachable(self, root: Path, reason: str) -> None:
        self.events.append(("unreachable", root, reason))

    def reachable(self, root: Path) -> None:
        self.events.append(("reachable", root, None))

    def kinds(self) -> list[str]:
        return [kind for kind, _, _ in self.events]


def test_an_inbox_watched_before_is_not_created_again_at_a_restart(tmp_path: Path, make_watcher) -> None:
    store = Store(tmp_path / "assetd.db")
    remembered = dict(watched_before=store.inbox_watched, on_watching=store.record_inbox_watched)
    inbox = tmp_path / "inbox"
    first, _ = make_watcher(inbox_at(inbox, create=True), **remembered)
    assert inbox.is_dir()  # never watched on this database: created
    first.stop()
    inbox.rename(tmp_path / "inbox.x")  # renamed away while assetd is down
    outages = Outages()
    watcher, rec = make_watcher(inbox_at(inbox, create=True), on_unreachable=outages.unreachable,
                                on_reachable=outages.reachable, **remembered)
    assert outages.kinds() == ["unreachable"]
    assert outages.events[0][1] == inbox and "does not exist (it was watched before)" in str(outages.events[0][2])
    time.sleep(1.2)  # restart attempts
    assert not inbox.exists(), "create: true recreated an inbox that was watched before"
    (tmp_path / "inbox.x" / "waited.jpg").write_bytes(b"waited")
    (tmp_path / "inbox.x").rename(inbox)  # back
    assert wait_for(lambda: rec.count("waited.jpg") == 1)
    assert wait_for(lambda: outages.kinds() == ["unreachable", "reachable"])


@pytest.fixture
def tmpfs() -> Iterator[Tmpfs]:
    mounts = Tmpfs()
    yield mounts
    mounts.close()


def test_an_inbox_that_is_a_mount_point_is_away_while_unmounted(tmp_path: Path, make_watcher, tmpfs: Tmpfs,
                                                                 caplog) -> None:
    caplog.set_level(logging.WARNING, logger="pipeline.watcher")
    share = tmp_path / "share"
    share.mkdir()
    tmpfs.mount(share)
    store = Store(tmp_path / "assetd.db")
    remembered = dict(watched_before=store.inbox_watched, on_watching=store.record_inbox_watched)
    outages = Outages()
    watcher, rec = make_watcher(inbox_at(share, create=True), on_unreachable=outages.unreachable,
                                on_reachable=outages.reachable, **remembered)
    (share / "a.jpg").write_bytes(b"a")
    assert wait_for(lambda: rec.count("a.jpg") == 1)
    tmpfs.unmount(share)  # mid-batch: the empty folder under the mount shows
    assert wait_for(lambda: outages.kinds() == ["unreachable"])
    assert outages.events[0] == ("unreachable", share, UNMOUNTED)
    assert "replaced" not in caplog.text
    (share / "under.jpg").write_bytes(b"written under the unmounted share")
    time.sleep(1.2)  # restart attempts: the empty folder is not watched
    assert rec.count("under.jpg") == 0 and outages.kinds() == ["unreachable"]
    watcher.stop()

    again = Outages()  # a restart while the share is still away: it is remembered as a mount point
    watcher, rec = make_watcher(inbox_at(share, create=True), on_unreachable=again.unreachable,
                                on_reachable=again.reachable, **remembered)
    assert again.events == [("unreachable", share, UNMOUNTED)]
    tmpfs.mount(share)  # back
    (share / "b.jpg").write_bytes(b"b")
    assert wait_for(lambda: rec.count("b.jpg") == 1)
    assert wait_for(lambda: again.kinds() == ["unreachable", "reachable"])
    assert rec.count("under.jpg") == 0


def test_files_of_a_share_that_comes_back_are_offered_again(tmp_path: Path, make_watcher, tmpfs: Tmpfs) -> None:
    """A file handed over just before its share went away (its job may have ended while the share was away, so
    ``after: move`` could not move it) is offered again when the share is back: the intake knows it is done, and
    hands it to ``after``. It stayed in the inbox until the next start."""
    server, share = tmp_path / "server", tmp_path / "share"
    server.mkdir()
    share.mkdir()
    tmpfs.mount(server)  # the file server's volume
    tmpfs.bind(server, share)
    store = Store(tmp_path / "assetd.db")
    outages = Outages()
    watcher, rec = make_watcher(inbox_at(share), on_unreachable=outages.unreachable, on_reachable=outages.reachable,
                                watched_before=store.inbox_watched, on_watching=store.record_inbox_watched)
    (share / "a.jpg").write_bytes(b"a")
    assert wait_for(lambda: rec.count("a.jpg") == 1)
    tmpfs.unmount(share)
    assert wait_for(lambda: outages.kinds() == ["unreachable"])
    tmpfs.bind(server, share)  # back, with the same file
    assert wait_for(lambda: outages.kinds() == ["unreachable", "reachable"])
    assert wait_for(lambda: rec.count("a.jpg") == 2)
    watcher.stop()
    store.close()


@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "polling"])
def test_inbox_renamed_away_is_waited_for_and_watched_again(tmp_path: Path, make_watcher, caplog,
                                                            polling: bool) -> None:
    caplog.set_level(logging.WARNING, logger="pipeline.watcher")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    outages = Outages()
    watcher, rec = make_watcher(inbox_at(inbox, polling=polling, poll_interval_seconds=0.1),
                                on_unreachable=outages.unreachable, on_reachable=outages.reachable)
    (inbox / "before.jpg").write_bytes(b"before")
    assert wait_for(lambda: rec.count("before.jpg") == 1)
    assert outages.events == []  # a healthy inbox: no callback at all
    inbox.rename(tmp_path / "inbox.away")  # the share went away
    assert wait_for(lambda: outages.kinds() == ["unreachable"])
    assert outages.events[0][1] == inbox and "disappeared" in str(outages.events[0][2])
    time.sleep(1.6)  # restart attempts while it is away
    assert not inbox.exists(), "the watcher recreated a folder that disappeared"
    assert outages.kinds() == ["unreachable"] and "watching again" not in caplog.text
    inbox.mkdir()  # it comes back (a new folder of the same name)
    (inbox / "back.jpg").write_bytes(b"back")
    assert wait_for(lambda: rec.count("back.jpg") == 1)
    assert wait_for(lambda: outages.kinds() == ["unreachable", "reachable"])
    assert "watching again" in caplog.text
    (inbox / "later.jpg").write_bytes(b"later")  # an event from the new folder's watch
    assert wait_for(lambda: rec.count("later.jpg") == 1)
    assert outages.kinds() == ["unreachable", "reachable"] and rec.count("before.jpg") == 1


def test_inbox_replaced_by_another_folder_is_watched_without_an_outage(tmp_path: Path, make_watcher, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="pipeline.watcher")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    outages = Outages()
    watcher, rec = make_watcher(inbox_at(inbox), on_unreachable=outages.unreachable, on_reachable=outages.reachable)
    (tmp_path / "inbox.new").mkdir()
    inbox.rename(tmp_path / "inbox.old")  # swapped in one go (a sync tool replacing the folder)
    (tmp_path / "inbox.new").rename(inbox)
    assert wait_for(lambda: "the folder was replaced; restarting the watch" in caplog.text)
    assert wait_for(lambda: "watching again" in caplog.text)
    (inbox / "new.jpg").write_bytes(b"new")
    assert wait_for(lambda: rec.count("new.jpg") == 1)
    assert outages.events == []


def test_inbox_deleted_and_recreated_in_polling_mode_is_watched_again(tmp_path: Path, make_watcher,
                                                                      caplog) -> None:
    caplog.set_level(logging.WARNING, logger="pipeline.watcher")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    outages = Outages()
    watcher, rec = make_watcher(inbox_at(inbox, polling=True, poll_interval_seconds=0.1),
                                on_unreachable=outages.unreachable, on_reachable=outages.reachable)
    (inbox / "sub").mkdir()
    (inbox / "sub" / "first.jpg").write_bytes(b"first")
    assert wait_for(lambda: rec.count("first.jpg") == 1)
    shutil.rmtree(inbox)
    assert wait_for(lambda: outages.kinds() == ["unreachable"])
    assert not inbox.exists()
    (inbox / "sub").mkdir(parents=True)
    (inbox / "sub" / "second.jpg").write_bytes(b"second")
    assert wait_for(lambda: rec.count("second.jpg") == 1)
    (inbox / "third.jpg").write_bytes(b"third")
    assert wait_for(lambda: rec.count("third.jpg") == 1)
    assert outages.kinds() == ["unreachable", "reachable"]
    assert "watching again" in caplog.text


def test_done_and_error_folders_are_never_taken(tmp_path: Path, make_watcher) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "done" / "products").mkdir(parents=True)
    (inbox / "done" / "products" / "old.jpg").write_bytes(b"old")  # there at start: the scan skips it
    watcher, rec = make_watcher(inbox_at(inbox, after="move"))
    (inbox / "error").mkdir()
    (inbox / "error" / "bad.jpg").write_bytes(b"bad")
    (inbox / "error" / "bad.jpg.error.txt").write_bytes(b"why")
    (inbox / "done" / "products" / "moved.jpg").write_bytes(b"moved")
    (inbox / "new.jpg").write_bytes(b"new")
    assert wait_for(lambda: rec.count("new.jpg") == 1)
    watcher.rescan()
    wait_quiet(watcher)
    assert rec.names() == ["new.jpg"]


def test_observer_stopped_behind_the_watchers_back_is_restarted(tmp_path: Path, make_watcher, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="pipeline.watcher")
    watcher, rec = make_watcher(inbox_at(tmp_path))
    observer = watcher._watches[0].observer
    observer.stop()
    observer.join()
    (tmp_path / "while_down.jpg").write_bytes(b"down")  # no event: found by the rescan after the restart
    assert wait_for(lambda: rec.count("while_down.jpg") == 1)
    (tmp_path / "after.jpg").write_bytes(b"after")
    assert wait_for(lambda: rec.count("after.jpg") == 1)
    assert watcher._watches[0].observer is not observer
    assert "the observer thread ended" in caplog.text


def test_stop_is_idempotent_and_joins_every_thread(tmp_path: Path, no_leaked_threads: None) -> None:
    watcher = InboxWatcher([inbox_at(tmp_path / "a", create=True),
                            inbox_at(tmp_path / "b", create=True, polling=True, poll_interval_seconds=0.1)],
                           Recorder(), tick_seconds=TICK)
    watcher.start()
    assert any(t.name == "assetd-watcher-settle" for t in threading.enumerate())
    watcher.stop()
    watcher.stop()
    assert not any(t.name == "assetd-watcher-settle" for t in threading.enumerate())
