"""/metrics (issue 12): what a studio's Grafana shows after real jobs ran through a worker, read from the store at
scrape time (so ``assetd serve`` in another process reports the daemon's work), with no file name or job id in any
label."""
from __future__ import annotations

import os
import sys
import threading
import time
import types
from collections import namedtuple
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from pipeline.health import Problems
from pipeline.intake import Intake
from pipeline.metrics import QUEUE_BUCKETS, STAGE_BUCKETS, exposition
from pipeline.models import manager_for
from pipeline.owners import HOST, InstanceLock
from pipeline.schema import opt
from pipeline.stages.base import Asset, Stage, registered
from pipeline.store import JobStatus, Store
from pipeline.worker import Worker

PLAIN = ("name: plain\nmatch: {folder: 'plain/**'}\nsteps: [{upscale: {backend: lanczos, factor: 1.0}}]\n"
         "outputs: [{channel: cutouts, from: upscale}, {channel: webshop, from: upscale}]\n")
CUT = "name: cut\nmatch: {folder: 'cut/**'}\nsteps: [remove_background]\noutputs: [{channel: cutouts}]\n"
Usage = namedtuple("Usage", "total used free")
GB = 1000 ** 3


def setup(workspace, rules: dict[str, str], extra: str = ""):
    for f in (workspace.root / "rules").iterdir():
        f.unlink()
    for name, text in rules.items():
        workspace.add_rule(f"{name}.yaml", text)
    workspace.write_config(extra=extra)
    config, loaded = workspace.load()
    return config, loaded, Store(config.database)


def submit(config, rules, store, workspace, names: list[str], rule: str) -> list[int]:
    intake = Intake(config, rules, store)
    return [intake.submit(workspace.shot(f"staging/{rule}/{n}.jpg", "white", size=(160, 120), seed=i),
                          rule_name=rule).job.id for i, n in enumerate(names)]


def scrape(config, store, accept: str | None = None) -> dict[str, list]:
    """What Prometheus would store from one scrape: the samples of each family, by family name."""
    body, content_type = exposition(config, store, accept)
    assert content_type.startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(body.decode())}


def value(samples, name: str, **labels) -> float | None:
    found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) <= 1, found
    return found[0] if found else None


def run_all(worker: Worker) -> None:
    while worker.run_next() is not None:
        pass


