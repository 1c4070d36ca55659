"""The job store: SQLite through sqlite-utils, WAL, numbered migrations. The only module with SQL.

A job is one (input content hash, its sidecar masks' digest, rule name, rule version, input path). The same
bytes (and masks) dropped again under the same name are not reprocessed; under another name they get a job of
their own, which copies the finished twin's outputs under its own names instead of running the chain again
(``jobs.copied_from``). A changed rule is a new version; whether it redoes old files is the
intake's decision (``on_rule_change``). Workers claim jobs atomically
(``BEGIN IMMEDIATE``) under a lease; a job left ``running`` by a crash is taken back when its
lease expires, and fails for good once it has used ``max_attempts``.

Crash attribution: a worker claims the next job *ahead* (``claim_next(..., ahead=True)``) while the current
one runs; such a claim charges nothing. ``begin`` charges the attempt when the job's own run starts and
records it (``chain_started_at``). While the job claimed ahead is read and decoded, ``reading_since`` says so
(a codec can kill the process too). When assetd dies, each dead process is judged on its own: a job whose run
started counts a crash (``crashes``), and so does one whose decode ahead was going when no run was; one only
claimed ahead goes back untouched. A run and a decode ahead both going: the death is either's, so neither is
charged and both run alone next (``alone``), where the next death is the culprit's. A job with a crash (or
``alone``) runs alone in its process on its next try (no job claimed beside it), so a second crash is its own;
one with ``quarantine_after_crashes`` crashes is failed for good as *quarantined*.

A done job may be *marked for review*: ``jobs.review`` holds the reasons its stages gave (a JSON
list of one-line strings), NULL when there are none. Its outputs are written like any other's;
``jobs(status="review")`` lists such jobs, and ``requeue`` clears the mark.

Each thread gets its own connection (SQLite connections are not shared across threads).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Collection, Iterator

from sqlite_utils import Database, Migrations

from . import faults
from .text import printable

migrations = Migrations("assetd")


@migrations()
def m001_initial(db: Database) -> None:
    db["files"].create(
        {"path": str, "size": int, "mtime_ns": int, "sha256": str, "seen_at": float, "note": str},
        pk="path",
    )
    db["jobs"].create(
        {
            "id": int, "input_hash": str, "rule": str, "rule_version": str, "input_path": str,
            "rel_path": str, "status": str, "attempts": int, "max_attempts": int,
            "next_attempt_at": float, "lease_expires": float, "worker": str, "error": str,
            "created_at": float, "started_at": float, "finished_at": float, "seconds": float,
        },
        pk="id",
        not_null={"input_hash", "rule", "rule_version", "input_path", "status"},
        defaults={"attempts": 0, "max_attempts": 3, "next_attempt_at": 0.0},
    )
    db["jobs"].create_index(["input_hash", "rule", "rule_version"], unique=True)
    db["jobs"].create_index(["status", "next_attempt_at"])
    db["steps"].create(
        {"id": int, "job_id": int, "attempt": int, "step": str, "backend": str, "seconds": float,
         "finished_at": float},
        pk="id", foreign_keys=[("job_id", "jobs", "id")],
    )
    db["steps"].create_index(["job_id"])
    db["outputs"].create(
        {"id": int, "job_id": int, "channel": str, "path": str, "step": str, "ratio": str,
         "width": int, "height": int, "bytes": int, "sha256": str, "scale": float, "created_at": float},
        pk="id", foreign_keys=[("job_id", "jobs", "id")],
    )
    db["outputs"].create_index(["job_id"])
    db["outputs"].create_index(["path"])
    db["outbox"].create(
        {"id": int, "kind": str, "title": str, "body": str, "created_at": float, "attempts": int,
         "next_attempt_at": float, "delivered_at": float, "last_error": str},
        pk="id", defaults={"attempts": 0, "next_attempt_at": 0.0},
    )
    db["outbox"].create_index(["delivered_at", "next_attempt_at"])
    db["state"].create({"key": str, "value": str}, pk="key")


@migrations()
def m002_job_review(db: Database) -> None:
    """``jobs.review``: why a done job needs a human's look (JSON list of one-line reasons), or NULL."""
    if "review" not in db["jobs"].columns_dict:
        db["jobs"].add_column("review", str)


@migrations()
def m003_copies_and_history(db: Database) -> None:
    """A job per input path (a renamed copy gets its own job, ``copied_from`` its twin), and
    ``outputs.replaced_by``: the later job that wrote the same file again."""
    db.execute("DROP INDEX IF EXISTS idx_jobs_input_hash_rule_rule_version")
    db["jobs"].create_index(["input_hash", "rule", "rule_version", "input_path"], unique=True,
                            index_name="idx_jobs_content_rule_version_path", if_not_exists=True)
    if "copied_from" not in db["jobs"].columns_dict:
        db["jobs"].add_column("copied_from", int)
    if "replaced_by" not in db["outputs"].columns_dict:
        db["outputs"].add_column("replaced_by", int)


@migrations()
def m004_manifests(db: Database) -> None:
    """Manifests get their own table (they were rows of ``outputs`` with step 'manifest')."""
    if "manifests" not in db.table_names():
        db["manifests"].create(
            {"id": int, "job_id": int, "path": str, "bytes": int, "sha256": str, "created_at": float},
            pk="id", foreign_keys=[("job_id", "jobs", "id")],
        )
        db["manifests"].create_index(["job_id"])
        db["manifests"].create_index(["path"])
    db.execute("INSERT INTO manifests (job_id, path, bytes, sha256, created_at) SELECT job_id, path, bytes, sha256,"
               " created_at FROM outputs WHERE step = 'manifest' ORDER BY id")
    db.execute("DELETE FROM outputs WHERE step = 'manifest'")


@migrations()
def m005_crash_attribution(db: Database) -> None:
    """``jobs.chain_started_at``: when the current claim's own run started (NULL: claimed ahead, not started);
    ``jobs.crashes``: how often assetd died while this job's run was going."""
    columns = db["jobs"].columns_dict
    if "chain_started_at" not in columns:
        db["jobs"].add_column("chain_started_at", float)
    if "crashes" not in columns:
        db["jobs"].add_column("crashes", int, not_null_default=0)


@migrations()
def m006_problems(db: Database) -> None:
    """``problems``: one row per outage of the process (a disk below its watermark, the GPU, a model, an inbox):
    its key (``disk:/srv/out``), message, what it paused, when it started and cleared (NULL while it lasts)."""
    if "problems" not in db.table_names():
        db["problems"].create(
            {"id": int, "key": str, "message": str, "scope": str, "started_at": float, "cleared_at": float,
             "cleared_message": str, "alerted": int},
            pk="id", not_null={"key", "message", "started_at"}, defaults={"alerted": 0},
        )
        db["problems"].create_index(["cleared_at"])


@migrations()
def m007_moves(db: Database) -> None:
    """``moves``: where an inbox's ``after: move`` put a job's input (done/ or error/) and its ``.error.txt``;
    ``returned_at`` once ``assetd retry`` moved it back."""
    if "moves" not in db.table_names():
        db["moves"].create(
            {"id": int, "job_id": int, "source": str, "dest": str, "kind": str, "sidecar": str, "moved_at": float,
             "returned_at": float},
            pk="id", foreign_keys=[("job_id", "jobs", "id")], not_null={"job_id", "source", "dest", "kind"},
        )
        db["moves"].create_index(["job_id"])


@migrations()
def m008_reserved_outputs(db: Database) -> None:
    """``outputs.reserved`` / ``manifests.reserved``: 1 on a row a run wrote before its job finished (the file's
    hash is known, the job's end is not); ``finish`` replaces them with the final records. A job failed for good
    with reserved rows still has files to withdraw."""
    for table in ("outputs", "manifests"):
        if "reserved" not in db[table].columns_dict:
            db[table].add_column("reserved", int)
        db[table].create_index(["reserved"], if_not_exists=True)


@migrations()
def m009_approvals(db: Database) -> None:
    """``outputs.approval``: NULL for an output published when its job ended; 'pending' | 'approved' | 'rejected'
    for one of a ``publish: on_approval`` channel; ``outputs.staged_path``: where it waits while not published
    (NULL once published). ``decisions``: who approved or rejected which output, when, and why."""
    columns = db["outputs"].columns_dict
    if "approval" not in columns:
        db["outputs"].add_column("approval", str)
    if "staged_path" not in columns:
        db["outputs"].add_column("staged_path", str)
    db["outputs"].create_index(["approval"], if_not_exists=True)
    db["outputs"].create_index(["staged_path"], if_not_exists=True)
    if "decisions" not in db.table_names():
        db["decisions"].create(
            {"id": int, "output_id": int, "job_id": int, "verdict": str, "reason": str, "by": str, "at": float},
            pk="id", not_null={"output_id", "job_id", "verdict", "at"},
        )
        db["decisions"].create_index(["output_id"])
        db["decisions"].create_index(["job_id"])


@migrations()
def m010_reruns(db: Database) -> None:
    """``jobs.rerun_of``: the job this one re-runs (``assetd rerun``: another rule, or one-off step options in
    ``jobs.overrides``, a JSON {step: {option: value}}); ``jobs.rerun_seq``: 0 for the job the intake made, 1, 2...
    for the re-runs of that file under that rule version, so a re-run is a job of its own beside it."""
    columns = db["jobs"].columns_dict
    if "rerun_of" not in columns:
        db["jobs"].add_column("rerun_of", int)
    if "overrides" not in columns:
        db["jobs"].add_column("overrides", str)
    if "rerun_seq" not in columns:
        db["jobs"].add_column("rerun_seq", int, not_null_default=0)
    db.execute("DROP INDEX IF EXISTS idx_jobs_content_rule_version_path")
    db["jobs"].create_index(["input_hash", "rule", "rule_version", "input_path", "rerun_seq"], unique=True,
                            index_name="idx_jobs_content_rule_version_path_rerun", if_not_exists=True)
    db["jobs"].create_index(["rerun_of"], if_not_exists=True)


@migrations()
def m011_metrics(db: Database) -> None:
    """What ``/metrics`` reports beyond the jobs themselves (``pipeline.metrics``): ``steps.device`` (where a step
    ran: cpu, cuda, cuda:1; NULL on rows from before) and ``steps.gpu_peak_bytes`` (the most GPU memory torch held
    while it ran, on CUDA); ``jobs.queue_wait`` (seconds from queued to the start of its first run); and
    ``model_loads``, one row per model a worker loaded (its kind, name, device and how long it took)."""
    steps = db["steps"].columns_dict
    if "device" not in steps:
        db["steps"].add_column("device", str)
    if "gpu_peak_bytes" not in steps:
        db["steps"].add_column("gpu_peak_bytes", int)
    if "queue_wait" not in db["jobs"].columns_dict:
        db["jobs"].add_column("queue_wait", float)
    if "model_loads" not in db.table_names():
        db["model_loads"].create({"id": int, "backend": str, "model": str, "device": str, "seconds": float,
                                  "at": float}, pk="id", not_null={"backend", "seconds", "at"})


@migrations()
def m012_review(db: Database) -> None:
    """``jobs.acknowledged_at``: someone acknowledged this failure on the review page (it leaves the failures list
    until it fails again); indexes on when jobs were queued and ended, for the night view over 10,000+ jobs."""
    if "acknowledged_at" not in db["jobs"].columns_dict:
        db["jobs"].add_column("acknowledged_at", float)
    db["jobs"].create_index(["created_at"], if_not_exists=True)
    db["jobs"].create_index(["finished_at"], if_not_exists=True)
    db["jobs"].create_index(["input_path"], if_not_exists=True)  # a failure resolved by a later job of the file


# -- variants ----------------------------------------------------------------------------------------
@migrations()
def m013_variants(db: Database) -> None:
    """``outputs.variant``: which variant an output is when a step made several of one input (a colourway, a
    scene of ``place_in_scene``'s ``scenes``, a seed of ``variations``), its channels' ``{variant}``; NULL: the
    only one."""
    if "variant" not in db["outputs"].columns_dict:
        db["outputs"].add_column("variant", str)


