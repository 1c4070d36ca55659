"""An inbox with `after: move`, end to end: a real daemon empties the inbox into done/ and error/, and
`assetd retry` brings a failed file back and runs it again."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.daemon import Daemon
from pipeline.store import JobStatus, Store

from conftest import CUTOUTS, Workspace
from inboxcases import files_under, moving


def run_daemon_until(workspace: Workspace, done, timeout: float = 60.0) -> Daemon:
    """Start a daemon, wait until ``done(daemon)`` holds and it is idle; returns it running."""
    config, rules = workspace.load()
    daemon = Daemon(config, rules)
    daemon.start()
    deadline = time.monotonic() + timeout
    while not (done(daemon) and daemon.idle()):
        assert time.monotonic() < deadline, f"timed out: jobs {[(j.id, j.status) for j in daemon.store.jobs()]}"
        time.sleep(0.1)
    return daemon


def test_after_move_empties_the_inbox_into_done_and_error_and_retry_brings_a_file_back(workspace, no_leaked_threads):
    moving(workspace)
    inbox = workspace.inbox
    good = workspace.shot("inbox/misc/b.jpg", seed=2).read_bytes()
    (inbox / "misc" / "b_copy.jpg").write_bytes(good)  # a twin: same content, another name
    workspace.shot("inbox/c.jpg", seed=3)
    (inbox / "misc" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (inbox / "done").mkdir()
    (inbox / "done" / "c.jpg").write_bytes(b"an earlier c.jpg, moved here before")  # a clash: never overwritten

    daemon = run_daemon_until(workspace, lambda d: len(d.store.jobs()) >= 4)
    try:
        daemon.watcher.rescan()  # whatever lies in done/ and error/ now is never taken
        deadline = time.monotonic() + 15
        while not daemon.idle():  # under load the settle thread may take a moment to look at what it found
            assert time.monotonic() < deadline, "the daemon did not become idle after the rescan"
            time.sleep(0.1)
        jobs = {Path(j.input_path).name: j for j in daemon.store.jobs()}
    finally:
        daemon.stop()

    assert sorted(jobs) == ["b.jpg", "b_copy.jpg", "bad.jpg", "c.jpg"]  # one job each: nothing processed twice
    assert [jobs[n].status for n in ("b.jpg", "b_copy.jpg", "c.jpg")] == [JobStatus.DONE] * 3
    assert jobs["bad.jpg"].status is JobStatus.FAILED
    assert files_under(inbox) == ["done/c-2.jpg", "done/c.jpg", "done/misc/b.jpg", "done/misc/b_copy.jpg",
                                  "error/misc/bad.jpg", "error/misc/bad.jpg.error.txt"]
    assert (inbox / "done" / "c.jpg").read_bytes() == b"an earlier c.jpg, moved here before"
    assert (inbox / "done" / "misc" / "b.jpg").read_bytes() == good
    reason = (inbox / "error" / "misc" / "bad.jpg.error.txt").read_text()
    assert len(reason.splitlines()) == 1
    assert jobs["bad.jpg"].error.removeprefix(str(inbox / "misc" / "bad.jpg") + ": ") in reason
    assert f"job {jobs['bad.jpg'].id}" in reason
    assert f"`assetd retry {jobs['bad.jpg'].id} --config {workspace.config_path}`" in reason  # runs as written

    listed = CliRunner().invoke(cli, ["jobs", "--json", "--config", str(workspace.config_path)])
    moved_to = {Path(d["input_path"]).name: d["moved_to"] for d in json.loads(listed.output)["jobs"]}
    assert moved_to["c.jpg"] == str(inbox / "done" / "c-2.jpg")

    bad_id = jobs["bad.jpg"].id
    result = CliRunner().invoke(cli, ["retry", str(bad_id), "--config", str(workspace.config_path)])
    assert result.exit_code == 0, result.output
    assert f"job {bad_id}: moved {inbox / 'error' / 'misc' / 'bad.jpg'} back to {inbox / 'misc' / 'bad.jpg'}" \
        in result.output
    assert f"queued again: {bad_id}" in result.output
    assert (inbox / "misc" / "bad.jpg").is_file()
    assert files_under(inbox / "error") == []  # its .error.txt went with it

    first_finish = jobs["bad.jpg"].finished_at
    daemon = run_daemon_until(workspace, lambda d: d.store.get(bad_id).status is JobStatus.FAILED)
    try:
        again = daemon.store.get(bad_id)
    finally:
        daemon.stop()
    assert again.finished_at > first_finish  # it ran again, failed again, and went back to error/
    assert files_under(inbox / "error") == ["misc/bad.jpg", "misc/bad.jpg.error.txt"]
    assert not (inbox / "misc" / "bad.jpg").exists()


def test_retry_leaves_a_moved_file_whose_place_is_taken(workspace):
    moving(workspace)
    inbox = workspace.inbox
    (inbox / "bad.jpg").write_bytes(b"not an image")
    daemon = run_daemon_until(workspace, lambda d: len(d.store.jobs()) == 1)
    daemon.stop()
    job = Store(workspace.root / "state" / "assetd.sqlite3").jobs()[0]
    assert (inbox / "error" / "bad.jpg").is_file()
    (inbox / "bad.jpg").write_bytes(b"another file dropped under the same name")

    result = CliRunner().invoke(cli, ["retry", "--failed", "--config", str(workspace.config_path)])
    assert result.exit_code == 1
    assert f"job {job.id}: {inbox / 'bad.jpg'} is taken by another file; its input stays in " \
           f"{inbox / 'error' / 'bad.jpg'} and the job is not queued again" in result.output
    assert (inbox / "error" / "bad.jpg").read_bytes() == b"not an image"
    assert (inbox / "bad.jpg").read_bytes() == b"another file dropped under the same name"
    assert Store(workspace.root / "state" / "assetd.sqlite3").get(job.id).status is JobStatus.FAILED


def test_process_and_explain_leave_done_and_error_folders_alone(workspace):
    moving(workspace)
    workspace.shot("inbox/done/misc/old.jpg", seed=4)
    (workspace.inbox / "error").mkdir()
    (workspace.inbox / "error" / "bad.jpg").write_bytes(b"not an image")
    workspace.shot("inbox/misc/new.jpg", seed=5)
    result = CliRunner().invoke(cli, ["process", str(workspace.inbox), "--json", "--config",
                                      str(workspace.config_path)])
    assert result.exit_code == 0, result.output
    taken = [Path(r["input"]).relative_to(workspace.inbox).as_posix() for r in json.loads(result.output)["results"]]
    assert taken == ["misc/new.jpg"]
    assert (workspace.inbox / "done" / "misc" / "new.jpg").is_file()  # the inbox's after: move applies here too
    explained = CliRunner().invoke(cli, ["explain", str(workspace.inbox / "done" / "misc" / "old.jpg"), "--config",
                                         str(workspace.config_path)])
    assert explained.exit_code == 1 and "✓" not in explained.output
    assert (f"in the done or error folder of inbox {workspace.inbox} (after: move): neither the daemon nor "
            "`assetd process` takes it") in explained.output


def test_an_input_another_unfinished_job_reads_stays_in_the_inbox(workspace):
    from pipeline.inboxflow import after_job
    from pipeline.intake import file_hash

    moving(workspace)
    config, _ = workspace.load()
    store = Store(config.database)
    shot = workspace.shot("inbox/a.jpg", seed=6)
    digest = file_hash(shot)
    st = shot.stat()
    store.remember_file(str(shot), st.st_size, st.st_mtime_ns, digest)
    first, _ = store.enqueue(input_hash=digest, rule="cutouts", rule_version="1", input_path=str(shot),
                             rel_path="a.jpg", max_attempts=2)
    second, _ = store.enqueue(input_hash=digest, rule="products", rule_version="1", input_path=str(shot),
                              rel_path="a.jpg", max_attempts=2)
    store.fail(first.id, "first rule failed")
    assert after_job(config, store, store.get(first.id), JobStatus.FAILED, "first rule failed") is None
    assert shot.is_file()  # the products job still reads it
    store.fail(second.id, "second rule failed")
    assert after_job(config, store, store.get(second.id), JobStatus.FAILED, "second rule failed") == \
        workspace.inbox / "error" / "a.jpg"
    shot.write_bytes(b"a new version dropped under the same name")  # while a job of the old content ends
    third, _ = store.enqueue(input_hash=digest, rule="cutouts", rule_version="2", input_path=str(shot),
                             rel_path="a.jpg", max_attempts=2)
    store.fail(third.id, "failed")
    assert after_job(config, store, store.get(third.id), JobStatus.FAILED, "failed") is None
    assert shot.read_bytes() == b"a new version dropped under the same name"
    store.close()


def test_daemon_waits_for_a_missing_inbox_and_never_creates_it(workspace, caplog, no_leaked_threads):
    caplog.set_level(logging.INFO)
    workspace.inbox.rmdir()  # a share not mounted yet; create: false (the default)
    config, rules = workspace.load()
    daemon = Daemon(config, rules)
    daemon.start()
    try:
        assert (f"inbox {workspace.inbox}: the folder does not exist (create: false); its files wait until it is "
                "back (assetd does not recreate it)") in caplog.text
        time.sleep(1.2)
        assert not workspace.inbox.exists()
        workspace.shot("inbox/misc/late.jpg")  # the share is mounted, with a file in it
        deadline = time.monotonic() + 30
        while not (daemon.store.jobs() and daemon.idle()):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert daemon.store.jobs()[0].status is JobStatus.DONE
        assert f"inbox {workspace.inbox} is back; its files are taken again" in caplog.text
        assert caplog.text.count("does not exist") == 1  # once per outage, not once per attempt
    finally:
        daemon.stop()


def test_reprocess_moves_the_files_after_move_put_away_back_and_redoes_them(workspace):
    """A rule changed after the night's files went to done/: `assetd reprocess` finds them there (the moves are
    recorded), puts them back in the inbox and queues them under the rule as it is now."""
    moving(workspace)
    workspace.shot("inbox/misc/a.jpg", seed=1)
    daemon = run_daemon_until(workspace, lambda d: len(d.store.jobs()) >= 1)
    daemon.stop()
    (first,) = Store(workspace.config_path.parent / "state" / "assetd.sqlite3").jobs()
    assert (workspace.inbox / "done" / "misc" / "a.jpg").is_file()
    workspace.add_rule("20-cutouts.yaml", CUTOUTS.replace("remove_background: {}", "remove_background: {trim: true}"))

    result = CliRunner().invoke(cli, ["reprocess", "--rule", "cutouts", "--config", str(workspace.config_path)])
    assert result.exit_code == 0, result.output
    assert "1 of them lie in a done or error folder (after: move): they are moved back" in result.output
    assert f"job {first.id}: moved {workspace.inbox / 'done' / 'misc' / 'a.jpg'} back to" in result.output
    assert (workspace.inbox / "misc" / "a.jpg").is_file() and not (workspace.inbox / "done" / "misc" / "a.jpg").exists()
    daemon = run_daemon_until(workspace, lambda d: d.store.counts()["done"] >= 2)
    daemon.stop()
    assert (workspace.inbox / "done" / "misc" / "a.jpg").is_file()  # done again, under the new version


def test_the_error_txt_of_a_job_failed_after_publishing_says_what_was_removed(workspace):
    """A try that published a file before assetd died, then a redo failed for good: the .error.txt beside the moved
    input says what the job's record says, the published file removed included (it left that part out)."""
    import hashlib

    from pipeline.intake import Intake
    from pipeline.worker import Worker

    moving(workspace)
    config, rules = workspace.load()
    bad = workspace.inbox / "products" / "bad.jpg"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    store = Store(config.database)
    worker = Worker("w1", config, store, rules)
    try:
        job = Intake(config, rules, store).submit(bad).job
        earlier = workspace.out("cutouts") / "bad.png"  # what an earlier try published before assetd died
        earlier.parent.mkdir(parents=True, exist_ok=True)
        earlier.write_bytes(b"half a set")
        store.reserve_output(job.id, str(earlier), "cutouts", "remove_background",
                             hashlib.sha256(b"half a set").hexdigest(), 10)
        assert worker.run_next().status is JobStatus.FAILED
        error = store.get(job.id).error
    finally:
        worker.close()
        store.close()
    assert not earlier.exists() and error.endswith("; removed the 1 file it had published")
    reason = (workspace.inbox / "error" / "products" / "bad.jpg.error.txt").read_text()
    assert "removed the 1 file it had published" in reason