def test_a_night_of_jobs_as_grafana_shows_it(workspace):
    config, rules, store = setup(workspace, {"plain": PLAIN, "cut": CUT})
    done = submit(config, rules, store, workspace, ["a", "b", "c"], "plain")
    (cut,) = submit(config, rules, store, workspace, ["d"], "cut")
    damaged = workspace.root / "staging" / "plain" / "torn.jpg"
    damaged.write_bytes(b"\xff\xd8\xff\xe0 this is not a photo")
    failed = Intake(config, rules, store).submit(damaged, rule_name="plain").job.id
    worker = Worker("w1", config, store, rules)
    run_all(worker)
    worker.close()
    assert store.get(failed).status is JobStatus.FAILED
    assert all(store.get(j).status is JobStatus.DONE for j in [*done, cut])
    # two more shots arrive; a worker has claimed one and started it, another only to read it ahead
    later = submit(config, rules, store, workspace, ["e", "f", "g"], "plain")
    started = store.claim_next("worker-9 pid 1 on elsewhere", 60)
    ahead = store.claim_next("worker-9 pid 1 on elsewhere", 60, ahead=True)
    assert {started.id, ahead.id} <= set(later)

    metrics = scrape(config, Store(config.database))  # another process's store: `assetd serve` beside `assetd run`

    jobs = metrics["assetd_jobs"]
    assert value(jobs, "assetd_jobs_total", rule="plain", outcome="done") == 3
    assert value(jobs, "assetd_jobs_total", rule="plain", outcome="failed") == 1
    assert value(jobs, "assetd_jobs_total", rule="cut", outcome="done") == 1
    assert value(jobs, "assetd_jobs_total", rule="cut", outcome="failed") is None
    counts = store.counts()
    depth = metrics["assetd_queue_depth"]
    assert {s.labels["status"]: s.value for s in depth} == {"queued": counts["queued"], "running": counts["running"]}
    assert (counts["queued"], counts["running"]) == (1, 2)
    assert metrics["assetd_jobs_in_flight"][0].value == 1  # the one read ahead has not started
    assert value(metrics["assetd_last_success_timestamp_seconds"], "assetd_last_success_timestamp_seconds",
                 rule="plain") == max(store.get(j).finished_at for j in done)

    stages = metrics["assetd_stage_duration_seconds"]
    for stage, backend, runs in [("upscale", "lanczos", 3), ("remove_background", "studio", 1),
                                 ("outputs", "encode", 4)]:
        labels = {"stage": stage, "backend": backend, "device": "cpu"}
        buckets = [s for s in stages if s.name.endswith("_bucket") and {k: s.labels[k] for k in labels} == labels]
        assert [float(s.labels["le"]) for s in buckets] == [*STAGE_BUCKETS, float("inf")]
        assert [s.value for s in buckets] == sorted(s.value for s in buckets)  # cumulative
        recorded = [s["seconds"] for j in [*done, cut] for s in store.steps(j)
                    if (s["step"], s["backend"]) == (stage, backend)]
        assert len(recorded) == runs
        assert value(stages, "assetd_stage_duration_seconds_count", **labels) == runs == buckets[-1].value
        assert value(stages, "assetd_stage_duration_seconds_sum", **labels) == pytest.approx(sum(recorded))
        for bound, bucket in zip(STAGE_BUCKETS, buckets):
            assert bucket.value == sum(seconds <= bound for seconds in recorded)
    assert metrics["assetd_stage_gpu_peak_bytes"] == []  # on the CPU: no GPU memory to report

    waits = metrics["assetd_queue_wait_seconds"]
    assert [float(s.labels["le"]) for s in waits if s.name.endswith("_bucket")] == [*QUEUE_BUCKETS, float("inf")]
    # every job whose run started: the five that ran (the damaged one too: it failed at its decode) and the one now
    assert value(waits, "assetd_queue_wait_seconds_count") == 6

    free = metrics["assetd_free_bytes"]
    for channel in config.channels:
        assert value(free, "assetd_free_bytes", volume=channel, kind="channel") > 0
    assert value(free, "assetd_free_bytes", volume="database", kind="database") > 0
    assert value(free, "assetd_free_bytes", volume="manifests", kind="manifests") > 0
    assert metrics["assetd_problems_active"] == []

    ids = {str(j) for j in [*done, cut, failed, *later]}
    stems = {"a", "b", "c", "d", "e", "f", "g", "torn"}
    for family in metrics.values():
        for sample in family:
            assert not {"file", "path", "input", "job", "job_id", "id"} & set(sample.labels)
            for name, label in sample.labels.items():
                if name != "le":
                    assert "/" not in label and label not in ids | stems and ".jpg" not in label, (sample.name, label)
    store.close()


def test_a_paused_problem_shows_until_it_clears(workspace):
    """A disk below problems.min_free pauses the rules writing there: the scrape shows a pausing disk problem (its
    kind, never its mount point) while it lasts, and none once the space is back."""
    config, rules, store = setup(workspace, {"plain": PLAIN}, extra="problems: {min_free: 1GB, check_seconds: 0.1}\n")
    low = workspace.out("cutouts")
    low.mkdir(parents=True)
    free = [int(0.5 * GB)]

    def disk_usage(path: Path) -> Usage:
        return Usage(100 * GB, 100 * GB - free[0], free[0]) if Path(path).is_relative_to(low) else Usage(
            100 * GB, 10 * GB, 90 * GB)

    lock = InstanceLock(config.database)  # a daemon runs on the database: its problems are counted
    lock.acquire()
    problems = Problems(store, None, config, rules=rules, disk_usage=disk_usage,
                        device=lambda path: "low" if Path(path).is_relative_to(low) else os.stat(path).st_dev)
    problems.check()
    (problem,) = problems.active()
    metrics = scrape(config, Store(config.database))
    assert value(metrics["assetd_problems_active"], "assetd_problems_active", kind="disk", pausing="true") == 1
    assert value(metrics["assetd_problem_started_timestamp_seconds"], "assetd_problem_started_timestamp_seconds",
                 kind="disk") == pytest.approx(problem.started_at)
    assert str(low) not in exposition(config, store)[0].decode().replace("# HELP", "")
    free[0] = 2 * GB
    problems._next_disk_check = 0.0
    problems.check()
    assert problems.active() == []
    assert scrape(config, store)["assetd_problems_active"] == []
    lock.release()
    store.close()


