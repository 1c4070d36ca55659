"""The worker: a new backend plugs in through the registry alone; the next job is decoded while the current
one runs; transient errors retry with back-off and permanent ones fail at once."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from pipeline.errors import TransientError
from pipeline.intake import Intake
from pipeline.schema import opt
from pipeline.stages.base import Asset, Stage, registered
from pipeline.store import JobStatus, Store
from pipeline.worker import Worker

EVENTS: list[tuple[str, str, float]] = []


@dataclass
class SleepyOptions:
    seconds: float = opt(0.5, doc="how long to pretend to be a GPU")
    fail: str = opt("", doc="raise this kind of error: transient | bug")


class SleepyUpscale(Stage):
    """A test backend standing in for a slow GPU step."""

    step = "upscale"
    backend = "sleepy"
    Options = SleepyOptions

    def run(self, asset: Asset) -> list[Asset]:
        EVENTS.append(("gpu-start", "", time.monotonic()))
        time.sleep(self.options.seconds)
        EVENTS.append(("gpu-end", "", time.monotonic()))
        if self.options.fail == "transient":
            raise TransientError("GPU out of memory")
        if self.options.fail == "bug":
            raise ZeroDivisionError("oops")
        return [asset]


def setup(workspace, rule: str, shots: int):
    for f in (workspace.root / "rules").iterdir():
        f.unlink()
    workspace.add_rule("sleepy.yaml", rule)
    config, rules = workspace.load()
    store = Store(config.database)
    intake = Intake(config, rules, store)
    jobs = [intake.submit(workspace.shot(f"staging/s{i}.jpg", "white", seed=i)).job for i in range(shots)]
    return config, rules, store, jobs


def test_next_job_is_decoded_while_the_current_one_is_on_the_gpu(workspace, monkeypatch, no_leaked_threads):
    config, rules, store, jobs = setup(workspace, "name: sleepy\nsteps: [{upscale: {backend: sleepy, seconds: 0.8}}]\n"
                                                  "outputs: [{channel: cutouts, from: upscale}]\n", 2)
    EVENTS.clear()
    original = Worker._load

    def traced(self, job):
        EVENTS.append(("load-start", job.input_path, time.monotonic()))
        return original(self, job)

    monkeypatch.setattr(Worker, "_load", traced)
    worker = Worker("w1", config, store, rules)
    thread = threading.Thread(target=worker.run_forever)
    thread.start()
    deadline = time.monotonic() + 30
    while store.counts()["done"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.stop.set()
    thread.join(10)
    assert store.counts()["done"] == 2
    loads = [t for kind, _, t in EVENTS if kind == "load-start"]
    first_gpu_end = next(t for kind, _, t in EVENTS if kind == "gpu-end")
    assert len(loads) == 2 and loads[1] < first_gpu_end, "the second input was not read ahead"
    store.close()


def test_transient_errors_retry_then_fail_with_the_reason(workspace):
    config, rules, store, (job,) = setup(workspace, "name: sleepy\nsteps: [{upscale: {backend: sleepy, seconds: 0, "
                                                      "fail: transient}}]\noutputs: [{channel: cutouts}]\n", 1)
    failures = []
    worker = Worker("w1", config, store, rules, on_failed=lambda j, m: failures.append(m))
    first = worker.run_next()
    assert first.status == "queued" and "GPU out of memory" in first.error
    time.sleep(config.retry_delay_seconds + 0.1)  # 0.2 s in the test config, doubling
    second = worker.run_next()
    assert second.status == "failed" and store.get(job.id).status is JobStatus.FAILED
    assert len(failures) == 1 and "gave up after 2 attempts" in failures[0]
    worker.close()
    store.close()


def test_a_bug_in_a_stage_fails_the_job_with_the_step_named(workspace):
    config, rules, store, (job,) = setup(workspace, "name: sleepy\nsteps: [{upscale: {backend: sleepy, seconds: 0, "
                                                      "fail: bug}}]\noutputs: [{channel: cutouts}]\n", 1)
    worker = Worker("w1", config, store, rules)
    result = worker.run_next()
    assert result.status == "failed"
    assert "upscale (sleepy) failed: ZeroDivisionError: oops" in result.error
    assert result.error.startswith(job.input_path)
    worker.close()
    store.close()


@pytest.fixture(autouse=True)
def sleepy_backend():
    """Registered only while this module's tests run (the README lists the real backends)."""
    with registered(SleepyUpscale):
        yield
    EVENTS.clear()


@dataclass
class SlowOptions:
    seconds: float = opt(1.0, doc="how long the step takes")


class SlowUpscale(Stage):
    """A step longer than the lease (a model on the CPU, a huge RAW): it sleeps, then keeps the image."""

    step = "upscale"
    backend = "slow_test"
    Options = SlowOptions

    def run(self, asset: Asset) -> list[Asset]:
        time.sleep(self.options.seconds)
        return [asset]


def test_a_step_longer_than_the_lease_is_not_taken_back_and_run_twice(workspace):
    """Two workers, a 1 s lease and a 2.5 s step: the worker running it keeps its lease alive from its own thread,
    so the other worker never takes the job back as a dead worker's (it would run it a second time and count a
    crash)."""
    from daemons import run_until_idle

    for f in (workspace.root / "rules").iterdir():
        f.unlink()
    workspace.add_rule("slow.yaml", "name: slow\nsteps: [{upscale: {backend: slow_test, seconds: 2.5}}]\n"
                                    "outputs: [{channel: cutouts, from: upscale}]\n")
    workspace.write_config(workers=2, extra="lease_seconds: 1\n")
    workspace.shot("inbox/a.jpg", size=(160, 120))
    with registered(SlowUpscale):
        config, rules = workspace.load()
        (job,) = run_until_idle(config, rules, expected_jobs=1, timeout=30)
    assert job.status is JobStatus.DONE, job.error
    assert (job.attempts, job.crashes) == (1, 0)
    store = Store(config.database)
    assert [s["step"] for s in store.steps(job.id)].count("upscale") == 1  # its chain ran once
    store.close()


def test_the_job_read_ahead_during_a_step_longer_than_the_lease_is_run_once(workspace):
    """One worker, a 1 s lease, 2.5 s steps: the job claimed ahead waits as long as the running one, and its lease is
    kept with it. It was not: the worker's next claim took it back as a dead worker's, claimed it ahead again, and
    ran it twice (and a job taken back by another worker was still run by the first)."""
    from daemons import run_until_idle

    for f in (workspace.root / "rules").iterdir():
        f.unlink()
    workspace.add_rule("slow.yaml", "name: slow\nsteps: [{upscale: {backend: slow_test, seconds: 2.5}}]\n"
                                    "outputs: [{channel: cutouts, from: upscale}]\n")
    workspace.write_config(workers=1, extra="lease_seconds: 1\n")
    for i in range(3):
        workspace.shot(f"inbox/{'abc'[i]}.jpg", size=(160, 120), seed=i)
    with registered(SlowUpscale):
        config, rules = workspace.load()
        jobs = run_until_idle(config, rules, expected_jobs=3, timeout=60)
    assert [(j.status, j.attempts, j.crashes) for j in jobs] == [(JobStatus.DONE, 1, 0)] * 3, [j.error for j in jobs]
    store = Store(config.database)
    assert [[s["step"] for s in store.steps(j.id)].count("upscale") for j in jobs] == [1, 1, 1]  # each chain ran once
    store.close()
