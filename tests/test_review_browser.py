"""The review page end to end: a real daemon (``review.listen``) working on shots dropped into its inbox, and the page
in a real browser (Debian's chromium through Playwright) as the retoucher uses it in the morning: the night view
counting the jobs as they arrive and end without a reload, a job's before/after slider, subject check and contact
sheet with the channel's safe zones, a damaged file fixed and retried from the failures page, a failure
acknowledged, /metrics; and with a token, the login page in front of everything. Each page state is saved under
test-artifacts/screens/review-*.png to look at. Skips without /usr/bin/chromium, except under CI=true."""
from __future__ import annotations

import os
import re
import time

import pytest

from browser import ServedDaemon, needs_browser, screenshot

needs_browser()

from playwright.sync_api import expect  # noqa: E402  (after the skip: playwright is only needed with chromium)

WAIT = 30_000  # ms: a job takes a second or two here; the page polls every 2 s


@pytest.fixture
def served(workspace):
    """A daemon serving the page: instagram has a safe zone (10 % top, 15 % bottom), and the inbox moves inputs
    out once their job ended (`after: move`: a failed one into inbox/error/, where the studio fixes it)."""
    served = ServedDaemon(workspace)
    text = workspace.config_path.read_text()
    text = text.replace("instagram: {path: out/instagram, format: jpeg, quality: 88, long_edge: 500}",
                        "instagram: {path: out/instagram, format: jpeg, quality: 88, long_edge: 500, "
                        "safe_zone: {top: 0.1, bottom: 0.15}}")
    text = text.replace("    settle_seconds:", "    after: move\n    settle_seconds:", 1)
    workspace.config_path.write_text(text)
    with served:
        yield served


def drop_the_night(workspace):
    """Two good shots, a file truncated by a bad copy (an hour old: not a copy still arriving) and a text file
    someone saved as .jpg."""
    good = workspace.shot("inbox/products/bottle.jpg", "grey", seed=3, subject="bottle")
    workspace.shot("inbox/products/mug.jpg", "white", seed=4)
    damaged = workspace.inbox / "products" / "damaged.jpg"
    damaged.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    os.utime(damaged, (time.time() - 3600,) * 2)
    (workspace.inbox / "products" / "notes.jpg").write_text("call the client about the blue mug\n")


def job_of(store, name: str):
    return next(j for j in reversed(store.jobs()) if j.input_path.endswith("/" + name))


