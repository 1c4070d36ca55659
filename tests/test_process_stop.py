"""Stopping `assetd process` as a studio does (Ctrl-C, SIGTERM, a kill): real subprocesses, real signals.

The first SIGINT/SIGTERM lets the current file finish, the rest is reported as not processed; a second SIGINT
stops at once and hands the job back; a killed run's job is taken over by the next run at once.
"""
from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from pipeline.store import Job, JobStatus

from conftest import Workspace


def batch_of(workspace: Workspace, n: int = 3) -> Path:
    """``n`` shots large enough that each takes a moment to cut out."""
    for i in range(n):
        workspace.shot(f"batch/s{i}.jpg", "white", size=(1600, 1200), seed=i, subject="box")
    return workspace.root / "batch"


def start(workspace: Workspace, folder: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "process", str(folder), "--config",
                             str(workspace.config_path), "--rule", "cutouts", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def jobs_in(db: Path) -> list[Job]:
    """The jobs, read without opening a Store (whose migrations would race the process creating the file)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        conn.row_factory = sqlite3.Row
        return [Job.from_row(dict(r)) for r in conn.execute("SELECT * FROM jobs ORDER BY id")]
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        conn.close()


def wait_until_running(proc: subprocess.Popen, db: Path, timeout: float = 60) -> Job:
    """The job the process is working on, as soon as it has claimed one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1].decode(errors="replace")[-2000:]
        if db.exists():
            running = [j for j in jobs_in(db) if j.status is JobStatus.RUNNING]
            if running:
                return running[0]
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the process never started a job")


def finish(proc: subprocess.Popen) -> tuple[int, list[dict], str]:
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, json.loads(out)["results"] if out.strip() else [], err.decode(errors="replace")


def by_name(results: list[dict]) -> dict[str, dict]:
    return {Path(r["input"]).name: r for r in results}


def no_temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.is_file()]


def test_sigint_finishes_the_current_file_then_stops(workspace):
    folder = batch_of(workspace)
    db = workspace.root / "state" / "assetd.sqlite3"
    proc = start(workspace, folder)
    current = wait_until_running(proc, db)
    proc.send_signal(signal.SIGINT)
    code, results, err = finish(proc)

    assert code == 130, err[-2000:]
    assert "SIGINT" in err
    docs = by_name(results)
    assert list(docs) == ["s0.jpg", "s1.jpg", "s2.jpg"]  # every input is reported
    done = docs.pop(Path(current.input_path).name)
    assert done["status"] == "done" and done["outputs"]  # the current file was finished, outputs whole
    for o in done["outputs"]:
        with Image.open(o["path"]) as im:
            im.load()
    stopped = [d for d in docs.values() if d["status"] == "stopped"]
    assert stopped and all("not processed" in d["error"] for d in stopped)
    assert all(d["status"] in ("done", "stopped") for d in docs.values())
    assert not [j for j in jobs_in(db) if j.status is JobStatus.RUNNING]
    assert no_temp_files(workspace.root / "out") == []

    code, again, err = finish(start(workspace, folder))  # the next run does the rest
    assert code == 0, err[-2000:]
    again = by_name(again)
    assert all(again[Path(d["input"]).name]["status"] == "done" for d in stopped)
    assert again[Path(current.input_path).name]["status"] == "skipped"  # already done


def test_sigterm_finishes_the_current_file_then_stops(workspace):
    folder = batch_of(workspace, 2)
    db = workspace.root / "state" / "assetd.sqlite3"
    proc = start(workspace, folder)
    current = wait_until_running(proc, db)
    proc.send_signal(signal.SIGTERM)
    code, results, err = finish(proc)

    assert code == 143, err[-2000:]
    assert by_name(results)[Path(current.input_path).name]["status"] == "done"
    assert any(r["status"] == "stopped" for r in results)
    assert not [j for j in jobs_in(db) if j.status is JobStatus.RUNNING]


def test_a_second_sigint_stops_at_once_and_hands_the_job_back(workspace):
    folder = batch_of(workspace, 2)
    db = workspace.root / "state" / "assetd.sqlite3"
    proc = start(workspace, folder)
    current = wait_until_running(proc, db)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    code, results, err = finish(proc)

    assert code == 130, err[-2000:]
    doc = by_name(results)[Path(current.input_path).name]
    assert doc["status"] == "stopped" and "interrupted" in doc["error"]
    (job,) = [j for j in jobs_in(db) if j.id == current.id]
    assert job.status is JobStatus.QUEUED and job.attempts == 0  # handed back, the attempt not charged
    assert no_temp_files(workspace.root / "out") == []

    code, again, err = finish(start(workspace, folder))  # taken at once, not "being processed by another"
    assert code == 0, err[-2000:]
    assert [r["status"] for r in again] == ["done"] * 2
    assert {j.status for j in jobs_in(db)} == {JobStatus.DONE}


def test_the_job_of_a_killed_run_is_taken_over_at_once(workspace):
    folder = batch_of(workspace, 2)
    db = workspace.root / "state" / "assetd.sqlite3"
    proc = start(workspace, folder)
    current = wait_until_running(proc, db)
    proc.kill()
    proc.wait(30)
    (job,) = [j for j in jobs_in(db) if j.id == current.id]
    assert job.status is JobStatus.RUNNING
    assert job.worker == f"process pid {proc.pid} on {socket.gethostname()}"  # the claim names its owner

    code, again, err = finish(start(workspace, folder))
    assert code == 0, err[-2000:]
    assert by_name(again)[Path(current.input_path).name]["status"] == "done"
    (job,) = [j for j in jobs_in(db) if j.id == current.id]
    assert job.status is JobStatus.DONE and job.attempts == 1  # the killed attempt is not charged
