"""Previews ready in the morning: the daemon makes a finished job's thumbnails, previews and first subject check
when the job ends (when the review page is in use), so the page's first view reads the cache; and a dead
assetd's temporary files in the previews cache are removed at start."""
from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time

import pytest
from starlette.testclient import TestClient

from daemons import run_until_idle
from pipeline import previews
from pipeline.daemon import Daemon
from pipeline.outputs import TEMP_SUFFIX, remove_temp_files, write_temp
from pipeline.web.app import create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cached(config, pattern: str) -> list:
    folder = config.previews_folder
    return sorted(folder.glob(f"*/{pattern}")) if folder.is_dir() else []


def test_the_daemon_makes_a_finished_jobs_previews_before_anyone_asks(workspace, monkeypatch):
    workspace.write_config(extra=f"review: {{listen: '127.0.0.1:{free_port()}'}}\n")
    workspace.shot("inbox/a.jpg", "grey", seed=3, subject="bottle")  # the cutouts rule: one output
    config, rules = workspace.load()
    daemon = Daemon(config, rules)
    daemon.start()
    try:  # no request reaches the page meanwhile
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (len(cached(config, "*-1600.webp")) == 2
                                                  and cached(config, "*-check-*.json")):  # the check: last
            time.sleep(0.1)
        job = daemon.store.jobs()[0]
    finally:
        daemon.stop()
    assert job.status.value == "done"
    assert len(cached(config, "*-240.webp")) == 2 and len(cached(config, "*-1600.webp")) == 2  # the input, the output

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded at a request: the previews were not made when the job ended")

    monkeypatch.setattr(previews, "decode", no_decoding)
    app = create_app(config)
    output = app.state.store.output_rows(job.id)[0]["id"]
    with TestClient(app) as client:
        for url in [f"/files/job/{job.id}/thumb", f"/files/input/{job.id}/preview", f"/files/output/{output}/thumb",
                    f"/files/output/{output}/preview", f"/files/output/{output}/before"]:
            response = client.get(url)
            assert response.status_code == 200, (url, response.text)
    app.state.store.close()


def test_without_the_page_in_use_nothing_is_made_but_the_matte_for_a_later_check(workspace):
    """No thumbnail or preview is made; the chain's matte is kept all the same (a job run before the page was
    first opened gets an exact subject check), and that alone does not count as the page being in use."""
    workspace.shot("inbox/a.jpg", "grey", seed=3, subject="bottle")
    workspace.shot("inbox/b.jpg", "grey", seed=4, subject="mug")
    config, rules = workspace.load()
    jobs = run_until_idle(config, rules, 2)
    assert [j.status.value for j in jobs] == ["done", "done"]
    kept = sorted(p.name.rpartition("-")[0].rpartition("-")[2] for p in config.previews_folder.rglob("*.png"))
    assert kept == ["matte", "matte"], sorted(config.previews_folder.rglob("*"))
    assert not list(config.previews_folder.rglob("*.webp")) and not previews.wanted(config)



def test_a_matte_an_actor_sent_as_png_is_kept_the_same_way(workspace):
    """Under ``executor: ray`` the matte comes back from the actor already encoded: it is kept where the page looks
    for it, and a cache made for it alone still does not count as the page being in use."""
    import numpy as np

    workspace.shot("inbox/a.jpg", "grey", seed=3, subject="bottle")
    config, rules = workspace.load()
    [job] = run_until_idle(config, rules, 1)
    matte = np.zeros((60, 80), np.uint8)
    matte[10:50, 20:60] = 255
    for folder in sorted(config.previews_folder.rglob("*"), reverse=True):  # as if none was kept yet
        folder.unlink() if folder.is_file() else folder.rmdir()
    config.previews_folder.rmdir()

    kept = previews.keep_matte(config, job, previews.matte_png(matte))

    assert kept == previews.matte_file(config, job) and kept.read_bytes() == previews.matte_png(matte)
    assert not previews.wanted(config)

def test_a_preview_that_cannot_be_made_never_fails_the_job(workspace, monkeypatch, caplog):
    config, rules = workspace.load()
    config.previews_folder.mkdir(parents=True)  # `assetd serve` has shown images here: the page is in use
    made = []

    def broken(config, store, job_id, *args, **kwargs):
        made.append(job_id)
        raise RuntimeError("out of memory")

    monkeypatch.setattr(previews, "make_for_job", broken)
    workspace.shot("inbox/a.jpg", "grey", seed=3, subject="bottle")
    caplog.set_level(logging.WARNING, logger="assetd.previews")
    daemon = Daemon(config, rules)
    daemon.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not made:
            time.sleep(0.05)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "could not be made" not in caplog.text:
            time.sleep(0.05)
        job = daemon.store.jobs()[0]
    finally:
        daemon.stop()
    assert job.status.value == "done" and made == [job.id]
    assert (f"job {job.id}: its previews could not be made now (RuntimeError: out of memory); the review page "
            "makes them when it shows the job") in caplog.text


def test_start_removes_a_dead_assetds_temporary_files_from_the_previews_cache(workspace, caplog):
    config, rules = workspace.load()
    folder = config.previews_folder / "ab"
    ours = write_temp(folder / "ab12-240.webp", b"half")
    tag = ours.name[: -len(TEMP_SUFFIX)].rpartition(".")[2].rpartition("-")[0]
    ours.unlink()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # an `assetd serve` at work
    left = folder / f".ab12-240.webp.x1y2.{tag}-{dead.pid}{TEMP_SUFFIX}"
    kept = [folder / f".ab12-1600.webp.x1y2.{tag}-{alive.pid}{TEMP_SUFFIX}", folder / "ab12-240.webp"]
    for path in [left, *kept]:
        path.write_bytes(b"x")
    caplog.set_level(logging.WARNING)
    daemon = Daemon(config, rules)
    try:
        daemon.start()
        daemon.stop()
        assert not left.exists() and all(p.exists() for p in kept)
        assert f"{folder}: removed 1 temporary file(s) left by an assetd that stopped while writing" in caplog.text
        assert remove_temp_files(config) == {}
    finally:
        alive.kill()
        alive.wait()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
