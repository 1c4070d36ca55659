"""The worker owns the chain: claim a job, read and decode the input, run the rule's stages,
write every output atomically, record the result. Retries are exceptions (huey's way):
``TransientError`` → back to the queue with back-off; ``PermanentError`` → failed at once.

A job whose content a *twin* job (same content, rule version, another input name) already
finished does not run the chain: the twin's outputs are copied under this input's names.
Each job's manifest goes to ``manifests.folder`` (and beside the outputs when configured).

A *problem process* (a full disk, the GPU, a model that no longer loads: ``pipeline.health``) is not the
job's fault: the job goes back to the queue uncharged and the problem pauses what it covers; the worker
never claims a paused job.

A copy that pauses longer than ``settle_seconds`` is taken half-written. In the daemon, an input whose data
stops before the image does (``IncompleteInput``) and that changed within ``arrival_window`` is taken to be
still arriving: its job waits (uncharged) instead of failing; when the file has changed by the next try, the
job is *superseded* (the new version is queued as its own job and owns the file). Unchanged for the whole
window, it fails as damaged.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from . import faults, previews
from .chain import Chains, ModelLoadError, StepError, StepUse, input_asset
from .config import Config
from .errors import (AssetdError, ConfigError, IncompleteInput, NotHeld, PermanentError, ProcessProblem,
                     StopRequested, TransientError)
from .health import Problems, claim_filters, gpu_trouble, is_disk_full, is_mount, model_rules
from .imageio import Decoded, decode, read_input
from .inboxflow import after_job
from .intake import inbox_of, mask_digest, mask_hashes
from .outputs import Publisher, one_line, sha256
from .owners import HOST, owner_label
from .rerun import retire_replaced
from .rules import Rule
from .stages.base import StageContext
from .stages.masks import masks_beside
from .store import FINISHED, PENDING_APPROVAL, Job, JobStatus, ManifestRecord, OutputRecord, Store
from .text import plural, printable

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
ARRIVAL_WINDOW_SECONDS = 60.0  # the least time an input cut short must be left unchanged to count as damaged


def arrival_window(settle_seconds: float) -> float:
    """How long after its last change an input whose data stops early may still be a copy arriving:
    60 s, or 10 × its inbox's ``settle_seconds`` when that is longer (a share slow enough to need a long settle)."""
    return max(ARRIVAL_WINDOW_SECONDS, 10 * settle_seconds)


ARRIVING = "may still be arriving"  # in a waiting job's note (its error) while the input may still be copied


class StillArriving(Exception):
    """The input's data stops before its image does and it changed recently: a copy that paused longer than
    ``settle_seconds``. The job waits ``delay`` seconds, uncharged."""

    def __init__(self, message: str, delay: float):
        super().__init__(message)
        self.delay = delay


class Superseded(Exception):
    """The input's content changed after its job was queued: the new version is queued as its own job and owns
    the file; this job ends, neither failed nor moved."""


class Outcome(Enum):
    WAIT = "wait"  # a twin with the same content is unfinished: back to the queue, attempt not charged
    ARRIVING = "arriving"  # the input may still be arriving: back to the queue after a delay, not charged
    SUPERSEDED = "superseded"  # a newer version of the input has its own job: this one ends, not failed
    RELEASE = "release"  # asked to stop: back to the queue, attempt not charged
    RETRY = "retry"  # transient: back to the queue after a delay, or failed once out of attempts
    FAIL = "fail"  # permanent: failed at once
    BUG = "bug"  # an unexpected exception: failed at once, logged with its traceback
    PAUSE = "pause"  # a problem process (health): back to the queue uncharged, the problem pauses its scope


@dataclass
class Failure:
    outcome: Outcome
    message: str  # one line, naming the input
    delay: float = 0.0
    exc: BaseException | None = None
    problem: ProcessProblem | None = None  # PAUSE: the problem to start (Problems.start)


def backoff(job: Job, config: Config) -> float:
    """The delay before a transient failure's retry: ``retry_delay_seconds``, doubling with each attempt."""
    return config.retry_delay_seconds * 2 ** max(job.attempts - 1, 0)


