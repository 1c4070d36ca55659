"""Who owns a running job: a claim names its owner; a job whose owner is gone is released at once by
`assetd process` and `assetd retry`; a live owner's job is left alone, with a message naming the owner."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.daemon import Daemon, InstanceLock
from pipeline.intake import Intake
from pipeline.store import JobStatus, Store

HOST = socket.gethostname()


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def running_job(workspace, owner: str, name: str = "a.jpg", seed: int = 1):
    """A shot whose job is claimed (running) by ``owner``; returns (path, job)."""
    shot = workspace.shot(f"staging/{name}", "white", seed=seed)
    config, rules = workspace.load()
    store = Store(config.database)
    try:
        sub = Intake(config, rules, store).submit(shot, rule_name="cutouts")
        job = store.claim_next(owner, lease_seconds=900, only=[sub.job.id])
        assert job is not None
        return shot, job
    finally:
        store.close()


def job_now(workspace, job_id: int):
    store = Store(workspace.load()[0].database)
    try:
        return store.get(job_id)
    finally:
        store.close()


def test_process_takes_over_a_job_whose_owner_died(workspace):
    shot, job = running_job(workspace, f"process pid {dead_pid()} on {HOST}")
    result = invoke("process", shot, "--config", workspace.config_path, "--rule", "cutouts", "--json")
    assert result.exit_code == 0, result.output
    (doc,) = json.loads(result.stdout)["results"]
    assert doc["status"] == "done" and doc["outputs"]
    now = job_now(workspace, job.id)
    assert now.status is JobStatus.DONE and now.attempts == 1  # the dead owner's attempt is not charged


def test_process_leaves_a_live_owners_job_alone_and_names_the_owner(workspace):
    shot, job = running_job(workspace, f"process pid {os.getpid()} on {HOST}")
    result = invoke("process", shot, "--config", workspace.config_path, "--rule", "cutouts", "--json")
    (doc,) = json.loads(result.stdout)["results"]
    assert doc["status"] == "skipped"
    assert f"pid {os.getpid()}" in doc["error"] and f"job {job.id}" in doc["error"]
    assert job_now(workspace, job.id).status is JobStatus.RUNNING


def test_retry_releases_a_job_whose_owner_died(workspace):
    _, job = running_job(workspace, f"process pid {dead_pid()} on {HOST}")
    result = invoke("retry", job.id, "--config", workspace.config_path)
    assert result.exit_code == 0, result.output
    assert f"queued again: {job.id}" in result.output
    now = job_now(workspace, job.id)
    assert now.status is JobStatus.QUEUED and now.attempts == 0


def test_retry_refuses_a_live_owners_job_and_names_the_owner(workspace):
    _, job = running_job(workspace, f"process pid {os.getpid()} on {HOST}")
    result = invoke("retry", job.id, "--config", workspace.config_path)
    assert result.exit_code == 1
    assert f"job {job.id}" in result.output and f"pid {os.getpid()} on {HOST}" in result.output
    assert job_now(workspace, job.id).status is JobStatus.RUNNING


def test_retry_failed_also_releases_the_jobs_of_dead_owners(workspace):
    _, job = running_job(workspace, f"process pid {dead_pid()} on {HOST}")
    result = invoke("retry", "--failed", "--config", workspace.config_path)
    assert result.exit_code == 0, result.output
    assert f"queued again: {job.id}" in result.output
    assert job_now(workspace, job.id).status is JobStatus.QUEUED


def test_a_daemon_workers_job_is_alive_while_its_daemon_holds_the_lock(workspace):
    """A daemon worker's claim is alive while that pid holds the database lock; once it is free, it is not."""
    config, _ = workspace.load()
    _, job = running_job(workspace, f"worker-1 pid {os.getpid()} on {HOST}")
    lock = InstanceLock(config.database)
    lock.acquire()
    try:
        result = invoke("retry", job.id, "--config", workspace.config_path)
        assert result.exit_code == 1 and "daemon" in result.output
        assert job_now(workspace, job.id).status is JobStatus.RUNNING
    finally:
        lock.release()
    result = invoke("retry", job.id, "--config", workspace.config_path)
    assert result.exit_code == 0, result.output
    assert job_now(workspace, job.id).status is JobStatus.QUEUED


def test_a_job_on_another_host_is_left_to_its_lease(workspace):
    _, job = running_job(workspace, f"process pid {dead_pid()} on another-host.example")
    result = invoke("retry", job.id, "--config", workspace.config_path)
    assert result.exit_code == 1 and "another-host.example" in result.output
    assert job_now(workspace, job.id).status is JobStatus.RUNNING


def test_daemon_start_leaves_a_live_process_runs_job_alone(workspace):
    """Jobs left running by a dead daemon are redone at start; one a live `assetd process` holds is not taken."""
    _, live = running_job(workspace, f"process pid {os.getpid()} on {HOST}", "live.jpg", seed=1)
    _, crashed = running_job(workspace, f"worker-1 pid {dead_pid()} on {HOST}", "crashed.jpg", seed=2)
    config, rules = workspace.load()
    daemon = Daemon(config, rules)
    daemon.start()
    try:
        import time

        deadline = time.monotonic() + 60
        while daemon.store.get(crashed.id).status is not JobStatus.DONE and time.monotonic() < deadline:
            time.sleep(0.1)
        assert daemon.store.get(crashed.id).status is JobStatus.DONE
        assert daemon.store.get(live.id).status is JobStatus.RUNNING
        assert daemon.store.get(crashed.id).worker == f"worker-1 pid {os.getpid()} on {HOST}"
    finally:
        daemon.stop()
