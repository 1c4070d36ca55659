"""Problem processes (issue 11): a full disk, a GPU out of memory or lost, a model that does not load pause the
work they affect, alert once on and once off, never charge a job an attempt, and work resumes by itself; a
problem job (a stage bug on one file) still fails as before."""
from __future__ import annotations

import errno
import functools
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import namedtuple
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline import daemon as daemon_module
from pipeline import outputs
from pipeline.cli import cli
from pipeline.config import config_from_dict
from pipeline.daemon import Daemon
from pipeline.errors import ConfigError
from pipeline.health import Amount, Problems, Scope, parse_amount
from pipeline.intake import Intake
from pipeline.models import ModelManager
from pipeline.schema import opt
from pipeline.stages.base import Asset, Stage, registered
from pipeline.store import DAEMON_STARTED, JobStatus, Store
from pipeline.worker import Worker, classify
from problemcases import PLAIN, rule, setup, wait_for
from tinymodels import skip_without, tiny_dark_subject_onnx, tiny_esrgan_x4
from webhooks import Receiver

Usage = namedtuple("Usage", "total used free")
GB = 1000 ** 3
TROUBLE: list[str] = []  # what the test backends' next runs raise: "oom", "lost", "bug"; "" or empty: nothing
LOAD_FAILS = threading.Event()  # set: the model of backend load_test does not load


@dataclass
class BackendOptions:
    note: str = opt("", doc="unused")


class GpuUpscale(Stage):
    """A model-backed test backend whose runs raise what ``TROUBLE`` says."""

    step = "upscale"
    backend = "gpu_test"
    Options = BackendOptions
    needs_models = True

    def run(self, asset: Asset) -> list[Asset]:
        what = TROUBLE.pop(0) if TROUBLE else ""
        if what == "oom":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.65 GiB total capacity)")
        if what == "lost":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        if what == "bug":
            raise ZeroDivisionError("oops")
        return [asset]


class LoadingUpscale(Stage):
    """A model-backed test backend whose model load fails while ``LOAD_FAILS`` is set."""

    step = "upscale"
    backend = "load_test"
    Options = BackendOptions
    needs_models = True

    def prepare(self) -> None:
        if LOAD_FAILS.is_set():
            raise RuntimeError("weights file /models/upscale.pth is damaged (checksum mismatch)")

    def run(self, asset: Asset) -> list[Asset]:
        return [asset]


@pytest.fixture(autouse=True)
def test_backends():
    """Registered only while this module's tests run (the README lists the real backends)."""
    with registered(GpuUpscale), registered(LoadingUpscale):
        yield
    TROUBLE.clear()
    LOAD_FAILS.clear()


class Alerts:
    """Stands in for the Notifier: records the problem alerts."""

    def __init__(self) -> None:
        self.sent: list[tuple[bool, str]] = []

    def problem(self, started: bool, title: str, body: str) -> None:
        self.sent.append((started, title))


def submit(config, rules, store, names: list[str], workspace, rule_name: str | None = None) -> list[int]:
    intake = Intake(config, rules, store)
    return [intake.submit(workspace.shot(f"staging/{n}.jpg", "white", size=(160, 120), seed=i),
                          rule_name=rule_name).job.id for i, n in enumerate(names)]


def lines(caplog, level: int, prefix: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and r.getMessage().startswith(prefix)]


# -------------------------------------------------------------------------------------------- amounts
@pytest.mark.parametrize("text, amount", [
    ("2%", Amount(percent=2.0)), ("500MB", Amount(bytes=500_000_000)), ("2GB", Amount(bytes=2 * GB)),
    ("2GiB", Amount(bytes=2 * 1024 ** 3)), (1048576, Amount(bytes=1048576)), ("0", Amount(bytes=0)),
    ("1.5 gb", Amount(bytes=1_500_000_000)),
])
def test_min_free_is_bytes_or_a_percentage(text, amount):
    assert parse_amount(text) == amount


def test_a_bad_min_free_is_refused_when_the_config_loads(tmp_path):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"problems": {"min_free": "lots", "resume_free": "120%"}}, tmp_path / "c.yaml")
    assert "problems.min_free: expected bytes (500MB, 2GB, a plain integer) or a percentage (2%)" in str(err.value)
    assert "problems.resume_free: expected a percentage up to 100%, got '120%'" in str(err.value)


# -------------------------------------------------------------------------------------------- disk monitor
class FakeVolumes:
    """A disk_usage/device pair: the folders under ``low_root`` are a volume of their own with ``free`` bytes
    (of 100 GB); everything else the real volume with plenty of room."""

    def __init__(self, low_root: Path, free: int):
        self.low_root = low_root
        self.free = free
        self.readings = 0

    def device(self, path: Path) -> object:
        return "low-volume" if Path(path).is_relative_to(self.low_root) else os.stat(path).st_dev

    def disk_usage(self, path: Path) -> Usage:
        if Path(path).is_relative_to(self.low_root):
            self.readings += 1
            return Usage(100 * GB, 100 * GB - self.free, self.free)
        return Usage(100 * GB, 10 * GB, 90 * GB)


