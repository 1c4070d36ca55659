"""Notifications: events go to the outbox table, a separate thread delivers them through apprise.

A failed job is announced at once; when the queue has been idle for
``digest_after_idle_seconds`` after some activity, one digest says how many were done and failed,
lists the failures with their reasons and the done jobs marked for review with theirs, and the time
the batch took. Each message goes out with apprise's type for its news: a failure alert, and a digest
with failures, as ``failure``; a digest whose only news is jobs to review as ``warning``; an all-good
digest as ``success``. A slow or unreachable target only ever delays this thread: jobs never wait for it,
and undelivered messages stay in the outbox and are retried with back-off (also after a restart).
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .config import Config
from .store import Job, JobStatus, Store
from .text import format_duration, plural, printable

log = logging.getLogger("assetd.notify")
DIGEST_CUTOFF = "digest_cutoff"
FAILURE = "failure"  # the outbox kind of a failed job's alert
PROBLEM, PROBLEM_CLEARED = "problem", "problem-cleared"  # a problem process started / cleared (pipeline.health)


def notify_type(kind: str) -> str:
    """The apprise notification type (its name) an outbox message of ``kind`` goes out with.

    ``failure`` for a failed job and a problem process that started; ``success`` for one that cleared;
    ``digest-<type>`` for a digest (see ``digest_type``); ``info`` for anything else (a plain ``digest``
    queued by an older assetd)."""
    if kind in (FAILURE, PROBLEM):
        return "failure"
    if kind == PROBLEM_CLEARED:
        return "success"
    level = kind.partition("-")[2]
    return level if level in ("success", "warning", "failure") else "info"


def digest_type(jobs: list[Job]) -> str:
    """``failure`` when a job of the batch failed, ``warning`` when some need review, else ``success``."""
    if any(j.status is JobStatus.FAILED for j in jobs):
        return "failure"
    return "warning" if any(j.status is JobStatus.DONE and j.review for j in jobs) else "success"


def with_timeouts(url: str, seconds: float) -> str:
    """Add apprise's connect/read timeouts (cto/rto) to a URL unless it sets its own."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.setdefault("cto", f"{seconds:g}")
    query.setdefault("rto", f"{seconds:g}")
    return urlunsplit(parts._replace(query=urlencode(query)))


def digest_text(jobs: list[Job], max_listed: int = 50, awaiting: int = 0,
                review_url: str | None = None) -> tuple[str, str]:
    """Title and body of a batch digest: counts, then the failures and the jobs to review (each list capped);
    ``awaiting``: outputs waiting for approval (``publish: on_approval``); ``review_url``: the review page, where
    the morning's review starts (``review.listen``)."""
    done = [j for j in jobs if j.status is JobStatus.DONE]
    failed = [j for j in jobs if j.status is JobStatus.FAILED]
    review = [j for j in done if j.review]
    first = min((j.created_at or j.started_at or 0.0) for j in jobs)
    last = max(j.finished_at or 0.0 for j in jobs)
    busy = sum(j.seconds or 0.0 for j in done)
    summary = f"{len(done)} done" + (f" ({len(review)} need review)" if review else "") + f", {len(failed)} failed"
    title = f"batch finished: {summary}"
    lines = [f"{summary} in {format_duration(last - first)} ({format_duration(busy)} of processing)."]
    lines += _listing("Failed:", [j.error or j.input_path for j in failed], max_listed, "failed")
    lines += _listing("Need review (outputs written):",
                      [f"{printable(j.input_path)}: {'; '.join(j.review)}" for j in review], max_listed, "review")
    if awaiting:
        title += f", {plural(awaiting, 'output')} to approve"
        lines += ["", f"{plural(awaiting, 'output')} {'waits' if awaiting == 1 else 'wait'} for approval before "
                      "publishing: " + (f"{review_url}?flag=awaiting" if review_url else "assetd approve")]
    if review_url:
        lines += ["", f"Review page: {review_url}"]
    return title, "\n".join(lines)


def review_url(config: Config) -> str | None:
    """The review page's address as a reader of the digest would open it (``review.listen``), or None."""
    if not config.review.listen:
        return None
    from .web.server import parse_listen  # starlette is imported only by the page itself

    host, port = parse_listen(config.review.listen)
    if host in ("0.0.0.0", "::", ""):
        import socket

        host = socket.getfqdn()
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


def _listing(heading: str, items: list[str], max_listed: int, status: str) -> list[str]:
    """A digest section: a heading, at most ``max_listed`` items, and where to see the rest."""
    if not items:
        return []
    lines = ["", heading] + [f"- {item}" for item in items[:max_listed]]
    if len(items) > max_listed:
        lines.append(f"- ... and {len(items) - max_listed} more (assetd jobs --status {status})")
    return lines


