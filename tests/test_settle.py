"""The settle rule on a fake clock: no threads, no sleeps.

Two levels. ``SettleTracker`` alone, against a fake ``lstat`` (pure). And an ``InboxWatcher`` that is
never started: real files, watchdog events handed to its real event handler by the test, scans and
settle passes run when the test advances the clock (``Driver``). Real observers and the settle thread
are tested in test_watcher.py.

Driver timings as there (settle 0.4 s, tick 0.05 s), only in fake seconds.
"""
from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from watchdog.events import (
    DirCreatedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
)

from pipeline.config import InboxConfig
from pipeline.settle import Settled, SettleTracker
from pipeline.watcher import InboxWatcher, _InboxEventHandler
from recorders import Recorder

SETTLE = 0.4
TICK = 0.05
TIMEOUT = 10.0  # fake seconds


class FakeClock:
    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def inbox_at(path: Path, **kwargs: object) -> InboxConfig:
    return InboxConfig(path=path, settle_seconds=kwargs.pop("settle_seconds", SETTLE), **kwargs)


# -- the tracker alone: a fake clock and a fake lstat -------------------------------------------

ROOT = Path("/srv/inbox")
INBOX = inbox_at(ROOT, settle_seconds=1.0)  # fake seconds in quarters: exact in binary


class FakeFiles:
    """``lstat`` over a dict: path → (mode, size, mtime_ns); anything else does not exist."""

    def __init__(self) -> None:
        self.entries: dict[Path, tuple[int, int, int]] = {ROOT: (stat.S_IFDIR | 0o755, 0, 0)}
        self.unreachable = False

    def file(self, path: Path, size: int, mtime_ns: int = 1) -> Path:
        self.entries[path] = (stat.S_IFREG | 0o644, size, mtime_ns)
        return path

    def folder(self, path: Path) -> Path:
        self.entries[path] = (stat.S_IFDIR | 0o755, 0, 0)
        return path

    def symlink(self, path: Path) -> Path:
        self.entries[path] = (stat.S_IFLNK | 0o777, 10, 1)
        return path

    def remove(self, path: Path) -> None:
        del self.entries[path]

    def __call__(self, path: Path) -> os.stat_result:
        if self.unreachable:
            raise OSError(112, "Host is down")
        if path not in self.entries:
            raise FileNotFoundError(2, "No such file or directory", str(path))
        mode, size, mtime_ns = self.entries[path]
        return os.stat_result((mode, 1, 1, 1, 0, 0, size, 0, mtime_ns // 10**9, 0,
                               0.0, mtime_ns / 1e9, 0.0, 0, mtime_ns, 0))


@pytest.fixture
def files() -> FakeFiles:
    return FakeFiles()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tracker(files: FakeFiles, clock: FakeClock) -> SettleTracker:
    return SettleTracker(clock=clock, lstat=files)


def settle(tracker: SettleTracker) -> list[Settled]:
    """One pass, every settled file taken as handed over."""
    settled = list(tracker.settle_pass())
    for item in settled:
        tracker.handed_over(item.path, item.signature)
    return settled


def test_a_file_settles_once_unchanged_for_settle_seconds(tracker: SettleTracker, files: FakeFiles,
                                                          clock: FakeClock) -> None:
    shot = files.file(ROOT / "shot.jpg", 100)
    tracker.add(shot, INBOX)
    assert settle(tracker) == []  # first look: the signature is new
    clock.advance(0.75)
    assert settle(tracker) == []
    clock.advance(0.25)
    assert settle(tracker) == [Settled(shot, INBOX, (100, 1))]
    assert tracker.pending() == 0


def test_a_changed_signature_restarts_the_clock(tracker: SettleTracker, files: FakeFiles, clock: FakeClock) -> None:
    shot = files.file(ROOT / "shot.jpg", 100)
    tracker.add(shot, INBOX)
    settle(tracker)
    clock.advance(0.75)
    files.file(shot, 200)  # still growing
    assert settle(tracker) == []
    clock.advance(0.75)
    assert settle(tracker) == []
    clock.advance(0.25)
    assert settle(tracker) == [Settled(shot, INBOX, (200, 1))]


