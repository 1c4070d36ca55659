"""The job page over a real store after a real `assetd process` run: every output with its ratio and channel,
the channel's safe zones, a failed job's error; ids that are not in the store are 404s; no path from a request
reaches the file system."""
from __future__ import annotations

import io
import re

import pytest
from click.testing import CliRunner
from PIL import Image
from starlette.testclient import TestClient

from pipeline.cli import cli
from pipeline.config import load_config
from pipeline.store import JobStatus, Store
from pipeline.web.app import create_app


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
