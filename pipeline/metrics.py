"""``/metrics``: what the daemon did and does, in Prometheus' text format (or OpenMetrics when asked).

Every number is read from the store (and the disks) when Prometheus scrapes, through custom collectors in a
registry made for that scrape: nothing is counted in memory, so ``assetd serve`` in another process than
``assetd run`` reports the daemon's work, and a restart loses nothing. Each family is one GROUP BY in the store
(``Store.job_tallies``, ``step_histogram``...), which keeps a scrape cheap with tens of thousands of jobs.

Labels name rules, steps, backends, devices, channels, kinds of problem and runners (a worker or a Ray actor on
its host): never a file, a folder or a job id (one series per file would grow without end and leak names to
whoever reads the metrics).
"""
from __future__ import annotations

import shutil
import threading
import weakref
from pathlib import Path
from typing import Any, Iterator

from prometheus_client.core import (CollectorRegistry, CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.exposition import choose_encoder

from .config import Config
from .health import NOTHING_PAUSED
from .listing import live_problems
from .store import FINISHED, PENDING, JobStatus, Store

# 0.1 s to 10 min: a classical crop takes a fraction of a second, a diffusion outpaint on the CPU minutes.
STAGE_BUCKETS = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0]
# A night's batch dropped at once waits hours for its last files.
QUEUE_BUCKETS = [1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0]
ENDED = (*FINISHED, JobStatus.SUPERSEDED)  # the outcomes ``assetd_jobs_total`` counts