def test_a_channel_volume_below_min_free_pauses_the_rules_writing_there_until_resume_free(workspace, caplog,
                                                                                        no_leaked_threads):
    config, rules, store = setup(workspace, {"cut": rule("cut", PLAIN, "cutouts", "cut/**"),
                                             "web": rule("web", PLAIN, "webshop", "web/**")},
                                 problems="min_free: 1GB")  # resume_free: 1.5 GB
    workspace.out("cutouts").mkdir(parents=True)
    volumes = FakeVolumes(workspace.out("cutouts"), free=int(0.5 * GB))
    alerts = Alerts()
    problems = Problems(store, alerts, config, rules=rules, disk_usage=volumes.disk_usage, device=volumes.device)
    stop = threading.Event()
    monitor = threading.Thread(target=problems.run_monitor, args=(stop,))
    caplog.set_level(logging.INFO, "assetd.health")
    monitor.start()
    try:
        key = f"disk:{workspace.out('cutouts')}"
        wait_for(lambda: [p.key for p in problems.active()] == [key])
        assert problems.blocked() == ({"cut"}, [])  # the webshop volume is fine: rule web goes on
        volumes.free = int(1.2 * GB)  # above min_free, below resume_free: still paused (no flapping at the line)
        seen = volumes.readings
        wait_for(lambda: volumes.readings >= seen + 3)
        assert [p.key for p in problems.active()] == [key]
        volumes.free = 2 * GB
        wait_for(lambda: not problems.active())
    finally:
        stop.set()
        monitor.join(5)
    assert alerts.sent == [(True, f"paused: {key}"), (False, f"resumed: {key}")]
    (paused,) = lines(caplog, logging.ERROR, "paused:")
    assert "500 MB free, below problems.min_free 1.0 GB" in paused and "jobs of rule cut wait until it has 1.5 GB" in paused
    (resumed,) = lines(caplog, logging.WARNING, "resumed:")
    assert "2.0 GB free again; jobs of rule cut go on" in resumed
    assert store.active_problems() == []
    store.close()


def test_a_resume_free_in_bytes_below_a_percentage_min_free_does_not_flap(workspace):
    """min_free 5% of a 100 GB volume against resume_free 1MB (a restart on another volume gets past the start
    check): a volume at 1 GB free stays paused, instead of resuming and pausing at every check."""
    config, rules, store = setup(workspace, {"cut": rule("cut", PLAIN, "cutouts")},
                                 problems="min_free: 5%, resume_free: 1MB")
    volumes = FakeVolumes(config.database.parent, free=1 * GB)
    problems = Problems(store, None, config, rules=rules, disk_usage=volumes.disk_usage, device=volumes.device)
    assert any("problems.resume_free: 1.0 MB is below problems.min_free 5% (5.0 GB there)" in line
               for line in problems.setting_problems())
    for _ in range(3):  # the monitor's rounds
        problems.check_disks()
        assert [p.key for p in problems.active()] == [f"disk:{config.database.parent}"]
    volumes.free = 6 * GB
    problems.check_disks()
    assert problems.active() == []
    store.close()


def test_a_min_free_larger_than_its_volume_stops_a_first_start_and_pauses_a_restart(workspace, monkeypatch, caplog):
    """A first start exits 2 (``assetd run``: test_check); a restart (a share mounted late at boot is another, smaller
    volume for a while) logs it and runs, the rules writing there paused by the disk monitor."""
    config, rules, store = setup(workspace, {"cut": rule("cut", PLAIN, "cutouts")}, problems="min_free: 500GB")
    volumes = FakeVolumes(workspace.out("cutouts"), free=90 * GB)  # of 100 GB

    def disk_usage(path: Path) -> Usage:  # the other volume is a large one
        return volumes.disk_usage(path) if Path(path).is_relative_to(volumes.low_root) else Usage(1000 * GB, 0, 1000 * GB)

    monkeypatch.setattr(daemon_module, "Problems",
                        functools.partial(Problems, disk_usage=disk_usage, device=volumes.device))
    workspace.out("cutouts").mkdir(parents=True)
    key = f"disk:{workspace.out('cutouts')}"
    first = Daemon(config, rules)
    with pytest.raises(ConfigError) as refused:
        first.start()
    first.stop()  # as Daemon.run does
    assert refused.value.problems == [
        f"{config.source}: problems.min_free: 500 GB is more than the volume at {workspace.out('cutouts')} "
        f"({workspace.out('cutouts')}) holds in all (100 GB); the rules writing there would stay paused for good"]
    store.set_state(DAEMON_STARTED, time.time())
    store.close()
    daemon = Daemon(config, rules)
    daemon.start()
    try:
        assert [p.key for p in daemon.problems.active()] == [key]
    finally:
        daemon.stop()
    assert any("problems.min_free: 500 GB is more than" in line for line in lines(caplog, logging.ERROR, str(config.source)))


def test_the_database_volume_below_min_free_pauses_every_rule(workspace):
    config, rules, store = setup(workspace, {"cut": rule("cut", PLAIN, "cutouts")}, problems="min_free: 5%")
    (job,) = submit(config, rules, store, ["a"], workspace)
    volumes = FakeVolumes(config.database.parent, free=1 * GB)  # 1% of 100 GB
    problems = Problems(store, None, config, rules=rules, disk_usage=volumes.disk_usage, device=volumes.device)
    problems.check()
    (problem,) = problems.active()
    assert problem.scope == Scope.ALL
    assert store.claim_next("w", 60, **dict(zip(("skip_rules", "skip_under"), problems.blocked()))) is None
    volumes.free = 8 * GB  # 7.5% needed to resume
    problems._next_disk_check = 0.0
    problems.check()
    assert problems.active() == []
    assert store.claim_next("w", 60, **dict(zip(("skip_rules", "skip_under"), problems.blocked()))).id == job
    store.close()


