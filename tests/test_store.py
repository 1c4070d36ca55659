"""The job store: dedupe, atomic claims, leases, retries, migrations."""
from __future__ import annotations

import threading
import time

import pytest

from pipeline.store import JobStatus, OutputRecord, Store


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "state" / "jobs.sqlite3")
    yield s
    s.close()


def enqueue(store: Store, h: str = "h1", rule: str = "r", version: str = "v1", path: str = "/in/a.jpg", attempts=3):
    return store.enqueue(input_hash=h, rule=rule, rule_version=version, input_path=path, rel_path="a.jpg",
                         max_attempts=attempts)


def test_same_content_is_one_job_and_a_new_rule_version_is_another(store):
    job, created = enqueue(store)
    again, created_again = enqueue(store, path="/in/renamed.jpg")
    assert created and not created_again and again.id == job.id and again.input_path == "/in/a.jpg"
    changed, created_changed = enqueue(store, version="v2")
    assert created_changed and changed.id != job.id


def test_concurrent_claims_take_each_job_exactly_once(store):
    for i in range(40):
        enqueue(store, h=f"h{i}")
    claimed: list[int] = []
    lock = threading.Lock()

    def claimer(n: int) -> None:
        while (job := store.claim_next(f"w{n}", 60)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == list(range(1, 41))
    assert store.counts()["running"] == 40


def test_expired_lease_requeues_then_fails_after_max_attempts(store):
    job, _ = enqueue(store, attempts=2)
    assert store.claim_next("w", lease_seconds=-1).id == job.id  # lease already expired: a crashed worker
    again = store.claim_next("w", lease_seconds=-1)
    assert again.id == job.id and again.attempts == 2
    assert store.claim_next("w", lease_seconds=60) is None
    failed = store.get(job.id)
    assert failed.status is JobStatus.FAILED and "worker stopped while processing it 2 time(s)" in failed.error


def test_transient_failure_backs_off_then_gives_up(store):
    job, _ = enqueue(store, attempts=2)
    store.claim_next("w", 60)
    assert store.retry_later(job.id, "disk full", delay=0.3) is JobStatus.QUEUED
    assert store.claim_next("w", 60) is None  # not due yet
    time.sleep(0.35)
    assert store.claim_next("w", 60).id == job.id
    assert store.retry_later(job.id, "disk full", delay=0.0) is JobStatus.FAILED
    assert "gave up after 2 attempts" in store.get(job.id).error


def test_release_does_not_count_the_interrupted_attempt(store):
    job, _ = enqueue(store)
    store.claim_next("w", 60)
    store.release(job.id)
    j = store.get(job.id)
    assert j.status is JobStatus.QUEUED and j.attempts == 0


def test_recover_orphans_requeues_running_jobs_at_start(store):
    job, _ = enqueue(store)
    store.claim_next("w", 3600)
    assert store.recover_orphans() == [job.id]
    assert store.get(job.id).status is JobStatus.QUEUED


def test_finish_records_outputs_and_requeue_failed(store):
    job, _ = enqueue(store)
    store.claim_next("w", 60)
    out = OutputRecord(channel="web", path="/out/a_1x1.jpg", step="crops", ratio="1:1", width=10, height=10,
                       bytes=100, sha256="x")
    store.finish(job.id, [out], 1.5)
    assert store.get(job.id).status is JobStatus.DONE
    assert store.outputs(job.id) == [out]
    assert store.output_owner("/out/a_1x1.jpg")["job_id"] == job.id
    other, _ = enqueue(store, h="h2")
    store.claim_next("w", 60)
    store.fail(other.id, "/in/b.jpg: truncated")
    assert store.requeue(failed=True) == [other.id]
    assert store.get(other.id).status is JobStatus.QUEUED and store.get(other.id).attempts == 0


def test_migrations_are_safe_to_reapply(tmp_path):
    path = tmp_path / "db.sqlite3"
    first = Store(path)
    enqueue(first)
    first.close()
    second = Store(path)
    assert len(second.jobs()) == 1
    assert second.db.journal_mode == "wal"
    second.close()


def test_outbox_and_state(store):
    mid = store.add_message("failure", "t", "b")
    assert [m.id for m in store.due_messages()] == [mid]
    store.mark_undelivered(mid, "refused", time.time() + 60)
    assert store.due_messages() == [] and store.undelivered() == 1
    store.mark_delivered(mid)
    assert store.undelivered() == 0
    store.set_state("k", {"a": 1})
    assert store.get_state("k") == {"a": 1} and store.get_state("missing", 5) == 5