def exposition(config: Config, store: Store, accept: str | None = None) -> tuple[bytes, str]:
    """The metrics now, encoded for ``accept`` (the scraper's Accept header): (body, content type)."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in (JobsCollector(store), StepsCollector(store), ModelsCollector(store),
                      ProblemsCollector(store, config.database), VolumesCollector(config)):
        registry.register(collector)
    encode, content_type = choose_encoder(accept or "")
    return encode(registry), content_type


class JobsCollector:
    """Jobs by rule and outcome, queue depth by status, jobs in flight, review marks, last success, queue wait,
    outputs awaiting approval, jobs done and their seconds by runner (where the chain ran)."""

    def __init__(self, store: Store):
        self.store = store

    def collect(self) -> Iterator[Metric]:
        ended = CounterMetricFamily("assetd_jobs", "Jobs that ended, by rule and outcome (done, failed, superseded); "
                                    "a job retried leaves its outcome for the new one", labels=["rule", "outcome"])
        depth = GaugeMetricFamily("assetd_queue_depth", "Jobs not ended, by status now: queued (those waiting for "
                                  "a retry or a paused problem too) and running (claimed, its run started or read "
                                  "ahead)", labels=["status"])
        review = GaugeMetricFamily("assetd_jobs_marked_for_review", "Done jobs whose stages asked for a human's "
                                   "look, by rule", labels=["rule"])
        success = GaugeMetricFamily("assetd_last_success_timestamp_seconds", "When a job of this rule last finished "
                                    "done (Unix time)", labels=["rule"])
        statuses = {status.value: 0 for status in PENDING}
        in_flight = 0
        for row in self.store.job_tallies():
            if row["status"] in statuses:
                statuses[row["status"]] += row["jobs"]
            in_flight += row["in_flight"] if row["status"] == JobStatus.RUNNING else 0
            if row["status"] in ENDED:
                ended.add_metric([row["rule"], row["status"]], row["jobs"])
            if row["status"] == JobStatus.DONE:
                review.add_metric([row["rule"]], row["review"] or 0)
                if row["last_finished"] is not None:
                    success.add_metric([row["rule"]], row["last_finished"])
        for status, n in statuses.items():
            depth.add_metric([status], n)
        yield from (ended, depth, review, success)
        yield GaugeMetricFamily("assetd_jobs_in_flight", "Jobs whose run has started and not ended (a job only "
                                "claimed to be read ahead is not counted)", value=in_flight)
        yield _histogram("assetd_queue_wait_seconds", "Time from queued to the start of a job's first run", [],
                         self.store.queue_wait_histogram(QUEUE_BUCKETS), QUEUE_BUCKETS)
        awaiting = GaugeMetricFamily("assetd_outputs_awaiting_approval", "Outputs waiting in staging for "
                                     "approval, by channel (channels.NAME.publish: on_approval)", labels=["channel"])
        for channel, n in sorted(self.store.awaiting_by_channel().items()):
            awaiting.add_metric([channel], n)
        yield awaiting
        jobs = CounterMetricFamily("assetd_runner_jobs", "Jobs done, by where their chain ran (runner: \"actor-2 on "
                                   "gpu-box-1\" under executor: ray, \"worker-1 on HOST\" locally): each actor's "
                                   "throughput", labels=["runner"])
        seconds = CounterMetricFamily("assetd_runner_job_seconds", "Seconds the jobs done took, by where their "
                                      "chain ran", labels=["runner"])
        for row in sorted(self.store.runner_tallies(), key=lambda r: r["runner"]):
            jobs.add_metric([row["runner"]], row["jobs"])
            seconds.add_metric([row["runner"]], row["seconds"])
        yield jobs
        yield seconds


class StepTotals:
    """The steps' histogram rows so far, for one store: steps are only ever added, so each scrape reads only the
    rows added since the last one (``Store.step_histogram(after=...)``) and adds them in. The first scrape of a
    process reads them all; later ones cost what the new steps cost, however many jobs the store holds."""

    def __init__(self) -> None:
        self.last_id = 0
        self.rows: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.lock = threading.Lock()

    def update(self, store: Store) -> list[dict[str, Any]]:
        with self.lock:
            for new in store.step_histogram(STAGE_BUCKETS, after=self.last_id):
                key = (new["step"], new["backend"], new["device"])
                row = self.rows.setdefault(key, {"step": key[0], "backend": key[1], "device": key[2], "count": 0,
                                                 "sum": 0.0, "gpu_peak_bytes": None,
                                                 **{f"le_{i}": 0 for i in range(len(STAGE_BUCKETS))}})
                for column in ["count", "sum", *(f"le_{i}" for i in range(len(STAGE_BUCKETS)))]:
                    row[column] += new[column] or 0
                if new["gpu_peak_bytes"] is not None:
                    row["gpu_peak_bytes"] = max(row["gpu_peak_bytes"] or 0, new["gpu_peak_bytes"])
                self.last_id = max(self.last_id, new["last_id"])
            return [dict(row) for _, row in sorted(self.rows.items())]


_step_totals: "weakref.WeakKeyDictionary[Store, StepTotals]" = weakref.WeakKeyDictionary()
_step_totals_lock = threading.Lock()


class StepsCollector:
    """Stage durations by stage, backend and device, and their GPU memory peaks on CUDA."""

    def __init__(self, store: Store):
        self.store = store

    def collect(self) -> Iterator[Metric]:
        with _step_totals_lock:
            totals = _step_totals.setdefault(self.store, StepTotals())
        rows = totals.update(self.store)
        keys = ["stage", "backend", "device"]
        yield _histogram("assetd_stage_duration_seconds", "Time each stage took, by stage, backend and device "
                         "(outputs/encode: writing the outputs)", keys,
                         [dict(row, stage=row["step"]) for row in rows], STAGE_BUCKETS)
        peak = GaugeMetricFamily("assetd_stage_gpu_peak_bytes", "The most GPU memory torch held while a stage ran "
                                 "(highest recorded; on CUDA only)", labels=keys)
        for row in rows:
            if row["gpu_peak_bytes"] is not None:
                peak.add_metric([row["step"], row["backend"], row["device"]], row["gpu_peak_bytes"])
        yield peak


class ModelsCollector:
    """Model load times by backend (the model's kind) and device."""

    def __init__(self, store: Store):
        self.store = store

    def collect(self) -> Iterator[Metric]:
        yield _histogram("assetd_model_load_seconds", "Time a worker took to load a model, by backend and device",
                         ["backend", "device"], self.store.model_load_histogram(STAGE_BUCKETS), STAGE_BUCKETS)


class ProblemsCollector:
    """Problem processes going on now (a disk below its watermark, the GPU, a model, an inbox, a config file),
    by kind: the part of the problem's key before ``:`` (``disk:/srv/out`` is a ``disk`` problem). Only while a
    daemon runs on the database (``listing.live_problems``): ``assetd serve`` after the daemon stopped reports
    none, not the last ones it had."""

    def __init__(self, store: Store, database: Path):
        self.store = store
        self.database = database

    def collect(self) -> Iterator[Metric]:
        active = GaugeMetricFamily("assetd_problems_active", "Problem processes going on now, by kind; pausing=\"true\""
                                   ": they hold jobs back, \"false\": alert only (a broken config file)",
                                   labels=["kind", "pausing"])
        since = GaugeMetricFamily("assetd_problem_started_timestamp_seconds", "When the oldest problem of this kind "
                                  "still going on started (Unix time)", labels=["kind"])
        counts: dict[tuple[str, str], int] = {}
        oldest: dict[str, float] = {}
        for problem in live_problems(self.store, self.database):
            kind = problem["key"].split(":", 1)[0]
            pausing = "false" if problem["scope"] == NOTHING_PAUSED else "true"
            counts[(kind, pausing)] = counts.get((kind, pausing), 0) + 1
            oldest[kind] = min(oldest.get(kind, problem["started_at"]), problem["started_at"])
        for labels, n in sorted(counts.items()):
            active.add_metric(list(labels), n)
        for kind, at in sorted(oldest.items()):
            since.add_metric([kind], at)
        yield active
        yield since


class VolumesCollector:
    """Free and total bytes of each folder assetd writes to, measured now: each channel (``kind="channel"``), each
    ``publish: on_approval`` channel's staging folder (``kind="staging"``, same ``volume`` label: the channel),
    the manifests and the database. A folder not made yet is measured at its nearest existing parent; one that
    cannot be reached (a share gone) is left out."""

    def __init__(self, config: Config):
        self.config = config

    def collect(self) -> Iterator[Metric]:
        labels = ["volume", "kind"]
        free = GaugeMetricFamily("assetd_free_bytes", "Free bytes where assetd writes: each channel (and its "
                                 "staging folder), the manifests and the database", labels=labels)
        total = GaugeMetricFamily("assetd_volume_size_bytes", "Size of the volume holding each of those folders",
                                  labels=labels)
        for name, kind, folder in self.folders():
            usage = _usage(folder)
            if usage is not None:
                free.add_metric([name, kind], usage.free)
                total.add_metric([name, kind], usage.total)
        yield free
        yield total

    def folders(self) -> list[tuple[str, str, Path]]:
        found: list[tuple[str, str, Path]] = []
        for name, channel in sorted(self.config.channels.items()):
            if channel.path is not None:
                found.append((name, "channel", channel.path))
            if channel.publish == "on_approval":
                found.append((name, "staging", self.config.staging_folder(channel)))
        found.append(("manifests", "manifests", self.config.manifest_folder))
        found.append(("database", "database", self.config.database.parent))
        return found


def _usage(folder: Path) -> Any:
    """``shutil.disk_usage`` of ``folder`` or its nearest existing parent; None when it cannot be measured."""
    path = Path(folder)
    while not path.exists() and path.parent != path:
        path = path.parent
    try:
        return shutil.disk_usage(path)
    except OSError:
        return None


def _histogram(name: str, documentation: str, keys: list[str], rows: list[dict[str, Any]],
               bounds: list[float]) -> HistogramMetricFamily:
    """A histogram family from the store's rows (``Store._histogram``: cumulative ``le_<i>`` columns)."""
    family = HistogramMetricFamily(name, documentation, labels=keys)
    for row in rows:
        buckets = [(_le(bound), row[f"le_{i}"] or 0) for i, bound in enumerate(bounds)]
        family.add_metric([str(row[key]) for key in keys], buckets + [("+Inf", row["count"])], row["sum"] or 0.0)
    return family


def _le(bound: float) -> str:
    """A bucket's upper bound as Prometheus writes it (``0.1``, ``600.0``)."""
    return repr(float(bound))
