"""A job marked for review: a stage that doubts its result says why on the asset; the job still finishes and
writes its outputs, and the reasons reach the job record, ``assetd jobs``, the manifest and the digest."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from dataclasses import dataclass

import numpy as np
import pytest
from click.testing import CliRunner
from sqlite_utils import Database

from pipeline.cli import cli
from pipeline.intake import Intake
from pipeline.notify import digest_text
from pipeline.outputs import review_reasons
from pipeline.schema import opt
from pipeline.stages.base import Asset, Stage, registered
from pipeline.store import Job, JobStatus, Store, migrations
from pipeline.worker import Worker


@dataclass
class DoubtfulOptions:
    reason: str = opt("", doc="review reason added to every asset; {ratio} is the asset's ratio")


class DoubtfulUpscale(Stage):
    """A test backend that passes assets through and, when told to, doubts them."""

    step = "upscale"
    backend = "doubtful"
    Options = DoubtfulOptions

    def run(self, asset: Asset) -> list[Asset]:
        out = asset.derive(asset.pixels, asset.matte)
        if self.options.reason:
            out.review.append(self.options.reason.format(ratio=asset.ratio))
        return [out]


RULE = """\
name: {name}
steps:
  - crops: {{ratios: ["1:1", "4:5", "16:9"], fill: pad}}
  - upscale: {{backend: doubtful, reason: "{reason}"}}
outputs:
  - {{channel: cutouts,   ratios: ["1:1"]}}
  - {{channel: webshop,   ratios: ["1:1"]}}
  - {{channel: instagram, ratios: ["4:5"]}}
"""
DOUBT = "upscale: matte uncertain on the {ratio} frame (review_above 10%)"


@pytest.fixture(autouse=True)
def doubtful_backend():
    """Registered only while this module's tests run (the README lists the real backends)."""
    with registered(DoubtfulUpscale):
        yield


@pytest.fixture
def processed(workspace):
    """Two jobs run by a worker: ``doubtful`` (its stage gives reasons) and ``sure`` (none)."""
    for f in (workspace.root / "rules").iterdir():
        f.unlink()
    workspace.add_rule("doubtful.yaml", RULE.format(name="doubtful", reason=DOUBT))
    workspace.add_rule("sure.yaml", RULE.format(name="sure", reason=""))
    config, rules = workspace.load()
    store = Store(config.database)
    intake = Intake(config, rules, store)
    doubtful = intake.submit(workspace.shot("staging/doubt.jpg", "white", seed=1), rule_name="doubtful").job
    sure = intake.submit(workspace.shot("staging/sure.jpg", "grey", seed=2), rule_name="sure").job
    worker = Worker("w1", config, store, rules)
    results = {doubtful.id: worker.run_next(), sure.id: worker.run_next()}
    worker.close()
    yield store, doubtful.id, sure.id, results
    store.close()


def test_a_doubted_job_is_done_with_its_outputs_and_reasons(workspace, processed):
    store, doubtful, sure, results = processed
    expected = [DOUBT.format(ratio="1:1"), DOUBT.format(ratio="4:5")]  # 1:1 written twice, 16:9 not written
    job = store.get(doubtful)
    assert job.status is JobStatus.DONE and job.review == expected
    assert results[doubtful].status == "done" and results[doubtful].review == expected
    outputs = store.outputs(doubtful)
    assert sorted(o.channel for o in outputs) == ["cutouts", "instagram", "webshop"]
    assert all(workspace.root.joinpath(o.path).exists() for o in outputs)
    manifest = json.loads(workspace.manifest("doubtful", "doubt").read_text())
    assert manifest["review"] == expected

    clean = store.get(sure)
    assert clean.status is JobStatus.DONE and clean.review == []
    assert json.loads(workspace.manifest("sure", "sure").read_text())["review"] == []
    assert store.db.execute("SELECT review FROM jobs WHERE id = ?", [sure]).fetchone()[0] is None

    assert [j.id for j in store.jobs("review")] == [doubtful]
    assert [j.id for j in store.jobs("done")] == [doubtful, sure]
    assert store.review_count() == 1 and store.counts()["done"] == 2


def test_one_warning_per_job_that_needs_review(workspace, caplog):
    workspace.add_rule("00-doubtful.yaml", RULE.format(name="doubtful", reason=DOUBT))
    config, rules = workspace.load()
    store = Store(config.database)
    job = Intake(config, rules, store).submit(workspace.shot("staging/a.jpg", seed=3), rule_name="doubtful").job
    worker = Worker("w1", config, store, rules)
    with caplog.at_level(logging.INFO, logger="assetd.worker"):
        worker.run_next()
    worker.close()
    store.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"job {job.id} needs review" in warnings[0] and "a.jpg" in warnings[0]
    assert DOUBT.format(ratio="1:1") in warnings[0] and DOUBT.format(ratio="4:5") in warnings[0]


