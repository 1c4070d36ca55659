"""The review page as a retoucher and a script use it: the night view's counts, filters and pages over a real store,
the failures page's Retry and Acknowledge, the access token, CSRF, and `assetd serve` / `assetd run` serving it."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from pipeline.config import load_config
from pipeline.daemon import Daemon
from pipeline.listing import inbox_of
from pipeline.rules import load_rules
from pipeline.store import Job, JobStatus, Store
from pipeline.web.app import create_app
from browser import free_port
from webcases import add_job

ROOT = Path(__file__).resolve().parents[1]
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def config_for(workspace, extra: str = ""):
    workspace.write_config(extra=extra)
    return load_config(workspace.config_path)


@pytest.fixture
def night(workspace):
    """A store with a night's jobs in two inboxes under two rules, and a client on the page."""
    config = config_for(workspace)
    app = create_app(config)
    store = app.state.store
    a, b = workspace.inbox, workspace.root / "inbox2"
    plan = [(a, "products", "done")] * 7 + [(a, "products", "failed")] * 3 + [(a, "cutouts", "queued")] * 4 \
        + [(b, "products", "running")] * 1 + [(b, "products", "done")] * 2 + [(b, "cutouts", "superseded")]
    for i, (folder, rule, status) in enumerate(plan):
        add_job(store, folder, f"shot-{i:03d}.jpg", rule, status, review=["matte uncertain"] if i in (1, 2) else None)
    with TestClient(app) as client:
        yield client, store, config
    store.close()


