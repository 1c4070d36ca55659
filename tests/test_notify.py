"""Notifications through apprise: failure alerts, the idle digest, and targets that are down."""
from __future__ import annotations

import time

import pytest

from pipeline.config import config_from_dict
from pipeline.notify import Notifier, digest_text, with_timeouts
from pipeline.store import JobStatus, Store
from webhooks import Receiver, closed_port_url


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def make(tmp_path, urls, idle=0.0):
    config = config_from_dict({"notify": {"urls": urls, "digest_after_idle_seconds": idle, "timeout_seconds": 2,
                                          "retry_seconds": 60}}, tmp_path / "c.yaml")
    store = Store(tmp_path / "db.sqlite3")
    return config, store, Notifier(config, store)


def finished_jobs(store: Store):
    ok, _ = store.enqueue(input_hash="a", rule="r", rule_version="1", input_path="/in/a.jpg", rel_path="a.jpg",
                          max_attempts=1)
    bad, _ = store.enqueue(input_hash="b", rule="r", rule_version="1", input_path="/in/b.jpg", rel_path="b.jpg",
                           max_attempts=1)
    store.claim_next("w", 60)
    store.finish(ok.id, [], 1.25)
    store.claim_next("w", 60)
    store.fail(bad.id, "/in/b.jpg: image data is damaged (truncated)")
    return ok, bad


def test_failure_alert_and_digest_reach_a_json_target(tmp_path, receiver):
    config, store, notifier = make(tmp_path, [receiver.url])
    ok, bad = finished_jobs(store)
    notifier.job_failed(store.get(bad.id), store.get(bad.id).error)
    assert notifier.maybe_digest(now=time.time() + 1)
    assert not notifier.maybe_digest(now=time.time() + 2)  # one digest per batch
    assert notifier.deliver_due() == 2
    titles = [m["title"] for m in receiver.messages]
    assert titles[0] == "assetd: failed: b.jpg"
    assert receiver.messages[0]["message"] == "/in/b.jpg: image data is damaged (truncated)"
    assert titles[1] == "assetd: batch finished: 1 done, 1 failed"
    body = receiver.messages[1]["message"]
    assert "1 done, 1 failed in" in body and "- /in/b.jpg: image data is damaged (truncated)" in body
    assert store.undelivered() == 0


def test_messages_carry_the_apprise_type_of_their_news(tmp_path, receiver):
    """A failure alert and a digest with failures are 'failure'; review only is 'warning'; all good 'success'."""
    config, store, notifier = make(tmp_path, [receiver.url])
    ok, bad = finished_jobs(store)
    notifier.job_failed(store.get(bad.id), store.get(bad.id).error)
    assert notifier.maybe_digest(now=time.time() + 1)
    good, _ = store.enqueue(input_hash="c", rule="r", rule_version="1", input_path="/in/c.jpg", rel_path="c.jpg",
                            max_attempts=1)
    store.claim_next("w", 60)
    store.finish(good.id, [], 0.5)
    assert notifier.maybe_digest(now=time.time() + 2)
    doubtful, _ = store.enqueue(input_hash="d", rule="r", rule_version="1", input_path="/in/d.jpg",
                                rel_path="d.jpg", max_attempts=1)
    store.claim_next("w", 60)
    store.finish(doubtful.id, [], 0.5, review=["remove_background: the subject touches the frame"])
    assert notifier.maybe_digest(now=time.time() + 3)
    assert notifier.deliver_due() == 4
    got = [(m["title"], m["type"]) for m in receiver.messages]
    assert got == [("assetd: failed: b.jpg", "failure"),
                   ("assetd: batch finished: 1 done, 1 failed", "failure"),
                   ("assetd: batch finished: 1 done, 0 failed", "success"),
                   ("assetd: batch finished: 1 done (1 need review), 0 failed", "warning")]


