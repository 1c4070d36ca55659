"""Test helper: real job rows for the review page (tests/test_web.py, tests/test_web_browser.py), and the page of a
workspace's only job (the tests of what a step's job page says)."""
from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from pipeline.config import load_config
from pipeline.store import Job, Store
from pipeline.web.app import create_app


def add_job(store: Store, folder: Path, name: str, rule: str, status: str = "queued", *, error: str | None = None,
            review: list[str] | None = None) -> Job:
    """A real job row, brought to ``status`` the way the worker does."""
    job, _ = store.enqueue(input_hash=f"{name}-{rule}-{folder}", rule=rule, rule_version="v1",
                           input_path=str(folder / name), rel_path=name, max_attempts=2)
    if status == "done":
        store.finish(job.id, [], 1.5, review=review)
    elif status == "failed":
        store.fail(job.id, error or f"{folder / name}: not an image (cannot decode)")
    elif status == "running":
        assert store.claim_next("worker-1 pid 1 on test", 60, only=[job.id])
    elif status == "superseded":
        store.supersede(job.id, "a newer version was dropped")
    return store.get(job.id)


def only_job_page(config_path: Path) -> str:
    """The review page of the one job in the database of the config at ``config_path`` (fails unless there is
    exactly one)."""
    config = load_config(config_path)
    store = Store(config.database)
    try:
        [job] = store.jobs()
        with TestClient(create_app(config, store)) as client:
            return client.get(f"/jobs/{job.id}").text
    finally:
        store.close()
