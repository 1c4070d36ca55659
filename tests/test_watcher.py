"""The inbox watcher against real folders and real watchdog observers.

Timings: settle 0.4 s, tick 0.05 s, supervision check every 1 s (module constant), polling every 0.1 s.
Every test must leave no thread behind (``no_leaked_threads``, as watchdog's own suite does).
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.config import InboxConfig
from pipeline.watcher import InboxWatcher

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


class Recorder:
    """The on_settled callback: remembers each hand-over with the file's content at that moment."""

    def __init__(self, fail_first: int = 0):
        self.calls: list[tuple[Path, bytes, float]] = []
        self.inboxes: list[InboxConfig] = []
        self._fail_left = fail_first
        self._lock = threading.Lock()

    def __call__(self, path: Path, inbox: InboxConfig) -> None:
        with self._lock:
            if self._fail_left:
                self._fail_left -= 1
                raise RuntimeError(f"job store unavailable for {path.name}")
            self.calls.append((path, path.read_bytes(), time.monotonic()))
            self.inboxes.append(inbox)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(p.name for p, _, _ in self.calls)

    def count(self, name: str) -> int:
        with self._lock:
            return sum(1 for p, _, _ in self.calls if p.name == name)


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
             rescan_seconds: float = 300.0) -> tuple[InboxWatcher, Recorder]:
        recorder = recorder or Recorder()
        watcher = InboxWatcher(list(inboxes), recorder, rescan_seconds=rescan_seconds, tick_seconds=TICK)
        started.append(watcher)
        if start:
            watcher.start()
        return watcher, recorder

    yield make
    for watcher in started:
        watcher.stop()


def inbox_at(path: Path, **kwargs: object) -> InboxConfig:
    return InboxConfig(path=path, settle_seconds=kwargs.pop("settle_seconds", SETTLE), **kwargs)


# -- settling ---------------------------------------------------------------------------------

def test_slow_write_is_handed_over_once_and_complete(tmp_path: Path, make_watcher) -> None:
    watcher, rec = make_watcher(inbox_at(tmp_path))
    chunks = [bytes([i]) * 50_000 for i in range(6)]
    target = tmp_path / "slow.jpg"
    with open(target, "wb") as fh:
        for chunk in chunks:
            fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
            time.sleep(3 * TICK)  # longer than a tick, shorter than settle
            assert rec.count("slow.jpg") == 0, "handed over while still being written"
        last_write = time.monotonic()
    assert wait_for(lambda: rec.count("slow.jpg") == 1)
    wait_quiet(watcher)
    assert rec.count("slow.jpg") == 1
    path, content, handed_at = rec.calls[0]
    assert path == target
    assert content == b"".join(chunks)
    assert handed_at - last_write >= SETTLE - 3 * TICK  # waited for the settle period after the last chunk


def test_write_then_rename_hands_over_only_the_final_name(tmp_path: Path, make_watcher) -> None:
    watcher, rec = make_watcher(inbox_at(tmp_path))
    part = tmp_path / "shot.jpg.part"
    part.write_bytes(b"x" * 10_000)
    time.sleep(SETTLE + 0.2)  # a .part that settles must still not be taken
    part.rename(tmp_path / "shot.jpg")
    assert wait_for(lambda: rec.count("shot.jpg") == 1)
    wait_quiet(watcher)
    assert rec.names() == ["shot.jpg"]
    assert rec.calls[0][1] == b"x" * 10_000


def test_ignored_names_are_never_handed_over(tmp_path: Path, make_watcher) -> None:
    watcher, rec = make_watcher(inbox_at(tmp_path))
    (tmp_path / ".hidden").mkdir()
    for name in [".DS_Store", "._shot.jpg", "~$notes.docx", "shot.jpg.crdownload", "Thumbs.db",
                 "desktop.ini", "backup.png~", "x.tmp", ".hidden/inside.jpg"]:
        (tmp_path / name).write_bytes(b"junk")
    (tmp_path / "real.jpg").write_bytes(b"real")
    assert wait_for(lambda: rec.count("real.jpg") == 1)
    wait_quiet(watcher)
    watcher.rescan()
    wait_quiet(watcher)
    assert rec.names() == ["real.jpg"]