def test_a_job_failed_at_start_after_publishing_says_so_in_its_error_txt(workspace):
    """assetd was killed on a job's last attempt after it had published one file: the next start fails it for good,
    withdraws that file, and only then moves the input to error/, so the .error.txt says what was removed."""
    import hashlib
    import subprocess
    import sys

    from pipeline.intake import Intake
    from pipeline.owners import HOST

    moving(workspace)
    config, rules = workspace.load()
    shot = workspace.shot("inbox/products/a.jpg", seed=3)
    store = Store(config.database)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    job = Intake(config, rules, store).submit(shot).job
    store.db.conn.execute("UPDATE jobs SET max_attempts = 1 WHERE id = ?", [job.id])
    assert store.claim_next(f"worker-1 pid {dead} on {HOST}", 3600).id == job.id  # its last attempt, started
    published = workspace.out("cutouts") / "a.png"
    published.parent.mkdir(parents=True, exist_ok=True)
    published.write_bytes(b"one of its files")
    store.reserve_output(job.id, str(published), "cutouts", "remove_background",
                         hashlib.sha256(b"one of its files").hexdigest(), 16)
    store.close()
    daemon = Daemon(config, rules)
    daemon.start()
    try:
        failed = daemon.store.get(job.id)
    finally:
        daemon.stop()
    assert failed.status is JobStatus.FAILED and failed.error.endswith("; removed the 1 file it had published")
    assert not published.exists()
    reason = (workspace.inbox / "error" / "products" / "a.jpg.error.txt").read_text()
    assert "removed the 1 file it had published" in reason


