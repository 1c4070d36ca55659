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


def test_a_job_is_one_content_rule_version_and_path(store):
    job, created = enqueue(store)
    same, created_same = enqueue(store)
    assert created and not created_same and same.id == job.id
    renamed, created_renamed = enqueue(store, path="/in/renamed.jpg")  # its own deliverables: a job of its own
    assert created_renamed and renamed.id != job.id
    changed, created_changed = enqueue(store, version="v2")
    assert created_changed and changed.id not in (job.id, renamed.id)


def test_a_superseded_job_runs_again_when_its_content_comes_back(store):
    job, _ = enqueue(store)
    store.supersede(job.id, "/in/a.jpg: superseded: its content changed after it was queued")
    assert store.get(job.id).status is JobStatus.SUPERSEDED and store.last_ended("/in/a.jpg") is None
    again, created = enqueue(store)  # the same content dropped again at the same path
    assert created and again.id == job.id
    assert (again.status, again.error, again.finished_at) == (JobStatus.QUEUED, None, None)


def test_a_twin_is_the_done_job_of_the_same_content_else_an_earlier_unfinished_one(store):
    first, _ = enqueue(store)
    second, _ = enqueue(store, path="/in/copy.jpg")
    assert store.twin(second).id == first.id  # queued, earlier: wait for it
    assert store.twin(first) is None  # the later copy never makes the first one wait
    store.claim_next("w", 60, only=[first.id])
    store.finish(first.id, [], 1.0)
    assert store.twin(second).status is JobStatus.DONE
    assert store.twin(enqueue(store, version="v2", path="/in/copy.jpg")[0]) is None


def test_a_job_that_copied_its_outputs_is_nobodys_twin(store):
    first, _ = enqueue(store)
    second, _ = enqueue(store, path="/in/copy.jpg")
    store.claim_next("w", 60, only=[first.id])
    store.finish(first.id, [], 1.0)
    store.claim_next("w", 60, only=[second.id])
    store.finish(second.id, [], 0.1, copied_from=first.id)
    third, _ = enqueue(store, path="/in/third.jpg")
    assert store.twin(third).id == first.id  # not the later copy: copies come from a chain's outputs
    store.requeue([first.id])
    assert store.twin(store.get(first.id)) is None  # never from its own copy (a loop)


def test_a_later_job_writing_the_same_path_marks_the_earlier_record_replaced(store):
    out = OutputRecord(channel="web", path="/out/a_1x1.jpg", step="crops", ratio="1:1", width=10, height=10,
                       bytes=3, sha256="old")
    first, _ = enqueue(store)
    store.claim_next("w", 60)
    store.finish(first.id, [out], 1.0)
    second, _ = enqueue(store, h="h2")
    store.claim_next("w", 60)
    store.finish(second.id, [OutputRecord(**dict(out.as_dict(), sha256="new"))], 1.0)
    assert store.outputs(first.id)[0].replaced_by == second.id
    assert store.outputs(second.id)[0].replaced_by is None


def test_earlier_version_job_and_adopting_a_version(store):
    old, _ = enqueue(store, version="v1")
    assert store.earlier_version_job("h1", "r", "v2", "/in/a.jpg") is None  # queued only: not taken yet
    store.claim_next("w", 60)
    store.finish(old.id, [], 1.0)
    assert store.earlier_version_job("h1", "r", "v2", "/in/a.jpg").id == old.id
    assert store.earlier_version_job("h1", "r", "v2", "/in/other.jpg") is None
    queued, _ = enqueue(store, h="h9", version="v1")
    assert store.adopt_version(queued.id, "v2") and store.get(queued.id).rule_version == "v2"
    clash, _ = enqueue(store, h="h9", version="v3")
    enqueue(store, h="h9", version="v2")  # exists already: cannot adopt into it
    assert not store.adopt_version(clash.id, "v2")


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
    assert store.reap_expired().started == [job.id]
    again = store.claim_next("w", lease_seconds=-1)
    assert again.id == job.id and again.attempts == 2
    assert store.reap_expired().failed == [job.id]
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


def test_release_with_an_owner_only_releases_that_owners_claim(store):
    job, _ = enqueue(store)
    store.claim_next("process pid 1 on h", 60)
    assert not store.release(job.id, owner="process pid 2 on h")
    assert store.get(job.id).status is JobStatus.RUNNING
    assert store.release(job.id, owner="process pid 1 on h")
    j = store.get(job.id)
    assert j.status is JobStatus.QUEUED and j.attempts == 0 and j.worker is None