def classify(exc: BaseException, job: Job, config: Config, problems: Problems | None = None) -> Failure:
    """What an exception from a job means (huey's way): its outcome, its one-line message and its delay.

    With ``problems`` (the daemon's), a problem of the process is a PAUSE: a ``ProcessProblem``; a write
    refused for want of space (ENOSPC, EDQUOT, SQLite's "database or disk is full"); CUDA out of memory on
    ``problems.gpu_oom_limit`` jobs in a row (fewer: a RETRY, as a single one always was); a lost GPU; a
    stage's model that does not load. Without (``assetd process``, tests), each is what it was before."""
    shown = printable(job.input_path)
    delay = backoff(job, config)
    if isinstance(exc, WaitForTwin):
        return Failure(Outcome.WAIT, str(exc), TWIN_WAIT_SECONDS)
    if isinstance(exc, StillArriving):
        return Failure(Outcome.ARRIVING, one_line(exc), exc.delay)
    if isinstance(exc, Superseded):
        return Failure(Outcome.SUPERSEDED, one_line(exc))
    if isinstance(exc, StopRequested):
        return Failure(Outcome.RELEASE, one_line(exc), exc=exc)
    if isinstance(exc, ProcessProblem):
        return Failure(Outcome.PAUSE, one_line(exc.message), problem=exc)
    if isinstance(exc, ModelLoadError):
        if problems is None:
            return classify(exc.__cause__ or exc, job, config)
        problem = problems.model_problem(job, exc.step, exc.backend, exc)
        return Failure(Outcome.PAUSE, one_line(problem.message), problem=problem)
    if problems is not None and is_disk_full(exc):
        problem = problems.disk_problem(job, exc)
        return Failure(Outcome.PAUSE, one_line(problem.message), problem=problem)
    trouble = gpu_trouble(exc)
    if trouble is not None:
        in_a_row = problems.gpu_oom() if problems is not None and trouble == "oom" else 0
        if problems is not None and (trouble == "lost" or in_a_row >= config.problems.gpu_oom_limit):
            problem = problems.gpu_problem(job, exc, lost=trouble == "lost")
            return Failure(Outcome.PAUSE, one_line(problem.message), problem=problem)
        if not isinstance(exc, TransientError):  # a stage's own CUDA error, not through gpu_errors: retry too
            exc = TransientError(f"{one_line(exc)}; will retry")
    if isinstance(exc, TransientError):
        return Failure(Outcome.RETRY, one_line(exc), exc.delay if exc.delay is not None else delay)
    if isinstance(exc, (PermanentError, ConfigError, StepError)):
        message = one_line(exc)
        return Failure(Outcome.FAIL, message if message.startswith(shown) else f"{shown}: {message}")
    if isinstance(exc, OSError):  # disk full, output folder not writable, share gone: worth retrying
        name = f": {printable(os.fsdecode(exc.filename))}" if exc.filename else ""
        return Failure(Outcome.RETRY, one_line(f"{shown}: {exc.strerror or exc}{name}"), delay)
    return Failure(Outcome.BUG, one_line(f"{shown}: internal error: {type(exc).__name__}: {exc}"), exc=exc)


def end_failed(config: Config, store: Store, outputs: Publisher, job_ids: list[int],
               report: Callable[[Job, str], None]) -> None:
    """Jobs that recovery failed for good (assetd, or the process holding them, died on their last attempt or at
    their last allowed crash: ``Store.recover``, ``Store.reap_expired``): what they had published is withdrawn
    first, so their record, the ``report`` (log and alert) and the ``.error.txt`` say so; then each goes to its
    inbox's ``after``."""
    if not job_ids:
        return
    outputs.withdraw_failed()
    for job in filter(None, map(store.get, job_ids)):
        report(job, job.error or "")
        after_job(config, store, job, JobStatus.FAILED, job.error)


REAP_SECONDS = 5.0  # how often a daemon's worker takes back the jobs of a process that died (``Worker._reap``)