def test_symlinks_are_never_handed_over(tmp_path: Path, make_watcher) -> None:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    inbox.mkdir()
    outside.mkdir()
    (outside / "target.jpg").write_bytes(b"not in the inbox")
    (outside / "nested.jpg").write_bytes(b"not in the inbox either")
    watcher, rec = make_watcher(inbox_at(inbox))
    (inbox / "link.jpg").symlink_to(outside / "target.jpg")
    (inbox / "linked_folder").symlink_to(outside, target_is_directory=True)
    (inbox / "real.jpg").write_bytes(b"real")
    assert wait_for(lambda: rec.count("real.jpg") == 1)
    wait_quiet(watcher)
    watcher.rescan()
    wait_quiet(watcher)
    assert rec.names() == ["real.jpg"]


@pytest.mark.parametrize("recursive", [True, False])
def test_subfolders_follow_the_recursive_setting(tmp_path: Path, make_watcher, recursive: bool) -> None:
    (tmp_path / "before").mkdir()
    (tmp_path / "before" / "old.jpg").write_bytes(b"old")
    watcher, rec = make_watcher(inbox_at(tmp_path, recursive=recursive))
    (tmp_path / "client" / "day1").mkdir(parents=True)
    (tmp_path / "client" / "day1" / "deep.jpg").write_bytes(b"deep")
    (tmp_path / "top.jpg").write_bytes(b"top")
    assert wait_for(lambda: rec.count("top.jpg") == 1)
    if recursive:
        assert wait_for(lambda: rec.count("deep.jpg") == 1 and rec.count("old.jpg") == 1)
    wait_quiet(watcher)
    expected = ["deep.jpg", "old.jpg", "top.jpg"] if recursive else ["top.jpg"]
    assert rec.names() == expected
    if recursive:
        assert tmp_path / "client" / "day1" / "deep.jpg" in [p for p, _, _ in rec.calls]


def test_zero_byte_file_that_stays_empty_is_handed_over(tmp_path: Path, make_watcher) -> None:
    watcher, rec = make_watcher(inbox_at(tmp_path))
    (tmp_path / "empty.jpg").touch()
    assert wait_for(lambda: rec.count("empty.jpg") == 1)
    assert rec.calls[0][1] == b""


# -- reconciliation and rescans ---------------------------------------------------------------

def test_files_present_at_start_are_handed_over_once_and_again_when_changed(tmp_path: Path, make_watcher) -> None:
    (tmp_path / "a.jpg").write_bytes(b"a")
    (tmp_path / "b.png").write_bytes(b"b")
    watcher, rec = make_watcher(inbox_at(tmp_path))
    assert watcher.pending() == 2  # the start scan found them; they still have to settle
    assert rec.names() == []
    assert wait_for(lambda: rec.names() == ["a.jpg", "b.png"])
    watcher.rescan()
    assert watcher.pending() == 0  # unchanged files are not candidates again
    wait_quiet(watcher)
    assert rec.names() == ["a.jpg", "b.png"]

    (tmp_path / "a.jpg").write_bytes(b"a, retouched")
    assert wait_for(lambda: rec.count("a.jpg") == 2)
    wait_quiet(watcher)
    assert rec.names() == ["a.jpg", "a.jpg", "b.png"]
    assert rec.calls[-1][1] == b"a, retouched"


def test_periodic_rescan_finds_files_no_event_reported(tmp_path: Path, make_watcher) -> None:
    # a polling observer that never gets round to looking stands in for an OS that dropped the event
    inbox = inbox_at(tmp_path, polling=True, poll_interval_seconds=60.0)
    watcher, rec = make_watcher(inbox, rescan_seconds=0.5)
    (tmp_path / "missed.jpg").write_bytes(b"missed")
    assert wait_for(lambda: rec.count("missed.jpg") == 1)
    time.sleep(1.2)  # two more rescans
    assert rec.count("missed.jpg") == 1