def test_an_event_restarts_the_clock_and_a_scan_does_not(tracker: SettleTracker, files: FakeFiles,
                                                          clock: FakeClock) -> None:
    event, scanned = files.file(ROOT / "event.jpg", 1), files.file(ROOT / "scanned.jpg", 1)
    tracker.add(event, INBOX)
    tracker.add(scanned, INBOX, signature=(1, 1))
    settle(tracker)
    clock.advance(0.75)
    tracker.add(event, INBOX)  # written again with the same size and mtime
    tracker.add(scanned, INBOX, signature=(1, 1))  # found again by a rescan
    clock.advance(0.25)
    assert [s.path for s in settle(tracker)] == [scanned]
    clock.advance(1.0)
    assert [s.path for s in settle(tracker)] == [event]


def test_a_handed_over_file_is_offered_again_only_when_changed_or_dropped_anew(
        tracker: SettleTracker, files: FakeFiles, clock: FakeClock) -> None:
    shot = files.file(ROOT / "shot.jpg", 100)
    tracker.add(shot, INBOX)
    settle(tracker)
    clock.advance(1.0)
    assert len(settle(tracker)) == 1
    tracker.add(shot, INBOX, signature=(100, 1))  # a rescan finds it unchanged
    assert tracker.pending() == 0
    tracker.add(shot, INBOX)  # an event without a change (a touch that kept the mtime)
    settle(tracker)
    clock.advance(1.0)
    assert settle(tracker) == []
    files.remove(shot)  # deleted, then the same bytes dropped again
    tracker.add(shot, INBOX)
    assert settle(tracker) == []
    files.file(shot, 100)
    tracker.add(shot, INBOX)
    settle(tracker)
    clock.advance(1.0)
    assert len(settle(tracker)) == 1


def test_forget_gone_drops_the_memory_of_deleted_files(tracker: SettleTracker, files: FakeFiles,
                                                       clock: FakeClock) -> None:
    shot = files.file(ROOT / "shot.jpg", 100)
    tracker.handed_over(shot, (100, 1))
    tracker.add(shot, INBOX, signature=(100, 1))
    assert tracker.pending() == 0
    files.remove(shot)
    tracker.forget_gone()
    files.file(shot, 100)
    tracker.add(shot, INBOX, signature=(100, 1))
    assert tracker.pending() == 1


@pytest.mark.parametrize("kind", ["folder", "symlink", "missing", "ignored", "outside the inbox"])
def test_what_is_not_a_regular_file_in_the_inbox_is_dropped(tracker: SettleTracker, files: FakeFiles,
                                                            clock: FakeClock, kind: str) -> None:
    path = {
        "folder": lambda: files.folder(ROOT / "sub"),
        "symlink": lambda: files.symlink(ROOT / "link.jpg"),
        "missing": lambda: ROOT / "gone.jpg",
        "ignored": lambda: files.file(ROOT / "shot.jpg.part", 1),
        "outside the inbox": lambda: files.file(Path("/srv/elsewhere/shot.jpg"), 1),
    }[kind]()
    tracker.add(path, INBOX)
    assert settle(tracker) == []
    assert tracker.pending() == 0


def test_a_file_under_a_symlinked_folder_is_never_offered(tracker: SettleTracker, files: FakeFiles,
                                                          clock: FakeClock) -> None:
    files.folder(ROOT / "real")
    files.symlink(ROOT / "real" / "linked")
    inside = files.file(ROOT / "real" / "linked" / "shot.jpg", 1)  # what lstat sees through the link
    fine = files.file(ROOT / "real" / "shot.jpg", 1)
    tracker.add(inside, INBOX)
    tracker.add(fine, INBOX)
    settle(tracker)
    clock.advance(1.0)
    assert [s.path for s in settle(tracker)] == [fine]
    assert tracker.pending() == 0