def test_a_problem_shorter_than_alert_after_is_logged_but_never_alerted(tmp_path, caplog):
    config = config_from_dict({"problems": {"alert_after_seconds": 60}}, tmp_path / "c.yaml")
    now = [1000.0]
    alerts = Alerts()
    problems = Problems(None, alerts, config, clock=lambda: now[0])
    assert problems.start("inbox:/srv/share", "inbox /srv/share unreachable", Scope.inbox(Path("/srv/share")),
                          alert_after=60)
    assert not problems.start("inbox:/srv/share", "again", Scope.inbox(Path("/srv/share")), alert_after=60)
    now[0] += 30
    problems.check()
    assert problems.clear("inbox:/srv/share") and not problems.clear("inbox:/srv/share")
    assert alerts.sent == []  # a 30 s blip: two log lines, no alert
    problems.start("inbox:/srv/share", "inbox /srv/share unreachable", Scope.inbox(Path("/srv/share")),
                   alert_after=60)
    now[0] += 61
    problems.check()
    problems.check()
    problems.clear("inbox:/srv/share", "inbox /srv/share is back")
    assert alerts.sent == [(True, "paused: inbox:/srv/share"), (False, "resumed: inbox:/srv/share")]
    assert len(lines(caplog, logging.ERROR, "paused: inbox /srv/share unreachable")) == 2
    assert lines(caplog, logging.WARNING, "resumed:")[-1] == "resumed: inbox /srv/share is back (paused 1m 01s)"


def test_an_outage_that_outlives_a_restart_is_alerted_once_each_way(tmp_path, caplog):
    """assetd restarts (systemd, a crash, a deploy) while the share is away: the new daemon finds the same outage
    again, so no second "paused" alert goes out, and its "resumed" does when it ends. An outage the new daemon does
    not find again ends with its "resumed" after its first checks. Before, the restart closed every outage in
    silence: "paused" twice, one "resumed"; or a "paused" never followed by its "resumed"."""
    config = config_from_dict({"problems": {"alert_after_seconds": 0, "check_seconds": 1}}, tmp_path / "c.yaml")
    store = Store(tmp_path / "state.sqlite3")
    now, alerts = [1000.0], Alerts()
    share, usb = Scope.inbox(Path("/srv/share")), Scope.inbox(Path("/srv/usb"))
    first = Problems(store, alerts, config, clock=lambda: now[0])
    first.start("inbox:/srv/share", "inbox /srv/share unreachable", share)
    first.start("inbox:/srv/usb", "inbox /srv/usb unreachable", usb)
    assert alerts.sent == [(True, "paused: inbox:/srv/share"), (True, "paused: inbox:/srv/usb")]

    now[0] += 120  # assetd restarted: the share is still away, the USB disk came back meanwhile
    second = Problems(store, alerts, config, clock=lambda: now[0])
    assert second.start("inbox:/srv/share", "inbox /srv/share unreachable", share)
    assert len(alerts.sent) == 2  # the same outage: not alerted again
    assert "paused (since " in caplog.text and "before assetd restarted): inbox /srv/share unreachable" in caplog.text
    now[0] += 10
    second.check()
    assert len(alerts.sent) == 2  # still looking for the others
    now[0] += 30
    second.check()
    assert alerts.sent[2] == (False, "resumed: inbox:/srv/usb")
    began = time.strftime("%H:%M", time.localtime(1000.0))
    assert (f"resumed: inbox:/srv/usb: ended while assetd was stopped or restarting (it began at {began}: inbox "
            "/srv/usb unreachable)") in caplog.text
    second.clear("inbox:/srv/share", "inbox /srv/share is back")
    assert alerts.sent[3:] == [(False, "resumed: inbox:/srv/share")]
    assert lines(caplog, logging.WARNING, "resumed: inbox /srv/share is back")[-1].endswith("(paused 2m 40s)")
    assert store.active_problems() == []
    store.close()


def test_an_alert_only_problem_pauses_nothing(tmp_path):
    config = config_from_dict({}, tmp_path / "c.yaml")
    problems = Problems(None, None, config)
    problems.start("config", "config.yaml: not valid YAML; the last good config keeps running", Scope.nothing())
    assert problems.blocked() == (set(), []) and problems.covering("any", "/in/a.jpg") is None


def test_claim_next_leaves_paused_rules_and_folders_queued(tmp_path):
    store = Store(tmp_path / "db.sqlite3")
    for i, (rule_name, path) in enumerate([("a", "/share/x/1.jpg"), ("b", "/share/x%/2.jpg"), ("b", "/local/3.jpg")]):
        store.enqueue(input_hash=str(i), rule=rule_name, rule_version="1", input_path=path, rel_path=path,
                      max_attempts=3)
    claimed = store.claim_next("w", 60, skip_rules={"a"}, skip_under=[Path("/local")])
    assert claimed.input_path == "/share/x%/2.jpg"  # a folder is a prefix of text, no wildcard
    assert store.claim_next("w", 60, skip_rules={"a"}, skip_under=[Path("/local")]) is None
    assert store.claim_next("w", 60, skip_under=[Path("/")]) is None  # every rule paused
    store.close()