def test_jobs_command_lists_and_counts_jobs_to_review(workspace, processed):
    store, doubtful, sure, _ = processed

    def jobs(*args: str):
        result = CliRunner().invoke(cli, ["jobs", "--config", str(workspace.config_path), *args],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    listed = jobs("--status", "review")
    assert "doubt.jpg" in listed and "sure.jpg" not in listed
    assert "⚑ upscale: matte uncertain on the 1:1 frame" in listed and "(+1 more)" in listed
    assert "2 done (1 need review), 0 failed" in listed
    done = jobs("--status", "done")
    assert "doubt.jpg" in done and "sure.jpg" in done
    docs = {j["id"]: j for j in json.loads(jobs("--json"))["jobs"]}
    assert docs[doubtful]["review"] == store.get(doubtful).review and docs[sure]["review"] == []
    assert [j["id"] for j in json.loads(jobs("--status", "review", "--json"))["jobs"]] == [doubtful]


def test_digest_says_how_many_need_review_and_why(processed):
    store, doubtful, sure, _ = processed
    title, body = digest_text(store.finished_between(0, time.time() + 1))
    assert title == "batch finished: 2 done (1 need review), 0 failed"
    assert "Need review" in body
    assert f"doubt.jpg: {DOUBT.format(ratio='1:1')}; {DOUBT.format(ratio='4:5')}" in body
    assert "sure.jpg" not in body


def test_digest_caps_the_review_list():
    jobs = [Job(id=i, input_hash=str(i), rule="r", rule_version="1", input_path=f"/in/{i}.jpg", rel_path=f"{i}.jpg",
                status=JobStatus.DONE, attempts=1, max_attempts=3, created_at=100.0, finished_at=110.0,
                seconds=1.0, review=["remove_background: matte uncertain"]) for i in range(5)]
    title, body = digest_text(jobs, max_listed=2)
    assert title == "batch finished: 5 done (5 need review), 0 failed"
    assert "- /in/0.jpg: remove_background: matte uncertain" in body and "/in/2.jpg" not in body
    assert "- ... and 3 more (assetd jobs --status review)" in body
    jobs[0].review = []
    title, body = digest_text(jobs[:1])
    assert title == "batch finished: 1 done, 0 failed" and "review" not in body


def test_retry_clears_the_review_mark(processed):
    store, doubtful, sure, _ = processed
    assert store.requeue([doubtful]) == [doubtful]
    job = store.get(doubtful)
    assert job.status is JobStatus.QUEUED and job.review == []
    assert store.jobs("review") == [] and store.review_count() == 0


def test_review_reasons_of_written_assets_are_one_line_each_once_in_order():
    pixels = np.zeros((2, 2, 3), np.uint8)
    a = Asset(pixels, review=["crops: tight\n  frame", "upscale: soft"])
    b = Asset(pixels, review=["upscale: soft", "", "crops: tight frame", "remove_background: halo"])
    assert review_reasons([a, b]) == ["crops: tight frame", "upscale: soft", "remove_background: halo"]
    assert review_reasons([Asset(pixels)]) == []


def test_derive_copies_the_review_reasons():
    parent = Asset(np.zeros((2, 2, 3), np.uint8), review=["remove_background: matte uncertain"])
    child = parent.derive(parent.pixels, None, ratio="1:1")
    child.review.append("crops: subject touches the edge")
    assert parent.review == ["remove_background: matte uncertain"]
    assert child.review == ["remove_background: matte uncertain", "crops: subject touches the edge"]


def test_an_existing_database_gains_the_review_column(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    old = Database(path)
    migrations.apply(old, stop_before="m002_job_review")  # the schema before this migration
    assert "review" not in old["jobs"].columns_dict
    old["jobs"].insert({"input_hash": "h", "rule": "r", "rule_version": "1", "input_path": "/in/a.jpg",
                        "rel_path": "a.jpg", "status": "done", "attempts": 1, "max_attempts": 3,
                        "finished_at": time.time()})
    old.close()

    store = Store(path)
    (job,) = store.jobs()
    assert job.status is JobStatus.DONE and job.review == [] and store.jobs("review") == []
    again, _ = store.enqueue(input_hash="h2", rule="r", rule_version="1", input_path="/in/b.jpg", rel_path="b.jpg",
                             max_attempts=3)
    store.claim_next("w", 60)
    store.finish(again.id, [], 1.0, ["upscale: soft"])
    assert store.get(again.id).review == ["upscale: soft"]
    assert [j.id for j in store.jobs("review")] == [again.id]
    store.close()
    reopened = Store(path)  # applying the migrations again changes nothing
    assert reopened.get(again.id).review == ["upscale: soft"]
    reopened.close()


def test_process_reports_review_reasons_in_text_and_json(workspace):
    for f in (workspace.root / "rules").iterdir():
        f.unlink()
    workspace.add_rule("doubtful.yaml", RULE.format(name="doubtful", reason=DOUBT))
    workspace.add_rule("sure.yaml", RULE.format(name="sure", reason=""))
    doubt = workspace.shot("staging/doubt.jpg", "white", seed=1)
    sure = workspace.shot("staging/sure.jpg", "grey", seed=2)
    config = str(workspace.config_path)
    runner = CliRunner()
    text = runner.invoke(cli, ["process", str(doubt), "--config", config, "--rule", "doubtful"])
    assert text.exit_code == 0, text.output
    assert f"⚑ needs review: {DOUBT.format(ratio='1:1')}" in text.output
    as_json = runner.invoke(cli, ["process", str(doubt), str(sure), "--config", config, "--rule", "sure", "--json",
                                  "--force"])
    results = {Path(r["input"]).name: r for r in json.loads(as_json.output)["results"]}
    assert results["sure.jpg"]["review"] == [] and results["sure.jpg"]["status"] == "done"
    again = runner.invoke(cli, ["process", str(doubt), "--config", config, "--rule", "doubtful", "--json"])
    (done,) = json.loads(again.output)["results"]  # already done: the stored reasons are reported
    assert done["status"] == "skipped" and done["review"] == [DOUBT.format(ratio="1:1"), DOUBT.format(ratio="4:5")]