def test_release_orphans_releases_only_jobs_whose_owner_is_gone(store):
    gone, _ = enqueue(store, h="h1")
    alive, _ = enqueue(store, h="h2")
    store.claim_next("process pid 1 on h", 60)
    store.claim_next("process pid 2 on h", 60)
    released = store.release_orphans(lambda owner: owner == "process pid 1 on h")
    assert [j.id for j in released] == [gone.id] and released[0].worker == "process pid 1 on h"
    j = store.get(gone.id)
    assert j.status is JobStatus.QUEUED and j.attempts == 0
    assert "process pid 1 on h" in j.error  # the queue says why it is there again
    assert store.get(alive.id).status is JobStatus.RUNNING
    assert store.release_orphans(lambda owner: True, only=[gone.id]) == []  # already released


def test_recover_orphans_keeps_the_jobs_of_live_owners(store):
    crashed, _ = enqueue(store, h="h1")
    live, _ = enqueue(store, h="h2")
    store.claim_next("worker-1 pid 1 on h", 3600)
    store.claim_next("process pid 2 on h", 3600)
    assert store.recover_orphans(keep=lambda owner: owner == "process pid 2 on h") == [crashed.id]
    assert store.get(crashed.id).status is JobStatus.QUEUED
    assert store.get(live.id).status is JobStatus.RUNNING


def _open_store(path, barrier, results) -> None:
    barrier.wait()
    try:
        store = Store(path)
        store.jobs()
        store.close()
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 - the test reports what went wrong
        results.put(f"{type(exc).__name__}: {exc}")


def test_commands_opening_a_new_database_at_once_all_succeed(tmp_path):
    """`assetd run` and `assetd process` started together on a new database: both create the schema."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    for round_ in range(8):
        path = tmp_path / f"r{round_}" / "assetd.sqlite3"
        barrier, results = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_open_store, args=(path, barrier, results)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [results.get(timeout=5) for _ in procs] == ["ok"] * 4


def test_manifests_have_their_own_table_and_older_databases_move_theirs(tmp_path):
    from sqlite_utils import Database

    from pipeline.store import ManifestRecord, migrations

    path = tmp_path / "old.sqlite3"
    old = Database(path)
    migrations.apply(old, stop_before="m004_manifests")  # a database of the previous release
    old["jobs"].insert({"id": 1, "input_hash": "h", "rule": "r", "rule_version": "v", "input_path": "/in/a.jpg",
                        "status": "done"})
    old["outputs"].insert_all([
        {"job_id": 1, "path": "/out/a_1x1.jpg", "channel": "web", "step": "crops", "bytes": 9, "sha256": "o"},
        {"job_id": 1, "path": "/state/manifests/r/a.assetd.json", "channel": "", "step": "manifest", "bytes": 5,
         "sha256": "m"}])
    old.conn.close()
    store = Store(path)
    assert [o.path for o in store.outputs(1)] == ["/out/a_1x1.jpg"]
    assert store.manifests(1) == [ManifestRecord(path="/state/manifests/r/a.assetd.json", bytes=5, sha256="m")]
    assert store.output_owner("/state/manifests/r/a.assetd.json")["job_id"] == 1  # a clash is still seen
    store.close()


def test_statuses_enter_sql_only_as_parameters():
    """Every status in the store's SQL comes from JobStatus (bound), none is spelled as a literal."""
    import inspect
    import re

    from pipeline import store

    literals = re.findall(r"'(?:%s)'" % "|".join(s.value for s in JobStatus), inspect.getsource(store))
    assert literals == []


def test_a_job_that_stops_an_actor_says_where_it_ran_each_time(tmp_path):
    """A job whose run stops a Ray actor twice is quarantined; its note names the last actor and node and says what
    to do, and ``ran_on`` keeps where it ran (the job page's "ran on"), as a job failing there for good does."""
    store = Store(tmp_path / "q.sqlite3", quarantine_after_crashes=2)
    job, _ = enqueue(store, attempts=5)
    for where in ("actor-1 on gpu-box-2", "actor-2 on gpu-box-1"):
        assert store.claim_next("worker-1 pid 1 on coord", 60)
        status = store.charge_crash(job.id, "worker-1 pid 1 on coord", "a Ray actor", ran_on=where)
    assert status is JobStatus.FAILED
    failed = store.get(job.id)
    assert failed.ran_on == "actor-2 on gpu-box-1"
    assert failed.error == (f"/in/a.jpg: quarantined: it stopped a Ray actor 2 times (last: actor-2 on gpu-box-1); "
                            f"the other jobs went on; look at the file, then `assetd retry {job.id}`")
    other, _ = enqueue(store, h="h2", path="/in/b.jpg")
    assert store.claim_next("worker-1 pid 1 on coord", 60)
    store.fail(other.id, "/in/b.jpg: not an image", ran_on="actor-1 on gpu-box-2")
    assert store.get(other.id).ran_on == "actor-1 on gpu-box-2"
    store.close()