def test_deleted_and_recreated_file_is_handed_over_again(tmp_path: Path, make_watcher) -> None:
    watcher, rec = make_watcher(inbox_at(tmp_path))
    shot = tmp_path / "shot.jpg"
    shot.write_bytes(b"same")
    assert wait_for(lambda: rec.count("shot.jpg") == 1)
    stamp = shot.stat().st_mtime_ns
    shot.unlink()
    wait_quiet(watcher)
    shot.write_bytes(b"same")
    os.utime(shot, ns=(stamp, stamp))  # same size and mtime as before: still a new drop
    assert wait_for(lambda: rec.count("shot.jpg") == 2)


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

def test_a_raising_callback_does_not_stop_the_watcher(tmp_path: Path, make_watcher, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="pipeline.watcher")
    watcher, rec = make_watcher(inbox_at(tmp_path), recorder=Recorder(fail_first=1))
    (tmp_path / "first.jpg").write_bytes(b"1")
    assert wait_for(lambda: "first.jpg" in caplog.text)
    assert "job store unavailable" in caplog.text
    (tmp_path / "second.jpg").write_bytes(b"2")
    assert wait_for(lambda: rec.count("second.jpg") == 1)
    assert rec.count("first.jpg") == 0
    watcher.rescan()  # the failed file is offered again
    assert wait_for(lambda: rec.count("first.jpg") == 1)


def test_missing_inbox_is_created(tmp_path: Path, make_watcher) -> None:
    inbox = tmp_path / "not" / "yet"
    watcher, rec = make_watcher(inbox_at(inbox))
    assert inbox.is_dir()
    (inbox / "x.jpg").write_bytes(b"x")
    assert wait_for(lambda: rec.count("x.jpg") == 1)


def test_inbox_that_cannot_be_created_is_retried(tmp_path: Path, make_watcher, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="pipeline.watcher")
    blocker = tmp_path / "share"
    blocker.write_bytes(b"a file where the share's folder should be")
    inbox = blocker / "inbox"
    watcher, rec = make_watcher(inbox_at(inbox))  # must not raise
    assert "cannot watch the folder" in caplog.text
    blocker.unlink()
    assert wait_for(inbox.is_dir)
    (inbox / "late.jpg").write_bytes(b"late")
    assert wait_for(lambda: rec.count("late.jpg") == 1)


def test_inbox_removed_and_recreated_is_watched_again(tmp_path: Path, make_watcher, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="pipeline.watcher")
    inbox = tmp_path / "inbox"
    watcher, rec = make_watcher(inbox_at(inbox))
    shutil.rmtree(inbox)
    time.sleep(0.1)
    inbox.mkdir(exist_ok=True)  # the watcher may already have recreated it
    assert wait_for(lambda: "watching again" in caplog.text)
    (inbox / "after.jpg").write_bytes(b"after")
    assert wait_for(lambda: rec.count("after.jpg") == 1)
    assert "restarting the watch" in caplog.text


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


def test_nested_inboxes_hand_the_file_to_the_innermost(tmp_path: Path, make_watcher) -> None:
    outer, inner = inbox_at(tmp_path), inbox_at(tmp_path / "priority")
    watcher, rec = make_watcher(outer, inner)
    (tmp_path / "priority" / "rush.jpg").write_bytes(b"rush")
    assert wait_for(lambda: rec.count("rush.jpg") == 1)
    wait_quiet(watcher)
    assert rec.count("rush.jpg") == 1
    assert rec.inboxes == [inner]


def test_stop_is_idempotent_and_joins_every_thread(tmp_path: Path, no_leaked_threads: None) -> None:
    watcher = InboxWatcher([inbox_at(tmp_path / "a"), inbox_at(tmp_path / "b", polling=True,
                                                               poll_interval_seconds=0.1)],
                           Recorder(), tick_seconds=TICK)
    watcher.start()
    assert any(t.name == "assetd-watcher-settle" for t in threading.enumerate())
    watcher.stop()
    watcher.stop()
    assert not any(t.name == "assetd-watcher-settle" for t in threading.enumerate())
