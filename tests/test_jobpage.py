"""The job page over a real store after a real `assetd process` run: every output with its ratio and channel,
the channel's safe zones, a failed job's error; ids that are not in the store are 404s; no path from a request
reaches the file system."""
from __future__ import annotations

import io
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from starlette.testclient import TestClient

from daemons import run_until_idle
from pipeline.cli import cli
from pipeline.config import load_config
from pipeline.owners import HOST
from pipeline.store import JobStatus, Store
from pipeline.synth import scene_image
from pipeline.web.app import create_app
from webcases import only_job_page


@pytest.fixture
def site(workspace):
    """A processed shot (products rule, instagram with a safe zone) and a damaged file, and the app over them."""
    text = workspace.config_path.read_text().replace(
        "instagram: {path: out/instagram, format: jpeg, quality: 88, long_edge: 500}",
        "instagram: {path: out/instagram, format: jpeg, quality: 88, long_edge: 500, "
        "safe_zone: {top: 0.1, bottom: 0.15}}").replace(
        "banners:   {path: out/banners,   format: webp, quality: 85, long_edge: 640}",
        "banners:   {path: out/banners,   format: webp, quality: 85, long_edge: 640, "
        "copy_space: {side: left, fraction: 0.3}}")
    workspace.config_path.write_text(text)
    workspace.shot("inbox/products/bottle.jpg", "grey", seed=3, subject="bottle")
    good = workspace.inbox / "products" / "bottle.jpg"
    (workspace.inbox / "damaged.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    result = CliRunner().invoke(cli, ["process", str(workspace.inbox), "--config", str(workspace.config_path)],
                                catch_exceptions=False)
    assert result.exit_code == 1, result.output  # the damaged one failed
    config = load_config(workspace.config_path)
    store = Store(config.database)
    jobs = {j.input_path.rsplit("/", 1)[-1]: j for j in store.jobs()}
    with TestClient(create_app(config, store)) as client:
        yield client, store, jobs


def test_the_page_says_where_the_chain_ran(site):
    """``jobs.ran_on``: the worker and host (under ``executor: ray``, the actor and its node) that ran the job; a
    job that failed says where it was tried too (which box a bad file upset is what the technician asks first)."""
    client, store, jobs = site
    for name in ("bottle.jpg", "damaged.jpg"):
        page = client.get(f"/jobs/{jobs[name].id}")
        assert re.search(rf'ran on <b class="ran-on">process on {re.escape(HOST)}</b>', page.text), page.text[:2000]


def test_the_page_shows_every_output_with_its_ratio_channel_and_safe_zones(site):
    client, store, jobs = site
    job = jobs["bottle.jpg"]
    page = client.get(f"/jobs/{job.id}")
    assert page.status_code == 200
    rows = store.output_rows(job.id)
    assert len(rows) == 5
    for row in rows:
        figure = re.search(rf'<figure class="out" data-output="{row["id"]}" data-ratio="{row["ratio"] or ""}" '
                           rf'data-channel="{row["channel"]}">(.*?)</figure>', page.text, re.S)
        assert figure, row
        has_zone = 'class="zone safe' in figure.group(1)
        assert has_zone == (row["channel"] == "instagram"), row
        copy = re.findall(r'<span class="zone copy[^>]*>', figure.group(1))  # only where a channel has copy space
        assert copy == (['<span class="zone copy left" style="width: 30.0%" title="copy space left 30.0%">']
                        if row["channel"] == "banners" else []), row
        image = client.get(f"/files/output/{row['id']}/thumb")
        assert image.status_code == 200 and image.headers["content-type"] == "image/webp"
    assert "remove_background" in page.text and "upscale" in page.text  # the steps with their timings
    # the contact sheet's rows in the same order on every page: the cut-out, then 1:1, 4:5, 9:16, 16:9
    assert re.findall(r'<div class="ratio-label">([^<]+)</div>', page.text) == ["cut-out", "1:1", "4:5", "9:16",
                                                                                 "16:9"]
    assert client.get(f"/files/input/{job.id}/preview").status_code == 200
    assert client.get(f"/files/job/{job.id}/thumb").status_code == 200
    check = client.get(f"/files/output/{rows[1]['id']}/check")
    assert check.status_code == 200 and float(check.headers["X-Subject-Equal"]) > 0.99
    # the slider's "before": the input as that output frames it, the same size as the output's preview
    before = client.get(f"/files/output/{rows[1]['id']}/before")
    after = client.get(f"/files/output/{rows[1]['id']}/preview")
    assert before.status_code == 200
    assert Image.open(io.BytesIO(before.content)).size == Image.open(io.BytesIO(after.content)).size