def test_an_unreachable_share_keeps_the_candidate(tracker: SettleTracker, files: FakeFiles,
                                                  clock: FakeClock) -> None:
    shot = files.file(ROOT / "shot.jpg", 1)
    tracker.add(shot, INBOX)
    settle(tracker)
    files.unreachable = True
    clock.advance(1.0)
    assert settle(tracker) == []
    assert tracker.pending() == 1
    files.unreachable = False
    assert len(settle(tracker)) == 1


@pytest.mark.parametrize("order", ["outer first", "inner first"])
def test_nested_inboxes_the_innermost_owns_the_file(tracker: SettleTracker, files: FakeFiles,
                                                    clock: FakeClock, order: str) -> None:
    inner = inbox_at(files.folder(ROOT / "rush"), settle_seconds=0.25)
    shot = files.file(ROOT / "rush" / "shot.jpg", 1)
    for inbox in ([INBOX, inner] if order == "outer first" else [inner, INBOX]):
        tracker.add(shot, inbox)
    settle(tracker)
    clock.advance(0.25)
    assert settle(tracker) == [Settled(shot, inner, (1, 1))]


def test_a_pass_ends_early_when_stopping(tracker: SettleTracker, files: FakeFiles, clock: FakeClock) -> None:
    for name in ["a.jpg", "b.jpg"]:
        tracker.add(files.file(ROOT / name, 1), INBOX)
    settle(tracker)
    clock.advance(1.0)
    seen: list[Settled] = []
    for item in tracker.settle_pass(stopping=lambda: bool(seen)):
        seen.append(item)
    assert len(seen) == 1
    assert tracker.pending() == 1


# -- the watcher without threads: real files, events handed to its handler ----------------------