@migrations()
def m014_job_masks(db: Database) -> None:
    """``jobs.masks``: a digest of the masks a retoucher put beside the shot (``NAME.remove.png``...,
    ``pipeline.stages.masks``) when it was queued; '' when there were none (every job from before). The masks change
    the outputs, so they are part of what the job is: the unique key includes them, and a changed, added or removed
    mask is a job of its own."""
    if "masks" not in db["jobs"].columns_dict:
        db["jobs"].add_column("masks", str, not_null_default="")
    db.execute("DROP INDEX IF EXISTS idx_jobs_content_rule_version_path_rerun")
    db["jobs"].create_index(["input_hash", "masks", "rule", "rule_version", "input_path", "rerun_seq"], unique=True,
                            index_name="idx_jobs_content_masks_rule_version_path_rerun", if_not_exists=True)


# -- where a run ran (executor: ray) ------------------------------------------------------------------
@migrations()
def m015_ran_on(db: Database) -> None:
    """``jobs.ran_on``: where the job's chain last ran ("actor-2 on gpu-box-1" under ``executor: ray``, "worker-1 on
    studio-1" in a local worker), to its end or to its failure (a damaged file, an actor it stopped), for per-actor
    throughput (``/metrics``) and the review page."""
    if "ran_on" not in db["jobs"].columns_dict:
        db["jobs"].add_column("ran_on", str)


# -- the decode ahead, and the jobs that run alone (crash attribution) -------------------------------
@migrations()
def m016_read_ahead(db: Database) -> None:
    """``jobs.reading_since``: when the decode of a job claimed ahead began (NULL: none going; cleared when it
    ends, when the job's run begins and when the job goes back). ``jobs.alone``: 1 when the job was in flight
    beside another of its process when that process died (a run and a decode ahead: the death was either's); it
    runs alone until its next run ends, so a next death is attributed exactly."""
    columns = db["jobs"].columns_dict
    if "reading_since" not in columns:
        db["jobs"].add_column("reading_since", float)
    if "alone" not in columns:
        db["jobs"].add_column("alone", int, not_null_default=0)


class JobStatus(str, Enum):
    """A job's state (``jobs.status``). A str Enum: a member binds as its value, so every statement here
    takes a status as a parameter (``status = ?``, ``status IN (...)`` with ``_marks``), never as a literal."""
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SUPERSEDED = "superseded"  # its input changed before it could run: the new version's job owns the file


PENDING = (JobStatus.QUEUED, JobStatus.RUNNING)  # will run, or runs now
FINISHED = (JobStatus.DONE, JobStatus.FAILED)  # ran to an end; runs again only when requeued


# ``outputs.approval`` of a ``publish: on_approval`` channel's output (NULL: published when its job ended)
PENDING_APPROVAL, APPROVED, REJECTED = "pending", "approved", "rejected"

REVIEW = "review"  # not a state: ``jobs(status=REVIEW)`` means done jobs with review reasons
AWAITING = "awaiting"  # not a state: a job with outputs waiting for approval (the night view's filter)
READ_AHEAD = "next"  # not a state: a running job only claimed to be read ahead, its run not started (counted apart)
UNREADABLE = "unreadable:"  # prefix of a job's input_hash when the file could not be read (a token, not content)


OUT_OF_ATTEMPTS, QUARANTINED = "out of attempts", "quarantined"  # a crash's verdicts (``Store._crash_verdict``)

# A job handed back uncharged: the attempt its run was charged (if it started) does not count, and its decode
# ahead (if one was going) is over.
_UNCHARGE = ("attempts = MAX(attempts - (chain_started_at IS NOT NULL), 0), chain_started_at = NULL,"
             " reading_since = NULL")
# What a job's end (done, failed, retried later) clears: it ran, so it need not run alone any more.
_RAN = "alone = 0, reading_since = NULL"


def _same_process(owner: str) -> tuple[str, list[Any]]:
    """SQL and its parameters: ``worker`` is a claim of the same process and kind as ``owner``: for
    ``"worker-1 pid 1234 on host"`` any ``"worker-N pid 1234 on host"`` (the daemon's workers). An owner label
    without a pid stands for itself alone."""
    at = owner.find(" pid ")
    if at < 0:
        return "worker = ?", [owner]
    kind, process = owner[:at].rstrip("0123456789"), owner[at:]
    return "substr(worker, 1, ?) = ? AND substr(worker, ?) = ?", [len(kind), kind, -len(process), process]


def _process_of(owner: str | None) -> str | None:
    """The process a claim's owner stands for, as ``_same_process`` matches it: ``"worker- pid 1234 on host"``
    for any ``"worker-N pid 1234 on host"``; an owner label without a pid is its own process."""
    at = (owner or "").find(" pid ")
    return owner if owner is None or at < 0 else owner[:at].rstrip("0123456789") + owner[at:]


def _jobs_said(rows: list[dict[str, Any]]) -> str:
    """``"job 3"``, ``"job 3 and job 5"``, ``"job 3, job 5 and job 7"``: the jobs of these rows, in words."""
    said = [f"job {row['id']}" for row in rows]
    return said[0] if len(said) == 1 else ", ".join(said[:-1]) + " and " + said[-1]


DAEMON_STARTED = "daemon_started"  # state key: when an assetd daemon last finished starting on this database
INBOX_WATCHED = "inbox_watched:"  # state key prefix, + an inbox folder: it was watched on this database ({"mount": ..})


def daemon_ran_before(path: Path) -> bool:
    """Whether an assetd daemon has run on the database at ``path``: it finished starting there once
    (``DAEMON_STARTED``), or the database holds jobs (one from before that key). Read without creating or migrating
    it: ``assetd jobs`` on a new config creates an empty database, and that is no earlier run. A first start is
    refused on what is most likely a setup error (a model not in the cache, a wrong cluster address) where a
    restart waits for it to heal."""
    if not path.is_file():
        return False
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error:
        return False
    try:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "state" in tables and conn.execute("SELECT 1 FROM state WHERE key = ?", [DAEMON_STARTED]).fetchone():
            return True
        return "jobs" in tables and conn.execute("SELECT 1 FROM jobs LIMIT 1").fetchone() is not None
    except sqlite3.Error:
        return False
    finally:
        conn.close()


def _marks(values: Collection[Any]) -> str:
    """One ``?`` per value, for ``IN (...)`` (ids, paths, statuses): ``_marks(FINISHED)`` is ``"?, ?"``."""
    return ", ".join("?" * len(values))


@dataclass
class Job:
    id: int
    input_hash: str
    rule: str
    rule_version: str
    input_path: str
    rel_path: str
    status: JobStatus
    attempts: int
    max_attempts: int
    error: str | None = None
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    seconds: float | None = None
    next_attempt_at: float = 0.0
    lease_expires: float | None = None
    worker: str | None = None
    review: list[str] = field(default_factory=list)  # why a human should look at it (done jobs)
    copied_from: int | None = None  # the done job (same content, another name) whose outputs it copied
    chain_started_at: float | None = None  # when this claim's own run started; None: claimed ahead, not started
    crashes: int = 0  # how often assetd died while this job's run was going
    reading_since: float | None = None  # its decode ahead began then and is still going (None: none going)
    alone: int = 0  # 1: in flight beside another job when its process died; runs alone until its next run ends
    rerun_of: int | None = None  # the job this one re-runs (assetd rerun)
    overrides: dict = field(default_factory=dict)  # a re-run's one-off step options: {step: {option: value}}
    rerun_seq: int = 0  # 0: the intake's job for the file; 1, 2...: its re-runs under the same rule version
    acknowledged_at: float | None = None  # a failure someone acknowledged on the review page (off the list)
    masks: str = ""  # digest of the shot's sidecar masks when it was queued ('' : none); part of its identity
    ran_on: str | None = None  # where its chain last ran to its end: "actor-2 on gpu-box-1", "worker-1 on studio-1"

    @property
    def readable(self) -> bool:
        """Its input_hash is the content's sha256 (not a token for a file that could not be read)."""
        return not self.input_hash.startswith(UNREADABLE)

    @property
    def short_hash(self) -> str:
        """Eight hex digits of the input hash: ``{hash8}`` in names and the suffix after a name clash."""
        return self.input_hash.removeprefix(UNREADABLE)[:8]

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Job":
        known = {k: row[k] for k in cls.__dataclass_fields__ if k in row}
        known["status"] = JobStatus(row["status"])
        known["review"] = json.loads(row["review"]) if row.get("review") else []
        known["overrides"] = json.loads(row["overrides"]) if row.get("overrides") else {}
        return cls(**known)


@dataclass
class OutputRecord:
    channel: str
    path: str
    step: str
    ratio: str | None
    width: int
    height: int
    bytes: int
    sha256: str
    scale: float = 1.0
    replaced_by: int | None = None  # a later job wrote this path again: this record's sha256 is history
    # its row and job (``Store.outputs`` fills them; None before the job is recorded); not compared: two records
    # are equal when they say the same about the same file
    id: int | None = field(default=None, compare=False)
    job_id: int | None = field(default=None, compare=False)
    approval: str | None = None  # None: published at once; PENDING_APPROVAL | APPROVED | REJECTED (on_approval)
    staged_path: str | None = None  # where the file waits while not published (``path``: where it will be)
    variant: str | None = None  # which variant of the input it is (``Asset.variant``); None: the only one

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def as_written(self) -> dict[str, Any]:
        """Its fields as a job's manifest and its row record them (no row id or job id of the record read)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("id", "job_id")}


def _output_record(row: dict[str, Any]) -> OutputRecord:
    return OutputRecord(**{k: row[k] for k in OutputRecord.__dataclass_fields__})


@dataclass
class ManifestRecord:
    """A job's manifest file: where it is, its size and hash."""
    path: str
    bytes: int
    sha256: str


@dataclass
class Recovery:
    """What ``recover`` found running when assetd started: jobs charged a crash (their run had started, or their
    decode ahead was going with no run beside it), jobs only claimed ahead (back untouched), those of the first
    kind now failed for good, and per dead process the jobs in flight together (a run and a decode ahead: the
    death was either's, none charged, each runs alone next). ``reading``: the jobs of ``started`` and ``shared``
    whose decode ahead was going."""
    started: list[int] = field(default_factory=list)
    ahead: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    shared: list[list[int]] = field(default_factory=list)
    reading: list[int] = field(default_factory=list)

    @property
    def ids(self) -> list[int]:
        return sorted(self.started + self.ahead + [job_id for together in self.shared for job_id in together])


@dataclass
class Move:
    """An input moved out of its inbox when its job ended (``after: move``)."""
    id: int
    job_id: int
    source: str  # where the input was (its job's input_path)
    dest: str  # where it went
    kind: str  # "done" | "error"
    sidecar: str | None = None  # the NAME.error.txt written beside a failed one
    moved_at: float | None = None
    returned_at: float | None = None  # assetd retry moved it back


@dataclass
class Message:
    id: int
    kind: str
    title: str
    body: str
    attempts: int = 0


class _Local(threading.local):
    db: Database | None = None