def group_rows(html: str) -> dict[tuple[str, str], dict[str, int]]:
    """The groups table as {(inbox as shown, rule): {status: count}}."""
    out = {}
    for body in re.findall(r'<tr data-group="[^"]*">(.*?)</tr>', html, re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", body, re.S)
        text = [re.sub(r"<[^>]+>", "", c).strip() for c in cells]
        keys = ["queued", "running", "done", "failed", "superseded", "review", "total"]  # no channel on approval
        out[(text[0], text[1])] = dict(zip(keys, map(int, text[2:])))
    return out


def shown_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr data-id="(\d+)"', html)]


def test_night_counts_and_grouping_match_the_store(night):
    client, store, config = night
    page = client.get("/")
    assert page.status_code == 200
    expected: dict[tuple[str, str], Counter] = {}
    for job in store.jobs():
        inbox = Path(inbox_of(job)).relative_to(config.base_dir).as_posix()
        counts = expected.setdefault((inbox, job.rule), Counter())
        counts[job.status.value] += 1
        counts["total"] += 1
        counts["review"] += bool(job.review)
    groups = group_rows(page.text)
    assert set(groups) == set(expected) == {("inbox", "products"), ("inbox", "cutouts"), ("inbox2", "products"),
                                            ("inbox2", "cutouts")}
    for key, counts in expected.items():
        assert {k: v for k, v in groups[key].items() if v} == {k: v for k, v in counts.items() if v}, key
    progress = client.get("/api/progress").json()
    assert {k: v for k, v in progress["totals"].items() if k in store.counts()} == store.counts()
    assert progress["totals"]["review"] == store.review_count() == 2
    assert progress["newest"] == max(j.id for j in store.jobs())


def test_filters_return_the_right_jobs(night):
    client, store, config = night
    jobs = store.jobs()

    def ids(**params) -> set[int]:
        html = client.get("/", params=params).text
        return set(shown_ids(html))

    assert ids(status="failed") == {j.id for j in jobs if j.status is JobStatus.FAILED}
    assert ids(rule="cutouts") == {j.id for j in jobs if j.rule == "cutouts"}
    assert ids(inbox=str(workspace_inbox2(config))) == {j.id for j in jobs if "inbox2" in j.input_path}
    assert ids(flag="review") == {j.id for j in jobs if j.review}
    assert ids(rule="products", status="done", inbox=str(config.base_dir / "inbox")) == {
        j.id for j in jobs if j.rule == "products" and j.status is JobStatus.DONE and "inbox2" not in j.input_path}
    # since: a later time shows nothing of tonight
    later = time.strftime("%Y-%m-%dT%H:%M", time.localtime(time.time() + 3600))
    assert ids(since=later) == set()
    assert "No jobs" in client.get("/", params={"since": later}).text


def workspace_inbox2(config) -> Path:
    return config.base_dir / "inbox2"


def test_live_progress_reports_the_rows_on_screen_as_they_change(night):
    client, store, _ = night
    queued = [j.id for j in store.jobs("queued")]
    before = client.get("/api/progress", params={"ids": ",".join(map(str, queued))}).json()
    assert {before["jobs"][str(i)]["status"] for i in queued} == {"queued"}
    store.claim_next("worker-1 pid 1 on test", 60, only=[queued[0]])
    add_job(store, Path("/elsewhere"), "late.jpg", "products")
    after = client.get("/api/progress", params={"ids": ",".join(map(str, queued))}).json()
    assert after["jobs"][str(queued[0])]["status"] == "running"
    assert after["totals"]["running"] == before["totals"]["running"] + 1
    assert after["newest"] == before["newest"] + 1  # the page says "1 new job"


def test_ten_thousand_jobs_page_through_every_one_once(workspace):
    config = config_for(workspace, "review: {page_size: 500}\n")
    app = create_app(config)
    store = app.state.store
    now = time.time()
    statuses = ["done", "done", "done", "failed", "queued"]
    store.db["jobs"].insert_all(
        ({"input_hash": f"h{i}", "rule": "products" if i % 3 else "cutouts", "rule_version": "v1",
          "input_path": f"{workspace.inbox}/s{i}.jpg", "rel_path": f"s{i}.jpg", "status": statuses[i % 5],
          "attempts": 1, "max_attempts": 2, "next_attempt_at": 0, "created_at": now - 10_000 + i,
          "finished_at": None if statuses[i % 5] == "queued" else now - 9_000 + i} for i in range(10_000)),
        batch_size=2000)
    client = TestClient(app)

    def walk(**params) -> list[int]:
        seen, url, pages = [], "/?" + "&".join(f"{k}={v}" for k, v in params.items()), 0
        while url:
            html = client.get(url.replace("&amp;", "&")).text
            page = shown_ids(html)
            assert page == sorted(page, reverse=True) and len(page) <= 500
            seen += page
            pages += 1
            older = re.search(r'<a href="([^"]+)" rel="next">', html)
            url = older.group(1) if older else None
        return seen

    everything = walk()
    assert len(everything) == len(set(everything)) == 10_000
    failed = walk(status="failed")
    assert failed == sorted((j.id for j in store.jobs("failed")), reverse=True) and len(failed) == 2000
    # "Newer" from the second page leads back to the first
    first = client.get("/").text
    second = client.get("/", params={"before": shown_ids(first)[-1]}).text
    newer = re.search(r'<a href="([^"]+)" rel="prev">', second).group(1).replace("&amp;", "&")
    assert shown_ids(client.get(newer).text) == shown_ids(first)
    store.close()


def csrf_of(client: TestClient, url: str = "/failures") -> str:
    return CSRF.search(client.get(url).text).group(1)


def test_post_without_the_csrf_token_is_refused(night):
    client, store, _ = night
    failed = store.jobs("failed")[0]
    for data in ({"job": failed.id}, {"job": failed.id, "csrf": "forged"}):
        refused = client.post("/failures/acknowledge", data=data, follow_redirects=False)
        assert refused.status_code == 403
    other_site = TestClient(client.app)  # another browser (no session cookie): a form posted from another site
    assert other_site.post("/failures/retry", data={"job": failed.id, "csrf": csrf_of(client)}).status_code == 403
    assert store.get(failed.id).acknowledged_at is None and store.get(failed.id).status is JobStatus.FAILED
    token = csrf_of(client)
    done = client.post("/failures/acknowledge", data={"job": failed.id, "csrf": token}, follow_redirects=False)
    assert done.status_code == 303
    assert store.get(failed.id).acknowledged_at is not None
    header = client.post("/failures/acknowledge", data={"job": store.jobs("failed")[1].id},
                         headers={"X-CSRF-Token": token}, follow_redirects=False)
    assert header.status_code == 303  # fetch() sends it as a header


def test_get_never_changes_state(night):
    client, store, _ = night
    failed = store.jobs("failed")[0]
    for url in ("/failures/retry", "/failures/retry-all", "/failures/acknowledge", "/logout"):
        assert client.get(url, params={"job": failed.id}).status_code == 405
    again = store.get(failed.id)
    assert again.status is JobStatus.FAILED and again.acknowledged_at is None


def test_retry_queues_a_failed_job_and_brings_a_moved_input_back(night, workspace):
    client, store, _ = night
    failed = store.jobs("failed")[0]
    source = Path(failed.input_path)
    dest = workspace.inbox / "error" / source.name
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"the shot")
    (sidecar := dest.with_name(dest.name + ".error.txt")).write_text("why")
    store.record_move(failed.id, str(source), str(dest), "error", str(sidecar))

    page = client.post("/failures/retry", data={"job": failed.id, "csrf": csrf_of(client)})
    assert page.status_code == 200 and page.url.path == "/failures"
    assert f"job {failed.id}: moved {dest} back to {source}" in page.text
    assert f"queued again: {failed.id}" in page.text
    assert store.get(failed.id).status is JobStatus.QUEUED
    assert source.read_bytes() == b"the shot" and not dest.exists() and not sidecar.exists()
    assert f'data-id="{failed.id}"' not in page.text


