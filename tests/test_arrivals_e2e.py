"""Files that arrive slowly or again, end to end with a real daemon and `after: move`: a copy that pauses longer
than settle_seconds waits instead of failing as damaged, its half-written job is superseded by the whole file's;
a file cut short and left unchanged still fails; a file dropped again (or left behind) leaves the inbox."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from pipeline.daemon import Daemon
from pipeline.store import JobStatus

from conftest import Workspace
from inboxcases import files_under, moving

OLD = time.time() - 3600  # an mtime well past the arrival window


def started(workspace: Workspace) -> Daemon:
    (workspace.inbox / "misc").mkdir(parents=True, exist_ok=True)
    config, rules = workspace.load()
    daemon = Daemon(config, rules)
    daemon.start()
    return daemon


def wait_until(what, daemon: Daemon, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, f"timed out: jobs {[(j.id, j.status, j.error) for j in daemon.store.jobs()]}"
        time.sleep(0.05)


def waiting_for_the_rest(daemon: Daemon, name: str) -> bool:
    return any(Path(j.input_path).name == name and j.status is JobStatus.QUEUED and j.error
               and "may still be arriving" in j.error for j in daemon.store.jobs())


def test_a_copy_that_pauses_past_settle_waits_and_the_whole_file_is_done(workspace, caplog, no_leaked_threads):
    moving(workspace)
    whole = workspace.shot("staging/slow.jpg", seed=7).read_bytes()
    target = workspace.inbox / "misc" / "slow.jpg"
    caplog.set_level(logging.INFO, logger="assetd")
    daemon = started(workspace)
    try:
        with open(target, "wb") as fh:  # the first third, then a pause far longer than settle_seconds (0.3 s)
            fh.write(whole[: len(whole) // 3])
        wait_until(lambda: waiting_for_the_rest(daemon, "slow.jpg"), daemon)
        assert target.read_bytes() == whole[: len(whole) // 3]  # neither failed nor moved meanwhile
        assert not (workspace.inbox / "error").exists()
        with open(target, "ab") as fh:
            fh.write(whole[len(whole) // 3:])
        wait_until(lambda: (workspace.inbox / "done" / "misc" / "slow.jpg").is_file()
                   and all(j.status not in (JobStatus.QUEUED, JobStatus.RUNNING) for j in daemon.store.jobs()), daemon)
        jobs = daemon.store.jobs()
    finally:
        daemon.stop()

    by_status = {j.status: j for j in jobs}
    assert sorted(j.status.value for j in jobs) == ["done", "superseded"], [(j.status, j.error) for j in jobs]
    half = by_status[JobStatus.SUPERSEDED]
    assert half.error == (f"{target}: superseded: its content changed after it was queued (a copy still arriving, "
                          "or a new version dropped); the new version is queued as its own job")
    assert by_status[JobStatus.DONE].id > half.id
    assert files_under(workspace.inbox) == ["done/misc/slow.jpg"]  # the whole file, moved by the job that owns it
    assert (workspace.inbox / "done" / "misc" / "slow.jpg").read_bytes() == whole
    errors = [r.getMessage() for r in caplog.records if r.name.startswith("assetd") and r.levelno >= logging.ERROR]
    assert errors == []  # no "job N failed" (the failure alert goes with it)


def test_a_file_cut_short_and_left_unchanged_fails_as_damaged_after_the_window(workspace, no_leaked_threads):
    moving(workspace)
    cut = workspace.shot("staging/cut.jpg", seed=8).read_bytes()[:3000]
    target = workspace.inbox / "misc" / "cut.jpg"
    daemon = started(workspace)
    try:
        target.write_bytes(cut)
        wait_until(lambda: waiting_for_the_rest(daemon, "cut.jpg"), daemon)
        os.utime(target, (OLD, OLD))  # as if the window (60 s) had passed with nothing more arriving
        wait_until(lambda: any(j.status is JobStatus.FAILED for j in daemon.store.jobs()), daemon)
        wait_until(lambda: (workspace.inbox / "error" / "misc" / "cut.jpg").is_file(), daemon)
        jobs = daemon.store.jobs()
    finally:
        daemon.stop()
    assert len(jobs) == 1 and jobs[0].status is JobStatus.FAILED
    assert jobs[0].error.startswith(f"{target}: image data is damaged (OSError: image file is truncated")
    assert (workspace.inbox / "error" / "misc" / "cut.jpg").read_bytes() == cut


def test_an_old_file_cut_short_fails_at_once(workspace, no_leaked_threads):
    moving(workspace)
    target = workspace.inbox / "misc" / "old_cut.jpg"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(workspace.shot("staging/old.jpg", seed=9).read_bytes()[:3000])
    os.utime(target, (OLD, OLD))
    daemon = started(workspace)
    try:
        wait_until(lambda: (workspace.inbox / "error" / "misc" / "old_cut.jpg").is_file(), daemon, timeout=20)
        jobs = daemon.store.jobs()
    finally:
        daemon.stop()
    assert [j.status for j in jobs] == [JobStatus.FAILED] and jobs[0].attempts == 1
    assert "image data is damaged" in jobs[0].error


def test_a_file_dropped_again_goes_where_the_first_copy_went(workspace, no_leaked_threads):
    moving(workspace)
    good = workspace.shot("staging/again.jpg", seed=10).read_bytes()
    bad = b"\xff\xd8\xff\xe0 not really a jpeg"
    inbox = workspace.inbox
    daemon = started(workspace)
    try:
        (inbox / "misc" / "again.jpg").write_bytes(good)
        (inbox / "misc" / "bad.jpg").write_bytes(bad)
        wait_until(lambda: files_under(inbox) == ["done/misc/again.jpg", "error/misc/bad.jpg",
                                                  "error/misc/bad.jpg.error.txt"], daemon)
        (inbox / "misc" / "again.jpg").write_bytes(good)  # the same files dropped again
        (inbox / "misc" / "bad.jpg").write_bytes(bad)
        wait_until(lambda: not (inbox / "misc").exists() or not any((inbox / "misc").iterdir()), daemon, timeout=20)
        jobs = {Path(j.input_path).name: j for j in daemon.store.jobs()}

        def second_moves_recorded():  # the rename comes first, its row a moment later
            return all(daemon.store.moved(job.id).dest.endswith("-2.jpg") for job in jobs.values())
        wait_until(second_moves_recorded, daemon, timeout=10)
        moves = {name: daemon.store.moved(job.id) for name, job in jobs.items()}
    finally:
        daemon.stop()
    assert sorted(jobs) == ["again.jpg", "bad.jpg"]  # not run again: the jobs they already had
    assert files_under(inbox) == ["done/misc/again-2.jpg", "done/misc/again.jpg", "error/misc/bad-2.jpg",
                                  "error/misc/bad-2.jpg.error.txt", "error/misc/bad.jpg",
                                  "error/misc/bad.jpg.error.txt"]
    assert moves["again.jpg"].dest == str(inbox / "done" / "misc" / "again-2.jpg")  # recorded like the first move
    assert moves["bad.jpg"].dest == str(inbox / "error" / "misc" / "bad-2.jpg")
    assert f"job {jobs['bad.jpg'].id}" in (inbox / "error" / "misc" / "bad-2.jpg.error.txt").read_text()


def test_a_file_left_in_the_inbox_after_its_job_ended_is_moved_when_seen_again(workspace, no_leaked_threads):
    """What an inbox away when its job ended leaves behind (the file stays, its job is done): when the inbox is
    scanned again (it came back, or at the next start), the file goes to done/."""
    workspace.shot("inbox/misc/left.jpg", seed=11)
    daemon = started(workspace)  # after: keep, as if the move had found no inbox
    try:
        wait_until(lambda: [j.status for j in daemon.store.jobs()] == [JobStatus.DONE] and daemon.idle(), daemon)
    finally:
        daemon.stop()
    assert (workspace.inbox / "misc" / "left.jpg").is_file()
    moving(workspace)
    daemon = started(workspace)
    try:
        wait_until(lambda: (workspace.inbox / "done" / "misc" / "left.jpg").is_file(), daemon, timeout=20)
        jobs = daemon.store.jobs()
    finally:
        daemon.stop()
    assert len(jobs) == 1 and jobs[0].status is JobStatus.DONE
    assert files_under(workspace.inbox) == ["done/misc/left.jpg"]