class Store:
    """Job store over one SQLite file. Thread-safe: one connection per thread."""

    def __init__(self, path: Path | str, quarantine_after_crashes: int = 2):
        self.path = Path(path)
        self.quarantine_after_crashes = quarantine_after_crashes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = _Local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._migrate()

    def _migrate(self) -> None:
        """Switch to WAL and create or upgrade the schema, one process at a time: two assetd commands opening
        a new (or older) database at once would otherwise both try, and one fail with "database is locked"."""
        if self._ready():
            return
        with open(self.path.with_name(self.path.name + ".migrate-lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                migrations.apply(self.db)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _ready(self) -> bool:
        """The file exists, is in WAL mode and has every migration (read only: no lock needed)."""
        if not self.path.exists():
            return False
        conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            wal = conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            return wal and not migrations.pending(Database(conn))
        finally:
            conn.close()

    # -- connections -------------------------------------------------------------------------
    @property
    def db(self) -> Database:
        if self._local.db is None:
            conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA foreign_keys = ON")
            db = Database(conn)
            if db.journal_mode != "wal":
                db.enable_wal()
            conn.execute("PRAGMA synchronous = NORMAL")
            self._local.db = db
            with self._lock:
                self._all.append(conn)
        return self._local.db

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._all.clear()
        self._local = _Local()

    @contextlib.contextmanager
    def _immediate(self) -> Iterator[Database]:
        """A write transaction taken up front, so two workers never race on the same row."""
        db = self.db
        db.conn.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.conn.execute("ROLLBACK")
            raise
        else:
            db.conn.execute("COMMIT")

    # -- files seen by the watcher (hash cache) ---------------------------------------------
    def known_hash(self, path: str, size: int, mtime_ns: int) -> str | None:
        rows = self.db.execute(
            "SELECT sha256 FROM files WHERE path = ? AND size = ? AND mtime_ns = ?", [path, size, mtime_ns]
        ).fetchall()
        return rows[0][0] if rows else None

    def remember_file(self, path: str, size: int, mtime_ns: int, sha256: str, note: str | None = None) -> None:
        self.db["files"].upsert(
            {"path": path, "size": size, "mtime_ns": mtime_ns, "sha256": sha256, "seen_at": time.time(),
             "note": note}, pk="path",
        )

    # -- jobs --------------------------------------------------------------------------------
    def enqueue(self, *, input_hash: str, rule: str, rule_version: str, input_path: str, rel_path: str,
                max_attempts: int, masks: str = "") -> tuple[Job, bool]:
        """Create the job for this content (the image's and its masks', ``masks``), rule version and path unless it
        exists. Returns (job, created).

        A superseded job for it (that content was replaced before it ran) is queued again as if new: the content
        is back."""
        key = [input_hash, masks, rule, rule_version, input_path]
        with self._immediate() as db:
            cur = db.conn.execute(
                "INSERT OR IGNORE INTO jobs (input_hash, masks, rule, rule_version, input_path, rel_path, status,"
                " attempts, max_attempts, next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, 0, ?)",
                [*key, rel_path, JobStatus.QUEUED, max_attempts, time.time()],
            )
            created = cur.rowcount == 1
            if not created:
                created = db.conn.execute(
                    f"UPDATE jobs SET status = ?, attempts = 0, crashes = 0, chain_started_at = NULL, {_RAN},"
                    " next_attempt_at = 0, error = NULL, finished_at = NULL, lease_expires = NULL, worker = NULL"
                    " WHERE input_hash = ? AND masks = ? AND rule = ? AND rule_version = ? AND input_path = ?"
                    " AND rerun_seq = 0 AND status = ?",
                    [JobStatus.QUEUED, *key, JobStatus.SUPERSEDED],
                ).rowcount == 1
            row = db.execute_returning_dicts(
                "SELECT * FROM jobs WHERE input_hash = ? AND masks = ? AND rule = ? AND rule_version = ?"
                " AND input_path = ? AND rerun_seq = 0", key,
            )[0]
        return Job.from_row(row), created

    def get(self, job_id: int) -> Job | None:
        rows = self.db.execute_returning_dicts("SELECT * FROM jobs WHERE id = ?", [job_id])
        return Job.from_row(rows[0]) if rows else None

    def _reap_expired(self, db: Database, now: float, only: list[int] | None = None) -> Recovery:
        """Jobs whose lease ran out (their worker died) go back to the queue, or fail for good.

        Each dead process is judged by what was in flight in it (``_process_of`` its claims' owner). A run
        (``chain_started_at``) and a decode ahead (``reading_since``) both going: the death was either's, so
        neither is charged (the run's attempt is handed back) and each runs alone next (``alone``), where a next
        death is the culprit's. Otherwise a job whose run started, or whose decode ahead was going, counts a crash
        (``_charge``); one only claimed ahead goes back untouched. A decode ahead whose lease ran out while another
        job of its process still holds its own is not judged: it goes back untouched (its process may live on; if
        not, that job is charged when its own lease runs out, as before). ``only``: just these running jobs, whatever
        their lease (their owner is known to be gone)."""
        which, params = "lease_expires < ?", [now]
        if only is not None:
            which, params = f"id IN ({_marks(only)})", list(only)
        rows = db.execute_returning_dicts(
            "SELECT id, input_path, attempts, max_attempts, crashes, chain_started_at, reading_since, worker"
            f" FROM jobs WHERE status = ? AND {which} ORDER BY id", [JobStatus.RUNNING, *params])
        processes: dict[str | int, list[dict[str, Any]]] = {}
        for row in rows:  # a claim with no owner recorded stands alone
            processes.setdefault(_process_of(row["worker"]) or row["id"], []).append(row)
        found = Recovery()
        for in_it in processes.values():
            started = [r for r in in_it if r["chain_started_at"] is not None]
            reading = [r for r in in_it if r["chain_started_at"] is None and r["reading_since"] is not None]
            if reading and only is None and self._others_held(db, in_it):
                reading = []
            if started and reading:
                self._not_charged(db, started, reading, found)
                continue
            for row in in_it:
                if row["chain_started_at"] is not None or row in reading:
                    self._charge(db, row, now, found, reading=row in reading)
                else:
                    db.conn.execute(f"UPDATE jobs SET status = ?, {_UNCHARGE}, lease_expires = NULL, worker = NULL"
                                    " WHERE id = ?", [JobStatus.QUEUED, row["id"]])
                    found.ahead.append(row["id"])
        return found

    @staticmethod
    def _others_held(db: Database, rows: list[dict[str, Any]]) -> bool:
        """Another job of these rows' process is running under a lease not run out (not among ``rows``)."""
        owner = rows[0]["worker"]
        if owner is None:
            return False
        mine, of_mine = _same_process(owner)
        ids = [r["id"] for r in rows]
        return db.conn.execute(f"SELECT 1 FROM jobs WHERE status = ? AND {mine} AND id NOT IN ({_marks(ids)}) LIMIT 1",
                               [JobStatus.RUNNING, *of_mine, *ids]).fetchone() is not None

    @staticmethod
    def _not_charged(db: Database, started: list[dict[str, Any]], reading: list[dict[str, Any]],
                     found: Recovery) -> None:
        """A process died with runs (``started``) and decodes ahead (``reading``) in flight: the death was any
        of theirs. None is charged (a run's attempt is handed back); each goes back queued to run alone."""
        runs, decodes = _jobs_said(started), _jobs_said(reading)
        for row in started + reading:
            if row in started:
                note = (f"interrupted (assetd stopped while it ran and {decodes} was decoded ahead: either could have "
                        "caused it, neither is charged); runs alone next")
            else:
                note = (f"interrupted (assetd stopped while it was decoded ahead during the run of {runs}: either "
                        "could have caused it, neither is charged); runs alone next")
            db.conn.execute(f"UPDATE jobs SET status = ?, {_UNCHARGE}, alone = 1, lease_expires = NULL, worker = NULL,"
                            " error = ? WHERE id = ?", [JobStatus.QUEUED, note, row["id"]])
        found.shared.append(sorted(r["id"] for r in started + reading))
        found.reading += [r["id"] for r in reading]

    def _charge(self, db: Database, row: dict[str, Any], now: float, found: Recovery, *, reading: bool) -> None:
        """The process died with this job's run (or, ``reading``, its decode ahead) going: it counts a crash, is
        quarantined once it has ``quarantine_after_crashes`` of them, failed once out of attempts, else queued
        again."""
        found.started.append(row["id"])
        if reading:
            found.reading.append(row["id"])
        crashes, shown = row["crashes"] + 1, printable(row["input_path"])
        verdict = self._crash_verdict(row["attempts"], row["max_attempts"], crashes)
        if verdict == OUT_OF_ATTEMPTS:
            error = (f"{shown}: the worker stopped while processing it {crashes} time(s) (crash or kill); gave "
                     f"up after max_attempts ({row['attempts']} attempts)")
        elif verdict == QUARANTINED:
            error = (f"{shown}: quarantined: assetd stopped {crashes} times while running this job (crash or "
                     "kill); its other jobs went on")
        else:
            doing = "decoding it ahead" if reading else "running it"
            error = f"interrupted (assetd stopped while {doing}); redoing"
        if verdict is not None:
            found.failed.append(row["id"])
        self._record_crash(db, row["id"], now, crashes, error, failed=verdict is not None)

    def _crash_verdict(self, attempts: int, max_attempts: int, crashes: int) -> str | None:
        """What a crash (its count ``crashes`` included) makes of a job whose run had started: failed for good
        (``OUT_OF_ATTEMPTS``, ``QUARANTINED``), or None: queued again. One rule for assetd dying (``_charge``) and
        a Ray actor dying under the job (``charge_crash``)."""
        if attempts >= max_attempts:
            return OUT_OF_ATTEMPTS
        return QUARANTINED if crashes >= self.quarantine_after_crashes else None

    @staticmethod
    def _record_crash(db: Database, job_id: int, now: float, crashes: int, error: str, *, failed: bool,
                      ran_on: str | None = None) -> None:
        """A crash charged: the job failed for good (``failed``) or queued again, ``error`` its reason or note."""
        if failed:
            db.conn.execute("UPDATE jobs SET status = ?, finished_at = ?, lease_expires = NULL, crashes = ?,"
                            " chain_started_at = NULL, reading_since = NULL, error = ?, ran_on = COALESCE(?, ran_on)"
                            " WHERE id = ?", [JobStatus.FAILED, now, crashes, error, ran_on, job_id])
        else:
            db.conn.execute("UPDATE jobs SET status = ?, lease_expires = NULL, worker = NULL, crashes = ?,"
                            " chain_started_at = NULL, reading_since = NULL, error = ?, ran_on = COALESCE(?, ran_on)"
                            " WHERE id = ?", [JobStatus.QUEUED, crashes, error, ran_on, job_id])

    def reap_expired(self) -> Recovery:
        """While assetd runs: the running jobs whose lease ran out (the process holding them died: an ``assetd
        process`` killed beside the daemon) go back to the queue or fail for good, as at start (``recover``);
        the caller reports those failed (the daemon's workers, every few seconds: ``Worker._reap``)."""
        with self._immediate() as db:
            return self._reap_expired(db, time.time())

    def recover(self, keep: Callable[[str | None], bool] = lambda owner: False) -> Recovery:
        """At daemon start (single instance): jobs still marked running were cut off; queue them again (a job
        whose run had started counts a crash, see ``_reap_expired``).

        ``keep(owner)``: leave this owner's jobs running (an ``assetd process`` that is still at work)."""
        with self._immediate() as db:
            running = db.conn.execute("SELECT id, worker FROM jobs WHERE status = ?", [JobStatus.RUNNING])
            ids = [job_id for job_id, owner in running if not keep(owner)]
            return self._reap_expired(db, time.time(), only=ids) if ids else Recovery()

    def recover_orphans(self, keep: Callable[[str | None], bool] = lambda owner: False) -> list[int]:
        """``recover``, returning the ids of every job it took back."""
        return self.recover(keep).ids

    def charge_crash(self, job_id: int, owner: str, why: str, ran_on: str | None = None) -> JobStatus | None:
        """The process running ``job_id``'s chain for ``owner`` died under it (a Ray actor, its node lost), while
        this one lives on: the job counts a crash as if assetd had died (``_reap_expired``'s rule: quarantined at
        ``quarantine_after_crashes``, failed once out of attempts, else queued again at once); ``why`` names
        what stopped ("a Ray actor"), ``ran_on`` where ("actor-2 on gpu-box-1": kept in ``jobs.ran_on`` and named
        in the note, so the technician knows which box the file stopped). Returns the job's new status, or None
        when ``owner`` no longer holds it."""
        now = time.time()
        with self._immediate() as db:
            row = db.conn.execute("SELECT input_path, attempts, max_attempts, crashes, chain_started_at FROM jobs"
                                  " WHERE id = ? AND status = ? AND worker = ?",
                                  [job_id, JobStatus.RUNNING, owner]).fetchone()
            if row is None:
                return None
            input_path, attempts, max_attempts, crashes, started = row
            if started is None:  # only claimed ahead: nothing of it ran there
                db.conn.execute(f"UPDATE jobs SET status = ?, {_UNCHARGE}, lease_expires = NULL, worker = NULL"
                                " WHERE id = ?",
                                [JobStatus.QUEUED, job_id])
                return JobStatus.QUEUED
            crashes, shown = crashes + 1, printable(input_path)
            last = f" (last: {ran_on})" if ran_on else ""
            verdict = self._crash_verdict(attempts, max_attempts, crashes)
            if verdict == OUT_OF_ATTEMPTS:
                error = (f"{shown}: {why} stopped while processing it {crashes} time(s){last}; gave up after "
                         f"max_attempts ({attempts} attempts)")
            elif verdict == QUARANTINED:
                error = (f"{shown}: quarantined: it stopped {why} {crashes} times{last}; the other jobs went on; look "
                         f"at the file, then `assetd retry {job_id}`")
            else:
                error = f"interrupted ({why} stopped while running it{last}); redoing"
            self._record_crash(db, job_id, now, crashes, error, failed=verdict is not None, ran_on=ran_on)
            return JobStatus.QUEUED if verdict is None else JobStatus.FAILED

    def stale_queued(self, current_versions: dict[str, str]) -> list[Job]:
        """Queued jobs whose rule is gone or has another version now."""
        return [j for j in self.jobs(JobStatus.QUEUED.value) if current_versions.get(j.rule) != j.rule_version]

    def adopt_version(self, job_id: int, version: str, owner: str | None = None) -> bool:
        """A queued job made under an older rule version runs under ``version`` instead (nothing of it was
        published yet); with ``owner``: the job that owner holds, about to run. False when a job for the same
        content and path under ``version`` exists already."""
        which, params = ("status = ?", [JobStatus.QUEUED]) if owner is None else (
            "status = ? AND worker = ?", [JobStatus.RUNNING, owner])
        with self._immediate() as db:
            cur = db.conn.execute(f"UPDATE OR IGNORE jobs SET rule_version = ?, error = NULL WHERE id = ? AND {which}",
                                  [version, job_id, *params])
            return cur.rowcount == 1

    def job_for(self, job: Job, version: str) -> Job | None:
        """The job for ``job``'s content (image and masks) and path under another ``version`` of its rule, if there
        is one (for a re-run: the re-run of the same rank)."""
        rows = self.db.execute_returning_dicts(
            "SELECT * FROM jobs WHERE input_hash = ? AND masks = ? AND rule = ? AND rule_version = ? AND input_path = ?"
            " AND rerun_seq = ?", [job.input_hash, job.masks, job.rule, version, job.input_path, job.rerun_seq])
        return Job.from_row(rows[0]) if rows else None

    def earlier_version_job(self, input_hash: str, rule: str, version: str, input_path: str,
                            masks: str = "") -> Job | None:
        """The latest finished job of ``rule`` for this content (image and ``masks``) at this path under another
        version."""
        rows = self.db.execute_returning_dicts(
            "SELECT * FROM jobs WHERE input_hash = ? AND masks = ? AND rule = ? AND input_path = ? AND rule_version != ?"
            f" AND status IN ({_marks(FINISHED)}) ORDER BY id DESC LIMIT 1",
            [input_hash, masks, rule, input_path, version, *FINISHED])
        return Job.from_row(rows[0]) if rows else None

    def rule_inputs(self, rule: str, since: float | None = None) -> list[Job]:
        """The latest finished job of ``rule`` for each input path it took (finished at or after ``since``)."""
        sql = ("SELECT * FROM jobs WHERE id IN (SELECT MAX(id) FROM jobs WHERE rule = ? GROUP BY input_path)"
               f" AND status IN ({_marks(FINISHED)})")
        params: list[Any] = [rule, *FINISHED]
        if since is not None:
            sql += " AND finished_at >= ?"
            params.append(since)
        return [Job.from_row(r) for r in self.db.execute_returning_dicts(sql + " ORDER BY id", params)]

    def last_versions(self) -> dict[str, str]:
        """The version of each rule's most recent job."""
        rows = self.db.conn.execute(
            "SELECT rule, rule_version FROM jobs WHERE id IN (SELECT MAX(id) FROM jobs GROUP BY rule)")
        return {rule: version for rule, version in rows}

    def twin(self, job: Job) -> Job | None:
        """Another job with the same content (image and masks) and rule version: the latest done one, else an
        earlier one still queued or running (its outputs will come), else None. A re-run has none (it runs on purpose),
        and a re-run with one-off options is nobody's twin (its outputs are not the rule's). A done job that copied
        its own outputs from a twin is nobody's twin either: copies come only from outputs a chain made, so two
        twins never copy from each other in a loop (job 5 from job 7 while job 7 says it came from job 5)."""
        if job.rerun_of is not None:
            return None
        rows = self.db.execute_returning_dicts(
            "SELECT * FROM jobs WHERE input_hash = :hash AND masks = :masks AND rule = :rule"
            " AND rule_version = :version AND id != :id AND overrides IS NULL"
            " AND ((status = :done AND copied_from IS NULL) OR (status IN (:queued, :running) AND id < :id))"
            " ORDER BY status = :done DESC, id DESC LIMIT 1",
            {"hash": job.input_hash, "masks": job.masks, "rule": job.rule, "version": job.rule_version, "id": job.id,
             "done": JobStatus.DONE, "queued": JobStatus.QUEUED, "running": JobStatus.RUNNING})
        return Job.from_row(rows[0]) if rows and job.readable else None

    def claim_next(self, worker: str, lease_seconds: float, only: list[int] | None = None, *,
                   ahead: bool = False, skip_rules: Collection[str] = (),
                   skip_under: Collection[Path | str] = ()) -> Job | None:
        """Atomically take the oldest due job (optionally among ``only``) and mark it running for ``worker``.

        ``ahead``: claimed to be read ahead of its run, which ``begin`` starts later; nothing is charged until
        then; its decode is taken to start at once (``reading_since``, until ``read_ahead_done``). Otherwise the
        run starts now (``begin`` at once). A job with a crash, or one marked ``alone``, runs alone in its process:
        while one runs, this process claims nothing else, and it is claimed only when nothing else of this
        process runs (its turn waits for them).

        ``skip_rules``, ``skip_under``: leave the jobs of these rules, and those whose input lies under one of
        these folders, queued (a problem process pauses them: ``health.Problems.blocked``)."""
        now = time.time()
        with self._immediate() as db:
            mine, of_mine = _same_process(worker)
            if db.conn.execute(f"SELECT 1 FROM jobs WHERE status = ? AND (crashes > 0 OR alone) AND {mine} LIMIT 1",
                               [JobStatus.RUNNING, *of_mine]).fetchone():
                return None
            sql = "SELECT id, crashes > 0 OR alone FROM jobs WHERE status = ? AND next_attempt_at <= ?"
            params: list[Any] = [JobStatus.QUEUED, now]
            if only is not None:
                if not only:
                    return None
                sql += f" AND id IN ({_marks(only)})"
                params += list(only)
            if skip_rules:
                sql += f" AND rule NOT IN ({_marks(skip_rules)})"
                params += list(skip_rules)
            for root in skip_under:  # a prefix compared as text: no LIKE, so no wildcard in a folder name counts
                prefix = str(root).rstrip("/") + "/"
                sql += " AND substr(input_path, 1, ?) != ?"
                params += [len(prefix), prefix]
            row = db.conn.execute(sql + " ORDER BY next_attempt_at, id LIMIT 1", params).fetchone()
            if row is None:
                return None
            if row[1] and db.conn.execute(f"SELECT 1 FROM jobs WHERE status = ? AND {mine} LIMIT 1",
                                          [JobStatus.RUNNING, *of_mine]).fetchone():
                return None
            db.conn.execute(
                "UPDATE jobs SET status = ?, lease_expires = ?, worker = ?, started_at = ?, chain_started_at = NULL,"
                " reading_since = ? WHERE id = ?",
                [JobStatus.RUNNING, now + lease_seconds, worker, now, now if ahead else None, row[0]])
            if not ahead:
                self._begin(db, row[0], worker, now)
            out = db.execute_returning_dicts("SELECT * FROM jobs WHERE id = ?", [row[0]])[0]
        return Job.from_row(out)

    def begin(self, job_id: int, owner: str) -> int | None:
        """The job's own run starts now (its chain, or the copy of its twin's outputs): the attempt is charged,
        and a crash from now on is this job's. Idempotent per claim. Returns the attempt number, or None when
        ``owner`` does not hold the job."""
        with self._immediate() as db:
            self._begin(db, job_id, owner, time.time())
            row = db.conn.execute("SELECT attempts FROM jobs WHERE id = ? AND status = ? AND worker = ?",
                                  [job_id, JobStatus.RUNNING, owner]).fetchone()
        return row[0] if row else None

    def read_ahead_done(self, job_id: int, owner: str) -> None:
        """The decode of ``job_id``, claimed ahead by ``owner``, ended (decoded, failed or cancelled): a death of the
        process from now on is not its decoder's doing (``_reap_expired``)."""
        self.db.conn.execute("UPDATE jobs SET reading_since = NULL WHERE id = ? AND status = ? AND worker = ?"
                             " AND reading_since IS NOT NULL", [job_id, JobStatus.RUNNING, owner])

    @staticmethod
    def _begin(db: Database, job_id: int, owner: str, now: float) -> None:
        db.conn.execute("UPDATE jobs SET attempts = attempts + 1, chain_started_at = ?, reading_since = NULL,"
                        " queue_wait = COALESCE(queue_wait, MAX(? - created_at, 0)) WHERE id = ? AND status = ?"
                        " AND worker = ? AND chain_started_at IS NULL", [now, now, job_id, JobStatus.RUNNING, owner])

    def heartbeat(self, job_id: int, lease_seconds: float, owner: str | None = None) -> None:
        """Renew the lease of a running job; with ``owner``, of every job that owner holds too: the job it claimed
        ahead waits as long as the one running takes, and must not be taken back as a dead worker's meanwhile."""
        sql, params = "UPDATE jobs SET lease_expires = ? WHERE status = ? AND (id = ?", [
            time.time() + lease_seconds, JobStatus.RUNNING, job_id]
        if owner is not None:
            sql += " OR worker = ?"
            params.append(owner)
        self.db.conn.execute(sql + ")", params)

    def record_step(self, job_id: int, attempt: int, step: str, backend: str, seconds: float, device: str = "cpu",
                    gpu_peak_bytes: int | None = None) -> None:
        """One step of a run: how long it took, where it ran and (on CUDA) its GPU memory peak (``/metrics``)."""
        self.db["steps"].insert({"job_id": job_id, "attempt": attempt, "step": step, "backend": backend,
                                 "seconds": seconds, "finished_at": time.time(), "device": device,
                                 "gpu_peak_bytes": gpu_peak_bytes})

    def finish(self, job_id: int, outputs: list[OutputRecord], seconds: float,
               review: list[str] | None = None, copied_from: int | None = None,
               manifests: list[ManifestRecord] | None = None, ran_on: str | None = None) -> None:
        """The job is done; ``review``: reasons a human should look at its outputs (none: NULL);
        ``copied_from``: the twin whose outputs it copied; ``ran_on``: where its chain ran (``jobs.ran_on``). Earlier jobs' records of the same output paths
        are marked replaced by this one; an output waiting for approval replaces only the earlier unpublished
        ones staged at the same place (the published file is replaced when it is approved, ``approval_claim``)."""
        now = time.time()
        with self._immediate() as db:
            db.conn.execute("DELETE FROM manifests WHERE job_id = ?", [job_id])
            if manifests:
                db["manifests"].insert_all([dict(m.__dict__, job_id=job_id, created_at=now) for m in manifests])
            db.conn.execute("DELETE FROM outputs WHERE job_id = ?", [job_id])
            if outputs:
                db["outputs"].insert_all(
                    [dict(o.as_written(), job_id=job_id, created_at=now, replaced_by=None) for o in outputs]
                )
                paths = [o.path for o in outputs if o.staged_path is None]
                db.conn.execute(
                    f"UPDATE outputs SET replaced_by = ? WHERE path IN ({_marks(paths)})"
                    " AND job_id != ? AND replaced_by IS NULL", [job_id, *paths, job_id])
                staged = [o.staged_path for o in outputs if o.staged_path is not None]
                db.conn.execute(
                    f"UPDATE outputs SET replaced_by = ? WHERE staged_path IN ({_marks(staged)})"
                    " AND job_id != ? AND replaced_by IS NULL AND approval IN (?, ?)",
                    [job_id, *staged, job_id, PENDING_APPROVAL, REJECTED])
            db.conn.execute(
                f"UPDATE jobs SET status = ?, finished_at = ?, seconds = ?, error = NULL, {_RAN},"
                " lease_expires = NULL, review = ?, copied_from = ?, ran_on = ? WHERE id = ?",
                [JobStatus.DONE, now, seconds, json.dumps(review) if review else None, copied_from, ran_on,
                 job_id],
            )
            faults.point("db-commit", lambda: self.get(job_id).input_path)

    def fail(self, job_id: int, error: str, ran_on: str | None = None) -> None:
        """The job failed for good; ``ran_on``: where its chain ran when it failed there (``jobs.ran_on``; None: it
        failed before its chain ran, and the place of an earlier run stays)."""
        self._end(job_id, JobStatus.FAILED, error, ran_on)

    def supersede(self, job_id: int, reason: str) -> None:
        """End a job whose input was replaced by a newer version (queued as its own job): not a failure."""
        self._end(job_id, JobStatus.SUPERSEDED, reason)

    def _end(self, job_id: int, status: JobStatus, why: str, ran_on: str | None = None) -> None:
        self.db.conn.execute(
            f"UPDATE jobs SET status = ?, error = ?, finished_at = ?, lease_expires = NULL, {_RAN},"
            " ran_on = COALESCE(?, ran_on) WHERE id = ?",
            [status, why, time.time(), ran_on, job_id],
        )

    def retry_later(self, job_id: int, error: str, delay: float, ran_on: str | None = None) -> JobStatus:
        """A transient failure: queue again after ``delay``, or fail when attempts are used up; ``ran_on``: where
        its chain ran when it failed there (``fail``)."""
        with self._immediate() as db:
            row = db.conn.execute("SELECT attempts, max_attempts FROM jobs WHERE id = ?", [job_id]).fetchone()
            if row and row[0] >= row[1]:
                db.conn.execute(
                    f"UPDATE jobs SET status = ?, error = ?, finished_at = ?, lease_expires = NULL, {_RAN},"
                    " ran_on = COALESCE(?, ran_on) WHERE id = ?",
                    [JobStatus.FAILED, f"{error} (gave up after {row[0]} attempts)", time.time(), ran_on, job_id],
                )
                return JobStatus.FAILED
            db.conn.execute(
                "UPDATE jobs SET status = ?, error = ?, next_attempt_at = ?, lease_expires = NULL,"
                f" worker = NULL, chain_started_at = NULL, {_RAN}, ran_on = COALESCE(?, ran_on) WHERE id = ?",
                [JobStatus.QUEUED, error, time.time() + delay, ran_on, job_id],
            )
            return JobStatus.QUEUED

    def postpone(self, job_id: int, delay: float, note: str) -> None:
        """Back to the queue for ``delay`` seconds without charging the attempt (it waits for a twin)."""
        self.db.conn.execute(
            f"UPDATE jobs SET status = ?, {_UNCHARGE}, lease_expires = NULL,"
            " worker = NULL, next_attempt_at = ?, error = ? WHERE id = ? AND status = ?",
            [JobStatus.QUEUED, time.time() + delay, note, job_id, JobStatus.RUNNING])

    def release(self, job_id: int, owner: str | None = None, note: str | None = None) -> bool:
        """Put a job we were asked to stop back in the queue; the interrupted attempt does not count.

        ``owner``: only if that owner still holds it. ``note``: why, shown as the job's error until it runs.
        Returns whether the job was released."""
        sql = (f"UPDATE jobs SET status = ?, {_UNCHARGE}, lease_expires = NULL,"
               " worker = NULL, error = COALESCE(?, error) WHERE id = ? AND status = ?")
        params: list[Any] = [JobStatus.QUEUED, note, job_id, JobStatus.RUNNING]
        if owner is not None:
            sql += " AND worker = ?"
            params.append(owner)
        return self.db.conn.execute(sql, params).rowcount == 1

    def release_owned(self, owners: list[str], note: str) -> list[int]:
        """Release every job these owners hold (a process about to exit hands its claims back)."""
        return [j.id for j in self._release_running(lambda owner: owner in owners, None, lambda job: note)]

    def release_orphans(self, gone: Callable[[str], bool], only: list[int] | None = None) -> list[Job]:
        """Release the running jobs (optionally among ``only``) whose owner is ``gone``, at once instead of
        when their lease runs out; the interrupted attempt does not count. Returns them as they were."""
        return self._release_running(
            gone, only, lambda job: f"interrupted: its owner ({job.worker}) stopped before finishing it; queued again")

    def _release_running(self, whose: Callable[[str], bool], only: list[int] | None,
                         note: Callable[[Job], str]) -> list[Job]:
        sql = "SELECT * FROM jobs WHERE status = ? AND worker IS NOT NULL"
        params: list[Any] = [JobStatus.RUNNING]
        if only is not None:
            sql += f" AND id IN ({_marks(only)})"
            params += list(only)
        jobs = [Job.from_row(r) for r in self.db.execute_returning_dicts(sql + " ORDER BY id", params)]
        return [job for job in jobs if whose(job.worker or "")
                and self.release(job.id, owner=job.worker, note=note(job))]

    def requeue(self, job_ids: list[int] | None = None, *, failed: bool = False) -> list[int]:
        """``assetd retry``: failed (or given) jobs go back to the queue with fresh attempts."""
        with self._immediate() as db:
            if failed:
                ids = [r[0] for r in db.conn.execute("SELECT id FROM jobs WHERE status = ?", [JobStatus.FAILED])]
            else:
                ids = [r[0] for r in db.conn.execute(
                    f"SELECT id FROM jobs WHERE id IN ({_marks(job_ids or [])})"
                    f" AND status IN ({_marks(FINISHED)})", [*(job_ids or []), *FINISHED])]
            for job_id in ids:
                db.conn.execute(
                    f"UPDATE jobs SET status = ?, attempts = 0, crashes = 0, chain_started_at = NULL, {_RAN},"
                    " next_attempt_at = 0, error = NULL, finished_at = NULL, lease_expires = NULL, review = NULL"
                    " WHERE id = ?", [JobStatus.QUEUED, job_id],
                )
        return ids

    def change_masks(self, job_id: int, masks: str) -> Job | None:
        """``assetd retry`` of a job whose shot has other masks beside it now (one painted after the job ran): the
        job runs with them, so they become part of what it is (``masks``). Returns the job that already is that
        content, rule version and path with these masks (nothing changed), or None when the job now has them."""
        with self._immediate() as db:
            try:
                db.conn.execute("UPDATE jobs SET masks = ? WHERE id = ?", [masks, job_id])
            except sqlite3.IntegrityError:
                row = db.execute_returning_dicts(
                    "SELECT other.* FROM jobs AS this JOIN jobs AS other ON other.input_hash = this.input_hash"
                    " AND other.rule = this.rule AND other.rule_version = this.rule_version"
                    " AND other.input_path = this.input_path AND other.rerun_seq = this.rerun_seq"
                    " AND other.masks = ? WHERE this.id = ?", [masks, job_id])
                return Job.from_row(row[0]) if row else None
        return None

    def jobs(self, status: str | None = None, limit: int | None = None) -> list[Job]:
        """Jobs in id order (oldest first); with ``limit``, only the newest ``limit`` of them.

        ``status`` is a ``JobStatus`` value, ``"review"`` (done, marked for review), ``"awaiting"`` (done, with
        outputs awaiting approval) or ``"rejected"`` (done, with rejected outputs not replaced since)."""
        sql = "SELECT * FROM jobs"
        params: list[Any] = []
        if status == REVIEW:
            sql += " WHERE status = ? AND review IS NOT NULL"
            params.append(JobStatus.DONE)
        elif status in (AWAITING, REJECTED):
            sql += f" WHERE {self._AWAITING}"
            params += [JobStatus.DONE, PENDING_APPROVAL if status == AWAITING else REJECTED]
        elif status:
            sql += " WHERE status = ?"
            params.append(status)
        sql += " ORDER BY id DESC"
        if limit:
            sql += " LIMIT ?"
            params.append(limit)
        return [Job.from_row(r) for r in reversed(self.db.execute_returning_dicts(sql, params))]

    def outputs(self, job_id: int) -> list[OutputRecord]:
        """A job's outputs, in the order written."""
        rows = self.db.execute_returning_dicts("SELECT * FROM outputs WHERE job_id = ? ORDER BY id", [job_id])
        return [_output_record(r) for r in rows]

    def manifests(self, job_id: int) -> list[ManifestRecord]:
        """A job's manifest files (the central one first, then those beside its outputs)."""
        rows = self.db.execute_returning_dicts("SELECT * FROM manifests WHERE job_id = ? ORDER BY id", [job_id])
        return [ManifestRecord(path=r["path"], bytes=r["bytes"], sha256=r["sha256"]) for r in rows]

    def output_owner(self, path: str) -> dict[str, Any] | None:
        """The job that wrote (or is writing) the output or manifest ``path`` last (an output's channel path, or
        where it waits for approval): its id, input hash, input path, path in its inbox and rule (a job that finds
        the name taken says whose it is)."""
        rows = self.db.execute_returning_dicts(
            "SELECT jobs.id AS job_id, jobs.input_hash, jobs.input_path, jobs.rel_path, jobs.rule, written.created_at"
            " FROM"
            " (SELECT job_id, created_at, id FROM outputs WHERE path = :p"
            "  UNION ALL SELECT job_id, created_at, id FROM outputs WHERE staged_path = :p"
            "  UNION ALL SELECT job_id, created_at, id FROM manifests WHERE path = :p) AS written"
            " JOIN jobs ON jobs.id = written.job_id ORDER BY written.created_at DESC, written.id DESC LIMIT 1",
            {"p": path})
        return {k: rows[0][k] for k in ("job_id", "input_hash", "input_path", "rel_path", "rule")} if rows else None

    def reserve_output(self, job_id: int, path: str, channel: str, step: str, sha256: str | None = None,
                       size: int | None = None, staged_path: str | None = None, variant: str | None = None) -> None:
        """Claim an output path before writing it, so a redo after a crash recognises its own file; with the
        hash of what is about to be written there, so a job failed for good can withdraw exactly that.
        ``staged_path``: the file is written there to wait for approval (``path`` stays claimed meanwhile)."""
        self.db["outputs"].insert({"job_id": job_id, "path": path, "channel": channel, "step": step,
                                   "sha256": sha256, "bytes": size, "reserved": 1, "created_at": time.time(),
                                   "staged_path": staged_path, "variant": variant,
                                   "approval": PENDING_APPROVAL if staged_path else None})

    def reserve_manifest(self, job_id: int, path: str, sha256: str | None = None, size: int | None = None) -> None:
        """Claim a manifest path before writing it (as ``reserve_output``)."""
        self.db["manifests"].insert({"job_id": job_id, "path": path, "sha256": sha256, "bytes": size,
                                     "reserved": 1, "created_at": time.time()})

    def to_withdraw(self) -> list[tuple[Job, list[ManifestRecord]]]:
        """Jobs failed for good that may have published files before they failed (a crash between renames, a
        failure after them): each with the paths and hashes its runs wrote (reserved rows; an output waiting for
        approval: where it was staged)."""
        rows = self.db.execute_returning_dicts(
            "SELECT written.* FROM (SELECT job_id, COALESCE(staged_path, path) AS path, bytes, sha256 FROM outputs"
            " WHERE reserved = 1 UNION ALL"
            " SELECT job_id, path, bytes, sha256 FROM manifests WHERE reserved = 1) AS written"
            " JOIN jobs ON jobs.id = written.job_id AND jobs.status = ? ORDER BY written.job_id", [JobStatus.FAILED])
        found: dict[int, list[ManifestRecord]] = {}
        for r in rows:
            found.setdefault(r["job_id"], []).append(ManifestRecord(path=r["path"], bytes=r["bytes"],
                                                                    sha256=r["sha256"]))
        return [(job, found[job.id]) for job in filter(None, map(self.get, found))]

    def withdrawn(self, job_id: int, removed: list[str], note: str) -> bool:
        """The files a job failed for good had published were removed (``removed``): its reserved rows go, and
        ``note`` is added to its error. False when it was already done (another worker) or it is failed no more."""
        with self._immediate() as db:
            if db.conn.execute("SELECT 1 FROM jobs WHERE id = ? AND status = ?", [job_id, JobStatus.FAILED]
                               ).fetchone() is None:
                return False
            gone = sum(db.conn.execute(f"DELETE FROM {table} WHERE job_id = ? AND reserved = 1", [job_id]).rowcount
                       for table in ("outputs", "manifests"))
            if gone and removed:
                db.conn.execute("UPDATE jobs SET error = COALESCE(error || '; ', '') || ? WHERE id = ?",
                                [note, job_id])
            return bool(gone)

    def steps(self, job_id: int) -> list[dict[str, Any]]:
        return self.db.execute_returning_dicts("SELECT * FROM steps WHERE job_id = ? ORDER BY id", [job_id])

    def counts(self) -> dict[str, int]:
        """Jobs per state (they add up to the number of jobs; see ``review_count`` for the done ones to look at)."""
        out = {s.value: 0 for s in JobStatus}
        for status, n in self.db.conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status"):
            out[status] = n
        return out

    def read_ahead_count(self) -> int:
        """How many running jobs are only claimed to be read ahead (their run has not started: ``READ_AHEAD``)."""
        return self.db.conn.execute("SELECT COUNT(*) FROM jobs WHERE status = ? AND chain_started_at IS NULL",
                                    [JobStatus.RUNNING]).fetchone()[0]

    def review_count(self) -> int:
        """How many done jobs are marked for review."""
        return self.db.conn.execute(
            "SELECT COUNT(*) FROM jobs WHERE status = ? AND review IS NOT NULL", [JobStatus.DONE]).fetchone()[0]

    def busy(self) -> bool:
        row = self.db.conn.execute(
            f"SELECT COUNT(*) FROM jobs WHERE status IN ({_marks(PENDING)})", PENDING).fetchone()
        return bool(row[0])

    def finished_between(self, start: float, end: float) -> list[Job]:
        rows = self.db.execute_returning_dicts(
            f"SELECT * FROM jobs WHERE status IN ({_marks(FINISHED)}) AND finished_at > ? AND finished_at <= ?"
            " ORDER BY id", [*FINISHED, start, end])
        return [Job.from_row(r) for r in rows]

    # -- inputs moved out of the inboxes (after: move) ------------------------------------------
    def in_use_by_another(self, input_path: str, job_id: int) -> bool:
        """Whether a job other than ``job_id`` that is queued or running reads ``input_path``."""
        row = self.db.conn.execute(
            f"SELECT 1 FROM jobs WHERE input_path = ? AND id != ? AND status IN ({_marks(PENDING)}) LIMIT 1",
            [input_path, job_id, *PENDING]).fetchone()
        return row is not None

    def last_ended(self, input_path: str) -> Job | None:
        """The newest job reading ``input_path`` that ended for good (done or failed), or None."""
        rows = self.db.execute_returning_dicts(
            f"SELECT * FROM jobs WHERE input_path = ? AND status IN ({_marks(FINISHED)}) ORDER BY id DESC LIMIT 1",
            [input_path, *FINISHED])
        return Job.from_row(rows[0]) if rows else None

    def record_move(self, job_id: int, source: str, dest: str, kind: str, sidecar: str | None = None) -> None:
        self.db["moves"].insert({"job_id": job_id, "source": source, "dest": dest, "kind": kind, "sidecar": sidecar,
                                 "moved_at": time.time(), "returned_at": None})

    def moved(self, job_id: int) -> Move | None:
        """Where a job's input was moved and is still (the latest move not returned), or None."""
        rows = self.db.execute_returning_dicts(
            "SELECT * FROM moves WHERE job_id = ? AND returned_at IS NULL ORDER BY id DESC LIMIT 1", [job_id])
        return Move(**rows[0]) if rows else None

    def moved_from(self, prefix: str) -> list[Move]:
        """The moves not returned whose input was at a path starting with ``prefix`` (``/inbox/shot.``: the shots
        named ``shot`` in that folder, any extension), newest first: where a mask's shot went (a mask that arrives
        after its shot was moved to done/)."""
        rows = self.db.execute_returning_dicts(
            "SELECT * FROM moves WHERE returned_at IS NULL AND substr(source, 1, ?) = ? ORDER BY id DESC",
            [len(prefix), prefix])
        return [Move(**row) for row in rows]

    def move_returned(self, move_id: int) -> None:
        """``assetd retry`` put the input back where it was (or found it there)."""
        self.db.conn.execute("UPDATE moves SET returned_at = ? WHERE id = ?", [time.time(), move_id])

    # -- notifications outbox ------------------------------------------------------------------
    def add_message(self, kind: str, title: str, body: str) -> int:
        return int(self.db["outbox"].insert(
            {"kind": kind, "title": title, "body": body, "created_at": time.time(), "attempts": 0,
             "next_attempt_at": 0.0}).last_pk)

    def due_messages(self, limit: int = 20) -> list[Message]:
        rows = self.db.execute_returning_dicts(
            "SELECT * FROM outbox WHERE delivered_at IS NULL AND next_attempt_at <= ? ORDER BY id LIMIT ?",
            [time.time(), limit])
        return [Message(id=r["id"], kind=r["kind"], title=r["title"], body=r["body"], attempts=r["attempts"])
                for r in rows]

    def undelivered(self) -> int:
        return self.db.conn.execute("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL").fetchone()[0]

    def mark_delivered(self, message_id: int) -> None:
        self.db.conn.execute("UPDATE outbox SET delivered_at = ?, attempts = attempts + 1 WHERE id = ?",
                             [time.time(), message_id])

    def mark_undelivered(self, message_id: int, error: str, retry_at: float) -> None:
        self.db.conn.execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? WHERE id = ?",
            [error, retry_at, message_id])

    # -- problem processes (pipeline.health) --------------------------------------------------------
    def problem_started(self, key: str, message: str, scope: str, at: float) -> int:
        """Record an outage of the process that starts now; returns its row id."""
        return int(self.db["problems"].insert({"key": key, "message": message, "scope": scope, "started_at": at,
                                               "alerted": 0}).last_pk)

    def problem_changed(self, problem_id: int, message: str) -> None:
        """The same outage, described anew (a broken file saved again, broken another way)."""
        self.db.conn.execute("UPDATE problems SET message = ? WHERE id = ?", [message, problem_id])

    def problem_alerted(self, problem_id: int) -> None:
        """Its "on" alert was queued (so a "cleared" one goes out when it ends)."""
        self.db.conn.execute("UPDATE problems SET alerted = 1 WHERE id = ?", [problem_id])

    def problem_cleared(self, problem_id: int, at: float, message: str | None = None) -> None:
        self.db.conn.execute("UPDATE problems SET cleared_at = ?, cleared_message = ? WHERE id = ?"
                             " AND cleared_at IS NULL", [at, message, problem_id])

    def end_problems(self, at: float, message: str) -> int:
        """Close every outage still open (a daemon starting: the one that recorded them is gone and its
        successor measures again). Returns how many were open."""
        return self.db.conn.execute("UPDATE problems SET cleared_at = ?, cleared_message = ? WHERE cleared_at IS NULL",
                                    [at, message]).rowcount

    def active_problems(self) -> list[dict[str, Any]]:
        """The outages not cleared yet, oldest first (``assetd jobs``)."""
        return self.db.execute_returning_dicts(
            "SELECT * FROM problems WHERE cleared_at IS NULL ORDER BY started_at, id")

    # -- inbox folders watched ---------------------------------------------------------------------
    def inbox_watched(self, root: Path | str) -> bool | None:
        """Whether the inbox folder ``root`` was a mount point when a watcher last watched it on this database; None
        when none ever did. A folder watched before and missing now is an inbox away (a share not mounted, a folder
        renamed away), never one to create (``create: true``), and one that was a mount point and is not one now is
        the empty folder under an unmounted share. A database from before this record (no folder recorded at all):
        a folder holding a job's input counts as watched (not a mount point)."""
        root = os.path.abspath(root)
        seen = self.get_state(INBOX_WATCHED + root)
        if seen is not None:
            return bool(seen.get("mount"))
        if self.db.conn.execute("SELECT 1 FROM state WHERE substr(key, 1, ?) = ? LIMIT 1",
                                [len(INBOX_WATCHED), INBOX_WATCHED]).fetchone() is not None:
            return None
        prefix = root.rstrip(os.sep) + os.sep
        found = self.db.conn.execute("SELECT 1 FROM jobs WHERE substr(input_path, 1, ?) = ? LIMIT 1",
                                     [len(prefix), prefix]).fetchone()
        return False if found is not None else None

    def record_inbox_watched(self, root: Path | str, mount: bool) -> None:
        """A watcher watches the inbox folder ``root`` now; ``mount``: it is a mount point (``inbox_watched``)."""
        self.set_state(INBOX_WATCHED + os.path.abspath(root), {"mount": bool(mount)})

    # -- small key/value state -----------------------------------------------------------------
    def get_state(self, key: str, default: Any = None) -> Any:
        row = self.db.conn.execute("SELECT value FROM state WHERE key = ?", [key]).fetchone()
        return json.loads(row[0]) if row else default

    def set_state(self, key: str, value: Any) -> None:
        self.db.conn.execute("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", [key, json.dumps(value)])

    # -- approvals (review page) -------------------------------------------------------------------
    def outputs_by_id(self, output_ids: Collection[int]) -> list[OutputRecord]:
        """These outputs (any job, any state), in id order; unknown ids are left out."""
        ids = list(output_ids)
        rows = self.db.execute_returning_dicts(
            f"SELECT * FROM outputs WHERE id IN ({_marks(ids)}) AND reserved IS NULL ORDER BY id", ids)
        return [_output_record(r) for r in rows]

    # An output awaiting approval: pending, not replaced by a later job's, of a job that ended done (a running
    # job's rows are only reserved; a requeued job's wait for its new end).
    _WAITING = ("FROM outputs JOIN jobs ON jobs.id = outputs.job_id WHERE outputs.approval = ?"
                 " AND outputs.replaced_by IS NULL AND outputs.reserved IS NULL AND jobs.status = ?")
    _WAITING_PARAMS = (PENDING_APPROVAL, JobStatus.DONE)
    _WAITING_OF_JOBS = _WAITING.replace("FROM outputs JOIN jobs",  # the same, for a few jobs: ``_approval_counts``
                                        "FROM outputs INDEXED BY idx_outputs_job_id CROSS JOIN jobs")

    def awaiting_approval(self, since: float | None = None) -> list[OutputRecord]:
        """The outputs of done jobs waiting for approval (not replaced by a later job's), by job then id; with
        ``since``: only those of jobs finished at or after it."""
        sql, params = f"SELECT outputs.* {self._WAITING}", list(self._WAITING_PARAMS)
        if since is not None:
            sql += " AND jobs.finished_at >= ?"
            params.append(since)
        rows = self.db.execute_returning_dicts(sql + " ORDER BY outputs.job_id, outputs.id", params)
        return [_output_record(r) for r in rows]

    def awaiting_counts(self, job_ids: Collection[int] | None = None) -> dict[int, int]:
        """How many outputs of each done job (of ``job_ids``; None: every job) wait for approval; jobs with none
        are left out."""
        return self._approval_counts(self._WAITING_PARAMS, job_ids)

    def awaiting_total(self) -> int:
        """How many outputs of done jobs wait for approval."""
        return self.db.conn.execute(f"SELECT COUNT(*) {self._WAITING}", self._WAITING_PARAMS).fetchone()[0]

    # A rejected output left: rejected, not replaced since by a later job's (an approved re-run), of a done job
    # (one queued again stages anew). The same rows as ``_WAITING`` with the other verdict.
    _REJECTED_PARAMS = (REJECTED, JobStatus.DONE)

    def rejected_counts(self, job_ids: Collection[int] | None = None) -> dict[int, int]:
        """How many rejected outputs (not replaced since) each done job (of ``job_ids``; None: every job) has; jobs
        with none are left out."""
        return self._approval_counts(self._REJECTED_PARAMS, job_ids)

    def rejected_total(self) -> int:
        """How many outputs of done jobs are rejected and not replaced since."""
        return self.db.conn.execute(f"SELECT COUNT(*) {self._WAITING}", self._REJECTED_PARAMS).fetchone()[0]

    def replaced_by(self, job_ids: Collection[int] | None = None) -> dict[int, int]:
        """The latest job that wrote again the outputs of each job (of ``job_ids``; None: every job) whose outputs
        were written again since (a re-run, the same file dropped again); jobs with none are left out."""
        sql, params = "SELECT job_id, MAX(replaced_by) FROM outputs WHERE replaced_by IS NOT NULL", []
        if job_ids is not None:
            params = list(job_ids)
            sql += f" AND job_id IN ({_marks(params)})"
        return dict(self.db.conn.execute(sql + " GROUP BY job_id", params).fetchall())

    def _approval_counts(self, params: tuple[Any, ...], job_ids: Collection[int] | None) -> dict[int, int]:
        sql, params_ = f"SELECT outputs.job_id, COUNT(*) {self._WAITING}", list(params)
        if job_ids is not None:
            # a few jobs (a page of rows): their outputs by the job_id index, then each one's job, instead of every
            # output of that verdict or every done job, which SQLite picks otherwise (4 ms, not 0.1, at 10,000 jobs)
            ids = list(job_ids)
            sql = (f"SELECT outputs.job_id, COUNT(*) {self._WAITING_OF_JOBS}"
                   f" AND outputs.job_id IN ({_marks(ids)})")
            params_ += ids
        return dict(self.db.conn.execute(sql + " GROUP BY outputs.job_id", params_).fetchall())

    @contextlib.contextmanager
    def approval_claim(self, output_ids: Collection[int], states: Collection[str]) -> Iterator[list[OutputRecord]]:
        """A write transaction holding those of ``output_ids`` still in one of ``states`` (not replaced, their
        job done): what the caller decides about them inside the ``with`` block (``record_decision``) is
        committed with it, or nothing is. A second approval at the same moment waits, then finds them decided."""
        ids, wanted = list(output_ids), list(states)
        with self._immediate() as db:
            rows = db.execute_returning_dicts(
                f"SELECT outputs.* FROM outputs JOIN jobs ON jobs.id = outputs.job_id WHERE outputs.id IN"
                f" ({_marks(ids)}) AND outputs.approval IN ({_marks(wanted)}) AND outputs.replaced_by IS NULL"
                " AND outputs.reserved IS NULL AND jobs.status = ? ORDER BY outputs.id",
                [*ids, *wanted, JobStatus.DONE])
            yield [_output_record(r) for r in rows]

    def record_decision(self, records: list[OutputRecord], verdict: str, by: str, reason: str | None = None) -> None:
        """Inside ``approval_claim``: ``records`` were approved (their files are now at their paths: the earlier
        records of those paths, published or still waiting, are marked replaced by their job) or rejected; each
        decision is recorded."""
        now = time.time()
        conn = self.db.conn
        for record in records:
            if verdict == APPROVED:
                conn.execute("UPDATE outputs SET approval = ?, staged_path = NULL WHERE id = ?", [APPROVED, record.id])
                conn.execute("UPDATE outputs SET replaced_by = ? WHERE path = ? AND id < ? AND job_id != ?"
                             " AND replaced_by IS NULL", [record.job_id, record.path, record.id, record.job_id])
            else:
                conn.execute("UPDATE outputs SET approval = ? WHERE id = ?", [verdict, record.id])
            conn.execute("INSERT INTO decisions (output_id, job_id, verdict, reason, by, at) VALUES (?, ?, ?, ?, ?, ?)",
                         [record.id, record.job_id, verdict, reason, by, now])

    def recorded_hashes(self, path: str) -> set[str]:
        """The sha256 of every file the store has recorded at output ``path`` (any job, replaced or not)."""
        return {row[0] for row in self.db.conn.execute("SELECT sha256 FROM outputs WHERE path = ? AND sha256 IS NOT"
                                                       " NULL", [path])}

    def decisions(self, job_id: int) -> list[dict[str, Any]]:
        """Who approved or rejected which of a job's outputs, when and why, oldest first."""
        return self.db.execute_returning_dicts("SELECT * FROM decisions WHERE job_id = ? ORDER BY at, id", [job_id])

    def last_decision(self, output_id: int) -> dict[str, Any] | None:
        rows = self.db.execute_returning_dicts(
            "SELECT * FROM decisions WHERE output_id = ? ORDER BY at DESC, id DESC LIMIT 1", [output_id])
        return rows[0] if rows else None

    # -- re-runs (review page) ----------------------------------------------------------------------
    def add_rerun(self, source: Job, *, rule: str, rule_version: str, overrides: dict[str, dict[str, Any]],
                  max_attempts: int, masks: str | None = None) -> Job:
        """Queue a re-run of ``source`` (``assetd rerun``): its content and path under ``rule`` at ``rule_version``,
        with one-off step options ``overrides``, linked by ``rerun_of``; ``masks``: the digest of the masks beside
        the shot now (a re-run uses the current ones; default: ``source``'s). It takes the next ``rerun_seq`` of
        that file under that rule version, so it never meets the intake's job for the file (``enqueue`` looks at
        ``rerun_seq`` 0 only): a file dropped again is still "already done", not a new job."""
        with self._immediate() as db:
            key = [source.input_hash, rule, rule_version, source.input_path]
            seq = db.conn.execute(
                "SELECT COALESCE(MAX(rerun_seq), 0) + 1 FROM jobs WHERE input_hash = ? AND rule = ?"
                " AND rule_version = ? AND input_path = ?", key).fetchone()[0]
            job_id = db.conn.execute(
                "INSERT INTO jobs (input_hash, rule, rule_version, input_path, rel_path, status, attempts,"
                " max_attempts, next_attempt_at, created_at, rerun_of, overrides, rerun_seq, masks)"
                " VALUES (?, ?, ?, ?, ?, ?, 0, ?, 0, ?, ?, ?, ?, ?)",
                [*key, source.rel_path, JobStatus.QUEUED, max_attempts, time.time(), source.id,
                 json.dumps(overrides, sort_keys=True) if overrides else None, seq,
                 source.masks if masks is None else masks]).lastrowid
            row = db.execute_returning_dicts("SELECT * FROM jobs WHERE id = ?", [job_id])[0]
        return Job.from_row(row)

    def rerun_family(self, job_id: int) -> list[Job]:
        """The jobs linked to ``job_id`` by re-runs: the first job, its re-runs, theirs..., ``job_id`` included
        (id order)."""
        rows = self.db.execute_returning_dicts(
            "WITH RECURSIVE up(id, rerun_of) AS (SELECT id, rerun_of FROM jobs WHERE id = ?"
            "   UNION SELECT jobs.id, jobs.rerun_of FROM jobs JOIN up ON jobs.id = up.rerun_of),"
            " down(id) AS (SELECT id FROM up WHERE rerun_of IS NULL"
            "   UNION SELECT jobs.id FROM jobs JOIN down ON jobs.rerun_of = down.id)"
            " SELECT * FROM jobs WHERE id IN (SELECT id FROM down) ORDER BY id", [job_id])
        return [Job.from_row(r) for r in rows]

    def mark_replaced(self, job_id: int, path: str, by: int) -> bool:
        """``job_id``'s record of the output ``path`` is history: job ``by`` (a re-run) replaced it, its file removed
        or left. False when it was marked already."""
        return self.db.conn.execute(
            "UPDATE outputs SET replaced_by = ? WHERE job_id = ? AND path = ? AND replaced_by IS NULL",
            [by, job_id, path]).rowcount > 0

    def input_moved_by(self, input_path: str) -> int | None:
        """The job whose ``after: move`` put the file that was at ``input_path`` where it is now (its latest move
        not returned), or None: a re-run of any job of that file brings it back first."""
        row = self.db.conn.execute(
            "SELECT job_id FROM moves WHERE source = ? AND returned_at IS NULL ORDER BY id DESC LIMIT 1",
            [input_path]).fetchone()
        return row[0] if row else None

    # -- job page (review page) ----------------------------------------------------------------------
    def output_row(self, output_id: int) -> dict[str, Any] | None:
        """One output's record by its id, with its job's id (the job page's files are named by id, never by a
        path from the request); None when there is none or it is only reserved (its job has not finished)."""
        rows = self.db.execute_returning_dicts(
            "SELECT * FROM outputs WHERE id = ? AND reserved IS NULL", [output_id])
        return rows[0] if rows else None

    def output_rows(self, job_id: int) -> list[dict[str, Any]]:
        """A job's output records with their ids, in the order written (reserved ones left out)."""
        return self.db.execute_returning_dicts(
            "SELECT * FROM outputs WHERE job_id = ? AND reserved IS NULL ORDER BY id", [job_id])

    # -- metrics (review page) ----------------------------------------------------------------
    # ``pipeline.metrics`` reads these at each scrape: one GROUP BY per family, so a scrape stays cheap with
    # tens of thousands of jobs, and ``assetd serve`` in another process reports the daemon's work.
    def record_model_load(self, backend: str, model: str, device: str, seconds: float, at: float) -> None:
        """A worker loaded a model (``ModelManager``): its kind, name, device and how long it took."""
        self.db["model_loads"].insert({"backend": backend, "model": model, "device": device, "seconds": seconds,
                                       "at": at})

    def job_tallies(self) -> list[dict[str, Any]]:
        """Per rule and status: how many jobs, how many of them are marked for review, how many are in flight
        (running with their run started, not only claimed ahead) and the last time one finished."""
        return self.db.execute_returning_dicts(
            "SELECT rule, status, COUNT(*) AS jobs, SUM(review IS NOT NULL) AS review,"
            " SUM(chain_started_at IS NOT NULL) AS in_flight, MAX(finished_at) AS last_finished"
            " FROM jobs GROUP BY rule, status")

    def runner_tallies(self) -> list[dict[str, Any]]:
        """Per place a chain ran (``ran_on``: an actor on its node, a local worker on its host): how many jobs it
        finished done and their seconds in all. Jobs done before ``ran_on`` was recorded are left out."""
        return self.db.execute_returning_dicts(
            "SELECT ran_on AS runner, COUNT(*) AS jobs, COALESCE(SUM(seconds), 0) AS seconds FROM jobs"
            " WHERE status = ? AND ran_on IS NOT NULL GROUP BY ran_on", [JobStatus.DONE])

    def step_histogram(self, bounds: list[float], after: int = 0) -> list[dict[str, Any]]:
        """Per step, backend and device (``unknown`` on rows from before it was recorded): how many steps took at
        most each of ``bounds`` seconds (``le`` columns, cumulative), their count and total seconds, the highest
        GPU memory peak recorded (NULL when none ran on CUDA) and the last row id (``last_id``). Steps are only
        ever added: ``after`` (a ``last_id`` seen before) reads only the rows added since, along the primary key."""
        return self._histogram("steps", "seconds", ["step", "backend", "COALESCE(device, 'unknown') AS device"],
                               bounds, where="id > ?", params=[after],
                               extra=", MAX(gpu_peak_bytes) AS gpu_peak_bytes, MAX(id) AS last_id")

    def queue_wait_histogram(self, bounds: list[float]) -> list[dict[str, Any]]:
        """How long jobs waited in the queue before their first run started (jobs that never started are not
        in it), as ``step_histogram``'s columns."""
        return self._histogram("jobs", "queue_wait", [], bounds, where="queue_wait IS NOT NULL")

    def model_load_histogram(self, bounds: list[float]) -> list[dict[str, Any]]:
        """Model load times per backend (the model's kind) and device, as ``step_histogram``'s columns."""
        return self._histogram("model_loads", "seconds", ["backend", "device"], bounds)

    def _histogram(self, table: str, value: str, keys: list[str], bounds: list[float], where: str = "",
                   params: list[Any] | None = None, extra: str = "") -> list[dict[str, Any]]:
        """One GROUP BY over ``table``: ``keys`` (SQL expressions of this module, never user input), ``count``,
        ``sum`` and one cumulative ``le_<i>`` column per bound; ``where`` with its ``params``."""
        columns = "".join(f"{key}, " for key in keys)
        buckets = "".join(f", SUM({value} <= ?) AS le_{i}" for i in range(len(bounds)))
        names = [key.rsplit(" AS ", 1)[-1] for key in keys]
        sql = (f"SELECT {columns}COUNT(*) AS count, COALESCE(SUM({value}), 0) AS sum{buckets}{extra} FROM {table}"
               + (f" WHERE {where}" if where else "") + (f" GROUP BY {', '.join(names)}" if names else ""))
        rows = self.db.execute_returning_dicts(sql, [*bounds, *(params or [])])
        return [row for row in rows if row["count"]]

    def awaiting_by_channel(self) -> dict[str, int]:
        """Outputs of done jobs waiting for approval per channel (``publish: on_approval``), counted as
        ``awaiting_total`` counts them."""
        rows = self.db.conn.execute(f"SELECT outputs.channel, COUNT(*) {self._WAITING} GROUP BY outputs.channel",
                                    self._WAITING_PARAMS)
        return {channel: n for channel, n in rows}

    # -- the night view and failures (review page) ----------------------------------------------
    # The night view shows the jobs queued or ended since a time, newest first, a page at a time by keyset (the
    # id of the last row shown), so a page costs the same at 10,000 jobs as at 10. The inbox of a job is its
    # input_path without its rel_path (as ``listing.inbox_of``).
    _INBOX = ("CASE WHEN length(rel_path) > 0 AND length(input_path) > length(rel_path) AND substr(input_path,"
              " length(input_path) - length(rel_path) + 1) = rel_path THEN substr(input_path, 1, length(input_path)"
              " - length(rel_path) - 1) END")

    def _night_where(self, since: float, *, status: str | None = None, rule: str | None = None,
                     inbox: str | None = None, flag: str | None = None) -> tuple[str, list[Any]]:
        where, params = ["(created_at >= ? OR finished_at >= ?)"], [since, since]
        if status:
            where.append("status = ?")
            params.append(status)
        if rule:
            where.append("rule = ?")
            params.append(rule)
        if inbox:
            where.append(f"{self._INBOX} = ?")
            params.append(inbox)
        if flag == REVIEW:
            where.append("status = ? AND review IS NOT NULL")
            params.append(JobStatus.DONE)
        elif flag == AWAITING:
            where.append(self._AWAITING)
            params += self._AWAITING_PARAMS
        elif flag == REJECTED:
            where.append(self._AWAITING)
            params += self._REJECTED_JOB_PARAMS
        return " AND ".join(where), params

    # a done job with outputs waiting for approval (as ``awaiting_approval``: not replaced, not reserved). The set
    # of such jobs is one subquery evaluated once (the approval index), not a correlated EXISTS per job: SQLite
    # picks the approval index for that too, and then scans every pending output for every job (33 s at 10,000).
    _AWAITING = ("(status = ? AND id IN (SELECT job_id FROM outputs WHERE approval = ?"
                 " AND replaced_by IS NULL AND reserved IS NULL))")
    _AWAITING_PARAMS = (JobStatus.DONE, PENDING_APPROVAL)
    _REJECTED_JOB_PARAMS = (JobStatus.DONE, REJECTED)  # the same with rejected outputs left (``rejected_counts``)

    def night_groups(self, since: float) -> list[dict[str, Any]]:
        """The jobs since ``since`` per (inbox, rule): a count per status, ``review`` (done, marked for review),
        ``awaiting`` (with outputs waiting for approval), ``rejected`` (with rejected outputs not replaced since),
        ``next`` (``READ_AHEAD``: claimed to be read ahead, not counted as running) and ``total``; by inbox, then
        rule."""
        rows = self.db.conn.execute(
            f"SELECT {self._INBOX} AS inbox, rule, status, COUNT(*), SUM(status = ? AND review IS NOT NULL),"
            f" SUM({self._AWAITING}), SUM({self._AWAITING}), SUM(status = ? AND chain_started_at IS NULL) FROM jobs"
            " WHERE (created_at >= ? OR finished_at >= ?) GROUP BY 1, 2, 3",
            [JobStatus.DONE, *self._AWAITING_PARAMS, *self._REJECTED_JOB_PARAMS, JobStatus.RUNNING, since,
             since]).fetchall()
        groups: dict[tuple[str, str], dict[str, Any]] = {}
        for inbox, rule, status, n, review, awaiting, rejected, ahead in rows:
            g = groups.setdefault((inbox or "", rule), {"inbox": inbox, "rule": rule, "total": 0, REVIEW: 0,
                                                        AWAITING: 0, REJECTED: 0, READ_AHEAD: 0,
                                                        **{s.value: 0 for s in JobStatus}})
            g[status] = n - (ahead or 0)
            g[READ_AHEAD] += ahead or 0
            g["total"] += n
            g[REVIEW] += review or 0
            g[AWAITING] += awaiting or 0
            g[REJECTED] += rejected or 0
        return [groups[k] for k in sorted(groups)]

    def night_outputs(self, since: float) -> dict[str, int]:
        """How many outputs of the jobs since ``since`` wait for approval (``awaiting``) and are rejected, not
        replaced since (``rejected``): what ``assetd jobs`` counts, for these jobs (a done job's finished_at is
        at or after its created_at: "since" is its end)."""
        rows = self.db.conn.execute(
            "SELECT outputs.approval, COUNT(*) FROM outputs JOIN jobs ON jobs.id = outputs.job_id WHERE"
            " outputs.approval IN (?, ?) AND outputs.replaced_by IS NULL AND outputs.reserved IS NULL"
            " AND jobs.status = ? AND jobs.finished_at >= ? GROUP BY 1",
            [PENDING_APPROVAL, REJECTED, JobStatus.DONE, since]).fetchall()
        found = dict(rows)
        return {AWAITING: found.get(PENDING_APPROVAL, 0), REJECTED: found.get(REJECTED, 0)}

    def night_jobs(self, since: float, limit: int, *, before: int | None = None, after: int | None = None,
                   **filters: Any) -> list[Job]:
        """Up to ``limit`` jobs since ``since`` matching ``filters`` (``_night_where``), newest first: those with
        an id below ``before`` (the next page), or the ``limit`` just above ``after`` (the page before)."""
        where, params = self._night_where(since, **filters)
        order = "DESC"
        if before is not None:
            where += " AND id < ?"
            params.append(before)
        elif after is not None:
            where += " AND id > ?"
            params.append(after)
            order = "ASC"
        rows = self.db.execute_returning_dicts(f"SELECT * FROM jobs WHERE {where} ORDER BY id {order} LIMIT ?",
                                               [*params, limit])
        jobs = [Job.from_row(r) for r in rows]
        return jobs if order == "DESC" else jobs[::-1]

    def night_count(self, since: float, **filters: Any) -> int:
        """How many jobs ``night_jobs`` pages through."""
        where, params = self._night_where(since, **filters)
        return self.db.conn.execute(f"SELECT COUNT(*) FROM jobs WHERE {where}", params).fetchone()[0]

    def night_more(self, since: float, job_id: int, newer: bool, **filters: Any) -> bool:
        """Whether a job matching beyond ``job_id`` exists (newer: a higher id), for the page links."""
        where, params = self._night_where(since, **filters)
        row = self.db.conn.execute(f"SELECT 1 FROM jobs WHERE {where} AND id {'>' if newer else '<'} ? LIMIT 1",
                                   [*params, job_id]).fetchone()
        return row is not None

    def jobs_by_id(self, job_ids: Collection[int]) -> list[Job]:
        """These jobs (the night view's live rows: at most 500), newest first; unknown ids are left out."""
        ids = list(job_ids)[:500]
        rows = self.db.execute_returning_dicts(f"SELECT * FROM jobs WHERE id IN ({_marks(ids)}) ORDER BY id DESC",
                                               ids) if ids else []
        return [Job.from_row(r) for r in rows]

    def newest_job_id(self) -> int:
        return self.db.conn.execute("SELECT COALESCE(MAX(id), 0) FROM jobs").fetchone()[0]

    # On the failures list: failed, nobody acknowledged it since it last failed, and no later job of the same file
    # under the same rule has ended done since (the file was fixed or replaced and ran again: nothing left to do).
    _ON_LIST = ("status = ? AND (acknowledged_at IS NULL OR acknowledged_at < COALESCE(finished_at, 0))"
                " AND NOT EXISTS (SELECT 1 FROM jobs AS later WHERE later.input_path = jobs.input_path"
                " AND later.rule = jobs.rule AND later.id > jobs.id AND later.status = ?)")
    _ON_LIST_PARAMS = (JobStatus.FAILED, JobStatus.DONE)

    def ran_again(self, job_ids: Collection[int]) -> dict[int, Job]:
        """For each of ``job_ids`` that has ended and whose file ran again to done as a later job of the same rule
        (what takes a failed job off the failures list), that later job (the newest)."""
        ids = list(job_ids)
        if not ids:
            return {}
        rows = self.db.execute_returning_dicts(
            f"SELECT jobs.id AS earlier, later.* FROM jobs JOIN jobs AS later ON later.input_path = jobs.input_path"
            f" AND later.rule = jobs.rule AND later.id > jobs.id AND later.status = ? WHERE jobs.id IN ({_marks(ids)})"
            f" AND jobs.status IN ({_marks(FINISHED)}) ORDER BY later.id", [JobStatus.DONE, *ids, *FINISHED])
        return {row.pop("earlier"): Job.from_row(row) for row in rows}

    def failures(self, limit: int, *, before: int | None = None, acknowledged: bool = False) -> list[Job]:
        """Failed jobs newest first, a page at a time (``before``: below this id): those on the failures list, or
        (``acknowledged``) the others: acknowledged since they last failed, or done since by a later job."""
        if acknowledged:
            where, params = f"status = ? AND NOT ({self._ON_LIST})", [JobStatus.FAILED, *self._ON_LIST_PARAMS]
        else:
            where, params = self._ON_LIST, list(self._ON_LIST_PARAMS)
        if before is not None:
            where += " AND id < ?"
            params.append(before)
        rows = self.db.execute_returning_dicts(f"SELECT * FROM jobs WHERE {where} ORDER BY id DESC LIMIT ?",
                                               [*params, limit])
        return [Job.from_row(r) for r in rows]

    def failure_counts(self) -> tuple[int, int]:
        """(failed jobs on the failures list, the other failed ones: acknowledged, or done since by a later job)."""
        row = self.db.conn.execute(f"SELECT SUM({self._ON_LIST}), SUM(status = ?) FROM jobs",
                                   [*self._ON_LIST_PARAMS, JobStatus.FAILED]).fetchone()
        return row[0] or 0, (row[1] or 0) - (row[0] or 0)

    def unacknowledged_failures(self) -> list[int]:
        """The ids of the failed jobs on the failures list (Retry all)."""
        return [r[0] for r in self.db.conn.execute(f"SELECT id FROM jobs WHERE {self._ON_LIST} ORDER BY id",
                                                   list(self._ON_LIST_PARAMS))]

    def acknowledge(self, job_ids: Collection[int]) -> list[int]:
        """Take these failed jobs off the failures list (until they fail again); returns those it did."""
        ids = list(job_ids)
        if not ids:
            return []
        with self._immediate() as db:
            done = [r[0] for r in db.conn.execute(f"SELECT id FROM jobs WHERE id IN ({_marks(ids)}) AND status = ?",
                                                  [*ids, JobStatus.FAILED])]
            db.conn.execute(f"UPDATE jobs SET acknowledged_at = ? WHERE id IN ({_marks(done)})",
                            [time.time(), *done])
        return done

    # -- review actions (review page) ------------------------------------------------------------
    def next_awaiting(self, after: int | None = None, since: float | None = None) -> int | None:
        """The job to look at next on the review page: the first done job with outputs waiting for approval
        (as ``awaiting_approval``) above ``after`` (in the order they came in), else the first from the start;
        with ``since``: only jobs finished at or after it. None when nothing waits. Read from the outputs
        waiting (indexed by approval), so it costs the same with 10,000 jobs."""
        sql, params = f"SELECT MIN(outputs.job_id) {self._WAITING}", list(self._WAITING_PARAMS)
        if since is not None:
            sql += " AND jobs.finished_at >= ?"
            params.append(since)
        if after is not None:
            row = self.db.conn.execute(sql + " AND outputs.job_id > ?", [*params, after]).fetchone()
            if row[0] is not None:
                return row[0]
        return self.db.conn.execute(sql, params).fetchone()[0]