class LeaseKeeper:
    """Keeps the lease of the job a worker runs alive, from its own thread, however long one step takes (a model
    on the CPU, a huge RAW): a lease that ran out would let another worker take the job back and run it a second
    time. The job claimed ahead is renewed with it (``owner``'s claims): it waits as long as the running one takes.
    Leases still expire for a worker that died, which is what they are for. One thread per worker, started
    with its first job (one connection to the store, not one per job)."""

    def __init__(self, store: Store, name: str, owner: str | None = None):
        self.store = store
        self.name = name
        self.owner = owner
        self._job: tuple[int, float] | None = None  # (job id, lease seconds) while a job runs
        self._changed = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def kept(self, job_id: int, lease_seconds: float) -> Iterator[None]:
        with self._changed:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._job = (job_id, lease_seconds)
            self._changed.notify()
        try:
            yield
        finally:
            with self._changed:
                self._job = None
                self._changed.notify()

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify()
        if self._thread is not None:
            self._thread.join(5.0)

    def _run(self) -> None:
        while True:
            with self._changed:
                while self._job is None and not self._stopped:
                    self._changed.wait()
                if self._stopped:
                    return
                job_id, lease = self._job  # type: ignore[misc]
                self._changed.wait(max(lease / 3, 0.05))
                if self._stopped or self._job != (job_id, lease):
                    continue
            try:
                self.store.heartbeat(job_id, lease, self.owner)
            except Exception as exc:  # noqa: BLE001 - a full or locked database: the next beat tries again
                log.debug("%s: could not renew the lease of job %d: %s", self.name, job_id, exc)


