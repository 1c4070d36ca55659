"""Daemon start-up rules: one daemon per database, orphans and stale rule versions handled at start."""
from __future__ import annotations

import os
import time

import pytest

from daemons import run_until_idle
from pipeline import models
from pipeline.daemon import Daemon, InstanceLock
from pipeline.errors import ConfigError
from pipeline.intake import Intake, file_hash
from pipeline.store import JobStatus, Store


def test_a_second_daemon_on_the_same_database_is_refused(workspace, no_leaked_threads):
    config, rules = workspace.load()
    first = Daemon(config, rules)
    first.start()
    try:
        with pytest.raises(ConfigError) as refused:
            Daemon(config, rules).start()
        assert str(refused.value) == (f"another assetd (pid {os.getpid()}) is already running on this database "
                                      f"{config.database}")
    finally:
        first.stop()
    again = Daemon(config, rules)  # the lock is released on stop
    again.start()
    again.stop()


def test_a_refused_second_daemon_fails_on_the_lock_before_loading_models(workspace, monkeypatch, no_leaked_threads):
    """`assetd run` takes the instance lock first: a second one is refused before it spends time on models."""
    config, rules = workspace.load()
    checks = []
    load_for_start = models.load_for_start
    monkeypatch.setattr(models, "load_for_start", lambda *args: checks.append(args) or load_for_start(*args))
    lock = InstanceLock(config.database)
    lock.acquire()
    try:
        with pytest.raises(ConfigError, match="already running"):
            Daemon(config, rules).start()
    finally:
        lock.release()
    assert checks == []
    daemon = Daemon(config, rules)  # the lock is free: the daemon checks its models as it starts
    daemon.start()
    daemon.stop()
    assert len(checks) == 1


def test_jobs_queued_under_an_older_rule_run_under_the_current_one(workspace):
    shot = workspace.shot("inbox/misc/a.jpg", "white", seed=1)
    config, rules = workspace.load()
    store = Store(config.database)
    old, _ = store.enqueue(input_hash=file_hash(shot), rule="cutouts", rule_version="old-version",
                           input_path=str(shot), rel_path="misc/a.jpg", max_attempts=3)
    store.close()
    daemon = Daemon(config, rules)
    daemon.start()
    try:
        store = daemon.store
        assert [j.id for j in store.jobs()] == [old.id]  # the same job, nothing was published under the old rule
        assert store.get(old.id).rule_version == next(r.version for r in rules if r.name == "cutouts")
        deadline = time.monotonic() + 30
        while store.get(old.id).status is not JobStatus.DONE and time.monotonic() < deadline:
            time.sleep(0.1)
        assert store.get(old.id).status is JobStatus.DONE
        assert (workspace.out("cutouts") / "a.png").exists()
    finally:
        daemon.stop()


def test_jobs_left_running_by_a_crash_are_queued_again_at_start(workspace):
    shot = workspace.shot("staging/a.jpg", "white", seed=1)
    config, rules = workspace.load()
    store = Store(config.database)
    sub = Intake(config, rules, store).submit(shot)
    store.claim_next("crashed-worker", lease_seconds=3600)
    store.close()
    daemon = Daemon(config, rules)
    daemon.start()
    try:
        import time

        deadline = time.monotonic() + 60
        while daemon.store.get(sub.job.id).status is not JobStatus.DONE and time.monotonic() < deadline:
            time.sleep(0.2)
        assert daemon.store.get(sub.job.id).status is JobStatus.DONE
    finally:
        daemon.stop()


def _run_until_idle(config, rules, expected_jobs: int) -> list:
    return [(j.rule_version, j.status) for j in run_until_idle(config, rules, expected_jobs)]


def test_with_on_rule_change_reprocess_a_changed_rule_replaces_the_outputs(workspace):
    from PIL import Image

    workspace.write_config(extra="on_rule_change: reprocess\n")
    workspace.shot("inbox/misc/a.jpg", "white", seed=1, size=(480, 360))
    config, rules = workspace.load()
    first = _run_until_idle(config, rules, 1)
    assert [s for _, s in first] == [JobStatus.DONE]
    out = workspace.out("cutouts") / "a.png"
    assert Image.open(out).size == (480, 360)
    workspace.add_rule("20-cutouts.yaml", "name: cutouts\nsteps: [{remove_background: {trim: true}}]\n"
                                          "outputs: [{channel: cutouts}]\n")
    config, rules = workspace.load()
    second = _run_until_idle(config, rules, 2)
    assert len(second) == 2 and second[0][0] != second[1][0] and second[1][1] is JobStatus.DONE
    assert Image.open(out).size != (480, 360)  # trimmed, same name: the old output was replaced
    assert sorted(p.name for p in workspace.out("cutouts").glob("*.png")) == ["a.png"]
    again = _run_until_idle(config, rules, 2)  # unchanged rule: nothing new
    assert len(again) == 2
