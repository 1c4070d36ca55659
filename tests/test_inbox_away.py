"""An inbox away and a database that refuses writes, met by a real daemon, watcher and worker (issue-11 trial).

An inbox watched before is never created again at a restart; an inbox that is a share's mount point is away while
the share is unmounted (the empty folder under it shows), and a job whose input went with it waits uncharged; a file
that settles while the database's volume is full is queued once it takes writes again, not at the next rescan.
Mounts are real tmpfs volumes (root needed: skipped with the reason where ``mount`` is refused).
"""
from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator

import pytest

from mounts import Tmpfs
from pipeline.daemon import Daemon
from pipeline.health import Problems
from pipeline.intake import Intake
from pipeline.store import JobStatus
from pipeline.health import UNMOUNTED
from pipeline.worker import Worker
from problemcases import PLAIN, rule, setup, wait_for


@pytest.fixture
def tmpfs() -> Iterator[Tmpfs]:
    mounts = Tmpfs()
    yield mounts
    mounts.close()


def inbox_option(workspace, line: str):
    """The workspace's config with ``line`` added to its inbox; returns (config, rules)."""
    text = workspace.config_path.read_text()
    workspace.config_path.write_text(text.replace("  - path: inbox\n", f"  - path: inbox\n    {line}\n", 1))
    return workspace.load()


def test_an_inbox_renamed_away_while_assetd_was_down_is_waited_for_not_created(workspace, caplog, no_leaked_threads):
    _, _, store = setup(workspace, {"cut": rule("cut", PLAIN, "cutouts")})
    store.close()
    config, rules = inbox_option(workspace, "create: true")
    first = Daemon(config, rules)
    first.start()  # the first start watches the inbox (and would have created it)
    first.stop()
    away = workspace.root / "inbox.x"
    workspace.inbox.rename(away)  # `mv inbox inbox.x`, then `assetd run` again
    caplog.set_level(logging.INFO)
    daemon = Daemon(config, rules)
    daemon.start()
    try:
        assert not workspace.inbox.exists(), "create: true recreated an inbox that was watched before"
        (problem,) = daemon.problems.active()
        assert problem.key == f"inbox:{workspace.inbox}" and "it was watched before" in problem.message
        workspace.shot("inbox.x/a.jpg", size=(160, 120))
        away.rename(workspace.inbox)  # back
        wait_for(lambda: not daemon.problems.active(), 20)
        wait_for(lambda: [j.status for j in daemon.store.jobs()] == [JobStatus.DONE], 30)
    finally:
        daemon.stop()
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"paused: inbox {workspace.inbox}: the folder does not exist") for m in said)
    assert any(m.startswith(f"resumed: inbox {workspace.inbox} is back") for m in said)


def test_an_input_whose_inbox_share_is_unmounted_waits_for_it_uncharged(workspace, tmpfs):
    _, _, store = setup(workspace, {"cut": rule("cut", PLAIN, "cutouts")})
    config, rules = inbox_option(workspace, "after: move")
    tmpfs.mount(workspace.inbox)  # the inbox is a share's mount point
    store.record_inbox_watched(workspace.inbox, mount=True)  # as the daemon's watcher records it
    shot = workspace.shot("inbox/a.jpg", size=(160, 120))
    job = Intake(config, rules, store).submit(shot).job
    problems = Problems(store, None, config, rules=rules)
    worker = Worker("w1", config, store, rules, problems=problems)
    tmpfs.unmount(workspace.inbox)  # mid-batch: the empty folder under the mount shows
    assert workspace.inbox.is_dir() and not shot.exists()
    worker.run_next()
    stored = store.get(job.id)
    assert stored.status is JobStatus.QUEUED and stored.attempts == 0
    (problem,) = problems.active()
    assert problem.key == f"inbox:{workspace.inbox}" and UNMOUNTED in problem.message
    problem.next_probe = 0.0
    problems.check()  # the folder is there, but it is not the share: still paused
    assert problems.active() == [problem] and not (workspace.inbox / "error").exists()
    tmpfs.mount(workspace.inbox)  # back
    workspace.shot("inbox/a.jpg", size=(160, 120))
    problem.next_probe = 0.0
    problems.check()
    assert problems.active() == [] and worker.run_next().status is JobStatus.DONE
    assert (workspace.inbox / "done" / "a.jpg").is_file()
    worker.close()
    store.close()


def fill(folder) -> None:
    """Fill the volume holding ``folder`` to the last byte."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)


def test_a_file_that_settles_while_the_database_is_full_is_queued_once_it_takes_writes(workspace, tmpfs, caplog,
                                                                                       no_leaked_threads):
    _, _, store = setup(workspace, {"cut": rule("cut", PLAIN, "cutouts")})
    store.close()
    config, rules = workspace.load()  # rescan_seconds: 30
    state = config.database.parent
    for leftover in state.iterdir():
        leftover.unlink()
    tmpfs.mount(state, size="2m")  # the database on a small volume of its own
    caplog.set_level(logging.INFO)
    daemon = Daemon(config, rules)
    daemon.start()
    try:
        fill(state)
        workspace.shot("inbox/d03.jpg", size=(160, 120))
        wait_for(lambda: "d03.jpg is queued once it takes writes again" in caplog.text, 20)
        (state / "filler").unlink()  # room again
        wait_for(lambda: [j.input_path for j in daemon.store.jobs()] == [str(workspace.inbox / "d03.jpg")], 15)
    finally:
        daemon.stop()
    said = [r for r in caplog.records if r.name.startswith("assetd.watcher") and r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in said] == [
        f"inbox {workspace.inbox}: the database is full; d03.jpg is queued once it takes writes again"]
    assert said[0].exc_info is None


def test_an_outage_across_a_clean_restart_is_alerted_once_each_way(workspace):
    """The share goes away, its alert goes out, then assetd is stopped and started again (SIGTERM, a deploy) while
    it is still away: the new daemon takes over the open outage, so there is no second "paused" alert, and one
    "resumed" once the folder is back. A clean stop closed the outage before, and the restart alerted it again."""
    from webhooks import Receiver

    receiver = Receiver()
    try:
        _, _, store = setup(workspace, {"cut": rule("cut", PLAIN, "cutouts")}, urls=[receiver.url])
        store.close()
        config, rules = workspace.load()
        first = Daemon(config, rules)
        first.start()
        try:
            away = workspace.root / "inbox.x"
            workspace.inbox.rename(away)
            wait_for(lambda: [m["type"] for m in receiver.messages] == ["failure"], 30)
        finally:
            first.stop()
        second = Daemon(config, rules)
        second.start()
        try:
            wait_for(lambda: second.problems.active(), 20)  # the same outage, taken over
            away.rename(workspace.inbox)
            wait_for(lambda: len(receiver.messages) >= 2, 30)
        finally:
            second.stop()
    finally:
        receiver.close()
    key = f"inbox:{workspace.inbox}"
    assert [(m["type"], m["title"]) for m in receiver.messages] == [
        ("failure", f"assetd: paused: {key}"), ("success", f"assetd: resumed: {key}")], receiver.messages