# -------------------------------------------------------------------------------------------- disk full in a job
def test_no_space_at_an_output_write_puts_the_job_back_uncharged_and_pauses(workspace, monkeypatch, caplog):
    config, rules, store = setup(workspace, {"cut": rule("cut", PLAIN, "cutouts")})
    (job,) = submit(config, rules, store, ["a"], workspace)
    real = outputs.write_temp

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs, "write_temp", full)
    alerts = Alerts()
    problems = Problems(store, alerts, config, rules=rules)
    worker = Worker("w1", config, store, rules, problems=problems)
    result = worker.run_next()
    assert result.status is JobStatus.QUEUED
    stored = store.get(job)
    assert stored.status is JobStatus.QUEUED and stored.attempts == 0
    assert stored.error.startswith("waiting: disk:") and "No space left on device" in stored.error
    (problem,) = problems.active()
    assert problem.scope == Scope.ALL  # the database and manifests share the tmp volume
    assert worker.run_next() is None  # paused: nothing is claimed
    assert alerts.sent == [(True, f"paused: {problem.key}")]
    (row,) = store.active_problems()
    assert row["key"] == problem.key

    monkeypatch.setattr(outputs, "write_temp", real)  # room again: the probe write in the folder succeeds
    problem.next_probe = 0.0
    problems.check()
    assert problems.blocked() == (set(), [])  # tried again; the job finishing clears the problem
    assert worker.run_next().status is JobStatus.DONE
    assert store.get(job).attempts == 1
    assert problems.active() == [] and alerts.sent == [(True, f"paused: {problem.key}"),
                                                       (False, f"resumed: {problem.key}")]
    worker.close()
    store.close()


def test_a_real_write_refused_for_space_names_the_output_and_pauses_the_rules_writing_there(workspace, monkeypatch):
    """ENOSPC from the kernel (here at fsync, as on NFS or with delayed allocation) inside the real atomic write."""
    config, rules, store = setup(workspace, {"cut": rule("cut", PLAIN, "cutouts", "cut/**"),
                                             "web": rule("web", PLAIN, "webshop", "web/**")})
    (job,) = submit(config, rules, store, ["a"], workspace, rule_name="cut")
    workspace.out("cutouts").mkdir(parents=True)
    volumes = FakeVolumes(workspace.out("cutouts"), free=10 * GB)  # a volume of its own, not below min_free
    real_fsync = os.fsync
    full = threading.Event()
    full.set()

    def fsync(fd):
        if full.is_set() and f"{os.sep}cutouts{os.sep}" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    problems = Problems(store, None, config, rules=rules, disk_usage=volumes.disk_usage, device=volumes.device)
    worker = Worker("w1", config, store, rules, problems=problems)
    worker.run_next()
    stored = store.get(job)
    assert stored.status is JobStatus.QUEUED and stored.attempts == 0
    (problem,) = problems.active()
    assert problem.key == f"disk:{workspace.out('cutouts')}" and problem.scope == Scope.rules({"cut"})
    assert f"No space left on device writing {workspace.out('cutouts') / 'a.png'}" in problem.message
    assert list(workspace.out("cutouts").iterdir()) == []  # no temp file left behind
    problem.next_probe = 0.0
    problems.check()  # the probe write in the folder is refused too: still paused
    assert problems.blocked() == ({"cut"}, [])
    full.clear()
    problem.next_probe = 0.0
    problems.check()
    assert problems.blocked() == (set(), []) and worker.run_next().status is JobStatus.DONE
    assert problems.active() == []
    worker.close()
    store.close()


def test_a_full_database_puts_the_job_back_uncharged_and_pauses_every_rule(workspace, monkeypatch):
    config, rules, store = setup(workspace, {"cut": rule("cut", PLAIN, "cutouts")})
    (job,) = submit(config, rules, store, ["a"], workspace)
    real = Store.finish
    calls = []

    def full_once(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise sqlite3.OperationalError("database or disk is full")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Store, "finish", full_once)
    problems = Problems(store, None, config, rules=rules)
    worker = Worker("w1", config, store, rules, problems=problems)
    worker.run_next()
    stored = store.get(job)
    assert stored.status is JobStatus.QUEUED and stored.attempts == 0
    (problem,) = problems.active()
    assert problem.scope == Scope.ALL and "database or disk is full" in problem.message
    problem.next_probe = 0.0
    problems.check()
    assert worker.run_next().status is JobStatus.DONE and problems.active() == []
    worker.close()
    store.close()


def test_without_problems_a_full_disk_retries_and_the_message_names_the_file(workspace):
    config, rules, store = setup(workspace, {"cut": rule("cut", PLAIN, "cutouts")})
    (job_id,) = submit(config, rules, store, ["a"], workspace)
    job = store.get(job_id)
    named = classify(OSError(errno.ENOSPC, "No space left on device", "/out/cutouts/a.png"), job, config)
    assert named.outcome.value == "retry" and named.message.endswith("No space left on device: /out/cutouts/a.png")
    unnamed = classify(OSError(errno.ENOSPC, "No space left on device"), job, config)
    assert unnamed.message.endswith("a.jpg: No space left on device")
    store.close()