def test_the_morning_review_in_a_browser(served, workspace, browser):
    url, store = served.url, served.store
    page = browser.new_page(viewport={"width": 1400, "height": 900})

    # -- the night view, open before anything arrived, counts the jobs as the daemon takes and ends them
    page.goto(url + "/")
    expect(page.locator("#jobs.empty")).to_be_visible()
    screenshot(page, "review-night-empty")
    drop_the_night(workspace)
    expect(page.locator('[data-total="done"]').first).to_have_text("2", timeout=WAIT)
    expect(page.locator('[data-total="failed"]').first).to_have_text("2", timeout=WAIT)
    expect(page.locator("#fresh")).to_contain_text("4 new jobs since this page was loaded")
    expect(page.locator("#jobs.empty")).to_be_hidden()  # no "No jobs" under "4 new jobs"
    screenshot(page, "review-night-arrived")
    page.click("#fresh a")  # reload: the rows
    expect(page.locator("table.jobs tbody tr")).to_have_count(4)
    expect(page.locator('tr[data-group$="|products"] [data-key="total"]')).to_have_text("4")
    damaged, notes, bottle = job_of(store, "damaged.jpg"), job_of(store, "notes.jpg"), job_of(store, "bottle.jpg")
    expect(page.locator(f'tr[data-id="{damaged.id}"] [data-status]')).to_have_text("failed")
    expect(page.locator(f'tr[data-id="{damaged.id}"] td.note')).to_contain_text("image data is damaged")
    expect(page.locator(f'tr[data-id="{bottle.id}"] td.thumb img')).to_have_js_property("complete", True)
    assert page.eval_on_selector(f'tr[data-id="{bottle.id}"] td.thumb img', "i => i.naturalWidth") > 0
    expect(page.locator(f'tr[data-id="{bottle.id}"] td.thumb .nothumb')).to_be_hidden()
    expect(page.locator(f'tr[data-id="{damaged.id}"] td.thumb .nothumb')).to_have_text("no picture")  # not blank
    screenshot(page, "review-night")

    # -- a job: the slider, the subject check, the contact sheet with instagram's safe zones
    job = browser.new_page(viewport={"width": 1400, "height": 900})
    job.goto(url + "/")
    job.click(f'tr[data-id="{bottle.id}"] td.file a')
    job.wait_for_url(f"{url}/jobs/{bottle.id}")
    expect(job.locator("h1")).to_contain_text("bottle.jpg")
    job.wait_for_function("() => { const i = document.getElementById('after-img');"
                          " return i.complete && i.naturalWidth > 0; }")
    clip = job.locator(".after-clip")
    assert clip.evaluate("c => c.style.clipPath") == "inset(0px 0px 0px 50%)"  # half the input, half the output
    screenshot(job, "review-job")
    box = job.locator("#slider-range").bounding_box()
    job.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    job.mouse.down()
    job.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] / 2, steps=5)
    job.mouse.up()
    shown = float(re.fullmatch(r"inset\(0px 0px 0px ([\d.]+)%\)", clip.evaluate("c => c.style.clipPath"))[1])
    assert 10 < shown < 30, shown  # dragged to a fifth: the output shows from there on
    screenshot(job, "review-job-slid")
    job.focus("#slider-range")
    job.keyboard.press("End")  # the keyboard: all input
    assert clip.evaluate("c => c.style.clipPath") == "inset(0px 0px 0px 100%)"
    job.keyboard.press("Home")  # all output
    assert clip.evaluate("c => c.style.clipPath") == "inset(0px 0px 0px 0%)"

    job.check("#check-toggle")
    expect(job.locator("#check-figure")).to_contain_text("% of the subject equals the input", timeout=WAIT)
    figure = float(job.text_content("#check-figure").split("%")[0])
    assert figure > 99  # the chain placed the subject's own pixels: an edit, not a new picture
    expect(job.locator("#check-legend")).to_be_visible()
    job.wait_for_function("() => { const i = document.getElementById('after-alone');"
                          " return i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0; }")
    screenshot(job, "review-job-check")

    for ratio in ("4:5", "9:16"):
        frame = job.locator(f'#sheet figure[data-channel="instagram"][data-ratio="{ratio}"] .frame')
        height = frame.bounding_box()["height"]
        for side, fraction in (("top", 0.10), ("bottom", 0.15)):
            zone = frame.locator(f".zone.safe.{side}")
            expect(zone).to_be_visible()
            assert zone.bounding_box()["height"] / height == pytest.approx(fraction, abs=0.02), (ratio, side)
    expect(job.locator('#sheet figure[data-channel="webshop"] .zone.safe')).to_have_count(0)
    job.locator("#sheet").scroll_into_view_if_needed()
    screenshot(job, "review-job-sheet")

    # -- failures: the damaged file fixed where after: move put it, then Retry; the other acknowledged
    page.goto(url + "/failures")
    expect(page.locator("table.failures tbody tr")).to_have_count(2)
    expect(page.locator(f'tr[data-id="{damaged.id}"] .class')).to_have_text("bad input")
    screenshot(page, "review-failures")
    job.click("header nav a:text('Failures')")
    job.click(f'tr[data-id="{damaged.id}"] td.file a')  # what went wrong, before fixing it
    expect(job.locator("#failure")).to_contain_text("image data is damaged")
    expect(job.locator("#failure .state")).to_have_text("bad input")
    screenshot(job, "review-job-failed")
    night = browser.new_page(viewport={"width": 1400, "height": 900})
    night.goto(url + "/")  # stays open: the retried job's row follows
    workspace.shot("inbox/error/products/damaged.jpg", "white", seed=5)  # a good copy from the card
    page.click(f'tr[data-id="{damaged.id}"] button:text("Retry")')
    page.wait_for_url(url + "/failures")
    expect(page.locator(".flash")).to_contain_text(f"job {damaged.id}: moved")
    expect(page.locator(".flash")).to_contain_text(f"queued again: {damaged.id}")
    expect(page.locator(f'tr[data-id="{damaged.id}"]')).to_have_count(0)
    screenshot(page, "review-failures-retried")
    # the fixed file's content is new: the retried job gives way to the new version's job, which ends done
    expect(night.locator(f'tr[data-id="{damaged.id}"] [data-status]')).to_have_text("superseded", timeout=WAIT)
    expect(night.locator('[data-total="done"]').first).to_have_text("3", timeout=WAIT)
    expect(night.locator("#fresh")).to_contain_text("1 new job since")
    night.click("#fresh a")
    fixed = job_of(store, "damaged.jpg")
    expect(night.locator(f'tr[data-id="{fixed.id}"] [data-status]')).to_have_text("done")
    assert any(workspace.out("webshop").rglob("damaged*"))  # published
    screenshot(night, "review-night-after-retry")

    page.click(f'tr[data-id="{notes.id}"] button:text("Acknowledge")')
    page.wait_for_url(url + "/failures")
    expect(page.locator(".flash")).to_contain_text(f"acknowledged: {notes.id}")
    expect(page.locator("table.failures")).to_have_count(0)
    expect(page.locator(".empty")).to_contain_text("No failures to look at")
    expect(page.locator('a[href="/failures?acknowledged=1"]')).to_have_text("1 acknowledged or resolved")
    screenshot(page, "review-failures-acknowledged")

    # -- /metrics: Prometheus' text, from the same store
    response = page.goto(url + "/metrics")
    assert response.status == 200 and response.headers["content-type"].startswith("text/plain")
    body = page.text_content("body")
    assert re.search(r'^assetd_jobs_total\{outcome="done",rule="products"\} 3\.0$', body, re.M), body[:2000]
    assert re.search(r'^assetd_jobs_total\{outcome="failed",rule="products"\} 1\.0$', body, re.M)
    screenshot(page, "review-metrics")


