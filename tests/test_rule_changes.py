"""A changed rule applies to new files; `assetd reprocess` redoes the earlier ones on purpose, counted."""
from __future__ import annotations

import json
import logging

from click.testing import CliRunner
from PIL import Image

from daemons import run_until_idle as daemon_run_until_idle
from pipeline.cli import cli
from pipeline.store import JobStatus, Store

TRIMMED = "name: cutouts\nsteps: [{remove_background: {trim: true}}]\noutputs: [{channel: cutouts}]\n"


def run_until_idle(workspace, expected_jobs: int) -> list:
    return daemon_run_until_idle(*workspace.load(), expected_jobs)


def reprocess(workspace, *args: str):
    return CliRunner().invoke(cli, ["reprocess", "--config", str(workspace.config_path), "--rule", "cutouts", *args],
                              catch_exceptions=False)


def test_an_edited_rule_leaves_earlier_outputs_alone_and_says_so(workspace, caplog):
    workspace.shot("inbox/misc/a.jpg", "white", seed=1)
    workspace.shot("inbox/misc/b.jpg", "grey", seed=2)
    first = run_until_idle(workspace, 2)
    assert [j.status for j in first] == [JobStatus.DONE, JobStatus.DONE]
    out = workspace.out("cutouts") / "a.png"
    published = out.read_bytes()

    workspace.add_rule("20-cutouts.yaml", TRIMMED)
    with caplog.at_level(logging.INFO, logger="assetd"):
        workspace.shot("inbox/misc/new.jpg", "white", seed=3)  # arrives after the change
        jobs = run_until_idle(workspace, 3)
    assert len(jobs) == 3 and jobs[2].input_path.endswith("new.jpg") and jobs[2].status is JobStatus.DONE
    assert out.read_bytes() == published  # weeks-old deliverable untouched
    changed = [r.getMessage() for r in caplog.records if "changed (version" in r.getMessage()]
    assert len(changed) == 1 and "rule 'cutouts' changed" in changed[0] and "2 file(s)" in changed[0]
    assert "assetd reprocess --rule cutouts" in changed[0]
    with Image.open(workspace.out("cutouts") / "new.png") as im:
        assert im.size != (480, 360)  # the new file got the new (trimming) rule

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="assetd"):
        run_until_idle(workspace, 3)  # restart: not changed again, nothing redone, no per-file lines
    assert not [r for r in caplog.records if "changed (version" in r.getMessage()]
    assert not [r for r in caplog.records if r.getMessage().startswith("not reprocessed")]
    summary = [r.getMessage() for r in caplog.records if "are not reprocessed" in r.getMessage()]
    assert summary and summary[0].startswith("3 file(s)") and "(2 taken under an earlier version" in summary[0]


def test_reprocess_counts_then_redoes_the_files_on_purpose(workspace):
    workspace.shot("inbox/misc/a.jpg", "white", seed=1)
    gone = workspace.shot("inbox/misc/gone.jpg", "grey", seed=2)
    run_until_idle(workspace, 2)
    gone.unlink()
    workspace.add_rule("20-cutouts.yaml", TRIMMED)

    dry = reprocess(workspace, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "1 file(s) it took under an earlier version; their 1 output(s) will be replaced" in dry.output
    assert "1 file(s) are no longer where they were" in dry.output and "gone.jpg" in dry.output
    assert "nothing was queued" in dry.output
    db = workspace.root / "state" / "assetd.sqlite3"
    assert not db.with_name(db.name + "-wal").exists()  # the command closed its store (the last one out)
    store = Store(workspace.root / "state" / "assetd.sqlite3")
    assert [j.status for j in store.jobs()] == [JobStatus.DONE, JobStatus.DONE]
    store.close()

    later = reprocess(workspace, "--since", "2999-01-01")
    assert "0 file(s)" in later.output and "queued 0 job(s)" in later.output

    real = reprocess(workspace)
    assert real.exit_code == 0 and "queued 1 job(s)" in real.output, real.output
    jobs = run_until_idle(workspace, 3)
    assert [j.status for j in jobs] == [JobStatus.DONE] * 3
    with Image.open(workspace.out("cutouts") / "a.png") as im:
        assert im.size != (480, 360)  # redone under the trimming rule, same name
    store = Store(workspace.root / "state" / "assetd.sqlite3")
    old = store.outputs(jobs[0].id)[0]
    assert old.replaced_by == jobs[2].id  # the earlier record says its file was written again
    assert reprocess(workspace, "--dry-run").output.count("0 file(s)") == 1  # nothing left to redo
    store.close()


def test_process_skips_a_file_taken_under_an_earlier_version_unless_forced(workspace):
    shot = workspace.shot("inbox/misc/a.jpg", "white", seed=1)
    args = ["process", str(shot), "--config", str(workspace.config_path), "--json"]
    assert CliRunner().invoke(cli, args, catch_exceptions=False).exit_code == 0
    workspace.add_rule("20-cutouts.yaml", TRIMMED)
    skipped = CliRunner().invoke(cli, args, catch_exceptions=False)
    (doc,) = json.loads(skipped.stdout)["results"]
    assert skipped.exit_code == 0 and doc["status"] == "skipped"
    assert "earlier version" in doc["error"] and "assetd reprocess --rule cutouts" in doc["error"]
    forced = CliRunner().invoke(cli, args + ["--force"], catch_exceptions=False)
    (doc,) = json.loads(forced.stdout)["results"]
    assert forced.exit_code == 0 and doc["status"] == "done"


def test_since_takes_the_time_as_assetd_jobs_prints_it(workspace):
    result = reprocess(workspace, "--since", "2026-11-30 00:53:38", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "since 2026-11-30 00:53:38" in result.output