# -------------------------------------------------------------------------------------------- GPU and models
def test_cuda_out_of_memory_on_jobs_in_a_row_pauses_the_model_rules_until_one_works(workspace, caplog):
    config, rules, store = setup(workspace, {"gpu": rule("gpu", "gpu_test", "cutouts", "gpu/**"),
                                             "cpu": rule("cpu", PLAIN, "webshop", "cpu/**")},
                                 problems="gpu_oom_limit: 2")
    first, second, third = submit(config, rules, store, ["a", "b", "c"], workspace, rule_name="gpu")
    (cpu_job,) = submit(config, rules, store, ["d"], workspace, rule_name="cpu")
    alerts = Alerts()
    problems = Problems(store, alerts, config, rules=rules)
    worker = Worker("w1", config, store, rules, problems=problems)
    caplog.set_level(logging.INFO, "assetd.health")

    TROUBLE[:] = ["oom", "oom"]
    one = worker.run_next()  # a single out-of-memory: retried as always (the attempt counts)
    assert one.status is JobStatus.QUEUED and "CUDA out of memory" in one.error and problems.active() == []
    assert store.get(first).attempts == 1
    two = worker.run_next()  # the second in a row: the GPU is the problem
    assert store.get(two.job_id).attempts == 0 and store.get(two.job_id).status is JobStatus.QUEUED
    (problem,) = problems.active()
    assert problem.key == "gpu" and problem.scope == Scope.rules({"gpu"})
    assert worker.run_next().job_id == cpu_job  # the rule without a model goes on
    assert worker.run_next() is None

    time.sleep(0.1)  # check_seconds: the probe (no CUDA here: nothing to look at) lets the rule be tried again
    problems.check()
    assert problems.blocked() == (set(), [])
    TROUBLE[:] = ["oom"]  # still out of memory on the next try: paused again, quietly
    again = worker.run_next()
    assert store.get(again.job_id).attempts == 0 and problems.blocked() == ({"gpu"}, [])
    time.sleep(0.2)  # the next probe waits twice as long
    problems.check()
    deadline = time.monotonic() + 10
    while store.counts()["done"] < 4:  # the first job's retry delay (0.2 s) passes too
        assert time.monotonic() < deadline
        if worker.run_next() is None:
            time.sleep(0.05)
    assert problems.active() == []
    assert {store.get(j).status for j in (first, second, third)} == {JobStatus.DONE}
    assert alerts.sent == [(True, "paused: gpu"), (False, "resumed: gpu")]
    assert len(lines(caplog, logging.ERROR, "paused: gpu")) == 1
    (resumed,) = lines(caplog, logging.WARNING, "resumed:")
    assert resumed.startswith("resumed: gpu: works again")
    worker.close()
    store.close()


def test_a_lost_gpu_pauses_at_once_and_a_stage_bug_still_fails_the_job(workspace):
    config, rules, store = setup(workspace, {"gpu": rule("gpu", "gpu_test", "cutouts")})
    lost, buggy = submit(config, rules, store, ["a", "b"], workspace)
    problems = Problems(store, None, config, rules=rules)
    worker = Worker("w1", config, store, rules, problems=problems)
    TROUBLE[:] = ["lost"]
    worker.run_next()
    assert store.get(lost).attempts == 0 and [p.key for p in problems.active()] == ["gpu"]
    assert "illegal memory access" in problems.active()[0].message
    problems.clear("gpu")
    TROUBLE[:] = ["bug"]  # a problem job: fails as always, pauses nothing
    result = worker.run_next()
    assert result.job_id == lost and result.status is JobStatus.FAILED
    assert "upscale (gpu_test) failed: ZeroDivisionError: oops" in result.error
    assert problems.active() == []
    assert worker.run_next().status is JobStatus.DONE
    worker.close()
    store.close()


def test_a_model_that_does_not_load_pauses_its_rules_and_is_loaded_again_later(workspace, caplog):
    config, rules, store = setup(workspace, {"model": rule("model", "load_test", "cutouts", "model/**"),
                                             "plain": rule("plain", PLAIN, "webshop", "plain/**")})
    (model_job,) = submit(config, rules, store, ["a"], workspace, rule_name="model")
    (plain_job,) = submit(config, rules, store, ["b"], workspace, rule_name="plain")
    problems = Problems(store, None, config, rules=rules)
    worker = Worker("w1", config, store, rules, problems=problems)
    LOAD_FAILS.set()
    worker.run_next()
    assert store.get(model_job).attempts == 0 and store.get(model_job).status is JobStatus.QUEUED
    (problem,) = problems.active()
    assert problem.key == "model:upscale/load_test" and problem.scope == Scope.rules({"model"})
    assert "RuntimeError: weights file /models/upscale.pth is damaged" in problem.message
    assert worker.run_next().job_id == plain_job
    LOAD_FAILS.clear()  # the file is put back
    time.sleep(0.1)
    problems.check()
    assert worker.run_next().status is JobStatus.DONE
    assert problems.active() == [] and store.get(model_job).attempts == 1
    worker.close()
    store.close()