def test_a_token_guards_every_page(workspace, browser):
    with ServedDaemon(workspace, review_extra=", token: 'night-shift-7'") as served:
        url = served.url
        page = browser.new_page(viewport={"width": 1200, "height": 700})
        for path in ("/", "/failures", "/jobs/1"):
            page.goto(url + path)
            assert page.url.startswith(url + "/login"), path
            expect(page.locator("header nav a")).to_have_count(0)  # nothing of the page before the login
        screenshot(page, "review-login")
        metrics = page.request.get(url + "/metrics")
        assert metrics.status == 401 and "assetd_jobs" not in metrics.text()

        page.fill("input[name=token]", "night-shift-8")
        page.click("button.primary")
        expect(page.locator(".problem")).to_have_text("wrong access token")
        assert page.url.startswith(url + "/login")
        screenshot(page, "review-login-refused")
        page.goto(url + "/failures")  # still no session
        assert page.url.startswith(url + "/login")

        page.fill("input[name=token]", "night-shift-7")
        page.click("button.primary")
        page.wait_for_url(url + "/failures")  # where it was going
        page.goto(url + "/failures")
        expect(page.locator("h1")).to_contain_text("Failures")
        expect(page.locator("header button.link")).to_have_text("Log out")
        screenshot(page, "review-failures-signed-in")
        scrape = page.request.get(url + "/metrics", headers={"Authorization": "Bearer night-shift-7"})
        assert scrape.status == 200 and "assetd_jobs_in_flight" in scrape.text()