class Driver:
    """An InboxWatcher that is never started: no observers and no threads. The test reports the
    events an observer would see; each tick advances the fake clock and runs what the settle thread
    runs (requested scans, then a settle pass)."""

    def __init__(self, *inboxes: InboxConfig):
        self.clock = FakeClock()
        self.rec = Recorder(self.clock)
        self.watcher = InboxWatcher(list(inboxes), self.rec, tick_seconds=TICK, clock=self.clock)
        self._handlers: list[_InboxEventHandler] = []

    def start(self) -> Driver:
        """What ``InboxWatcher.start()`` does, less the threads: folders made, handlers, the start scan."""
        for watch in self.watcher._watches:
            watch.root.mkdir(parents=True, exist_ok=True)
            watched = Path(os.path.realpath(watch.root))
            self._handlers.append(_InboxEventHandler(self.watcher, watch, watched))
        self.watcher.rescan()
        return self

    def event(self, event: FileSystemEvent) -> None:
        for handler in self._handlers:  # every observer watching a folder above the path sees it
            handler.dispatch(event)

    def created(self, path: Path) -> None:
        self.event(DirCreatedEvent(str(path)) if path.is_dir() else FileCreatedEvent(str(path)))

    def modified(self, path: Path) -> None:
        self.event(FileModifiedEvent(str(path)))

    def deleted(self, path: Path) -> None:
        self.event(FileDeletedEvent(str(path)))

    def moved(self, src: Path, dest: Path) -> None:
        self.event(FileMovedEvent(str(src), str(dest)))

    def tick(self) -> None:
        self.clock.advance(TICK)
        self.watcher._run_scan_requests()
        self.watcher._settle_pass()

    def run_for(self, seconds: float) -> None:
        end = self.clock() + seconds
        while self.clock() < end - 1e-9:
            self.tick()

    def wait_for(self, condition: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
        deadline = self.clock() + timeout
        while self.clock() < deadline:
            if condition():
                return True
            self.tick()
        return condition()

    def wait_quiet(self) -> None:
        """Until nothing is pending, then a little longer than one settle period with nothing pending."""
        assert self.wait_for(lambda: self.watcher.pending() == 0)
        self.run_for(SETTLE + 4 * TICK)
        assert self.wait_for(lambda: self.watcher.pending() == 0)


def test_slow_write_is_handed_over_once_and_complete(tmp_path: Path) -> None:
    driver = Driver(inbox_at(tmp_path)).start()
    rec = driver.rec
    chunks = [bytes([i]) * 50_000 for i in range(6)]
    target = tmp_path / "slow.jpg"
    with open(target, "wb") as fh:
        driver.created(target)
        for chunk in chunks:
            fh.write(chunk)
            fh.flush()
            driver.modified(target)
            driver.run_for(3 * TICK)  # longer than a tick, shorter than settle
            assert rec.count("slow.jpg") == 0, "handed over while still being written"
        last_write = driver.clock()
    assert driver.wait_for(lambda: rec.count("slow.jpg") == 1)
    driver.wait_quiet()
    assert rec.count("slow.jpg") == 1
    path, content, handed_at = rec.calls[0]
    assert path == target
    assert content == b"".join(chunks)
    assert handed_at - last_write >= SETTLE - 3 * TICK  # waited for the settle period after the last chunk


def test_write_then_rename_hands_over_only_the_final_name(tmp_path: Path) -> None:
    driver = Driver(inbox_at(tmp_path)).start()
    rec = driver.rec
    part = tmp_path / "shot.jpg.part"
    part.write_bytes(b"x" * 10_000)
    driver.created(part)
    driver.run_for(SETTLE + 0.2)  # a .part that settles must still not be taken
    part.rename(tmp_path / "shot.jpg")
    driver.moved(part, tmp_path / "shot.jpg")
    assert driver.wait_for(lambda: rec.count("shot.jpg") == 1)
    driver.wait_quiet()
    assert rec.names() == ["shot.jpg"]
    assert rec.calls[0][1] == b"x" * 10_000


def test_ignored_names_are_never_handed_over(tmp_path: Path) -> None:
    driver = Driver(inbox_at(tmp_path)).start()
    watcher, rec = driver.watcher, driver.rec
    (tmp_path / ".hidden").mkdir()
    driver.created(tmp_path / ".hidden")
    for name in [".DS_Store", "._shot.jpg", "~$notes.docx", "shot.jpg.crdownload", "Thumbs.db",
                 "desktop.ini", "backup.png~", "x.tmp", ".hidden/inside.jpg"]:
        (tmp_path / name).write_bytes(b"junk")
        driver.created(tmp_path / name)
    (tmp_path / "real.jpg").write_bytes(b"real")
    driver.created(tmp_path / "real.jpg")
    assert driver.wait_for(lambda: rec.count("real.jpg") == 1)
    driver.wait_quiet()
    watcher.rescan()
    driver.wait_quiet()
    assert rec.names() == ["real.jpg"]


def test_symlinks_are_never_handed_over(tmp_path: Path) -> None:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    inbox.mkdir()
    outside.mkdir()
    (outside / "target.jpg").write_bytes(b"not in the inbox")
    (outside / "nested.jpg").write_bytes(b"not in the inbox either")
    driver = Driver(inbox_at(inbox)).start()
    watcher, rec = driver.watcher, driver.rec
    (inbox / "link.jpg").symlink_to(outside / "target.jpg")
    (inbox / "linked_folder").symlink_to(outside, target_is_directory=True)
    (inbox / "real.jpg").write_bytes(b"real")
    for name in ["link.jpg", "linked_folder", "linked_folder/nested.jpg", "real.jpg"]:
        driver.event(FileCreatedEvent(str(inbox / name)))  # a symlink to a folder is reported as a file
    assert driver.wait_for(lambda: rec.count("real.jpg") == 1)
    driver.wait_quiet()
    watcher.rescan()
    driver.wait_quiet()
    assert rec.names() == ["real.jpg"]


@pytest.mark.parametrize("recursive", [True, False])
def test_subfolders_follow_the_recursive_setting(tmp_path: Path, recursive: bool) -> None:
    (tmp_path / "before").mkdir()
    (tmp_path / "before" / "old.jpg").write_bytes(b"old")
    driver = Driver(inbox_at(tmp_path, recursive=recursive)).start()
    rec = driver.rec
    (tmp_path / "client" / "day1").mkdir(parents=True)
    (tmp_path / "client" / "day1" / "deep.jpg").write_bytes(b"deep")
    (tmp_path / "top.jpg").write_bytes(b"top")
    driver.created(tmp_path / "client")  # the handler asks for a scan: the folder's files may predate its watch
    driver.created(tmp_path / "top.jpg")
    assert driver.wait_for(lambda: rec.count("top.jpg") == 1)
    if recursive:
        assert driver.wait_for(lambda: rec.count("deep.jpg") == 1 and rec.count("old.jpg") == 1)
    driver.wait_quiet()
    expected = ["deep.jpg", "old.jpg", "top.jpg"] if recursive else ["top.jpg"]
    assert rec.names() == expected
    if recursive:
        assert tmp_path / "client" / "day1" / "deep.jpg" in [p for p, _, _ in rec.calls]


def test_zero_byte_file_that_stays_empty_is_handed_over(tmp_path: Path) -> None:
    driver = Driver(inbox_at(tmp_path)).start()
    rec = driver.rec
    (tmp_path / "empty.jpg").touch()
    driver.created(tmp_path / "empty.jpg")
    assert driver.wait_for(lambda: rec.count("empty.jpg") == 1)
    assert rec.calls[0][1] == b""


def test_files_present_at_start_are_handed_over_once_and_again_when_changed(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"a")
    (tmp_path / "b.png").write_bytes(b"b")
    driver = Driver(inbox_at(tmp_path)).start()
    watcher, rec = driver.watcher, driver.rec
    assert watcher.pending() == 2  # the start scan found them; they still have to settle
    assert rec.names() == []
    assert driver.wait_for(lambda: rec.names() == ["a.jpg", "b.png"])
    watcher.rescan()
    assert watcher.pending() == 0  # unchanged files are not candidates again
    driver.wait_quiet()
    assert rec.names() == ["a.jpg", "b.png"]

    (tmp_path / "a.jpg").write_bytes(b"a, retouched")
    driver.modified(tmp_path / "a.jpg")
    assert driver.wait_for(lambda: rec.count("a.jpg") == 2)
    driver.wait_quiet()
    assert rec.names() == ["a.jpg", "a.jpg", "b.png"]
    assert rec.calls[-1][1] == b"a, retouched"


def test_deleted_and_recreated_file_is_handed_over_again(tmp_path: Path) -> None:
    driver = Driver(inbox_at(tmp_path)).start()
    rec = driver.rec
    shot = tmp_path / "shot.jpg"
    shot.write_bytes(b"same")
    driver.created(shot)
    assert driver.wait_for(lambda: rec.count("shot.jpg") == 1)
    stamp = shot.stat().st_mtime_ns
    shot.unlink()
    driver.deleted(shot)
    driver.wait_quiet()
    shot.write_bytes(b"same")
    os.utime(shot, ns=(stamp, stamp))  # same size and mtime as before: still a new drop
    driver.created(shot)
    assert driver.wait_for(lambda: rec.count("shot.jpg") == 2)


def test_nested_inboxes_hand_the_file_to_the_innermost(tmp_path: Path) -> None:
    outer, inner = inbox_at(tmp_path), inbox_at(tmp_path / "priority")
    driver = Driver(outer, inner).start()
    rec = driver.rec
    (tmp_path / "priority" / "rush.jpg").write_bytes(b"rush")
    driver.created(tmp_path / "priority" / "rush.jpg")
    assert driver.wait_for(lambda: rec.count("rush.jpg") == 1)
    driver.wait_quiet()
    assert rec.count("rush.jpg") == 1
    assert rec.inboxes == [inner]
