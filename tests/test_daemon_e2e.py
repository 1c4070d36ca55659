"""End to end: the real daemon on a temp workspace, files copied in slowly, outputs checked as a studio would."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.daemon import Daemon
from pipeline.store import JobStatus, Store

from conftest import Workspace, decode, ratio_of
from webhooks import closed_port_url

RATIOS = {"1:1": 1.0, "4:5": 0.8, "9:16": 9 / 16, "16:9": 16 / 9}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_slowly(src: Path, dst: Path, chunks: int = 8, pause: float = 0.08, via_rename: bool = False) -> None:
    """Write ``src`` into the inbox in chunks (pauses shorter than settle_seconds), optionally as .part first."""
    data = src.read_bytes()
    dst.parent.mkdir(parents=True, exist_ok=True)
    target = dst.with_name(dst.name + ".part") if via_rename else dst
    step = len(data) // chunks + 1
    with open(target, "wb") as fh:
        for i in range(0, len(data), step):
            fh.write(data[i:i + step])
            fh.flush()
            time.sleep(pause)
    if via_rename:
        os.replace(target, dst)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def no_temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".") and p.is_file()]


@pytest.fixture
def staged(workspace: Workspace) -> dict[str, Path]:
    return {
        "a": workspace.shot("staging/a.jpg", "white", seed=1, subject="bottle"),
        "b": workspace.shot("staging/b.jpg", "gradient", seed=2, subject="box"),
        "c": workspace.shot("staging/c.jpg", "grey", seed=3, subject="mug"),
    }


def test_daemon_processes_slow_copies_and_reports_the_bad_file(workspace, staged, no_leaked_threads):
    workspace.write_config(settle=0.5, workers=2)
    config, rules = workspace.load()
    daemon = Daemon(config, rules)
    daemon.start()
    try:
        inbox = workspace.inbox
        copy_slowly(staged["a"], inbox / "products" / "a.jpg")
        copy_slowly(staged["b"], inbox / "products" / "shoes" / "b.jpg", via_rename=True)
        copy_slowly(staged["c"], inbox / "misc" / "c.jpg")
        broken = inbox / "products" / "broken.jpg"
        broken.write_bytes(staged["a"].read_bytes()[:5000])
        os.utime(broken, (time.time() - 3600,) * 2)  # cut short long ago: not a copy still arriving
        (inbox / "products" / "notes.txt").write_text("not an image")
        (inbox / "products" / ".DS_Store").write_bytes(b"\0" * 10)
        (inbox / "products" / "d.jpg.crdownload").write_bytes(b"partial")
        store = daemon.store
        wait_for(lambda: len(store.jobs()) == 4 and daemon.idle(), 180, "the queue to drain")
        jobs = {Path(j.input_path).name: j for j in store.jobs()}
    finally:
        daemon.stop()

    assert set(jobs) == {"a.jpg", "b.jpg", "c.jpg", "broken.jpg"}
    # No partial input was ever read: one job per file, keyed by the hash of the complete file.
    for name, src in (("a.jpg", staged["a"]), ("b.jpg", staged["b"]), ("c.jpg", staged["c"])):
        assert jobs[name].status is JobStatus.DONE, jobs[name].error
        assert jobs[name].input_hash == sha(src)
    failed = jobs["broken.jpg"]
    assert failed.status is JobStatus.FAILED
    assert str(workspace.inbox / "products" / "broken.jpg") in failed.error and "\n" not in failed.error

    for stem in ("a", "b"):
        cutout = workspace.out("cutouts") / f"{stem}.png"
        with Image.open(cutout) as im:
            assert im.mode == "RGBA" and im.size == (480, 360)
        expected = {"webshop": ["1:1"], "instagram": ["4:5", "9:16"], "banners": ["16:9"]}
        ext = {"webshop": "jpg", "instagram": "jpg", "banners": "webp"}
        for channel, ratios in expected.items():
            for ratio in ratios:
                path = workspace.out(channel) / f"{stem}_{ratio.replace(':', 'x')}.{ext[channel]}"
                assert path.exists(), path
                assert abs(ratio_of(path) - RATIOS[ratio]) < 0.01, (path, ratio_of(path))
                assert decode(path).ndim == 3
        assert workspace.manifest("products", stem).exists()
    assert sorted(p.name for p in (workspace.root / "out").rglob("*.json")) == []  # deliverables only
    assert (workspace.out("cutouts") / "c.png").exists()
    assert not (workspace.out("webshop") / "c_1x1.jpg").exists()  # misc/ goes to the cut-out rule only
    # Inputs are never modified, moved or deleted.
    for name, src in (("products/a.jpg", staged["a"]), ("misc/c.jpg", staged["c"])):
        assert sha(workspace.inbox / name) == sha(src)
    assert no_temp_files(workspace.root / "out") == []
    assert (workspace.inbox / "products" / "notes.txt").exists()


def test_same_bytes_under_another_name_get_outputs_without_being_reprocessed(workspace, staged):
    config, rules = workspace.load()
    daemon = Daemon(config, rules)
    daemon.start()
    try:
        copy_slowly(staged["c"], workspace.inbox / "misc" / "first.jpg", pause=0.01)
        wait_for(lambda: len(daemon.store.jobs()) == 1 and daemon.idle(), 120, "first job")
        copy_slowly(staged["c"], workspace.inbox / "misc" / "renamed-copy.jpg", pause=0.01)
        wait_for(lambda: daemon.store.known_hash(str(workspace.inbox / "misc" / "renamed-copy.jpg"),
                                                 (workspace.inbox / "misc" / "renamed-copy.jpg").stat().st_size,
                                                 (workspace.inbox / "misc" / "renamed-copy.jpg").stat().st_mtime_ns)
                 is not None and daemon.idle(), 60, "the copy to be seen")
        first, copy = daemon.store.jobs()
        assert copy.status is JobStatus.DONE and copy.copied_from == first.id
        assert daemon.store.steps(copy.id) == []  # the chain did not run again
    finally:
        daemon.stop()
    assert (workspace.out("cutouts") / "renamed-copy.png").read_bytes() == \
        (workspace.out("cutouts") / "first.png").read_bytes()


def test_notification_target_down_does_not_delay_jobs(workspace, staged):
    workspace.write_config(settle=0.3, urls=[closed_port_url()], digest=0.5)
    config, rules = workspace.load()
    daemon = Daemon(config, rules)
    daemon.start()
    started = time.monotonic()
    try:
        for i, name in enumerate(("a", "b")):
            copy_slowly(staged[name], workspace.inbox / "misc" / f"{name}.jpg", pause=0.01)
        (workspace.inbox / "misc" / "empty.jpg").write_bytes(b"")
        wait_for(lambda: len(daemon.store.jobs()) == 3 and daemon.idle(), 90, "jobs to finish")
        elapsed = time.monotonic() - started
        wait_for(lambda: daemon.store.undelivered() >= 2, 20, "failure alert and digest in the outbox")
        counts = daemon.store.counts()
    finally:
        daemon.stop()
    assert counts == {"queued": 0, "running": 0, "done": 2, "failed": 1, "superseded": 0}
    assert elapsed < 60


def jobs_in(db: Path) -> list:
    """The jobs of a database another process is using (opened and closed each time)."""
    store = Store(db)
    try:
        return store.jobs()
    finally:
        store.close()


def _start(config_path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--config", str(config_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def start_with_a_running_job(workspace, shot: Path, db: Path) -> subprocess.Popen:
    """`assetd run` as a process, with ``shot`` copied into the inbox and its job already running."""
    proc = _start(workspace.config_path)
    try:
        wait_for(lambda: db.exists(), 30, "the database")
        copy_slowly(shot, workspace.inbox / "products" / shot.name, pause=0.01)
        wait_for(lambda: any(j.status is JobStatus.RUNNING and j.chain_started_at is not None for j in jobs_in(db)),
                 60, "the job to start")  # its run began: a job only claimed (read ahead) is not charged a crash
    except BaseException:
        proc.kill()
        raise
    return proc


def test_real_process_sigterm_and_crash_recovery(workspace):
    """`assetd run` as a process: a job cut off by SIGKILL is redone on the next start; SIGTERM exits cleanly."""
    workspace.write_config(settle=0.3)
    big = workspace.shot("staging/big.jpg", "white", size=(2400, 1800), seed=5, subject="bottle")
    db = workspace.root / "state" / "assetd.sqlite3"
    proc = start_with_a_running_job(workspace, big, db)
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc = _start(workspace.config_path)
    try:
        wait_for(lambda: [j.status for j in jobs_in(db)] == [JobStatus.DONE], 120, "the interrupted job to be redone")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out.decode(errors="replace")[-2000:]
    assert b"queued again" in out or b"interrupted" in out
    store = Store(db)
    job = store.jobs()[0]
    assert job.attempts == 2
    assert len(store.outputs(job.id)) == 5
    store.close()
    assert no_temp_files(workspace.root / "out") == []
    assert np.asarray(Image.open(workspace.out("webshop") / "big_1x1.jpg")).shape[:2] == (600, 600)


def test_daemon_sends_failure_alert_and_batch_digest(workspace, staged):
    from test_notify import Receiver

    receiver = Receiver()
    try:
        workspace.write_config(settle=0.3, urls=[receiver.url], digest=1.0)
        config, rules = workspace.load()
        daemon = Daemon(config, rules)
        daemon.start()
        try:
            copy_slowly(staged["a"], workspace.inbox / "misc" / "a.jpg", pause=0.01)
            broken = workspace.inbox / "misc" / "broken.jpg"
            broken.write_bytes(staged["b"].read_bytes()[:3000])
            os.utime(broken, (time.time() - 3600,) * 2)  # cut short long ago: not a copy still arriving
            wait_for(lambda: len(daemon.store.jobs()) == 2 and daemon.idle(), 90, "jobs to finish")
            wait_for(lambda: any("batch finished" in m["title"] for m in receiver.messages), 30, "the digest")
        finally:
            daemon.stop()
    finally:
        receiver.close()
    titles = [m["title"] for m in receiver.messages]
    assert "assetd: failed: misc/broken.jpg" in titles
    digest = next(m for m in receiver.messages if "batch finished" in m["title"])
    assert digest["title"] == "assetd: batch finished: 1 done, 1 failed"
    assert "broken.jpg: image data is damaged" in digest["message"]
    assert len([t for t in titles if "batch finished" in t]) == 1


def test_sigterm_mid_job_stops_cleanly_and_the_job_is_redone(workspace):
    """SIGTERM while a job runs: exit 0, nothing half-written; the next start finishes the job."""
    workspace.write_config(settle=0.3)
    big = workspace.shot("staging/big.jpg", "grey", size=(3000, 2000), seed=6, subject="box")
    db = workspace.root / "state" / "assetd.sqlite3"

    proc = start_with_a_running_job(workspace, big, db)
    try:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out.decode(errors="replace")[-2000:]
    (job,) = jobs_in(db)
    assert no_temp_files(workspace.root / "out") == []
    if job.status is JobStatus.QUEUED:  # stopped between steps: handed back, attempt not counted
        assert job.attempts == 0 and b"interrupted by stop" in out
        assert not list(workspace.out("webshop").glob("big*"))
    else:  # SIGTERM came while the outputs were being written: the job completes first
        assert job.status is JobStatus.DONE
    proc = _start(workspace.config_path)
    try:
        wait_for(lambda: jobs_in(db)[0].status is JobStatus.DONE, 120, "the job to be done")
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert (workspace.out("webshop") / "big_1x1.jpg").exists()
    assert len(list(workspace.out("instagram").glob("big_*.jpg"))) == 2


def test_a_second_sigterm_exits_at_once_and_hands_the_job_back(workspace):
    """Two SIGTERMs while a job runs: the daemon exits at once, and the job is queued again, not left running."""
    workspace.write_config(settle=0.3)
    big = workspace.shot("staging/big.jpg", "grey", size=(3000, 2000), seed=6, subject="box")
    db = workspace.root / "state" / "assetd.sqlite3"
    proc = start_with_a_running_job(workspace, big, db)
    try:
        # A claimed job is 'running' before its input is decoded; a stop asked then ends at once, before the
        # second signal comes. Half a second on, the chain is inside its first step (about a second on this
        # image), so the first stop is still waiting for that step when the second signal lands.
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out.decode(errors="replace")[-2000:]
    (job,) = jobs_in(db)
    assert job.status in (JobStatus.QUEUED, JobStatus.DONE)  # DONE only if it finished between the signals
    if job.status is JobStatus.QUEUED:
        assert job.attempts == 0 and job.worker is None
    assert no_temp_files(workspace.root / "out") == []