def test_a_subject_prior_cut_short_while_unloaded_pauses_its_rule_until_it_loads_again(workspace, tmp_path, caplog):
    """Issue 11 trial: the studio backend's optional prior (``prior: auto``) is in the cache, loaded, then unloaded
    for being idle (``unload_after_seconds``); the file is cut short and two shots arrive. They wait uncharged
    behind ``model:remove_background/studio`` (one alert), instead of failing for good; the file is put back and
    they are done (one alert off)."""
    skip_without("onnxruntime")
    onnx = tiny_dark_subject_onnx()  # skips without torch/onnx
    cache = tmp_path / "models"
    (cache / "assetd").mkdir(parents=True)
    model = cache / "assetd" / "u2netp.onnx"
    shutil.copyfile(onnx, model)
    receiver = Receiver()
    caplog.set_level(logging.INFO, "assetd.models")
    try:
        config, rules, store = setup(
            workspace, {"cut": "name: cut\nmatch: {folder: '**'}\nsteps: [{remove_background: {backend: studio}}]\n"
                               "outputs: [{channel: cutouts}]\n"},
            urls=[receiver.url], extra=f"models: {{cache_dir: {cache}, unload_after_seconds: 0.2}}\n")
        store.close()
        daemon = Daemon(config, rules)
        daemon.start()
        try:
            workspace.shot("inbox/e00.jpg", size=(160, 120), seed=0)
            wait_for(lambda: daemon.store.counts()["done"] == 1, 30)
            wait_for(lambda: any(r.getMessage().startswith("unloaded model prior:u2netp") for r in caplog.records))
            model.write_bytes(onnx.read_bytes()[:onnx.stat().st_size // 2])  # head -c: cut short
            for i in (1, 2):
                workspace.shot(f"inbox/e0{i}.jpg", size=(160, 120), seed=i)

            def waiting() -> bool:  # between two trials (check_seconds apart, then twice as long each time)
                jobs = daemon.store.jobs()[1:]
                return len(jobs) == 2 and all(j.status is JobStatus.QUEUED and j.attempts == 0 for j in jobs)

            wait_for(lambda: len(receiver.messages) == 1 and waiting(), 30)
            assert daemon.store.counts().get("failed", 0) == 0
            (problem,) = daemon.problems.active()
            assert "subject prior" in problem.message and str(model) in problem.message
            shutil.copyfile(onnx, model)  # the file loads again
            wait_for(lambda: daemon.store.counts()["done"] == 3 and len(receiver.messages) == 2, 30)
            assert daemon.store.counts().get("failed", 0) == 0
        finally:
            daemon.stop()
    finally:
        receiver.close()
    key = "model:remove_background/studio"
    assert [(m["title"], m["type"]) for m in receiver.messages] == [(f"assetd: paused: {key}", "failure"),
                                                                     (f"assetd: resumed: {key}", "success")]
    assert sorted(p.name for p in workspace.out("cutouts").iterdir()) == ["e00.png", "e01.png", "e02.png"]


@pytest.mark.parametrize("backend", ["spandrel", "rembg"])
def test_a_model_cut_short_after_its_idle_unload_pauses_its_rule_on_the_next_job(workspace, tmp_path, backend):
    """The same for spandrel weights and a rembg ONNX, through a Worker whose model manager ages its models by a
    fake clock: the reload the next job needs fails, and that is the rule's model problem, not the job's failure."""
    if backend == "spandrel":
        weights = tiny_esrgan_x4()  # skips without torch/spandrel
        model = tmp_path / "x4.safetensors"
        text, step, extra = rule("up", "spandrel", "webshop"), "upscale", f"spandrel: {model}, "
    else:
        skip_without("rembg")
        weights = tiny_dark_subject_onnx()  # skips without torch/onnx
        model = tmp_path / "cut.onnx"
        text = (f"name: up\nsteps: [{{remove_background: {{backend: rembg, model: {model}}}}}]\n"
                "outputs: [{channel: cutouts}]\n")
        step, extra = "remove_background", ""
    shutil.copyfile(weights, model)
    config, rules, store = setup(workspace, {"up": text},
                                 extra=f"models: {{{extra}unload_after_seconds: 60}}\n")
    first, second = submit(config, rules, store, ["a", "b"], workspace, rule_name="up")
    problems = Problems(store, None, config, rules=rules)
    worker = Worker("w1", config, store, rules, problems=problems)
    now = [0.0]
    worker.ctx.models = ModelManager(config, clock=lambda: now[0])
    assert worker.run_next().status is JobStatus.DONE
    now[0] += 61
    assert worker.ctx.models.release_idle()  # what the worker does between jobs
    model.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    worker.run_next()
    assert store.get(second).status is JobStatus.QUEUED and store.get(second).attempts == 0
    (problem,) = problems.active()
    assert problem.key == f"model:{step}/{backend}" and str(model) in problem.message
    shutil.copyfile(weights, model)
    time.sleep(0.1)  # check_seconds
    problems.check()
    assert worker.run_next().status is JobStatus.DONE and problems.active() == []
    assert store.get(first).attempts == store.get(second).attempts == 1
    worker.close()
    store.close()


def test_a_broken_subject_prior_that_appears_while_assetd_runs_pauses_instead_of_failing(workspace, tmp_path):
    """``prior: auto`` without the file runs without it; a broken copy put in the cache later (a download cut
    short) is meant to be used, so the next job waits uncharged behind the model problem; a good copy is used."""
    skip_without("onnxruntime")
    onnx = tiny_dark_subject_onnx()  # skips without torch/onnx
    model = tmp_path / "models" / "assetd" / "u2netp.onnx"
    config, rules, store = setup(
        workspace, {"cut": "name: cut\nmatch: {folder: '**'}\nsteps: [{remove_background: {backend: studio}}]\n"
                           "outputs: [{channel: cutouts}]\n"}, extra=f"models: {{cache_dir: {tmp_path / 'models'}}}\n")
    first, second = submit(config, rules, store, ["a", "b"], workspace)
    problems = Problems(store, None, config, rules=rules)
    worker = Worker("w1", config, store, rules, problems=problems)
    assert worker.run_next().status is JobStatus.DONE  # without the prior
    model.parent.mkdir(parents=True)
    model.write_bytes(onnx.read_bytes()[:onnx.stat().st_size // 2])
    worker.run_next()
    assert store.get(second).status is JobStatus.QUEUED and store.get(second).attempts == 0
    (problem,) = problems.active()
    assert problem.key == "model:remove_background/studio" and "InvalidProtobuf" in problem.message
    shutil.copyfile(onnx, model)
    time.sleep(0.1)  # check_seconds
    problems.check()
    assert worker.run_next().status is JobStatus.DONE and problems.active() == []
    worker.close()
    store.close()


# -------------------------------------------------------------------------------------------- the daemon
def test_the_daemon_pauses_a_full_channel_volume_alerts_once_each_way_and_finishes_everything(workspace, monkeypatch):
    """(No no_leaked_threads here: apprise keeps a thread pool of its own once it has delivered.)"""
    receiver = Receiver()
    try:
        config, rules, store = setup(workspace, {"cut": rule("cut", PLAIN, "cutouts", "cut/**"),
                                                 "web": rule("web", PLAIN, "webshop", "web/**")},
                                     problems="min_free: 1GB", urls=[receiver.url])
        store.close()
        workspace.out("cutouts").mkdir(parents=True)
        volumes = FakeVolumes(workspace.out("cutouts"), free=int(0.2 * GB))
        monkeypatch.setattr(daemon_module, "Problems",
                            functools.partial(Problems, disk_usage=volumes.disk_usage, device=volumes.device))
        daemon = Daemon(config, rules)
        daemon.start()
        try:
            for i in range(2):
                workspace.shot(f"inbox/cut/c{i}.jpg", size=(160, 120), seed=i)
                workspace.shot(f"inbox/web/w{i}.jpg", size=(160, 120), seed=i)
            wait_for(lambda: daemon.store.counts()["done"] == 2 and len(daemon.store.jobs()) == 4, 20)
            cut = [j for j in daemon.store.jobs() if j.rule == "cut"]
            assert all(j.status is JobStatus.QUEUED and j.attempts == 0 for j in cut)
            listing = CliRunner().invoke(cli, ["jobs", "--config", str(workspace.config_path)]).output
            paused = [line for line in listing.splitlines() if line.startswith("paused since ")]
            assert len(paused) == 1 and f"disk:{workspace.out('cutouts')}: 200 MB free" in paused[0]
            wait_for(lambda: len(receiver.messages) == 1)
            volumes.free = 2 * GB
            wait_for(lambda: daemon.idle() and daemon.store.counts()["done"] == 4, 20)
            wait_for(lambda: len(receiver.messages) == 2)
            assert all(j.attempts == 1 for j in daemon.store.jobs())
        finally:
            daemon.stop()
    finally:
        receiver.close()
    key = f"disk:{workspace.out('cutouts')}"
    assert [(m["title"], m["type"]) for m in receiver.messages] == [(f"assetd: paused: {key}", "failure"),
                                                                     (f"assetd: resumed: {key}", "success")]
    assert sorted(p.name for p in workspace.out("cutouts").iterdir()) == ["c0.png", "c1.png"]


def test_a_model_missing_when_assetd_restarts_pauses_its_rule_until_the_model_is_there(workspace, tmp_path):
    """A real `assetd run` on a database an earlier run left, whose model cache is not there yet (a share mounted
    late at boot): the daemon keeps running instead of exiting 2, the other rule's file is done, the model rule's
    file waits uncharged, `assetd jobs` says why, one alert each way; the model appears and the file is done.
    (A first start still exits 2: test_cli.test_run_refuses_to_start_when_a_configured_model_is_missing.)"""
    onnx = tiny_dark_subject_onnx()  # skips without torch/onnx
    skip_without("rembg")
    cache = tmp_path / "share" / "models"
    receiver = Receiver()
    try:
        config, rules, store = setup(
            workspace, {"cut": "name: cut\nmatch: {folder: 'cut/**'}\nsteps: [{remove_background: {backend: rembg, "
                               "model: u2net}}]\noutputs: [{channel: cutouts}]\n",
                        "plain": rule("plain", PLAIN, "webshop", "plain/**")},
            problems="check_seconds: 0.2", urls=[receiver.url], extra=f"models: {{cache_dir: {cache}}}\n")
        store.set_state(DAEMON_STARTED, time.time())  # the database an earlier run left
        store.close()
        workspace.shot("inbox/plain/a.jpg", size=(160, 120), seed=1)
        workspace.shot("inbox/cut/b.jpg", size=(160, 120), seed=2)
        log = (tmp_path / "assetd.log").open("w+")
        daemon = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--config", str(workspace.config_path)],
                                  stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        store = Store(config.database)
        try:
            def job(name: str):
                return next((j for j in store.jobs() if Path(j.input_path).name == name), None)

            wait_for(lambda: daemon.poll() is None and getattr(job("a.jpg"), "status", None) is JobStatus.DONE
                     and job("b.jpg") is not None and len(receiver.messages) == 1, 60)
            assert job("b.jpg").status is JobStatus.QUEUED and job("b.jpg").attempts == 0
            listing = CliRunner().invoke(cli, ["jobs", "--config", str(workspace.config_path)]).output
            (paused,) = [line for line in listing.splitlines() if line.startswith("paused since ")]
            assert "model:remove_background/rembg: the model does not load" in paused
            assert "rembg model 'u2net' is not downloaded" in paused and "jobs of rule cut wait" in paused
            (cache / "rembg").mkdir(parents=True)  # the share is mounted
            shutil.copy(onnx, cache / "rembg" / "u2net.onnx")
            wait_for(lambda: job("b.jpg").status is JobStatus.DONE and len(receiver.messages) == 2, 60)
        finally:
            store.close()
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(60) == 0
    finally:
        receiver.close()
    key = "model:remove_background/rembg"
    assert [(m["title"], m["type"]) for m in receiver.messages] == [(f"assetd: paused: {key}", "failure"),
                                                                     (f"assetd: resumed: {key}", "success")]
    assert (workspace.out("cutouts") / "b.png").is_file() and (workspace.out("webshop") / "a.jpg").is_file()
    log.seek(0)
    said = log.read()
    log.close()
    assert f"ERROR   assetd.health: paused: {key}: the model does not load" in said
    assert "assetd models pull --config" in said and f"models.cache_dir: {cache}" in said


def test_torch_out_of_memory_is_known_by_its_class_through_the_wrappers():
    """torch's own OutOfMemoryError (whatever its text), raised in a stage and wrapped by gpu_errors or the chain."""
    torch = pytest.importorskip("torch")
    from pipeline.chain import StepError
    from pipeline.health import gpu_trouble
    from pipeline.models import gpu_errors

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    with pytest.raises(Exception) as wrapped:
        with gpu_errors("upscale x4"):
            raise oom("Tried to allocate 20.00 MiB")
    assert gpu_trouble(wrapped.value) == "oom"
    try:
        try:
            raise oom("Tried to allocate 20.00 MiB")
        except Exception as exc:
            raise StepError("upscale (spandrel) failed") from exc
    except StepError as step_error:
        assert gpu_trouble(step_error) == "oom"
    assert gpu_trouble(RuntimeError("CUDA error: device-side assert triggered")) == "lost"
    assert gpu_trouble(RuntimeError("shapes do not match")) is None


def test_an_unreachable_inbox_is_a_problem_until_the_watcher_watches_it_again(workspace, no_leaked_threads):
    workspace.inbox.rmdir()  # a share not mounted yet (create: false)
    config, rules, store = setup(workspace, {"cut": rule("cut", PLAIN, "cutouts")})
    store.close()
    daemon = Daemon(config, rules)
    daemon.start()
    try:
        key = f"inbox:{workspace.inbox}"
        assert [p.key for p in daemon.problems.active()] == [key]
        assert daemon.problems.blocked() == (set(), [workspace.inbox])
        workspace.inbox.mkdir()
        wait_for(lambda: not daemon.problems.active(), 20)
    finally:
        daemon.stop()


def test_an_input_whose_inbox_folder_is_gone_waits_for_it_uncharged(workspace):
    config, rules, store = setup(workspace, {"cut": rule("cut", PLAIN, "cutouts")})
    shot = workspace.shot("inbox/a.jpg", size=(160, 120))
    job = Intake(config, rules, store).submit(shot).job
    problems = Problems(store, None, config, rules=rules)
    worker = Worker("w1", config, store, rules, problems=problems)
    away = workspace.root / "unmounted"
    workspace.inbox.rename(away)  # the share goes away
    worker.run_next()
    stored = store.get(job.id)
    assert stored.status is JobStatus.QUEUED and stored.attempts == 0
    (problem,) = problems.active()
    assert problem.key == f"inbox:{workspace.inbox}" and problem.scope == Scope.inbox(workspace.inbox)
    away.rename(workspace.inbox)  # back
    problem.next_probe = 0.0
    problems.check()
    assert problems.active() == [] and worker.run_next().status is JobStatus.DONE
    worker.close()
    store.close()


def test_a_high_min_free_still_has_a_resume_level_the_volume_can_reach(workspace):
    """min_free 70%: the default resume level (min_free and half of it again, 105%) would never be reached; it is
    capped halfway between min_free and an empty volume (85%)."""
    config, rules, store = setup(workspace, {"cut": rule("cut", PLAIN, "cutouts")}, problems="min_free: 70%")
    workspace.out("cutouts").mkdir(parents=True)
    volumes = FakeVolumes(workspace.out("cutouts"), free=50 * GB)
    problems = Problems(store, Alerts(), config, rules=rules, disk_usage=volumes.disk_usage, device=volumes.device)
    problems.check_disks()
    (paused,) = problems.active()
    assert "wait until it has 85.0 GB free" in paused.message
    volumes.free = 86 * GB
    problems.check_disks()
    assert problems.active() == []
    store.close()
