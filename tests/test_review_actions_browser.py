"""The review page's decisions in a real browser over a real daemon: shots dropped into the inbox are processed
into a `publish: on_approval` channel; on a job's page P approves the selected output (the file appears in the
channel folder, byte for byte the staged one), X rejects another with a reason (it never does), "approve all
remaining" on the night view publishes the rest, and Re-run with another option queues a new job linked to the
first. Screenshots under test-artifacts/screens/. Skips without /usr/bin/chromium, except under CI=true."""
from __future__ import annotations

import time
from pathlib import Path

from pipeline.store import JobStatus
from browser import ServedDaemon, needs_browser, screenshot

needs_browser()

# the cut-out waits for approval in "catalogue"; webshop publishes at once
RULE = """\
name: cutouts
steps:
  - remove_background: {}
outputs:
  - {channel: catalogue, from: remove_background}
  - {channel: webshop, from: remove_background}
"""
CHANNEL = "  catalogue: {path: out/catalogue, format: png, publish: on_approval}\n"


def wait_for(what: str, check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_approve_reject_approve_all_and_rerun_in_a_browser(workspace, browser):
    workspace.add_rule("20-cutouts.yaml", RULE)
    with ServedDaemon(workspace, channels_extra=CHANNEL, review_extra=", token: s3cret-token") as served:
        store = served.store
        for seed, name in enumerate(["a.jpg", "b.jpg", "c.jpg"], 1):
            workspace.shot(f"inbox/{name}", "white", size=(320, 240), seed=seed, subject="bottle")
        jobs = wait_for("three jobs done", lambda: (lambda js: js if len(js) == 3 and all(
            j.status is JobStatus.DONE for j in js) else None)(store.jobs()), timeout=60)
        by_name = {Path(j.input_path).name: j for j in jobs}
        folder = workspace.out("catalogue")
        assert not folder.exists() or not list(folder.iterdir())  # nothing published before a decision

        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("dialog", lambda dialog: dialog.accept())
        page.goto(served.url + "/login")
        page.fill("input[name=token]", "s3cret-token")
        page.click("button.primary")
        page.wait_for_url(served.url + "/")

        # P on a staged output: it is published into the channel folder, byte for byte the staged file
        a = by_name["a.jpg"]
        staged = next(r for r in store.outputs(a.id) if r.channel == "catalogue")
        staged_bytes = Path(staged.staged_path).read_bytes()
        page.goto(f"{served.url}/jobs/{a.id}")
        selected = page.locator("#sheet figure.out.selected")
        assert selected.get_attribute("data-output") == str(staged.id)  # the first one awaiting a decision
        screenshot(page, "actions-job-pending")
        page.keyboard.press("p")
        page.locator(f'#sheet figure.out[data-output="{staged.id}"] .approval.approved').wait_for()
        assert wait_for("the approved file", lambda: (folder / "a.png").exists())
        assert (folder / "a.png").read_bytes() == staged_bytes
        assert "approved by review page" in selected.text_content()
        assert page.locator("#awaiting-count").text_content() == "0"
        assert page.locator("#approve-job").is_disabled()
        assert "N opens the next job awaiting approval" in page.locator("#action-status").text_content()
        screenshot(page, "actions-job-approved")

        # N: the next job awaiting approval; X there with a reason: rejected, never published
        page.keyboard.press("n")
        page.wait_for_url(f"{served.url}/jobs/{by_name['b.jpg'].id}")
        b = by_name["b.jpg"]
        rejected = next(r for r in store.outputs(b.id) if r.channel == "catalogue")
        first = page.locator("#sheet figure.out.selected").get_attribute("data-output")
        page.keyboard.press("ArrowRight")  # the webshop output: it publishes at once, nothing to decide
        assert page.locator("#sheet figure.out.selected").get_attribute("data-output") != first
        page.keyboard.press("x")
        assert "publishes at once" in page.locator("#action-status").text_content()
        page.keyboard.press("k")
        assert page.locator("#sheet figure.out.selected").get_attribute("data-output") == first == str(rejected.id)
        page.keyboard.press("x")  # no reason yet: it asks for one and rejects nothing
        assert page.evaluate("document.activeElement.id") == "reason"
        assert "type why it is rejected" in page.locator("#action-status").text_content()
        page.fill("#reason", "label cut off")
        page.keyboard.press("Escape")
        page.keyboard.press("x")
        page.locator(f'#sheet figure.out[data-output="{rejected.id}"] .approval.rejected').wait_for()
        assert "rejected by review page" in page.locator("#sheet figure.out.selected .decided").text_content()
        assert store.last_decision(rejected.id)["reason"] == "label cut off"
        assert not (folder / "b.png").exists()
        screenshot(page, "actions-job-rejected")

        # the night view: approve all remaining (confirmed): c is published, the rejected b still is not
        page.goto(served.url + "/")
        screenshot(page, "actions-night-before-approve-all")
        page.click("#approve-all button")
        page.wait_for_selector("#flash")
        assert wait_for("c's file", lambda: (folder / "c.png").exists())
        assert not (folder / "b.png").exists()
        assert page.locator("#approve-all").count() == 0
        screenshot(page, "actions-night-after-approve-all")

        # re-run a job with another option: a new job, linked both ways
        page.goto(f"{served.url}/jobs/{a.id}")
        page.click("#rerun summary")
        page.fill("textarea[name=set]", "remove_background.trim=true")
        page.click("form.rerunform button.primary")
        page.wait_for_selector("#new-job")
        new_id = max(j.id for j in store.jobs())
        assert store.get(new_id).rerun_of == a.id
        assert page.locator(".reruns a").first.text_content() == f"job {new_id}"
        screenshot(page, "actions-rerun-queued")
        page.click("#new-job")
        page.wait_for_url(f"{served.url}/jobs/{new_id}")
        assert f"re-run of job {a.id}" in page.locator(".where").text_content()
        assert "remove_background.trim=true" in page.locator(".where").text_content()
        wait_for("the re-run to end", lambda: store.get(new_id).status is JobStatus.DONE, timeout=60)
        page.close()


# three outputs of one shot, each waiting for approval in its own channel
THREE = """\
name: cutouts
steps:
  - remove_background: {}
outputs:
  - {channel: catalogue, from: remove_background}
  - {channel: archive, from: remove_background}
  - {channel: proofs, from: remove_background}
"""
THREE_CHANNELS = ("  catalogue: {path: out/catalogue, format: png, publish: on_approval}\n"
                  "  archive: {path: out/archive, format: png, publish: on_approval}\n"
                  "  proofs: {path: out/proofs, format: png, publish: on_approval}\n")


def test_a_reject_lets_go_of_the_reason_and_a_replaced_jobs_page_shows_history(workspace, browser):
    """After a reject (the button, or Enter in the reason) the field is empty and has let go of the keys: the
    arrows and P work at once, and an Enter in the empty field asks for a reason instead of rejecting the next
    output. Then the job is re-run and the re-run approved: the first job's page has nothing current to compare,
    says which job replaced its outputs, raises no script error and shows no broken image."""
    workspace.add_rule("20-cutouts.yaml", THREE)
    with ServedDaemon(workspace, channels_extra=THREE_CHANNELS) as served:
        store = served.store
        workspace.shot("inbox/a.jpg", "white", size=(320, 240), seed=1, subject="bottle")
        (job,) = wait_for("the job done", lambda: (lambda js: js if len(js) == 1 and js[0].status is JobStatus.DONE
                                                   else None)(store.jobs()), timeout=60)
        first, second, third = (r.id for r in store.outputs(job.id))
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{served.url}/jobs/{job.id}")
        selected = page.locator("#sheet figure.out.selected")

        def rejected(output_id: int) -> None:
            page.locator(f'#sheet figure.out[data-output="{output_id}"] .approval.rejected').wait_for()

        def let_go() -> None:
            assert page.input_value("#reason") == ""
            assert page.evaluate("document.activeElement && document.activeElement.id") != "reason"

        # the Reject button with a reason typed: rejected, the field empty and let go, on to the next one
        assert selected.get_attribute("data-output") == str(first)
        page.fill("#reason", "too dark")
        selected.locator("button.reject").click()
        rejected(first)
        let_go()
        assert selected.get_attribute("data-output") == str(second)

        # Enter in the reason: the selected one rejected, the field empty and let go; the arrows work at once
        page.click("#reason")
        page.keyboard.type("label cut off")
        page.keyboard.press("Enter")
        rejected(second)
        let_go()
        assert selected.get_attribute("data-output") == str(third)
        page.keyboard.press("ArrowLeft")
        assert selected.get_attribute("data-output") == str(second)
        page.keyboard.press("ArrowRight")
        assert page.input_value("#reason") == ""  # the keys went to the page, not into the field

        # an Enter in the empty field asks for a reason and rejects nothing
        page.click("#reason")
        page.keyboard.press("Enter")
        assert "type why it is rejected" in page.locator("#action-status").text_content()
        assert store.last_decision(third) is None
        screenshot(page, "actions-reject-let-go")

        # Escape, then P: the third one approved and published
        page.keyboard.press("Escape")
        page.keyboard.press("p")
        page.locator(f'#sheet figure.out[data-output="{third}"] .approval.approved').wait_for()
        assert wait_for("the approved file", lambda: (workspace.out("proofs") / "a.png").exists())
        assert [store.last_decision(i)["reason"] for i in (first, second)] == ["too dark", "label cut off"]
        assert not (workspace.out("catalogue") / "a.png").exists()

        # re-run it, approve the re-run: every output of the first job is replaced
        page.click("#rerun summary")
        page.fill("textarea[name=set]", "remove_background.trim=true")
        page.click("form.rerunform button.primary")
        page.wait_for_selector("#new-job")
        new_id = max(j.id for j in store.jobs())
        wait_for("the re-run to end", lambda: store.get(new_id).status is JobStatus.DONE, timeout=60)
        page.goto(f"{served.url}/jobs/{new_id}")
        page.keyboard.press("Shift+P")
        page.locator("#awaiting-count", has_text="0").wait_for()
        wait_for("the first job's outputs replaced",
                 lambda: all(o.replaced_by == new_id for o in store.outputs(job.id)))

        # one picture no longer in the cache (a cleared previews folder): a placeholder says so
        gone = next(r for r in store.output_rows(job.id) if r["id"] == first)["sha256"]
        for cached in served.daemon.config.previews_folder.glob(f"*/{gone}-*"):
            cached.unlink()
        page.goto(f"{served.url}/jobs/{job.id}")
        page.wait_for_load_state("networkidle")
        assert page.locator("#after-choice").count() == 0 and page.locator("#input-alone").is_visible()
        assert page.locator("#replaced-note a").text_content() == f"job {new_id}"
        for output_id in (first, second, third):
            figure = page.locator(f'#sheet figure.out.replaced[data-output="{output_id}"]')
            assert figure.locator(".approval").text_content() == f"replaced by job {new_id}"
            assert figure.text_content().count(f"job {new_id}") == 1  # the state, once
        shown = page.evaluate("""() => Array.from(document.querySelectorAll('#sheet figure.out')).map(f => {
            const img = f.querySelector('img'), ph = f.querySelector('.placeholder');
            return {picture: !!img && !img.hidden && img.complete && img.naturalWidth > 0,
                    broken: !!img && !img.hidden && img.complete && img.naturalWidth === 0,
                    placeholder: !!ph && !ph.hidden};
        })""")
        assert not any(f["broken"] for f in shown), shown
        assert all(f["picture"] != f["placeholder"] for f in shown), shown  # each shows one or the other
        assert page.locator(f'#sheet figure.out[data-output="{first}"] .placeholder').is_visible()
        screenshot(page, "job-outputs-replaced")
        assert errors == []
        page.close()
