"""The review page in a real browser (Debian's chromium through Playwright): the night view updates itself while jobs
change, the failures page's Retry works by clicking, and each page is saved as a screenshot under
test-artifacts/screens/ to look at. Skips without /usr/bin/chromium, except under CI=true, where it fails."""
from __future__ import annotations

import time

import pytest

from pipeline.config import load_config
from pipeline.store import JobStatus
from pipeline.web.app import create_app
from pipeline.web.server import ReviewServer
from browser import SCREENS, free_port, needs_browser
from webcases import add_job

needs_browser()


@pytest.fixture
def served(workspace):
    """A night's worth of real job rows, and the page served over them as `assetd run` serves it."""
    workspace.write_config(extra="review: {token: s3cret-token}\n")
    config = load_config(workspace.config_path)
    app = create_app(config)
    store = app.state.store
    other = workspace.root / "inbox-catalogue"
    reasons = ["matte uncertain along the lower edge (hair, fur or glass?)"]
    for i in range(36):
        folder, rule = (workspace.inbox, "products") if i % 3 else (other, "cutouts")
        status = "failed" if i in (4, 17, 29) else "queued" if i > 31 else "running" if i == 31 else "done"
        error = {4: f"{folder}/SKU-{i:04d}.jpg: not a JPEG: the file ends before its image data (damaged copy?)",
                 17: f"{folder}/SKU-{i:04d}.jpg: internal error: ValueError: crop box outside the image",
                 29: f"{folder}/SKU-{i:04d}.jpg: quarantined: assetd stopped 2 times while running this job (crash "
                     "or kill); its other jobs went on"}.get(i)
        add_job(store, folder, f"SKU-{i:04d}.jpg", rule, status, error=error,
                review=reasons if i in (2, 11) else None)
    server = ReviewServer(app, f"127.0.0.1:{free_port()}")
    server.start()
    try:
        yield server.url.rstrip("/"), store
    finally:
        server.stop()
        store.close()


def test_the_pages_in_a_browser(served, browser):
    url, store = served
    SCREENS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(url + "/")
    assert page.url.startswith(url + "/login")
    page.screenshot(path=str(SCREENS / "login.png"))
    page.fill("input[name=token]", "s3cret-token")
    page.click("button.primary")
    page.wait_for_url(url + "/")
    page.screenshot(path=str(SCREENS / "night.png"), full_page=True)

    queued = store.jobs(JobStatus.QUEUED.value)[0]
    store.claim_next("worker-1 pid 1 on test", 60, only=[queued.id])  # the daemon takes a job: the row follows
    pill = page.locator(f'tr[data-id="{queued.id}"] [data-status]')
    deadline = time.monotonic() + 10
    while pill.text_content() != "running":
        assert time.monotonic() < deadline, "the night view did not update the row"
        page.wait_for_timeout(200)
    assert page.locator('[data-total="running"]').first.text_content() == "2"

    page.goto(url + "/failures")
    page.screenshot(path=str(SCREENS / "failures.png"), full_page=True)
    failed = store.jobs(JobStatus.FAILED.value)
    page.click(f'tr[data-id="{failed[0].id}"] button:text("Retry")')
    page.wait_for_url(url + "/failures")
    assert f"queued again: {failed[0].id}" in page.text_content(".flash")
    assert store.get(failed[0].id).status is JobStatus.QUEUED
    page.screenshot(path=str(SCREENS / "failures-after-retry.png"), full_page=True)


def test_the_night_view_shows_outputs_awaiting_approval_that_came_after_it_loaded(workspace, browser):
    """Opened while nothing waited: once a job ends with outputs awaiting approval, the poll shows the pill
    (outputs, jobs) and the note to reload, and the row's note; a reload has Approve all remaining."""
    from pipeline.store import PENDING_APPROVAL, OutputRecord

    workspace.write_config()
    text = workspace.config_path.read_text().replace(
        "cutouts:   {path: out/cutouts,   format: png}", "cutouts:   {path: out/cutouts,   format: png, publish: on_approval}")
    workspace.config_path.write_text(text)
    app = create_app(load_config(workspace.config_path))
    store = app.state.store
    add_job(store, workspace.inbox, "a.jpg", "cutouts", "done")
    job = add_job(store, workspace.inbox, "b.jpg", "cutouts", "running")
    server = ReviewServer(app, f"127.0.0.1:{free_port()}")
    server.start()
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 700})
        page.goto(server.url.rstrip("/") + "/")
        assert not page.locator("#awaiting-pill").is_visible() and not page.locator("#approvals-fresh").is_visible()
        store.finish(job.id, [OutputRecord("cutouts", str(workspace.out("cutouts") / f"b_{i}.png"), "remove_background",
                                           None, 10, 10, 100, "ab" * 32, approval=PENDING_APPROVAL,
                                           staged_path=str(workspace.root / "state" / "staging" / f"b_{i}.png"))
                              for i in range(2)], 1.0)
        page.locator("#approvals-fresh").wait_for(state="visible", timeout=10_000)
        assert "2 outputs await approval since this page was loaded" in page.locator("#approvals-fresh").inner_text()
        assert page.locator("#awaiting-pill").inner_text() == "◷ 2 outputs awaiting approval (1 job)"
        row = page.locator(f'tr[data-id="{job.id}"]')
        assert row.locator("[data-status]").inner_text() == "done"
        assert row.locator("[data-note]").inner_text() == "◷ 2 await approval"
        page.screenshot(path=str(SCREENS / "night-approvals-after-load.png"))
        page.click("#approvals-fresh a >> nth=0")
        page.locator("#approve-all").wait_for(state="visible", timeout=10_000)
        assert not page.locator("#approvals-fresh").count()
    finally:
        server.stop()
        store.close()
