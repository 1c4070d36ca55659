"""The review page's decisions over a real store after real runs (starlette's TestClient): Approve publishes the
staged file into the channel folder byte for byte, Reject never publishes and records why, "approve all remaining"
approves only what is in scope, a POST without the CSRF token changes nothing, and Re-run queues a linked job (or
says in one line why not, queueing nothing)."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from pipeline.cli import cli
from pipeline.config import load_config
from pipeline.store import APPROVED, PENDING_APPROVAL, REJECTED, JobStatus, Store
from pipeline.web.app import create_app
from approvalcases import TWO_CHANNELS  # cutouts waits for approval; webshop publishes at once

CSRF = re.compile(r'name="csrf" value="([^"]+)"')



def process(ws, *names: str) -> None:
    for seed, name in enumerate(names, 1):
        ws.shot(f"inbox/{name}", "white", size=(320, 240), seed=seed, subject="bottle")
    result = CliRunner().invoke(cli, ["process", str(ws.inbox), "--config", str(ws.config_path)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output


@pytest.fixture
def site(workspace):
    """Three shots processed; their cutouts wait for approval in the staging folder; the app over the store."""
    text = workspace.config_path.read_text().replace(
        "cutouts:   {path: out/cutouts,   format: png}",
        "cutouts:   {path: out/cutouts,   format: png, publish: on_approval}")
    workspace.config_path.write_text(text)
    workspace.add_rule("20-cutouts.yaml", TWO_CHANNELS)
    process(workspace, "a.jpg", "b.jpg", "c.jpg")
    config = load_config(workspace.config_path)
    store = Store(config.database)
    jobs = {Path(j.input_path).name: j for j in store.jobs()}
    assert all(j.status is JobStatus.DONE for j in jobs.values())
    with TestClient(create_app(config, store)) as client:
        yield client, store, jobs, workspace


def csrf_of(client: TestClient, url: str) -> str:
    return CSRF.search(client.get(url).text).group(1)


def staged(store: Store, job_id: int):
    return next(r for r in store.outputs(job_id) if r.approval is not None)


def test_approve_publishes_the_staged_file_byte_for_byte(site):
    client, store, jobs, ws = site
    job = jobs["a.jpg"]
    record = staged(store, job.id)
    assert record.approval == PENDING_APPROVAL and not Path(record.path).exists()
    staged_bytes = Path(record.staged_path).read_bytes()
    page = client.get(f"/jobs/{job.id}")
    assert 'id="approve-job"' in page.text and f'name="output" value="{record.id}"' in page.text
    answer = client.post(f"/jobs/{job.id}/approve", data={"output": record.id, "csrf": CSRF.search(page.text)[1]},
                         headers={"Accept": "application/json"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["problems"] == [] and "published to" in body["lines"][-1]
    assert body["outputs"][str(record.id)]["approval_key"] == APPROVED
    assert body["outputs"][str(record.id)]["decided"].startswith("approved by review page at ")
    assert Path(record.path).read_bytes() == staged_bytes
    assert store.last_decision(record.id)["by"] == "review page"
    # the page shows it at once, with who and when; the job is off the "next awaiting" round
    page = client.get(f"/jobs/{job.id}")
    assert re.search(r'<span class="approval approved">approved</span>', page.text)
    assert "approved by review page at" in page.text
    nxt = client.get("/next-awaiting", follow_redirects=False)
    assert nxt.status_code == 303 and nxt.headers["location"] != f"/jobs/{job.id}"


def test_reject_never_publishes_and_records_the_reason(site):
    client, store, jobs, ws = site
    job = jobs["b.jpg"]
    record = staged(store, job.id)
    token = csrf_of(client, f"/jobs/{job.id}")
    # without a reason nothing is rejected (a plain form: back to the page, saying why)
    back = client.post(f"/jobs/{job.id}/reject", data={"output": record.id, "csrf": token, "reason": "  "})
    assert back.status_code == 200 and "type the reason first" in back.text
    assert store.outputs_by_id([record.id])[0].approval == PENDING_APPROVAL
    back = client.post(f"/jobs/{job.id}/reject", data={"csrf": token, "reason": "label cut off at the top"},
                       follow_redirects=False)
    assert back.status_code == 303 and back.headers["location"] == f"/jobs/{job.id}"
    page = client.get(f"/jobs/{job.id}")
    assert "rejected (label cut off at the top); never published" in page.text  # the flash, once
    assert "rejected by review page at" in page.text and "label cut off at the top" in page.text
    assert store.outputs_by_id([record.id])[0].approval == REJECTED
    assert store.last_decision(record.id)["reason"] == "label cut off at the top"
    assert not Path(record.path).exists() and Path(record.staged_path).exists()
    # an output of another job is not decided about from this job's page
    other = staged(store, jobs["c.jpg"].id)
    wrong = client.post(f"/jobs/{job.id}/reject", data={"output": other.id, "csrf": token, "reason": "no"},
                        headers={"Accept": "application/json"})
    assert wrong.status_code == 409 and "not an output of job" in wrong.json()["problems"][0]
    assert staged(store, jobs["c.jpg"].id).approval == PENDING_APPROVAL
    # approve all does not publish a rejected one either
    client.post("/approve-all", data={"csrf": token})
    assert not Path(record.path).exists()
    # its own Approve button approves it anew
    anew = client.post(f"/jobs/{job.id}/approve", data={"output": record.id, "csrf": token},
                       headers={"Accept": "application/json"}).json()
    assert anew["problems"] == [] and anew["outputs"][str(record.id)]["approval_key"] == APPROVED
    assert Path(record.path).exists()


def test_approve_all_approves_only_what_is_in_scope(site):
    client, store, jobs, ws = site
    old, new = jobs["a.jpg"], jobs["c.jpg"]
    # a.jpg's job ended yesterday: outside the night view's last 24 hours
    store.db.conn.execute("UPDATE jobs SET created_at = ?, finished_at = ? WHERE id = ?",
                          [time.time() - 30 * 3600, time.time() - 30 * 3600, old.id])
    night = client.get("/")
    assert 'id="approve-all"' in night.text and "2 jobs" in night.text
    since = re.search(r'name="since" value="([^"]+)"', night.text).group(1)
    done = client.post("/approve-all", data={"csrf": CSRF.search(night.text)[1], "since": since}, follow_redirects=True)
    assert done.status_code == 200 and "published to" in done.text
    assert staged(store, new.id).approval == APPROVED and Path(staged(store, new.id).path).exists()
    assert staged(store, jobs["b.jpg"].id).approval == APPROVED
    assert staged(store, old.id).approval == PENDING_APPROVAL and not Path(staged(store, old.id).path).exists()
    assert 'id="approve-all"' not in client.get("/").text  # nothing left in view
    assert client.get("/next-awaiting", follow_redirects=False).headers["location"] == f"/jobs/{old.id}"


def test_a_post_without_the_csrf_token_changes_nothing(site):
    client, store, jobs, ws = site
    job = jobs["a.jpg"]
    record = staged(store, job.id)
    client.get(f"/jobs/{job.id}")  # a session exists
    for url, data in ((f"/jobs/{job.id}/approve", {"output": record.id}),
                      (f"/jobs/{job.id}/reject", {"reason": "x", "csrf": "forged"}),
                      ("/approve-all", {}), (f"/jobs/{job.id}/rerun", {"rule": "cutouts"})):
        assert client.post(url, data=data).status_code == 403, url
    assert client.get(f"/jobs/{job.id}/approve").status_code == 405  # GET never decides
    assert staged(store, job.id).approval == PENDING_APPROVAL and not Path(record.path).exists()
    # the page's script sends the token as a header
    token = csrf_of(client, f"/jobs/{job.id}")
    ok = client.post(f"/jobs/{job.id}/approve", data={"output": record.id},
                     headers={"X-CSRF-Token": token, "Accept": "application/json"})
    assert ok.status_code == 200 and Path(record.path).exists()
    assert len(store.jobs()) == 3


def test_rerun_with_an_override_queues_a_linked_job_and_a_bad_one_queues_nothing(site):
    client, store, jobs, ws = site
    job = jobs["a.jpg"]
    page = client.get(f"/jobs/{job.id}")
    token = CSRF.search(page.text)[1]
    assert re.search(r'<select name="rule">.*<option selected>cutouts</option>.*</select>', page.text, re.S)
    assert '<option>scenes/marble.jpg</option>' in page.text  # the scenes the rules use
    bad = client.post(f"/jobs/{job.id}/rerun", data={"csrf": token, "rule": "products", "anchor": "sideways"})
    assert bad.status_code == 200
    problem = re.search(r'<p class="problem">(.*?)</p>', bad.text).group(1)
    assert "crops.anchor" in problem and "nothing queued" in problem
    assert len(store.jobs()) == 3
    unknown = client.post(f"/jobs/{job.id}/rerun", data={"csrf": token, "set": "no-dot-here"})
    assert "expected STEP.OPTION=VALUE" in unknown.text and len(store.jobs()) == 3

    done = client.post(f"/jobs/{job.id}/rerun", data={"csrf": token, "rule": "products", "anchor": "top",
                                                      "set": "place_in_scene.scale=0.5\n"})
    assert done.status_code == 200
    new = max(store.jobs(), key=lambda j: j.id)
    assert new.rerun_of == job.id and new.rule == "products" and new.status is JobStatus.QUEUED
    assert new.overrides == {"crops": {"anchor": "top"}, "place_in_scene": {"scale": 0.5}}
    assert f'href="/jobs/{new.id}" id="new-job"' in done.text  # a link to the new job
    assert "crops.anchor: bottom → top" in done.text and "place_in_scene.scale: 0.6 → 0.5" in done.text
    assert f'Re-run as <a href="/jobs/{new.id}">job {new.id}</a>' in done.text  # the first job links its re-runs
    assert f're-run of <a href="/jobs/{job.id}">job {job.id}</a>' in client.get(f"/jobs/{new.id}").text