def test_a_failed_job_shows_its_error_and_class(site):
    client, store, jobs = site
    job = jobs["damaged.jpg"]
    assert job.status == JobStatus.FAILED
    page = client.get(f"/jobs/{job.id}")
    assert page.status_code == 200
    failure = re.search(r'<div class="failure" id="failure">(.*?)</div>', page.text, re.S).group(1)
    assert "image data is damaged" in failure and "bad input" in failure
    assert client.get(f"/files/job/{job.id}/thumb").status_code == 404  # no output, and the input does not decode


def test_ids_that_are_not_in_the_store_are_404s(site):
    client, _, _ = site
    for url in ("/jobs/9999", "/files/output/9999/thumb", "/files/output/9999/check", "/files/input/9999/preview",
                "/files/job/9999/thumb"):
        response = client.get(url)
        assert response.status_code == 404, url
    assert "not in the store" in client.get("/jobs/9999").text


def test_no_path_from_a_request_reaches_the_file_system(site, tmp_path):
    client, _, jobs = site
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    job = jobs["bottle.jpg"]
    for url in (f"/files/output/1/{secret}", f"/files/output/1/..%2F..%2F..%2F{secret.name}",
                f"/files/input/{job.id}/%2Fetc%2Fpasswd", f"/files/input/{secret}/thumb",
                f"/files/job/..%2F{job.id}/thumb", "/files/output/1/preview/../../../etc/passwd",
                f"/jobs/{job.id}%2F..%2F..%2Fetc%2Fpasswd"):
        response = client.get(url)
        assert response.status_code == 404, url
        assert "do not serve" not in response.text and "root:" not in response.text


def test_a_job_whose_outputs_a_rerun_replaced_shows_the_input_and_its_outputs_as_history(workspace):
    """A real re-run on another scene replaces every file of the first job: its page compares nothing (no current
    output), says which job replaced them, and shows each replaced output once as such, with the picture the cache
    kept or a placeholder saying none was kept, never a broken image; the re-run form offers every image of the
    scenes folder, the job's own scene marked."""
    workspace.shot("inbox/products/a.jpg", "white", seed=1)
    (first,) = run_until_idle(*workspace.load(), 1)
    assert first.status is JobStatus.DONE
    Image.fromarray(scene_image((900, 600), seed=7)).save(workspace.root / "scenes" / "linen.jpg", quality=90)
    (workspace.root / "scenes" / "notes.txt").write_text("not a scene")
    config = load_config(workspace.config_path)
    shutil.rmtree(config.previews_folder, ignore_errors=True)  # only what this test shows is cached
    store = Store(config.database)
    rows = {(r["channel"], r["ratio"]): r for r in store.output_rows(first.id)}
    with TestClient(create_app(config, store)) as client:
        page = client.get(f"/jobs/{first.id}").text
        scene_menu = re.search(r'<select name="scene">(.*?)</select>', page, re.S).group(1)
        assert re.findall(r"<option[^>]*>([^<]*)</option>", scene_menu) == [
            "as the rule says", "scenes/linen.jpg", "scenes/marble.jpg (this job's)"]
        seen = rows[("webshop", "1:1")]
        assert client.get(f"/files/output/{seen['id']}/thumb").status_code == 200  # looked at: the cache has it

        queued = CliRunner().invoke(cli, ["rerun", str(first.id), "--set", "place_in_scene.scene=scenes/linen.jpg",
                                          "--config", str(workspace.config_path)], catch_exceptions=False)
        assert queued.exit_code == 0, queued.output
        jobs = run_until_idle(*workspace.load(), 2)
        assert jobs[1].status is JobStatus.DONE and jobs[1].rerun_of == first.id
        assert all(o.replaced_by == jobs[1].id for o in store.outputs(first.id))

        page = client.get(f"/jobs/{first.id}").text
        assert 'id="after-choice"' not in page and 'id="slider"' not in page  # nothing current to compare with
        assert 'id="input-alone"' in page
        note = re.search(r'<p class="replaced-note" id="replaced-note">(.*?)</p>', page, re.S).group(1)
        assert f'Its outputs were replaced by <a href="/jobs/{jobs[1].id}">job {jobs[1].id}</a>' in note
        assert "written again" not in page and "this record's file is history" not in page
        for row in rows.values():
            figure = re.search(rf'<figure class="out replaced" data-output="{row["id"]}"[^>]*>(.*?)</figure>',
                               page, re.S).group(1)
            assert figure.count(f"replaced by job {jobs[1].id}") == 1, figure  # one line says it, once
            assert 'class="decide"' not in figure and 'class="small problem unavailable"' not in figure
            thumb = client.get(f"/files/output/{row['id']}/thumb")
            if row["id"] == seen["id"]:  # its picture as it was, from the cache
                assert f'<img src="/files/output/{row["id"]}/thumb"' in figure
                assert thumb.status_code == 200 and thumb.content == first_thumb_of(config, row)
            elif (row["channel"], row["ratio"]) == ("instagram", "4:5"):  # never looked at: a placeholder
                assert "<img" not in figure and "no picture of this file was kept" in figure, figure
                assert thumb.status_code == 404 and "written again by job" in thumb.text

        later = client.get(f"/jobs/{jobs[1].id}").text
        assert 'id="after-choice"' in later and 'replaced-note' not in later
        scene_menu = re.search(r'<select name="scene">(.*?)</select>', later, re.S).group(1)
        assert re.findall(r"<option[^>]*>([^<]*)</option>", scene_menu) == [
            "unchanged (this re-run&#39;s)", "scenes/linen.jpg (this job's)", "scenes/marble.jpg"]
    store.close()