def test_a_stopped_daemons_problems_are_not_reported(workspace):
    """`assetd serve` left running after the daemon stopped reports no problem: those a daemon left open, stopped or
    killed, are not counted while no daemon runs (the next start takes over those it finds again)."""
    from pipeline.daemon import Daemon
    from pipeline.health import Scope

    config, rules, store = setup(workspace, {"plain": PLAIN})
    daemon = Daemon(config, rules)
    daemon.start()
    try:
        daemon.problems.start("ray:actor-2", "ray: actor-2 cannot be placed", Scope.nothing())
        assert value(scrape(config, store)["assetd_problems_active"], "assetd_problems_active", kind="ray",
                     pausing="false") == 1
    finally:
        daemon.stop()
    assert scrape(config, store)["assetd_problems_active"] == []
    assert len(store.active_problems()) == 1  # left open for the next start, which finds it again or ends it

    killed = Problems(store, None, config, rules=rules)  # a killed daemon's problem left open: no daemon holds the lock
    killed.start("ray:actor-1", "ray: actor-1 cannot be placed", Scope.nothing())
    assert len(store.active_problems()) == 2
    assert scrape(config, store)["assetd_problems_active"] == []
    store.close()


# ---------------------------------------------------------------------------------------- models and devices
@dataclass
class ModelOptions:
    note: str = opt("", doc="unused")


class ModelUpscale(Stage):
    """A model-backed test backend: its prepare loads a model through the worker's model manager, as the real ones
    do (its name a file path, as spandrel's are), and keeps the image."""

    step = "upscale"
    backend = "model_test"
    Options = ModelOptions
    needs_models = True
    allocate = 0  # bytes a run "allocates" on a stand-in GPU (see the CUDA test)

    def prepare(self) -> None:
        manager = manager_for(self.ctx)
        manager.device  # the worker's device, resolved as a real backend does when it loads onto it
        self.model = manager.get(("model_test", "/srv/models/upscaler-x2.pth"), lambda: object())

    def run(self, asset: Asset) -> list[Asset]:
        FakeCuda.allocated += self.allocate
        FakeCuda.peak = max(FakeCuda.peak, FakeCuda.allocated)
        FakeCuda.allocated -= self.allocate
        return [asset]


@pytest.fixture(autouse=True)
def model_backend():
    with registered(ModelUpscale):
        yield


MODEL = ("name: model\nmatch: {folder: 'model/**'}\nsteps: [{upscale: {backend: model_test}}]\n"
         "outputs: [{channel: cutouts, from: upscale}]\n")


def test_model_load_time_by_backend_and_device_and_the_device_of_each_stage(workspace):
    config, rules, store = setup(workspace, {"model": MODEL}, extra="device: cpu\n")
    submit(config, rules, store, workspace, ["a", "b"], "model")
    worker = Worker("w1", config, store, rules)
    run_all(worker)
    worker.close()
    metrics = scrape(config, store)
    loads = metrics["assetd_model_load_seconds"]
    assert value(loads, "assetd_model_load_seconds_count", backend="model_test", device="cpu") == 1  # loaded once
    assert all("/srv/models" not in label for s in loads for label in s.labels.values())
    assert value(metrics["assetd_stage_duration_seconds"], "assetd_stage_duration_seconds_count", stage="upscale",
                 backend="model_test", device="cpu") == 2
    store.close()


class FakeCuda:
    """Stands in for ``torch.cuda`` on a machine without a GPU: the peak counter the chain resets before each step
    and reads after it."""

    allocated = 0
    peak = 0
    resets: list[str] = []

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def reset_peak_memory_stats(device: str) -> None:
        FakeCuda.resets.append(device)
        FakeCuda.peak = FakeCuda.allocated

    @staticmethod
    def max_memory_allocated(device: str) -> int:
        return FakeCuda.peak

    @staticmethod
    def empty_cache() -> None:
        pass