def test_digest_waits_for_idle_and_for_an_empty_queue(tmp_path):
    config, store, notifier = make(tmp_path, [], idle=30)
    finished_jobs(store)
    assert not notifier.maybe_digest(now=time.time() + 1)  # not idle long enough
    store.enqueue(input_hash="c", rule="r", rule_version="1", input_path="/in/c.jpg", rel_path="c.jpg",
                  max_attempts=1)
    assert not notifier.maybe_digest(now=time.time() + 60)  # queue not empty
    store.claim_next("w", 60)
    store.fail(3, "x")
    assert notifier.maybe_digest(now=time.time() + 60)


def test_unreachable_target_keeps_the_message_for_later(tmp_path):
    config, store, notifier = make(tmp_path, [closed_port_url()])
    store.add_message("failure", "t", "b")
    started = time.monotonic()
    assert notifier.deliver_due() == 0
    assert time.monotonic() - started < 10
    assert store.undelivered() == 1
    row = store.db.execute_returning_dicts("SELECT * FROM outbox")[0]
    assert row["attempts"] == 1 and row["last_error"] and row["next_attempt_at"] > time.time()


def test_digest_text_lists_failures():
    from pipeline.store import Job
    jobs = [Job(id=1, input_hash="a", rule="r", rule_version="1", input_path="/a", rel_path="a",
                status=JobStatus.DONE, attempts=1, max_attempts=3, created_at=100.0, finished_at=190.0, seconds=80.0),
            Job(id=2, input_hash="b", rule="r", rule_version="1", input_path="/b", rel_path="b",
                status=JobStatus.FAILED, attempts=1, max_attempts=3, error="/b: empty", created_at=100.0,
                finished_at=200.0)]
    title, body = digest_text(jobs)
    assert title == "batch finished: 1 done, 1 failed"
    assert "in 1m 40s (1m 20s of processing)" in body and "- /b: empty" in body


def test_with_timeouts_keeps_user_values():
    assert "cto=3" in with_timeouts("json://h/p", 3) and "rto=3" in with_timeouts("json://h/p", 3)
    assert "cto=9" in with_timeouts("json://h/p?cto=9", 3)


def test_an_alert_the_full_database_cannot_take_is_sent_all_the_same(tmp_path, receiver, monkeypatch):
    """The outbox lives in the database: when its disk is full (the very problem being announced) the alert is held
    in memory and sent by the delivery thread itself, once, and nothing is queued twice when room comes back."""
    import sqlite3

    config, store, notifier = make(tmp_path, [receiver.url])
    real = store.add_message

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "add_message", full)
    notifier.problem(True, "paused: disk:/srv", "database or disk is full writing /srv/assetd.sqlite3")
    assert notifier.deliver_due() == 0  # sent from memory: nothing of the outbox was delivered
    assert [m["title"] for m in receiver.messages] == ["assetd: paused: disk:/srv"]
    monkeypatch.setattr(store, "add_message", real)
    notifier.problem(False, "resumed: disk:/srv", "room again")
    assert notifier.deliver_due() == 1
    assert [m["title"] for m in receiver.messages] == ["assetd: paused: disk:/srv", "assetd: resumed: disk:/srv"]
    assert store.undelivered() == 0


def test_the_digest_says_what_waits_for_approval_and_where_the_review_page_is():
    from pipeline.store import Job
    jobs = [Job(id=1, input_hash="a", rule="r", rule_version="1", input_path="/a", rel_path="a",
                status=JobStatus.DONE, attempts=1, max_attempts=3, created_at=100.0, finished_at=190.0, seconds=80.0)]
    title, body = digest_text(jobs, awaiting=3, review_url="http://studio-box:8765/")
    assert title == "batch finished: 1 done, 0 failed, 3 outputs to approve"
    assert "3 outputs wait for approval before publishing: http://studio-box:8765/?flag=awaiting" in body
    assert body.endswith("Review page: http://studio-box:8765/")
    title, body = digest_text(jobs, awaiting=1)  # no page: the command says how
    assert "1 output waits for approval before publishing: assetd approve" in body and "Review page" not in body