class Notifier:
    """Owns the outbox delivery thread. ``job_failed`` is safe to call from any worker thread."""

    def __init__(self, config: Config, store: Store, tick_seconds: float = 0.5):
        self.config = config
        self.notify = config.notify
        self.store = store
        self.tick = tick_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._apprise = None
        self._held: list[tuple[str, str, str]] = []  # (kind, title, body) the outbox could not take (disk full)
        self._held_lock = threading.Lock()

    def apply(self, config: Config) -> None:
        """A reloaded config: its notify settings (targets, timeouts, title) from the next delivery on."""
        self.config, self.notify, self._apprise = config, config.notify, None

    @property
    def enabled(self) -> bool:
        return bool(self.notify.urls)

    # -- events (called from workers) -------------------------------------------------------------
    def job_failed(self, job: Job, message: str) -> None:
        if self.enabled:
            self._queue(FAILURE, f"{self.notify.title}: failed: {printable(job.rel_path or job.input_path)}", message)

    def problem(self, started: bool, title: str, body: str) -> None:
        """A problem process started (``started``) or cleared: one alert each (``pipeline.health`` calls this
        once per outage and side); with no notify URLs nothing is queued (the log has the lines)."""
        if self.enabled:
            self._queue(PROBLEM if started else PROBLEM_CLEARED, f"{self.notify.title}: {title}", body)

    def _queue(self, kind: str, title: str, body: str) -> None:
        """Into the outbox; when the database cannot take it (its disk is full: the very problem to announce),
        held in memory until the delivery thread can queue it, or else sends it itself."""
        try:
            self.store.add_message(kind, title, body)
        except sqlite3.Error as exc:
            log.warning("notification %r held in memory: the outbox cannot take it (%s)", title, exc)
            with self._held_lock:
                self._held.append((kind, title, body))

    def _flush_held(self) -> None:
        """Held messages go to the outbox once it takes them again; while it does not, each is sent from here."""
        with self._held_lock:
            held, self._held = self._held, []
        kept = []
        for kind, title, body in held:
            try:
                self.store.add_message(kind, title, body)
                continue
            except sqlite3.Error:
                pass
            ok, error = self._send(title, body, notify_type(kind))
            if not ok:
                log.warning("held notification %r not delivered (%s); trying again", title, error)
                kept.append((kind, title, body))
        with self._held_lock:
            self._held[:0] = kept

    # -- delivery thread ----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="assetd-notify", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.deliver_due()  # first: a digest that cannot be recorded (a full database) must not stop it
                self.maybe_digest()
            except Exception:  # never let a notification problem end the thread
                log.exception("notification loop error")
            self._stop.wait(self.tick)

    def maybe_digest(self, now: float | None = None) -> bool:
        """Queue one digest when the queue is idle long enough after activity. Returns True if queued."""
        now = time.time() if now is None else now
        cutoff = float(self.store.get_state(DIGEST_CUTOFF, 0.0))
        if self.store.busy():
            return False
        jobs = self.store.finished_between(cutoff, now)
        if not jobs:
            return False
        last = max(j.finished_at or 0.0 for j in jobs)
        if now - last < self.notify.digest_after_idle_seconds:
            return False
        title, body = digest_text(jobs, awaiting=self.store.awaiting_total(), review_url=review_url(self.config))
        log.info("digest: %s", title)
        if self.enabled:
            self._queue(f"digest-{digest_type(jobs)}", f"{self.notify.title}: {title}", body)
        self.store.set_state(DIGEST_CUTOFF, last)
        return True

    def deliver_due(self, budget_seconds: float | None = None) -> int:
        """Try every message that is due (within ``budget_seconds`` if given); returns how many were delivered."""
        if not self.enabled:
            return 0
        self._flush_held()
        delivered = 0
        deadline = None if budget_seconds is None else time.monotonic() + budget_seconds
        for message in self.store.due_messages():
            if deadline is None and self._stop.is_set():  # the delivery thread is being stopped
                break
            if deadline is not None and time.monotonic() > deadline:
                break
            ok, error = self._send(message.title, message.body, notify_type(message.kind))
            if ok:
                self.store.mark_delivered(message.id)
                delivered += 1
            else:
                delay = min(self.notify.retry_seconds * 2 ** message.attempts, 3600.0)
                self.store.mark_undelivered(message.id, error, time.time() + delay)
                log.warning("notification %d not delivered (%s); retrying in %.0fs", message.id, error, delay)
        return delivered

    def _send(self, title: str, body: str, type_name: str = "info") -> tuple[bool, str]:
        import apprise  # imported here: only the delivery thread needs it

        targets = self._apprise  # one set per call: a reload (``apply``) may drop it meanwhile
        if targets is None:
            targets = self._apprise = apprise.Apprise()
            for url in self.notify.urls:
                if not targets.add(with_timeouts(url, self.notify.timeout_seconds)):
                    log.error("notify.urls: apprise does not understand %r", url)
        if not len(targets):
            return False, "no usable notification URL"
        try:
            with apprise.LogCapture(level=apprise.logging.WARNING) as logs:
                ok = bool(targets.notify(title=title, body=body,
                                         notify_type=getattr(apprise.NotifyType, type_name.upper())))
                detail = " ".join(logs.getvalue().split())[-300:]
        except Exception as exc:  # a plugin bug must not end delivery
            return False, f"{type(exc).__name__}: {exc}"
        return ok, "" if ok else (detail or "delivery failed")