def first_thumb_of(config, row) -> bytes:
    """The cached thumbnail of an output's recorded bytes (what the page showed while it was current)."""
    from pipeline.previews import SIZES

    sha = row["sha256"]
    return (config.previews_folder / sha[:2] / f"{sha}-{SIZES['thumb']}.webp").read_bytes()


def test_the_steps_that_change_the_subject_on_purpose_say_so():
    from pipeline.web.job import on_purpose

    assert on_purpose({"crops": {}, "upscale": {}}) is None
    assert on_purpose({"recolor": {"variant": "tan", "untouched": True}}) is None  # the original colourway
    assert "recolor to #1f4d3a" in on_purpose({"recolor": {"colour": "#1f4d3a", "variant": "green"}})
    both = on_purpose({"recolor": {"result": "#5a1a24"}, "tone_match": {"changes_subject": True, "max_delta_e": 3}})
    assert "recolor" in both and "tone_match (ΔE ≤ 3)" in both


PAINTED = """\
name: painted
steps:
  - retouch: {remove_mask: sidecar}
  - remove_background: {}
  - recolor: {variants: [{name: green, colour: "#1f4d3a"}]}
outputs:
  - {channel: cutouts, from: recolor}
"""


def test_each_outputs_summary_names_every_step_it_went_through_with_its_figures(workspace):
    """The trial's page left out retouch and recolor: a removal painted over the subject showed only in the raw
    JSON. Every step of the output is in the summary, in the chain's order, with its key figures."""
    for f in (workspace.root / "rules").iterdir():
        f.unlink()
    workspace.add_rule("05-painted.yaml", PAINTED)
    shot = workspace.shot("inbox/mug.jpg", "white", seed=2, subject="mug")
    mask = np.zeros((360, 480), np.uint8)
    mask[150:200, 200:260] = 255  # over the middle of the mug
    Image.fromarray(mask).save(shot.with_name("mug.remove.png"))
    result = CliRunner().invoke(cli, ["process", str(shot), "--config", str(workspace.config_path)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    page = only_job_page(workspace.config_path)
    summary = re.search(r'<details class="notes">.*?<ul>(.*?)</ul>', page, re.S).group(1)
    said = re.findall(r'<li><span class="muted">(\w+):</span> ([^<]*)</li>', summary)
    assert [step for step, _ in said] == ["retouch", "remove_background", "recolor"], said
    retouch, recolor = said[0][1], said[2][1]
    assert "painted in mug.remove.png: 3,000 px" in retouch and "of the subject" in retouch, retouch
    assert recolor.startswith("green: #") and "(swatch #1f4d3a)" in recolor and "% of the subject" in recolor, recolor