class Worker:
    """Runs jobs one at a time. One per thread; each has its own stages and model cache."""

    def __init__(self, name: str, config: Config, store: Store, rules: list[Rule], *,
                 stop: threading.Event | None = None, on_failed: Callable[[Job, str], None] | None = None,
                 problems: Problems | None = None, wait_for_arrival: bool = False,
                 on_done: Callable[[Job], None] | None = None):
        """``problems``: the daemon's problem processes (None: nothing pauses; a PAUSE is a RETRY).
        ``on_done``: told of each job that ended done (the daemon's preview thread); it must return at once.
        ``wait_for_arrival``: an input cut short that changed recently waits (the daemon, whose watcher queues
        the rest of the copy); without, it fails as damaged at once (``assetd process``)."""
        self.name = name
        self.owner = owner_label(name)  # what its claims record: "worker-1 pid 1234 on host"
        self.label = f"{name} on {HOST}"  # where its chain runs (``jobs.ran_on``)
        self.ran_on: str | None = None  # where the job's chain ran (set by ``_run_chain``; kept on failure too)
        self.config = config
        self.store = store
        self.rules = {r.name: r for r in rules}
        self.stop = stop or threading.Event()
        self.on_failed = on_failed
        self.on_done = on_done
        self.problems = problems
        self.wait_for_arrival = wait_for_arrival
        self._model_rules = model_rules(rules) if problems is not None else set()
        self.ctx = StageContext(config=config, stop=self.stop)
        self.chains = Chains(self.ctx)
        self._update: tuple[Config, list[Rule]] | None = None
        self._update_lock = threading.Lock()
        self.retired = False  # a reload lowered ``workers``: this one stops after its current job
        # codec work (read + decode of the next job, encodes of this one's outputs) runs here
        self._pool = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2)),
                                        thread_name_prefix=f"assetd-{name}-codec")
        self.outputs = Publisher(name, config, store, self._pool)
        self._unreleased: dict[int, str] = {}  # jobs to put back in the queue once the database takes writes again
        self._mattes: list[Future] = []  # mattes being kept for the review page (``_keep_matte``)
        self._lease = LeaseKeeper(store, f"assetd-{name}-lease", self.owner)
        self._reaped_at = -REAP_SECONDS  # the first claim reaps (``_reap``)

    # -- the loop -----------------------------------------------------------------------------
    def run_forever(self, idle_max: float = 1.0) -> None:
        """Claim and run jobs until ``stop`` is set; sleeps with capped back-off when idle.

        While one job runs its chain, the next one is already claimed and read + decoded on a
        background thread, so the GPU (or the CPU stages) never wait for the codec. That one is claimed
        *ahead*: its attempt is charged (``Store.begin``) only when it becomes the one running, so when
        assetd dies, the job read ahead goes back to the queue untouched, unless its decode was going then
        (``_read_ahead``: a codec can kill the process too, and recovery judges that case). A job claimed with
        nothing in hand runs at once (its own decode included).
        """
        idle = 0.05
        ahead: tuple[Job, Future] | None = None
        try:
            self.outputs.withdraw_failed()  # a job assetd failed for good at start (quarantined) may have some
        except Exception:
            log.exception("%s: could not withdraw the outputs of jobs failed for good", self.name)
        while not self.stop.is_set():
            try:
                if self.take_update():  # a reload retired this worker
                    break
                if self._unreleased and not self._put_back():  # the database is still full: claim nothing
                    self.stop.wait(idle_max)
                    continue
                self._reap()
                if ahead is None:
                    job = self.store.claim_next(self.owner, self.config.lease_seconds, **claim_filters(self.problems))
                    loaded = self._pool.submit(self._load, job) if job is not None else None
                else:
                    (job, loaded), ahead = ahead, None
                if job is None:
                    self._record_model_loads()  # those of the start-up check, before any job ran
                    self._release_idle_models()
                    self.outputs.withdraw_failed()
                    self.stop.wait(idle)
                    idle = min(idle * 2, idle_max)
                    continue
                idle = 0.05
                following = self.store.claim_next(self.owner, self.config.lease_seconds, ahead=True,
                                                  **claim_filters(self.problems))
                if following is not None:
                    ahead = (following, self._read_ahead(following))
                self.process(job, loaded)
            except Exception:  # the loop must survive anything (a broken database file, a bug)
                log.exception("%s: unexpected error in the worker loop", self.name)
                self.stop.wait(idle_max)
        if ahead is not None:  # claimed but not started: back to the queue untouched
            ahead[1].cancel()
            self.store.release(ahead[0].id, owner=self.owner)
        self.close()

    def _read_ahead(self, job: Job) -> Future:
        """Read and decode ``job``, claimed ahead, on the codec pool. The claim marked its decode as going
        (``jobs.reading_since``); once it ends (decoded, failed or cancelled) the store hears of it, so a death of
        the process after that is not put down to this file's decoder (``Store._reap_expired``)."""
        loaded = self._pool.submit(self._load, job)
        loaded.add_done_callback(lambda _: self._read_ahead_done(job.id))
        return loaded

    def _read_ahead_done(self, job_id: int) -> None:
        try:
            self.store.read_ahead_done(job_id, self.owner)
        except Exception as exc:  # noqa: BLE001 - a full or locked database: begin, release or recovery clears it
            log.debug("%s: job %d: could not record that its decode ahead ended: %s", self.name, job_id, exc)

    def _reap(self) -> None:
        """Every ``REAP_SECONDS``: jobs whose lease ran out (their process died while this daemon runs) go back to
        the queue, and one failed for good by it (quarantined, out of attempts) is logged, alerted, handed to its
        inbox's ``after`` and has what it published withdrawn, as at a start."""
        now = time.monotonic()
        if now - self._reaped_at < REAP_SECONDS:
            return
        self._reaped_at = now
        found = self.store.reap_expired()
        if found.started or found.shared:
            log.warning("%s: job(s) %s were held by an assetd that stopped (their lease ran out); queued again or "
                        "failed as at a start", self.name, ", ".join(map(str, found.ids)))
        end_failed(self.config, self.store, self.outputs, found.failed, self._report_failure)

    # -- hot reload (pipeline/reload.py) ---------------------------------------------------------
    def offer(self, config: Config, rules: list[Rule], *, retire: bool = False) -> None:
        """The daemon reloaded its config and rules (any thread): new claims use them from the next job on;
        ``retire``: stop after the current job (the claimed-ahead one goes back to the queue untouched)."""
        with self._update_lock:
            self._update = (config, rules)
            self.retired = self.retired or retire

    def take_update(self) -> bool:
        """Between jobs: take the config and rules ``offer`` gave. True when this worker is to stop."""
        with self._update_lock:
            update, self._update = self._update, None
        if update is not None:
            config, rules = update
            self.rules = {r.name: r for r in rules}
            self._model_rules = model_rules(rules) if self.problems is not None else set()
            self._use(config)
        return self.retired

    def _use(self, config: Config) -> None:
        self.config = self.ctx.config = self.outputs.config = config

    def _adopt(self, job: Job, rule: Rule) -> None:
        """A job queued under an earlier version of its rule (``assetd retry`` of an old job, a job claimed ahead
        of a reload) runs under the current one, as queued jobs do at a start or a reload: nothing of this run
        was published yet. Unless a job for the same file under the current version exists: that one is the
        job to run (or retry)."""
        if not self.store.adopt_version(job.id, rule.version, owner=self.owner):
            twin = self.store.job_for(job, rule.version)
            raise PermanentError(f"rule {job.rule!r} changed since this job was queued (version {job.rule_version} "
                                 f"→ {rule.version}) and job {twin.id if twin else '?'} already has this file under "
                                 f"the current version: retry that one")
        log.info("%s: job %d runs under the current version of rule %r (%s → %s)", self.name, job.id, job.rule,
                 job.rule_version, rule.version)
        job.rule_version = rule.version

    def _put_back(self) -> bool:
        """Release the jobs a full database kept us from putting back (uncharged); False while it still refuses."""
        for job_id, note in list(self._unreleased.items()):
            try:
                self.store.release(job_id, owner=self.owner, note=note)
            except sqlite3.Error:
                return False
            del self._unreleased[job_id]
        return True

    def run_next(self, only: list[int] | None = None) -> JobResult | None:
        self._reap()
        job = self.store.claim_next(self.owner, self.config.lease_seconds, only=only, **claim_filters(self.problems))
        if job is None:
            return None
        return self.process(job)

    def close(self) -> None:
        self._lease.stop()
        wait(self._mattes, timeout=10.0)  # queued behind a read ahead, they would be cancelled with it
        self._pool.shutdown(wait=True, cancel_futures=True)
        models = self.ctx.models
        if models is not None and hasattr(models, "close"):
            models.close()

    def _record_model_loads(self) -> None:
        """Put the models this worker's manager loaded (at start too) in the store, for ``/metrics``."""
        take = getattr(self.ctx.models, "take_loads", None)
        for load in take() if take is not None else ():
            self.store.record_model_load(load.backend, load.model, load.device, load.seconds, load.at)

    def _release_idle_models(self) -> None:
        models = self.ctx.models
        if models is not None and hasattr(models, "release_idle"):
            models.release_idle()

    # -- one job ------------------------------------------------------------------------------
    def process(self, job: Job, loaded: Future | None = None, *, own_chain: bool = False) -> JobResult:
        """Run a claimed job (``_run_job``); one that ended for good (done, or failed for good) then hands its
        input to its inbox's ``after`` option (``inboxflow.after_job``: kept, or moved to done/ or error/).

        ``own_chain`` (``assetd process --force``): run the chain even when a twin's outputs could be copied; the
        user asked for the work to be done again, not for a copy of an earlier result.

        A superseded job hands the input to the job of its new version when that one has ended already (it left
        the file in the inbox while this job still read it); else that job moves it when it ends."""
        result = self._run_job(job, loaded, own_chain=own_chain)
        if result.status in FINISHED:
            stored = self.store.get(job.id) if result.status is JobStatus.FAILED else None
            # the error as recorded: withdrawing what it published adds to it ("removed the 1 file ...")
            after_job(self.config, self.store, job, result.status, stored.error if stored else result.error)
        elif result.status is JobStatus.SUPERSEDED:
            owner = self.store.last_ended(job.input_path)
            if owner is not None:
                after_job(self.config, self.store, owner, owner.status, owner.error)
        return result

    def _run_job(self, job: Job, loaded: Future | None = None, *, own_chain: bool = False) -> JobResult:
        """Run a claimed job to its end state and record it; never raises for a job's own failure.

        ``loaded`` is the job's input already being read and decoded (see ``run_forever``)."""
        started = time.perf_counter()
        self.ran_on = None  # set once this job's chain runs: a failure before that names no place
        result = JobResult(job_id=job.id, input=job.input_path, rule=job.rule, status=JobStatus.RUNNING)
        try:
            with self._lease.kept(job.id, self.config.lease_seconds):
                result.outputs, manifests, result.review, result.copied_from = self._execute(job, loaded, own_chain)
            result.seconds = time.perf_counter() - started
            self.store.finish(job.id, result.outputs, result.seconds, result.review, result.copied_from, manifests,
                              ran_on=None if result.copied_from else self.ran_on)
        except Exception as exc:  # noqa: BLE001 - every failure is classified, recorded and reported below
            result = self._settle_failure(job, classify(exc, job, self.config, self.problems), result)
            if result.status is JobStatus.FAILED:  # for good: what an earlier try published goes
                self.outputs.withdraw_failed()
            return result
        if self.problems is not None and result.copied_from is None:
            self.problems.job_done(job, model=job.rule in self._model_rules)
        result.status = JobStatus.DONE
        if job.rerun_of is not None:
            self._retire_replaced(job, result.outputs)
        if self.on_done is not None:
            try:
                self.on_done(job)
            except Exception:  # noqa: BLE001 - the job is done whatever its listener does
                log.exception("%s: job %d: could not hand it to the preview thread", self.name, job.id)
        how = f"copied from job {result.copied_from}" if result.copied_from else f"done in {result.seconds:.2f}s"
        log.info("%s: job %d %s: %s → %s", self.name, job.id, how, printable(job.input_path),
                 _outputs_said(result.outputs))
        if result.review:
            log.warning("%s: job %d needs review: %s: %s", self.name, job.id, printable(job.input_path),
                        "; ".join(result.review))
        return result

    def _retire_replaced(self, job: Job, outputs: list[OutputRecord]) -> None:
        """A re-run finished: its outputs in at-once channels are published, so the jobs it replaces lose theirs
        there (``rerun.retire_replaced``); those awaiting approval replace theirs when approved. Never fails the
        job (it is done): a problem is logged."""
        at_once = {o.channel for o in outputs if o.channel in self.config.channels
                   and self.config.channels[o.channel].publish == "at_once"}
        try:
            for line in retire_replaced(self.config, self.store, job, at_once):
                log.info("%s: job %d: %s", self.name, job.id, line)
        except Exception:  # noqa: BLE001 - the re-run is done; what is left of the first job stays
            log.exception("%s: job %d: could not remove the outputs it replaces", self.name, job.id)

    def _settle_failure(self, job: Job, failure: "Failure", result: JobResult) -> JobResult:
        """The one tail for a job that did not finish: record the outcome, log it, report a failure."""
        if failure.outcome is Outcome.PAUSE and (self.problems is None or failure.problem is None
                                                 or not failure.problem.scope.covers(job.rule, job.input_path)):
            # nothing to pause (assetd process), or a problem that would not hold this job back: retried as
            # before, never handed back uncharged to be claimed again at once
            failure = Failure(Outcome.RETRY, failure.message, backoff(job, self.config))
        if failure.outcome is Outcome.PAUSE:
            self.problems.start_problem(failure.problem)  # type: ignore[union-attr]
            note = f"waiting: {failure.message}"
            try:
                self.store.release(job.id, owner=self.owner, note=note)
            except sqlite3.Error as exc:  # the database's disk is full: put back (uncharged) once it takes writes
                log.warning("%s: job %d is put back in the queue once the database takes writes again (%s)",
                            self.name, job.id, exc)
                self._unreleased[job.id] = note
            log.info("%s: job %d waits (not charged): %s", self.name, job.id, printable(job.input_path))
            result.status = JobStatus.QUEUED
        elif failure.outcome is Outcome.ARRIVING:
            first = ARRIVING not in (job.error or "")  # said once; its later waits at debug level
            self.store.postpone(job.id, failure.delay, failure.message)
            log.log(logging.INFO if first else logging.DEBUG, "%s: job %d waits (not charged): %s", self.name, job.id,
                    failure.message)
            result.status = JobStatus.QUEUED
        elif failure.outcome is Outcome.SUPERSEDED:
            self.store.supersede(job.id, failure.message)
            log.info("%s: job %d ended: %s", self.name, job.id, failure.message)
            result.status, result.error = JobStatus.SUPERSEDED, failure.message
        elif failure.outcome is Outcome.WAIT:
            self.store.postpone(job.id, failure.delay, failure.message)
            log.info("%s: job %d %s", self.name, job.id, failure.message)
            result.status = JobStatus.QUEUED
        elif failure.outcome is Outcome.RELEASE:
            if isinstance(failure.exc, NotHeld):
                log.warning("%s: %s", self.name, failure.message)
            else:
                self.store.release(job.id, owner=self.owner)
                log.info("%s: job %d interrupted by stop; it will be redone", self.name, job.id)
            result.status = JobStatus.QUEUED
        elif failure.outcome is Outcome.RETRY:
            result.status = self.store.retry_later(job.id, failure.message, failure.delay, ran_on=self.ran_on)
            result.error = failure.message
            if result.status is JobStatus.QUEUED:
                log.warning("%s: job %d will retry in %.0fs: %s", self.name, job.id, failure.delay, failure.message)
            else:  # out of attempts: the store's record says so ("gave up after N attempts")
                stored = self.store.get(job.id)
                self._report_failure(job, stored.error if stored and stored.error else failure.message)
        else:
            if failure.outcome is Outcome.BUG:
                log.error("%s: job %d crashed", self.name, job.id, exc_info=failure.exc)
            self.store.fail(job.id, failure.message, ran_on=self.ran_on)
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
        data = self._read(job)
        try:
            return decode(data, str(path), self.config.input)
        except IncompleteInput as exc:
            if self.wait_for_arrival:
                self._check_arriving(path, exc)
            raise

    def _read(self, job: Job) -> bytes:
        """A job's input bytes, checked to be the content (image and sidecar masks) that was queued: Superseded
        when either changed since."""
        path = Path(job.input_path)
        faults.point("decode", path)
        try:
            data = read_input(path)
        except (AssetdError, OSError):
            self._check_inbox(job)
            raise
        if job.readable and sha256(data) != job.input_hash:
            raise Superseded(f"{printable(str(path))}: superseded: its content changed after it was queued (a copy "
                             "still arriving, or a new version dropped); the new version is queued as its own job")
        if job.readable:
            self._check_masks(job, path)
        return data

    def _check_masks(self, job: Job, path: Path) -> None:
        """Raise Superseded when the masks beside the shot (``NAME.remove.png``...) are no longer those it was queued
        with: they change the outputs, so the shot with its new masks is a job of its own (the watcher queues it),
        exactly like a changed image. Names the masks written since the job was queued."""
        hashes = mask_hashes(self.store, path)
        if mask_digest(hashes) == job.masks:
            return
        changed = []
        for mask in masks_beside(path).values():
            with contextlib.suppress(OSError):
                if os.stat(mask).st_mtime >= (job.created_at or 0):
                    changed.append(printable(mask.name))
        what = f"{', '.join(changed)} changed" if changed else "a mask beside it was removed"
        what += " after it was queued"
        raise Superseded(f"{printable(str(path))}: superseded: {what}; the new version is queued as its own job")

    def _check_arriving(self, path: Path, exc: IncompleteInput) -> None:
        """Raise StillArriving when ``path`` (in an inbox), whose data stops before its image does, changed within
        ``arrival_window``: the next try comes after twice its inbox's ``settle_seconds`` (at least 1 s), and never
        later than just past the window, when an unchanged file fails as damaged."""
        inbox = inbox_of(self.config, path)
        if inbox is None:
            return
        try:
            age = max(0.0, time.time() - os.stat(path).st_mtime)
        except OSError:
            return
        window = arrival_window(inbox.settle_seconds)
        if age >= window:
            return
        delay = min(max(2 * inbox.settle_seconds, 1.0), window - age + 0.5)
        raise StillArriving(f"{printable(str(path))}: ends before its image data does and changed {age:.0f}s ago; it "
                            f"{ARRIVING}: tried again in {delay:.0f}s (failed as damaged once unchanged "
                            f"for {window:.0f}s)", delay) from exc

    def _check_inbox(self, job: Job) -> None:
        """An input that cannot be read because its whole inbox folder is gone (a share unmounted) is a
        problem of the process (``inbox:<root>``), not of the file: raises ProcessProblem then. So is one whose
        inbox was a mount point when watched (``Store.inbox_watched``) and is not one now: the folder is there, but
        it is the empty folder under the unmounted share; the problem clears once the share is mounted again."""
        inbox = inbox_of(self.config, Path(job.input_path)) if self.problems is not None else None
        if inbox is None:
            return
        root = Path(os.path.abspath(inbox.path))
        if not os.path.isdir(root):
            raise self.problems.inbox_problem(root, "the folder cannot be reached") from None  # type: ignore[union-attr]
        try:
            mounted = self.store.inbox_watched(root)
        except sqlite3.Error:
            return
        if mounted and not is_mount(root):
            raise self.problems.unmounted_inbox_problem(root) from None  # type: ignore[union-attr]

    def _execute(self, job: Job, loaded: Future | None, own_chain: bool = False
                 ) -> tuple[list[OutputRecord], list[ManifestRecord], list[str], int | None]:
        """Run the job; returns (outputs, manifests, review reasons of the outputs, the twin copied or None).
        ``own_chain``: no twin is waited for or copied (``process``)."""
        paused = self.problems.covering(job.rule, job.input_path) if self.problems is not None else None
        if paused is not None:  # claimed ahead before the problem started: back to the queue uncharged
            raise ProcessProblem(paused.key, paused.message, paused.scope, probe=paused.probe,
                                 alert_after=paused.alert_after, trial=paused.trial)
        rule = self.rules.get(job.rule)
        if rule is None:
            raise PermanentError(f"rule {job.rule!r} no longer exists")
        if rule.version != job.rule_version:
            self._adopt(job, rule)
        rule = rule.with_overrides(job.overrides, self.config)  # a re-run's one-off options (ConfigError: failed)
        twin = None if own_chain else self.store.twin(job)
        if twin is not None and twin.status is not JobStatus.DONE:
            raise WaitForTwin(twin)
        # From here on the job runs (a job read ahead was only claimed): its attempt counts, and if assetd dies
        # now the crash is this job's.
        attempts = self.store.begin(job.id, self.owner)
        if attempts is None:  # taken back meanwhile (a lease that ran out): whoever holds it now runs it, not us
            raise NotHeld(f"job {job.id} is no longer this worker's (its claim was taken back before it ran); "
                          "left to its new claim")
        job.attempts = attempts
        if twin is not None:
            copied = self.outputs.copy_from(job, rule, twin)
            if copied is not None:
                return copied
        return (*self._run_chain(job, rule, loaded), None)

    def _run_chain(self, job: Job, rule: Rule, loaded: Future | None
                   ) -> tuple[list[OutputRecord], list[ManifestRecord], list[str]]:
        """The middle of a job's run, once its attempt is charged: decode, the chain, its outputs written;
        returns (outputs, manifests, review reasons). The seam of ``executor: ray``: ``scaleout.RemoteWorker``
        runs decode, chain and encode on a Ray actor instead and writes the outputs here the same way."""
        self.ran_on = self.label
        decoded = loaded.result() if loaded is not None else self._load(job)
        self.store.heartbeat(job.id, self.config.lease_seconds)
        asset = input_asset(decoded, printable(job.input_path))

        def on_step(stage: Any, seconds: float, use: StepUse) -> None:
            self.store.record_step(job.id, job.attempts, stage.step, stage.backend, seconds, use.device,
                                   use.gpu_peak_bytes)
            self._record_model_loads()
            self.store.heartbeat(job.id, self.config.lease_seconds)

        mattes: list[np.ndarray] = []
        results = self.chains.of(rule).run(asset, on_step=on_step, on_matte=mattes.append)
        if self.stop.is_set():
            raise StopRequested("stopping before writing outputs")
        records, manifests, review = self.outputs.publish(job, rule, results, decoded)
        if mattes:
            self._keep_matte(job, mattes[0])
        return records, manifests, review

    def _keep_matte(self, job: Job, matte: np.ndarray | bytes) -> None:
        """Keep the subject's matte the chain found (``previews.keep_matte``; an actor's comes as PNG) so that the
        review page's subject check compares exactly the subject (not the photo's own contact shadow), whenever the
        page's cache can be written (``previews.keeps_mattes``: a job run before the page was first opened needs it
        too). Encoded and written on the codec pool while the next job runs (about 0.2 s at 24 Mpx); a problem is
        logged and the check falls back to what it finds without it: it never fails the job."""
        config = self.config
        if not previews.keeps_mattes(config):
            return

        def keep() -> None:
            try:
                previews.keep_matte(config, job, matte)
            except Exception as exc:  # noqa: BLE001 - the job is done; the page does without the matte
                log.warning("%s: job %d: its matte could not be kept for the review page's subject check (%s: %s); "
                            "the check finds the subject without it", self.name, job.id, type(exc).__name__, exc)

        self._mattes = [f for f in self._mattes if not f.done()]
        self._mattes.append(self._pool.submit(keep))


def _outputs_said(outputs: list[OutputRecord]) -> str:
    """"3 outputs", or with outputs of a publish: on_approval channel "1 output published, 2 staged for approval"
    (those are not in their channel folders yet)."""
    staged = sum(1 for o in outputs if o.approval == PENDING_APPROVAL)
    if not staged:
        return plural(len(outputs), "output")
    return f"{plural(len(outputs) - staged, 'output')} published, {staged} staged for approval"
