"""The worker owns the chain: claim a job, read and decode the input, run the rule's stages,
write every output atomically, record the result. Retries are exceptions (huey's way):
``TransientError`` → back to the queue with back-off; ``PermanentError`` → failed at once.

A job whose content a *twin* job (same content, rule version, another input name) already
finished does not run the chain: the twin's outputs are copied under this input's names.
Each job's manifest goes to ``manifests.folder`` (and beside the outputs when configured).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterable

from .chain import Chain, StepError
from .config import Config
from .errors import ConfigError, PermanentError, StopRequested, TransientError
from .imageio import Decoded, decode, encode, printable, read_input
from .outputs import (MANIFEST_SUFFIX, atomic_write, inside, output_name, render_for_channel, safe_stem,
                      sha256, web_safe)
from .owners import owner_label
from .rules import Rule
from .stages.base import Asset, StageContext
from .store import Job, JobStatus, OutputRecord, Store

log = logging.getLogger("assetd.worker")


@dataclass
class JobResult:
    job_id: int
    input: str
    rule: str
    status: JobStatus  # done | failed | queued (will retry, or waits for a twin)
    error: str | None = None
    outputs: list[OutputRecord] = field(default_factory=list)
    seconds: float = 0.0
    review: list[str] = field(default_factory=list)  # why a human should look at the outputs (done jobs)
    copied_from: int | None = None  # the twin job whose outputs were copied instead of running the chain


class WaitForTwin(Exception):
    """A twin job with the same content is queued or running: wait for its outputs instead of redoing them."""

    def __init__(self, twin: Job):
        super().__init__(f"waiting for job {twin.id} ({printable(twin.input_path)}), same content")
        self.twin = twin


TWIN_WAIT_SECONDS = 5.0


class Outcome(Enum):
    WAIT = "wait"  # a twin with the same content is unfinished: back to the queue, attempt not charged
    RELEASE = "release"  # asked to stop: back to the queue, attempt not charged
    RETRY = "retry"  # transient: back to the queue after a delay, or failed once out of attempts
    FAIL = "fail"  # permanent: failed at once
    BUG = "bug"  # an unexpected exception: failed at once, logged with its traceback


@dataclass
class Failure:
    outcome: Outcome
    message: str  # one line, naming the input
    delay: float = 0.0
    exc: BaseException | None = None


def classify(exc: BaseException, job: Job, config: Config) -> Failure:
    """What an exception from a job means (huey's way): its outcome, its one-line message and its delay."""
    shown = printable(job.input_path)
    backoff = config.retry_delay_seconds * 2 ** max(job.attempts - 1, 0)
    if isinstance(exc, WaitForTwin):
        return Failure(Outcome.WAIT, str(exc), TWIN_WAIT_SECONDS)
    if isinstance(exc, StopRequested):
        return Failure(Outcome.RELEASE, one_line(exc))
    if isinstance(exc, TransientError):
        return Failure(Outcome.RETRY, one_line(exc), exc.delay if exc.delay is not None else backoff)
    if isinstance(exc, (PermanentError, ConfigError, StepError)):
        message = one_line(exc)
        return Failure(Outcome.FAIL, message if message.startswith(shown) else f"{shown}: {message}")
    if isinstance(exc, OSError):  # disk full, output folder not writable, share gone: worth retrying
        return Failure(Outcome.RETRY, one_line(f"{shown}: {exc.strerror or exc}: {printable(exc.filename or '')}"),
                       backoff)
    return Failure(Outcome.BUG, one_line(f"{shown}: internal error: {type(exc).__name__}: {exc}"), exc=exc)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def one_line(text: str) -> str:
    """Errors are stored and notified as one line."""
    return " ".join(str(text).split())


def review_reasons(assets: Iterable[Asset]) -> list[str]:
    """The review reasons of the written assets, one line each, each once, in order of first appearance."""
    reasons = (one_line(r) for asset in assets for r in asset.review)
    return list(dict.fromkeys(r for r in reasons if r))


class Worker:
    """Runs jobs one at a time. One per thread; each has its own stages and model cache."""

    def __init__(self, name: str, config: Config, store: Store, rules: list[Rule], *,
                 stop: threading.Event | None = None, on_failed: Callable[[Job, str], None] | None = None):
        self.name = name
        self.owner = owner_label(name)  # what its claims record: "worker-1 pid 1234 on host"
        self.config = config
        self.store = store
        self.rules = {r.name: r for r in rules}
        self.stop = stop or threading.Event()
        self.on_failed = on_failed
        self.ctx = StageContext(config=config, stop=self.stop)
        self._chains: dict[str, Chain] = {}
        # codec work (read + decode of the next job, encodes of this one's outputs) runs here
        self._pool = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2)),
                                        thread_name_prefix=f"assetd-{name}-codec")

    # -- the loop -----------------------------------------------------------------------------
    def run_forever(self, idle_max: float = 1.0) -> None:
        """Claim and run jobs until ``stop`` is set; sleeps with capped back-off when idle.

        While one job runs its chain, the next one is already claimed and read + decoded on a
        background thread, so the GPU (or the CPU stages) never wait for the codec.
        """
        idle = 0.05
        ahead: tuple[Job, Future] | None = None
        while not self.stop.is_set():
            try:
                if ahead is None:
                    job = self.store.claim_next(self.owner, self.config.lease_seconds)
                    loaded = self._pool.submit(self._load, job) if job is not None else None
                else:
                    (job, loaded), ahead = ahead, None
                if job is None:
                    self._release_idle_models()
                    self.stop.wait(idle)
                    idle = min(idle * 2, idle_max)
                    continue
                idle = 0.05
                following = self.store.claim_next(self.owner, self.config.lease_seconds)
                if following is not None:
                    ahead = (following, self._pool.submit(self._load, following))
                self.process(job, loaded)
            except Exception:  # the loop must survive anything (a broken database file, a bug)
                log.exception("%s: unexpected error in the worker loop", self.name)
                self.stop.wait(idle_max)
        if ahead is not None:  # claimed but not started: back to the queue untouched
            ahead[1].cancel()
            self.store.release(ahead[0].id, owner=self.owner)
        self.close()

    def run_next(self, only: list[int] | None = None) -> JobResult | None:
        job = self.store.claim_next(self.owner, self.config.lease_seconds, only=only)
        if job is None:
            return None
        return self.process(job)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        models = self.ctx.models
        if models is not None and hasattr(models, "close"):
            models.close()

    def _release_idle_models(self) -> None:
        models = self.ctx.models
        if models is not None and hasattr(models, "release_idle"):
            models.release_idle()

    # -- one job ------------------------------------------------------------------------------
    def chain_for(self, rule: Rule) -> Chain:
        chain = self._chains.get(rule.name)
        if chain is None or chain.rule.version != rule.version:
            chain = self._chains[rule.name] = Chain(rule, self.ctx)
        return chain

    def process(self, job: Job, loaded: Future | None = None) -> JobResult:
        """Run a claimed job to its end state and record it; never raises for a job's own failure.

        ``loaded`` is the job's input already being read and decoded (see ``run_forever``)."""
        started = time.perf_counter()
        result = JobResult(job_id=job.id, input=job.input_path, rule=job.rule, status=JobStatus.RUNNING)
        try:
            result.outputs, manifests, result.review, result.copied_from = self._execute(job, loaded)
        except Exception as exc:  # noqa: BLE001 - every failure is classified, recorded and reported below
            return self._settle_failure(job, classify(exc, job, self.config), result)
        result.seconds = time.perf_counter() - started
        self.store.finish(job.id, result.outputs + manifests, result.seconds, result.review, result.copied_from)
        result.status = JobStatus.DONE
        how = f"copied from job {result.copied_from}" if result.copied_from else f"done in {result.seconds:.2f}s"
        log.info("%s: job %d %s: %s → %s", self.name, job.id, how, printable(job.input_path),
                 plural(len(result.outputs), "output"))
        if result.review:
            log.warning("%s: job %d needs review: %s: %s", self.name, job.id, printable(job.input_path),
                        "; ".join(result.review))
        return result

    def _settle_failure(self, job: Job, failure: "Failure", result: JobResult) -> JobResult:
        """The one tail for a job that did not finish: record the outcome, log it, report a failure."""
        if failure.outcome is Outcome.WAIT:
            self.store.postpone(job.id, failure.delay, failure.message)
            log.info("%s: job %d %s", self.name, job.id, failure.message)
            result.status = JobStatus.QUEUED
        elif failure.outcome is Outcome.RELEASE:
            self.store.release(job.id, owner=self.owner)
            log.info("%s: job %d interrupted by stop; it will be redone", self.name, job.id)
            result.status = JobStatus.QUEUED
        elif failure.outcome is Outcome.RETRY:
            result.status, result.error = self.store.retry_later(job.id, failure.message, failure.delay), failure.message
            if result.status is JobStatus.QUEUED:
                log.warning("%s: job %d will retry in %.0fs: %s", self.name, job.id, failure.delay, failure.message)
            else:  # out of attempts: the store's record says so ("gave up after N attempts")
                stored = self.store.get(job.id)
                self._report_failure(job, stored.error if stored and stored.error else failure.message)
        else:
            if failure.outcome is Outcome.BUG:
                log.error("%s: job %d crashed", self.name, job.id, exc_info=failure.exc)
            self.store.fail(job.id, failure.message)
            result.status, result.error = JobStatus.FAILED, failure.message
            self._report_failure(job, failure.message)
        return result

    def _report_failure(self, job: Job, message: str) -> None:
        log.error("%s: job %d failed: %s", self.name, job.id, message)
        if self.on_failed:
            self.on_failed(job, message)

    def _load(self, job: Job) -> Decoded:
        """Read and decode a job's input, checking it is still the content that was queued."""
        path = Path(job.input_path)
        data = read_input(path)
        if job.readable and sha256(data) != job.input_hash:
            raise PermanentError(f"{printable(str(path))}: content changed after it was queued; the new version is queued "
                                 "as its own job")
        return decode(data, str(path), self.config.input)

    def _execute(self, job: Job, loaded: Future | None
                 ) -> tuple[list[OutputRecord], list[OutputRecord], list[str], int | None]:
        """Run the job; returns (outputs, manifests, review reasons of the outputs, the twin copied or None)."""
        rule = self.rules.get(job.rule)
        if rule is None:
            raise PermanentError(f"rule {job.rule!r} no longer exists")
        if rule.version != job.rule_version:
            raise PermanentError(f"rule {job.rule!r} changed since this job was queued "
                                 f"(version {job.rule_version} → {rule.version}); drop the file again or "
                                 "restart the daemon to requeue it")
        twin = self.store.twin(job)
        if twin is not None and twin.status is not JobStatus.DONE:
            raise WaitForTwin(twin)
        if twin is not None:
            copied = self._copy_from_twin(job, rule, twin)
            if copied is not None:
                return copied
        decoded = loaded.result() if loaded is not None else self._load(job)
        self.store.heartbeat(job.id, self.config.lease_seconds)
        asset = Asset(pixels=decoded.pixels, notes={"input": dict(decoded.notes, format=decoded.format)})

        def on_step(stage: Any, seconds: float) -> None:
            self.store.record_step(job.id, job.attempts, stage.step, stage.backend, seconds)
            self.store.heartbeat(job.id, self.config.lease_seconds)

        results = self.chain_for(rule).run(asset, on_step=on_step)
        if self.stop.is_set():
            raise StopRequested("stopping before writing outputs")
        return (*self._write_outputs(job, rule, results, decoded), None)

    def _output_name(self, job: Job, rule: Rule, channel: Any, step: str, ratio: str | None) -> str:
        return output_name(channel, stem=safe_stem(Path(job.input_path).stem), rel_path=job.rel_path, ratio=ratio,
                           step=step, rule=rule.name, hash8=job.short_hash)

    def _place(self, job: Job, rule: Rule, channel: Any, step: str, ratio: str | None, data: bytes,
               used: set[Path], placed: dict[Path, list[tuple[str, Path]]]) -> Path:
        """Write one output: named from the channel's template, reserved in the store, written atomically."""
        name = self._output_name(job, rule, channel, step, ratio)
        target = self._free_path(channel.path, name, job, used)
        self.store.reserve_output(job.id, str(target), channel.name, step)
        atomic_write(target, data)
        used.add(target)
        placed.setdefault(channel.path, []).append((name, target))
        return target

    def _copy_from_twin(self, job: Job, rule: Rule, twin: Job
                        ) -> tuple[list[OutputRecord], list[OutputRecord], list[str], int] | None:
        """Write the done twin's outputs under this job's names; None (run the chain) when they are not all
        there as recorded (deleted, edited, or replaced by a later job)."""
        sources = self.store.outputs(twin.id)
        found: list[tuple[OutputRecord, bytes]] = []
        for record in sources:
            try:
                data = Path(record.path).read_bytes() if record.replaced_by is None else b""
            except FileNotFoundError:
                data = b""
            if sha256(data) != record.sha256 or record.channel not in self.config.channels:
                log.info("%s: job %d: the outputs of job %d (same content) are not all there as recorded; "
                         "running the chain", self.name, job.id, twin.id)
                return None
            found.append((record, data))
        if not found:
            return None
        twin_notes = self._manifest_notes(twin)
        records: list[OutputRecord] = []
        notes: list[dict[str, Any]] = []
        used: set[Path] = set()
        placed: dict[Path, list[tuple[str, Path]]] = {}
        for record, data in found:
            channel = self.config.channels[record.channel]
            target = self._place(job, rule, channel, record.step, record.ratio, data, used, placed)
            records.append(OutputRecord(**dict(record.as_dict(), path=str(target), replaced_by=None)))
            notes.append(twin_notes.get(record.path, {}))
        manifests = self._write_manifests(job, rule, records, notes, twin.review, used, placed, copied_from=twin)
        return records, manifests, list(twin.review), twin.id

    def _manifest_notes(self, job: Job) -> dict[str, dict[str, Any]]:
        """Each output's step notes from a job's manifest (by output path); empty when it cannot be read."""
        for record in self.store.outputs(job.id, manifests=True):
            if record.step != "manifest":
                continue
            try:
                doc = json.loads(Path(record.path).read_text(encoding="utf-8"))
                return {o["path"]: o.get("steps", {}) for o in doc.get("outputs", [])}
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue
        return {}

    def _write_outputs(self, job: Job, rule: Rule, results: dict[str, list[Asset]],
                       decoded: Any) -> tuple[list[OutputRecord], list[OutputRecord], list[str]]:
        records: list[OutputRecord] = []
        used: set[Path] = set()
        placed: dict[Path, list[tuple[str, Path]]] = {}
        started = time.perf_counter()
        work = []
        notes: list[dict[str, Any]] = []
        for spec in rule.outputs:
            channel = self.config.channels[spec.channel]
            for asset in results.get(spec.source, []):
                if spec.ratios is None or asset.ratio in spec.ratios:
                    work.append((spec, channel, asset, self._pool.submit(self._render, asset, channel, decoded)))
        for spec, channel, asset, future in work:
            pixels_shape, data = future.result()
            target = self._place(job, rule, channel, spec.source, asset.ratio, data, used, placed)
            height, width = pixels_shape[:2]
            records.append(OutputRecord(
                channel=channel.name, path=str(target), step=spec.source, ratio=asset.ratio,
                width=int(width), height=int(height), bytes=len(data), sha256=sha256(data),
                scale=round(asset.scale * width / asset.width, 4)))
            notes.append(asset.notes)
        review = review_reasons(asset for _, _, asset, _ in work)
        self.store.record_step(job.id, job.attempts, "outputs", "encode", time.perf_counter() - started)
        return records, self._write_manifests(job, rule, records, notes, review, used, placed), review

    def _write_manifests(self, job: Job, rule: Rule, records: list[OutputRecord], notes: list[dict[str, Any]],
                         review: list[str], used: set[Path], placed: dict[Path, list[tuple[str, Path]]],
                         copied_from: Job | None = None) -> list[OutputRecord]:
        """The job's manifest in ``manifests.folder``/<rule>/, and with ``manifests.beside_outputs`` in each
        channel folder it wrote to, named like the outputs there (a clash suffix included)."""
        stem = safe_stem(Path(job.input_path).stem)
        manifest: dict[str, Any] = {
            "input": job.input_path, "input_sha256": job.input_hash, "rule": rule.name,
            "rule_version": rule.version, "job": job.id, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "outputs": [dict(r.as_dict(), steps=n) for r, n in zip(records, notes)],
            "review": review,
        }
        if copied_from is not None:
            manifest["copied_from"] = {"job": copied_from.id, "input": copied_from.input_path}
        body = (json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n").encode()
        names = [(self.config.manifest_folder / rule.name, stem)]
        if self.config.manifests.beside_outputs:
            slug = {c.path for c in self.config.channels.values() if c.web_safe_names}
            names += [(folder, (web_safe(stem) or "image" if folder in slug else stem) + _clash_suffix(written))
                      for folder, written in sorted(placed.items())]
        manifests: list[OutputRecord] = []
        for folder, name in names:
            target = self._free_path(folder, name + MANIFEST_SUFFIX, job, used)
            self.store.reserve_output(job.id, str(target), "", "manifest")
            atomic_write(target, body)
            used.add(target)
            manifests.append(OutputRecord(channel="", path=str(target), step="manifest", ratio=None, width=0,
                                          height=0, bytes=len(body), sha256=sha256(body)))
        return manifests

    @staticmethod
    def _render(asset: Asset, channel: Any, decoded: Decoded) -> tuple[tuple[int, ...], bytes]:
        pixels = render_for_channel(asset, channel)
        return pixels.shape, encode(pixels, channel, decoded)

    def _free_path(self, folder: Path, name: str, job: Job, used: set[Path]) -> Path:
        """The output path. A file from another input, or one assetd did not write, is never overwritten:
        the name gets the input's short hash instead. The same input's earlier outputs are replaced."""
        target = inside(folder, name)
        if name.endswith(MANIFEST_SUFFIX):
            stem, dot, ext = name[: -len(MANIFEST_SUFFIX)], ".", MANIFEST_SUFFIX[1:]
        else:
            stem, dot, ext = name.rpartition(".")
        short = job.short_hash
        n = 1
        while True:
            if target not in used:
                owner = self.store.output_owner(str(target))
                ours = owner is not None and (owner["input_hash"] == job.input_hash
                                              or owner["input_path"] == job.input_path)
                if ours or (owner is None and not target.exists()):
                    return target
            n += 1
            target = inside(folder, f"{stem}-{short}{dot}{ext}" if n == 2 else f"{stem}-{short}-{n - 1}{dot}{ext}")


def _clash_suffix(written: list[tuple[str, Path]]) -> str:
    """The suffix ``_free_path`` added to the outputs of one folder (``-1a2b3c4d``), or ""."""
    for name, target in written:
        wanted, got = name.rsplit(".", 1)[0], target.name.rsplit(".", 1)[0]
        if got != wanted and got.startswith(wanted):
            return got[len(wanted):]
    return ""