def test_retry_all_queues_every_listed_failure_and_says_what_it_could_not(night, workspace):
    client, store, _ = night
    failed = store.jobs("failed")
    blocked = failed[0]
    store.record_move(blocked.id, blocked.input_path, str(workspace.inbox / "error" / "gone.jpg"), "error")
    page = client.post("/failures/retry-all", data={"csrf": csrf_of(client)})
    assert f"job {blocked.id}: its input is neither in" in page.text
    assert [j.id for j in store.jobs("failed")] == [blocked.id]
    assert all(store.get(j.id).status is JobStatus.QUEUED for j in failed[1:])


def test_acknowledge_hides_a_failure_until_it_fails_again(night):
    client, store, _ = night
    failed = store.jobs("failed")[0]
    assert f'data-id="{failed.id}"' in client.get("/failures").text
    client.post("/failures/acknowledge", data={"job": failed.id, "csrf": csrf_of(client)})
    assert f'data-id="{failed.id}"' not in client.get("/failures").text
    assert f'data-id="{failed.id}"' in client.get("/failures", params={"acknowledged": 1}).text
    assert store.get(failed.id).status is JobStatus.FAILED  # only hidden: nothing else changed
    time.sleep(0.01)
    store.requeue([failed.id])
    store.fail(failed.id, f"{failed.input_path}: internal error: ValueError: boom")
    page = client.get("/failures").text
    assert f'data-id="{failed.id}"' in page and "stage bug" in page  # failed again: back on the list, classed


def test_a_failure_leaves_the_list_once_a_later_job_of_its_file_is_done(night):
    """The studio fixed or replaced the file and it ran again (a new job, done): nothing is left to do about the
    failure, so it leaves the list (shown with the acknowledged ones); under another rule it stays."""
    client, store, _ = night
    folder = Path("/inbox4")
    failed = add_job(store, folder, "fixed.jpg", "products", "failed")
    other = add_job(store, folder, "fixed.jpg", "cutouts", "failed")
    assert f'data-id="{failed.id}"' in client.get("/failures").text
    open_before, _ = store.failure_counts()
    store.enqueue(input_hash="fixed-content", rule="products", rule_version="v1", input_path=failed.input_path,
                  rel_path="fixed.jpg", max_attempts=2)
    later = store.jobs("queued")[-1]
    store.finish(later.id, [], 1.0)
    page = client.get("/failures").text
    assert f'data-id="{failed.id}"' not in page and f'data-id="{other.id}"' in page
    assert f'data-id="{failed.id}"' in client.get("/failures", params={"acknowledged": 1}).text
    assert store.failure_counts()[0] == open_before - 1
    assert failed.id not in store.unacknowledged_failures()  # Retry all leaves it alone


def test_failures_show_reason_and_class(night):
    client, store, _ = night
    folder = Path("/inbox3")
    add_job(store, folder, "q.jpg", "products", "failed",
            error=f"{folder}/q.jpg: quarantined: assetd stopped 2 times while running this job (crash or kill)")
    page = client.get("/failures").text
    assert "quarantined" in page and "bad input" in page
    assert "not an image (cannot decode)" in page  # the reason, without the path the row shows