def test_on_cuda_each_stage_reports_its_gpu_memory_peak(workspace, monkeypatch):
    """The chain resets torch's peak counter before a model-backed step on CUDA and records the peak after it; the
    scrape shows the highest per stage, backend and device (torch stood in for: this machine has no GPU)."""
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=FakeCuda))
    monkeypatch.setattr("pipeline.models.resolve_device", lambda setting: "cuda:0")
    monkeypatch.setattr(FakeCuda, "allocated", 3 * GB)  # a model resident on the GPU
    monkeypatch.setattr(FakeCuda, "resets", [])
    config, rules, store = setup(workspace, {"model": MODEL, "plain": PLAIN}, extra="device: cuda:0\n")
    submit(config, rules, store, workspace, ["a", "b"], "model")
    submit(config, rules, store, workspace, ["c"], "plain")
    worker = Worker("w1", config, store, rules)
    monkeypatch.setattr(ModelUpscale, "allocate", 2 * GB)
    worker.run_next()
    monkeypatch.setattr(ModelUpscale, "allocate", 1 * GB)
    run_all(worker)
    worker.close()
    metrics = scrape(config, store)
    peaks = metrics["assetd_stage_gpu_peak_bytes"]
    assert [(s.labels, s.value) for s in peaks] == [({"stage": "upscale", "backend": "model_test", "device": "cuda:0"},
                                                     5 * GB)]
    assert FakeCuda.resets == ["cuda:0", "cuda:0"]  # the model steps only: lanczos runs on the CPU
    stages = metrics["assetd_stage_duration_seconds"]
    assert value(stages, "assetd_stage_duration_seconds_count", stage="upscale", backend="lanczos", device="cpu") == 1
    assert value(metrics["assetd_model_load_seconds"], "assetd_model_load_seconds_count", backend="model_test",
                 device="cuda:0") == 1
    store.close()


class CudaUpscale(Stage):
    """A model-backed test backend that really allocates GPU memory: 64 MiB on the worker's device per run."""

    step = "upscale"
    backend = "cuda_test"
    Options = ModelOptions
    needs_models = True

    def prepare(self) -> None:
        import torch

        manager = manager_for(self.ctx)
        self.model = manager.get(("cuda_test", "resident"), lambda: torch.zeros(2 ** 20, device=manager.device))

    def run(self, asset: Asset) -> list[Asset]:
        import torch

        block = torch.ones(64 * 2 ** 20, dtype=torch.uint8, device=self.ctx.models.device)
        del block
        return [asset]


def test_on_a_real_gpu_the_peak_is_what_the_step_allocated(workspace):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    with registered(CudaUpscale):
        config, rules, store = setup(workspace, {"gpu": MODEL.replace("model_test", "cuda_test").replace(
            "name: model", "name: gpu")}, extra="device: cuda\n")
        submit(config, rules, store, workspace, ["a"], "gpu")
        worker = Worker("w1", config, store, rules)
        run_all(worker)
        worker.close()
    metrics = scrape(config, store)
    (peak,) = metrics["assetd_stage_gpu_peak_bytes"]
    assert peak.labels == {"stage": "upscale", "backend": "cuda_test", "device": "cuda"}
    assert 64 * 2 ** 20 <= peak.value < 1024 * 2 ** 20
    assert value(metrics["assetd_model_load_seconds"], "assetd_model_load_seconds_count", backend="cuda_test",
                 device="cuda") == 1
    store.close()


def test_outputs_awaiting_approval_by_channel(workspace):
    """A channel with ``publish: on_approval`` keeps its outputs in staging: the scrape counts them per channel
    (the at-once channel has none waiting)."""
    config, rules, store = setup(workspace, {"plain": PLAIN}, extra="")
    text = workspace.config_path.read_text().replace("format: png}", "format: png, publish: on_approval}", 1)
    workspace.config_path.write_text(text)
    config, rules = workspace.load()
    assert config.channels["cutouts"].publish == "on_approval"
    submit(config, rules, store, workspace, ["a", "b"], "plain")
    worker = Worker("w1", config, store, rules)
    run_all(worker)
    worker.close()
    awaiting = scrape(config, store)["assetd_outputs_awaiting_approval"]
    assert {s.labels["channel"]: s.value for s in awaiting} == {"cutouts": 2}
    store.close()


