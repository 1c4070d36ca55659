"""An inbox with `after: move`, end to end: a real daemon empties the inbox into done/ and error/, and
`assetd retry` brings a failed file back and runs it again."""
from __future__ import annotations

import json
import time
from pathlib import Path

from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.daemon import Daemon
from pipeline.store import JobStatus, Store

from conftest import Workspace


def moving(workspace: Workspace) -> None:
    text = workspace.config_path.read_text().replace("  - path: inbox\n", "  - path: inbox\n    after: move\n")
    workspace.config_path.write_text(text)


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


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


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
        time.sleep(0.6)
        assert daemon.idle()
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