def test_a_reason_that_cannot_be_written_leaves_the_move_recorded_and_retry_brings_the_file_back(workspace,
                                                                                                  monkeypatch, caplog):
    """The .error.txt cannot be written (its volume full, assetd killed while writing it): the input is in error/
    all the same, so its move is recorded first and `assetd retry` brings it back. It was recorded after the
    reason, so the file sat in error/ unrecorded, retry "queued" it and it failed "file disappeared"; and the log
    said the file stayed in the inbox. A temporary .error.txt a killed assetd left there is removed at start."""
    import errno
    import subprocess
    import sys

    from pipeline import inboxflow
    from pipeline.outputs import TEMP_SUFFIX, remove_temp_files, write_temp

    moving(workspace)
    bad = workspace.inbox / "products" / "bad.jpg"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(inboxflow, "_write_reason", full)
    caplog.set_level(logging.INFO)
    daemon = run_daemon_until(workspace, lambda d: [j.status for j in d.store.jobs()] == [JobStatus.FAILED])
    try:
        (job,) = daemon.store.jobs()
        move = daemon.store.moved(job.id)
    finally:
        daemon.stop()
    moved = workspace.inbox / "error" / "products" / "bad.jpg"
    assert moved.is_file() and not bad.exists() and move is not None and move.dest == str(moved)
    assert "moved to" in caplog.text and "but its reason could not be written beside it (No space left on device)" \
        in caplog.text and "it stays in the inbox" not in caplog.text
    monkeypatch.undo()
    retried = CliRunner().invoke(cli, ["retry", str(job.id), "--config", str(workspace.config_path)])
    assert retried.exit_code == 0, retried.output
    assert bad.is_file() and not moved.exists()

    proc = subprocess.Popen([sys.executable, "-c", "pass"])  # a writer that is gone
    proc.wait()
    left = write_temp(moved.with_name("bad.jpg.error.txt"), b"half a reason")
    stale = left.with_name(left.name.replace(f"-{os.getpid()}{TEMP_SUFFIX}", f"-{proc.pid}{TEMP_SUFFIX}"))
    left.rename(stale)
    config, _ = workspace.load()
    assert remove_temp_files(config) == {stale.parent: 1} and not stale.exists()