def test_jobs_done_by_runner_show_each_workers_throughput(workspace):
    """Two workers share a batch: the scrape counts each one's jobs done, and their seconds, under ``runner`` (the
    worker and its host, as ``executor: ray`` names an actor and its node); a failed job counts for no runner."""
    config, rules, store = setup(workspace, {"plain": PLAIN})
    ids = submit(config, rules, store, workspace, ["a", "b", "c", "d", "e"], "plain")
    damaged = workspace.root / "staging" / "plain" / "torn.jpg"
    damaged.write_bytes(b"\xff\xd8\xff\xe0 this is not a photo")
    Intake(config, rules, store).submit(damaged, rule_name="plain")
    first, second = Worker("worker-1", config, store, rules), Worker("worker-2", config, store, rules)
    for _ in range(2):
        first.run_next()
    run_all(second)
    first.close()
    second.close()
    jobs = [store.get(j) for j in ids]
    assert all(j.status is JobStatus.DONE for j in jobs)
    by_runner: dict[str, list] = {}
    for job in jobs:
        by_runner.setdefault(job.ran_on, []).append(job)
    assert set(by_runner) == {f"worker-1 on {HOST}", f"worker-2 on {HOST}"}

    metrics = scrape(config, Store(config.database))
    for runner, done in by_runner.items():
        assert value(metrics["assetd_runner_jobs"], "assetd_runner_jobs_total", runner=runner) == len(done)
        assert value(metrics["assetd_runner_job_seconds"], "assetd_runner_job_seconds_total",
                     runner=runner) == pytest.approx(sum(j.seconds for j in done))
    assert len(metrics["assetd_runner_jobs"]) == 2  # the damaged file's failure is no runner's throughput
    store.close()


def test_openmetrics_when_the_scraper_asks_for_it(workspace):
    config, rules, store = setup(workspace, {"plain": PLAIN})
    submit(config, rules, store, workspace, ["a"], "plain")
    body, content_type = exposition(config, store, "application/openmetrics-text; version=1.0.0,text/plain;q=0.5")
    assert content_type.startswith("application/openmetrics-text")
    families = {f.name: f for f in openmetrics_families(body.decode())}
    assert families["assetd_jobs"].type == "counter"
    assert families["assetd_queue_depth"].samples[0].labels == {"status": "queued"}
    store.close()


def test_scrapes_while_a_worker_runs_jobs_add_up(workspace):
    """Scrapes from another thread (the review server's) while jobs run: each sees whole jobs (never one both
    queued and done), and the stage histograms end with every step the jobs took."""
    config, rules, store = setup(workspace, {"plain": PLAIN})
    ids = submit(config, rules, store, workspace, ["a", "b", "c", "d"], "plain")
    worker = Worker("w1", config, store, rules)
    thread = threading.Thread(target=worker.run_forever, kwargs={"idle_max": 0.05})
    thread.start()
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            metrics = scrape(config, store)
            ended = value(metrics["assetd_jobs"], "assetd_jobs_total", rule="plain", outcome="done") or 0
            pending = sum(s.value for s in metrics["assetd_queue_depth"])
            assert ended + pending == len(ids)
            if ended == len(ids):
                break
    finally:
        worker.stop.set()
        thread.join(10)
    assert ended == len(ids)
    # this store was scraped again and again while steps were added: each scrape read only the new ones
    stages = scrape(config, store)["assetd_stage_duration_seconds"]
    assert value(stages, "assetd_stage_duration_seconds_count", stage="upscale", backend="lanczos",
                 device="cpu") == len(ids)
    assert value(stages, "assetd_stage_duration_seconds_sum", stage="outputs", backend="encode",
                 device="cpu") == pytest.approx(sum(s["seconds"] for j in ids for s in store.steps(j)
                                                    if s["step"] == "outputs"))
    store.close()