@pytest.fixture
def guarded(workspace):
    config = config_for(workspace, "review: {token: s3cret-token}\n")
    app = create_app(config)
    add_job(app.state.store, workspace.inbox, "a.jpg", "products", "failed")
    yield app
    app.state.store.close()


def test_a_token_needs_a_login_and_failed_logins_are_rate_limited(guarded):
    browser = TestClient(guarded)
    first = browser.get("/failures", headers={"Accept": "text/html"}, follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"].startswith("/login?next=%2Ffailures")
    assert browser.get("/api/progress").status_code == 401
    login = browser.get("/login")
    token = CSRF.search(login.text).group(1)
    for _ in range(5):
        wrong = browser.post("/login", data={"token": "guess", "csrf": token, "next": "/failures"})
        assert wrong.status_code == 401 and "wrong access token" in wrong.text
    limited = browser.post("/login", data={"token": "s3cret-token", "csrf": token})
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0  # even the right one, for now
    assert browser.get("/failures", headers={"Accept": "text/html"}, follow_redirects=False).status_code == 303

    retoucher = TestClient(create_app(guarded.state.config, guarded.state.store))  # another limiter, as a restart
    token = CSRF.search(retoucher.get("/login").text).group(1)
    ok = retoucher.post("/login", data={"token": "s3cret-token", "csrf": token, "next": "/failures"})
    assert ok.status_code == 200 and ok.url.path == "/failures" and "a.jpg" in ok.text
    stale = retoucher.post("/failures/acknowledge", data={"job": 1, "csrf": token}, follow_redirects=False)
    assert stale.status_code == 403  # the login gave the session a fresh CSRF token


def test_a_login_never_sends_the_browser_to_another_site(guarded):
    browser = TestClient(guarded)
    token = CSRF.search(browser.get("/login").text).group(1)
    ok = browser.post("/login", data={"token": "s3cret-token", "csrf": token, "next": "//evil.example/"},
                      follow_redirects=False)
    assert ok.headers["location"] == "/"


def test_bearer_token_for_scripts_and_wrong_ones_count_as_failed_logins(guarded):
    script = TestClient(guarded)
    assert script.get("/api/progress", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    posted = script.post("/failures/acknowledge", data={"job": 1}, headers={"Authorization": "Bearer s3cret-token"},
                         follow_redirects=False)
    assert posted.status_code == 303  # no CSRF needed: a browser never sends this header on its own
    for _ in range(5):
        assert script.get("/", headers={"Authorization": "Bearer nope"}).status_code == 401
    limited = script.get("/", headers={"Authorization": "Bearer s3cret-token"})
    assert limited.status_code == 429 and limited.headers["content-type"].startswith("text/plain")
    assert limited.text.startswith("too many failed logins from this address; try again in ")


def test_a_person_at_the_login_form_after_too_many_failures_sees_the_form_and_the_wait(guarded):
    """Failures counted from scripts' wrong bearer tokens (or the form's own): the form's 429 is the login page with
    the message and the wait, not a bare text line."""
    client = TestClient(guarded)
    for _ in range(5):
        assert client.get("/", headers={"Authorization": "Bearer nope"}).status_code == 401
    shown = client.get("/login?next=/failures")
    assert shown.status_code == 200 and "<form" in shown.text
    assert re.search(r'id="login-problem">too many failed logins from this address; try again in \d+ s<',
                     shown.text)
    token = CSRF.search(shown.text).group(1)
    answer = client.post("/login", data={"token": "s3cret-token", "csrf": token, "next": "/failures"})
    assert answer.status_code == 429 and int(answer.headers["Retry-After"]) > 0
    assert answer.headers["content-type"].startswith("text/html")
    assert '<form method="post" action="/login"' in answer.text and 'name="token"' in answer.text
    assert 'name="next" value="/failures"' in answer.text
    assert re.search(r"try again in (\d+) s", answer.text).group(1) == answer.headers["Retry-After"]


@pytest.fixture
def fake_metrics(monkeypatch):
    """``pipeline.metrics.exposition`` (helper "metrics" writes the real one): this tests the route, not the content."""
    seen = []

    def exposition(config, store, accept=None):
        seen.append(accept)
        return b"assetd_up 1\n", "text/plain; version=0.0.4; charset=utf-8"
    monkeypatch.setitem(sys.modules, "pipeline.metrics", types.SimpleNamespace(exposition=exposition))
    return seen


def test_metrics_needs_the_token_when_one_is_set(guarded, fake_metrics):
    scraper = TestClient(guarded)
    assert scraper.get("/metrics").status_code == 401
    assert scraper.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    scraped = scraper.get("/metrics", headers={"Authorization": "Bearer s3cret-token", "Accept": "text/plain"})
    assert scraped.status_code == 200 and scraped.text == "assetd_up 1\n"
    assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert fake_metrics == ["text/plain"]


def test_metrics_is_open_on_loopback_without_a_token(night, fake_metrics):
    client, _, _ = night
    assert client.get("/metrics").status_code == 200


# -- real processes -------------------------------------------------------------------------------------------
def assetd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", *map(str, args)]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def wait_for_page(url: str, proc: subprocess.Popen, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read().decode()
        except (urllib.error.URLError, ConnectionError):
            assert time.monotonic() < deadline, f"{url} never answered"
            time.sleep(0.1)


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_serve_refuses_to_listen_beyond_loopback_without_a_token(workspace):
    config_for(workspace)
    result = subprocess.run(assetd("serve", "--config", workspace.config_path, "--listen", "0.0.0.0:8765"),
                            capture_output=True, text=True, env=env(), timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "0.0.0.0:8765" in result.stderr and "review.token" in result.stderr


def test_serve_serves_the_page_and_stops_on_sigterm(workspace):
    config = config_for(workspace)
    store = Store(config.database)
    add_job(store, workspace.inbox, "a.jpg", "products", "failed")
    store.close()
    port = free_port()
    proc = subprocess.Popen(assetd("serve", "--config", workspace.config_path, "--listen", f"127.0.0.1:{port}"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    try:
        page = wait_for_page(f"http://127.0.0.1:{port}/failures", proc)
        assert "a.jpg" in page and "bad input" in page
    finally:
        code = stop(proc)
    assert code == 0, proc.stderr.read()
    assert port_is_free(port)


def test_run_with_review_listen_serves_the_page_and_stops_cleanly(workspace):
    port = free_port()
    config_for(workspace, f"review: {{listen: '127.0.0.1:{port}'}}\n")
    workspace.shot("inbox/a.jpg", seed=1)
    proc = subprocess.Popen(assetd("run", "--config", workspace.config_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env())
    try:
        page = wait_for_page(f"http://127.0.0.1:{port}/", proc, timeout=30)
        assert "jobs since" in page
        deadline = time.monotonic() + 30
        while "a.jpg" not in wait_for_page(f"http://127.0.0.1:{port}/", proc):  # the daemon's job, on its page
            assert time.monotonic() < deadline, "the daemon's job never showed on its page"
            time.sleep(0.2)
    finally:
        code = stop(proc, timeout=30)
    err = proc.stderr.read()
    assert code == 0, err
    assert "review page at http://127.0.0.1:" in err and "assetd stopped" in err
    assert port_is_free(port)


def test_run_refuses_a_review_page_beyond_loopback_without_a_token(workspace):
    config_for(workspace, "review: {listen: '0.0.0.0:8765'}\n")
    result = subprocess.run(assetd("run", "--config", workspace.config_path), capture_output=True, text=True,
                            env=env(), timeout=60)
    assert result.returncode == 2
    assert "needs an access token" in result.stderr


def test_the_daemon_serves_the_page_in_a_thread_and_leaves_none_behind(workspace, no_leaked_threads):
    port = free_port()
    config = config_for(workspace, f"review: {{listen: '127.0.0.1:{port}'}}\n")
    daemon = Daemon(config, load_rules(config), reload_seconds=0)
    daemon.start()
    try:
        for url in ("/", "/failures", "/api/progress"):  # sync endpoints: worker threads of the page's event loop
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{url}", timeout=5) as response:
                assert response.status == 200
    finally:
        daemon.stop()
    assert port_is_free(port)


def test_serve_says_when_the_token_file_cannot_be_read(workspace):
    config_for(workspace, "review: {token_file: secrets/token}\n")
    result = subprocess.run(assetd("serve", "--config", workspace.config_path, "--listen", "0.0.0.0:8765"),
                            capture_output=True, text=True, env=env(), timeout=30)
    assert result.returncode == 2
    assert f"review.token_file: cannot read {workspace.root / 'secrets' / 'token'}" in result.stderr


def test_check_reports_a_review_page_that_would_be_refused(workspace):
    config_for(workspace, "review: {listen: '0.0.0.0:8765'}\n")
    result = subprocess.run(assetd("check", "--config", workspace.config_path), capture_output=True, text=True,
                            env=env(), timeout=60)
    assert result.returncode == 1
    assert "listening on 0.0.0.0:8765 (not loopback) needs an access token" in result.stderr


def test_without_a_token_the_page_answers_only_to_this_machines_names(night):
    client, store, _ = night
    assert client.get("/", headers={"Host": "127.0.0.1:8765"}).status_code == 200
    assert client.get("/", headers={"Host": "localhost:8765"}).status_code == 200
    assert client.get("/", headers={"Host": "[::1]:8765"}).status_code == 200
    rebound = client.get("/failures", headers={"Host": "evil.example:8765"})  # a name made to point at 127.0.0.1
    assert rebound.status_code == 421 and "a.jpg" not in rebound.text


def test_with_a_token_any_name_may_reach_the_login(guarded):
    assert TestClient(guarded).get("/login", headers={"Host": "studio-box:8765"}).status_code == 200


def test_serve_says_when_the_address_is_taken(workspace):
    config_for(workspace)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(assetd("serve", "--config", workspace.config_path, "--listen", f"127.0.0.1:{port}"),
                                capture_output=True, text=True, env=env(), timeout=30)
    assert result.returncode == 1
    assert f"assetd: error: review page: could not listen on http://127.0.0.1:{port}/" in result.stderr


def test_the_quick_time_links_keep_the_filters(night):
    client, store, _ = night
    html = client.get("/", params={"status": "failed"}).text
    link = re.search(r'<a href="([^"]+)">6 h</a>', html).group(1).replace("&amp;", "&")
    assert "hours=6" in link and "status=failed" in link and "since=" not in link
    assert set(shown_ids(client.get(link).text)) == {j.id for j in store.jobs("failed")}


@pytest.mark.parametrize("error, label", [
    ("{p}: quarantined: assetd stopped 2 times while running this job (crash or kill); its other jobs went on",
     "quarantined"),
    ("{p}: internal error: ValueError: crop box outside the image", "stage bug"),
    ("{p}: the worker stopped while processing it 3 time(s) (crash or kill); gave up after max_attempts (3 attempts)",
     "worker stopped"),
    ("{p}: file is changing (will retry) (gave up after 3 attempts)", "gave up"),
    ("{p}: rule 'products' no longer exists", "rule changed"),
    ("{p}: damaged JPEG: the data ends before the image does", "bad input"),
    ("{p}: crops: the subject does not fit the 9:16 safe zone", "stage problem"),
])
def test_each_failure_is_classed_by_its_reason(error, label):
    from pipeline.web.failures import failure_class

    job = Job(id=1, input_hash="h", rule="products", rule_version="v", input_path="/in/a.jpg", rel_path="a.jpg",
              status=JobStatus.FAILED, attempts=1, max_attempts=3, error=error.format(p="/in/a.jpg"))
    assert failure_class(job)[1] == label


def test_outputs_awaiting_approval_are_counted_and_filtered(workspace):
    from pipeline.store import PENDING_APPROVAL, OutputRecord

    config_for(workspace)
    text = workspace.config_path.read_text().replace(
        "cutouts:   {path: out/cutouts,   format: png}", "cutouts:   {path: out/cutouts,   format: png, publish: on_approval}")
    workspace.config_path.write_text(text)
    config = load_config(workspace.config_path)
    app = create_app(config)
    store = app.state.store
    waiting = add_job(store, workspace.inbox, "a.jpg", "cutouts")
    store.finish(waiting.id, [OutputRecord("cutouts", str(workspace.out("cutouts") / "a.png"), "remove_background",
                                           None, 10, 10, 100, "ab" * 32, approval=PENDING_APPROVAL,
                                           staged_path=str(workspace.root / "state" / "staging" / "a.png"))], 1.0)
    add_job(store, workspace.inbox, "b.jpg", "cutouts", "done")
    client = TestClient(app)
    html = client.get("/").text
    assert group_rows_with_awaiting(html)[("inbox", "cutouts")]["awaiting"] == 1
    assert client.get("/api/progress").json()["totals"]["awaiting"] == 1
    assert set(shown_ids(client.get("/", params={"flag": "awaiting"}).text)) == {waiting.id}
    store.close()


def group_rows_with_awaiting(html: str) -> dict[tuple[str, str], dict[str, int]]:
    keys = ["queued", "running", "done", "failed", "superseded", "review", "awaiting", "rejected", "total"]
    out = {}
    for body in re.findall(r'<tr data-group="[^"]*">(.*?)</tr>', html, re.S):
        text = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", body, re.S)]
        out[(text[0], text[1])] = dict(zip(keys, map(int, text[2:])))
    return out


def test_rows_note_approvals_rejections_and_reruns_and_the_pills_count_outputs(workspace):
    """The night view notes each row as `assetd jobs` does (◷ N await approval, ✗ N rejected, re-run of N), its
    pills count outputs as the command line does (and say how many jobs), the "rejected" flag lists the jobs
    with rejected outputs, and the live poll carries the counts and notes."""
    from pipeline import approval
    from pipeline.store import PENDING_APPROVAL, OutputRecord

    config_for(workspace)
    text = workspace.config_path.read_text().replace(
        "cutouts:   {path: out/cutouts,   format: png}", "cutouts:   {path: out/cutouts,   format: png, publish: on_approval}")
    workspace.config_path.write_text(text)
    config = load_config(workspace.config_path)
    app = create_app(config)
    store = app.state.store

    def staged_outputs(name: str, n: int) -> list[OutputRecord]:
        return [OutputRecord("cutouts", str(workspace.out("cutouts") / f"{name}_{i}.png"), "remove_background", None,
                             10, 10, 100, "ab" * 32, approval=PENDING_APPROVAL,
                             staged_path=str(workspace.root / "state" / "staging" / f"{name}_{i}.png"))
                for i in range(n)]

    waiting = add_job(store, workspace.inbox, "a.jpg", "cutouts")
    store.finish(waiting.id, staged_outputs("a", 2), 1.0)
    turned_down = add_job(store, workspace.inbox, "b.jpg", "cutouts")
    store.finish(turned_down.id, staged_outputs("b", 1), 1.0)
    assert approval.reject(config, store, job_ids=[turned_down.id], reason="too dark", by="cli").done
    again = store.add_rerun(turned_down, rule="cutouts", rule_version="v1", overrides={}, max_attempts=2)
    client = TestClient(app)

    html = client.get("/").text
    notes = dict(re.findall(r'<tr data-id="(\d+)".*?<td class="note"[^>]*>([^<]*)</td>', html, re.S))
    assert notes == {str(waiting.id): "◷ 2 await approval", str(turned_down.id): "✗ 1 rejected",
                     str(again.id): f"re-run of {turned_down.id}"}
    pills = {m[0]: re.sub(r"<[^>]+>|\s+", " ", m[1]).split() for m in
             re.findall(r'<a class="pill (awaiting|rejected)"[^>]*>(.*?)</a>', html, re.S)}
    assert " ".join(pills["awaiting"]) == "◷ 2 outputs awaiting approval ( 1 job )"
    assert " ".join(pills["rejected"]) == "✗ 1 output rejected ( 1 job )"
    assert set(shown_ids(client.get("/", params={"flag": "rejected"}).text)) == {turned_down.id}

    live = client.get("/api/progress", params={"ids": f"{waiting.id},{turned_down.id},{again.id}"}).json()
    assert (live["totals"]["awaiting_outputs"], live["totals"]["awaiting"]) == (2, 1)
    assert (live["totals"]["rejected_outputs"], live["totals"]["rejected"]) == (1, 1)
    assert live["jobs"][str(turned_down.id)]["note"] == "✗ 1 rejected"

    # approved anew: no longer rejected anywhere
    rejected_id = store.outputs(turned_down.id)[0].id
    store.db.conn.execute("UPDATE outputs SET approval = 'approved' WHERE id = ?", [rejected_id])
    assert shown_ids(client.get("/", params={"flag": "rejected"}).text) == []
    assert 'id="rejected-pill"' in (html := client.get("/").text) and re.search(r'id="rejected-pill"[^>]* hidden', html)
    store.close()


def test_the_live_poll_says_when_outputs_await_approval_that_did_not_at_load(workspace):
    """A night view opened while nothing waited has no "Approve all remaining": it has the hidden note the poll
    shows (reload to approve) and a hidden pill, and the poll's counts are what shows them."""
    from pipeline.store import PENDING_APPROVAL, OutputRecord

    config_for(workspace)
    text = workspace.config_path.read_text().replace(
        "cutouts:   {path: out/cutouts,   format: png}", "cutouts:   {path: out/cutouts,   format: png, publish: on_approval}")
    workspace.config_path.write_text(text)
    app = create_app(load_config(workspace.config_path))
    store = app.state.store
    client = TestClient(app)
    add_job(store, workspace.inbox, "a.jpg", "cutouts", "done")
    html = client.get("/").text
    assert 'id="approve-all"' not in html
    assert re.search(r'<p id="approvals-fresh" class="notice" hidden>', html) and "reload to approve" in html
    assert re.search(r'id="awaiting-pill"[^>]* hidden', html)
    job = add_job(store, workspace.inbox, "b.jpg", "cutouts")
    store.finish(job.id, [OutputRecord("cutouts", str(workspace.out("cutouts") / "b.png"), "remove_background", None,
                                       10, 10, 100, "ab" * 32, approval=PENDING_APPROVAL,
                                       staged_path=str(workspace.root / "state" / "staging" / "b.png"))], 1.0)
    assert client.get("/api/progress").json()["totals"]["awaiting_outputs"] == 1
    assert 'id="approve-all"' in client.get("/").text  # a reload has the button
    store.close()


def test_every_page_shows_the_running_daemons_problems_as_a_banner(workspace):
    """While a daemon runs, its problem processes show on top of every page, as `assetd jobs` lists them; once it
    has stopped, none (they were about its run)."""
    from pipeline.health import Problems, Scope
    from pipeline.owners import InstanceLock

    config = config_for(workspace)
    app = create_app(config)
    store = app.state.store
    lock = InstanceLock(config.database)
    lock.acquire()
    Problems(store, None, config).start("ray:actor-2", "ray: actor-2 cannot be placed: its node left the cluster; "
                                        "the other actors go on", Scope.nothing())
    with TestClient(app) as client:
        for page in ("/", "/failures"):
            html = client.get(page).text
            banner = re.search(r'<div class="problems-banner"[^>]*>(.*?)</div>', html, re.S)
            assert banner and "problem since " in banner.group(1), page
            assert "ray: actor-2 cannot be placed: its node left the cluster" in banner.group(1)
        lock.release()
        assert "problems-banner" not in client.get("/").text
    store.close()


def test_the_night_counts_a_job_only_read_ahead_as_next(workspace):
    """A worker's read-ahead claim is not a job running: the totals count it apart ("1 read ahead") and its row
    says "next"; the progress poll says the same."""
    config = config_for(workspace)
    app = create_app(config)
    store = app.state.store
    first = add_job(store, workspace.inbox, "a.jpg", "products", "running")
    later = add_job(store, workspace.inbox, "b.jpg", "products")
    assert store.claim_next("worker-1 pid 1 on test", 60, only=[later.id], ahead=True)
    with TestClient(app) as client:
        html = client.get("/").text
        assert re.search(r'<span data-total="next">1</span> read ahead', html)
        assert re.search(r'<span data-total="running">1</span> running', html)
        statuses = dict(re.findall(r'<tr data-id="(\d+)" class="(\w+)"', html))
        assert statuses == {str(first.id): "running", str(later.id): "next"}
        progress = client.get("/api/progress?ids=" + ",".join(statuses)).json()
        assert progress["totals"]["next"] == 1 and progress["totals"]["running"] == 1
        assert progress["jobs"][str(later.id)]["status"] == "next"
    store.close()
