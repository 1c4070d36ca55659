"""Rules and config saved while the daemon runs: a valid change applies to new jobs and is logged; a broken file
is logged and alerted once while the last good set keeps running, and fixing it clears that; `assetd run` on a
broken file at start exits 2 listing the problems, so that systemd (RestartPreventExitStatus=2) does not loop."""
from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.daemon import Daemon
from pipeline.intake import Intake
from pipeline.store import JobStatus, Store
from pipeline.worker import Worker
from webhooks import Receiver

# Crops alone (no cut-out): quick, and a changed ratio shows in every output's size.
WIDE = "name: cutouts\nsteps: [{crops: {ratios: ['4:3']}}]\noutputs: [{channel: cutouts}]\n"
SQUARE = WIDE.replace("4:3", "1:1")
BROKEN = WIDE.replace("ratios", "ratioz")
SHOT = (240, 180)  # small: the chain is not what is tested here
RELOAD_SECONDS = 0.1  # the daemon's look at the files (2 s in production), short for the tests


def wait_for(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Running:
    """A real daemon on the workspace (its cutouts rule: ``WIDE``), with its log lines."""

    def __init__(self, workspace, caplog):
        workspace.add_rule("20-cutouts.yaml", WIDE)
        self.workspace = workspace
        self.caplog = caplog
        self.daemon = Daemon(*workspace.load(), reload_seconds=RELOAD_SECONDS)

    def __enter__(self) -> "Running":
        self.daemon.start()
        return self

    def __exit__(self, *exc) -> None:
        self.daemon.stop()

    def lines(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.caplog.records if r.levelno >= level]

    def logged(self, text: str, level: int = logging.DEBUG) -> list[str]:
        return wait_for(lambda: [line for line in self.lines(level) if text in line], f"a log line with {text!r}")

    def drop(self, name: str, seed: int):
        """A shot dropped into the inbox; returns its job once it has finished."""
        path = self.workspace.shot(f"inbox/misc/{name}", "white", size=SHOT, seed=seed)

        def finished():
            jobs = [j for j in self.daemon.store.jobs() if j.input_path == str(path)]
            return jobs[0] if jobs and jobs[0].status in (JobStatus.DONE, JobStatus.FAILED) else None

        return wait_for(finished, f"the job of {name}")


def shape(workspace, stem: str) -> str:
    """The ratio of the latest cutouts output of ``stem``: wide (4:3) or square (1:1)."""
    path = max(workspace.out("cutouts").glob(f"{stem}_*.png"), key=lambda p: p.stat().st_mtime_ns)
    with Image.open(path) as im:
        ratio = im.width / im.height
    return "wide" if abs(ratio - 4 / 3) < 0.02 else "square" if abs(ratio - 1) < 0.02 else f"other ({ratio:.3f})"


def test_an_edited_rule_applies_to_the_next_file_and_is_logged(workspace, caplog, no_leaked_threads):
    caplog.set_level(logging.INFO, logger="assetd")
    with Running(workspace, caplog) as run:
        first = run.drop("a.jpg", seed=1)
        assert first.status is JobStatus.DONE and shape(workspace, "a") == "wide"
        published = {p.name: p.read_bytes() for p in workspace.out("cutouts").iterdir()}

        workspace.add_rule("20-cutouts.yaml", SQUARE)
        changed = run.logged("rule 'cutouts' changed (version")
        assert "new jobs use it" in " ".join(run.lines()) and "assetd reprocess --rule cutouts" in " ".join(changed)

        second = run.drop("b.jpg", seed=2)
    assert second.status is JobStatus.DONE and second.rule_version != first.rule_version
    assert shape(workspace, "b") == "square"  # the new version made it
    assert {p.name: p.read_bytes() for p in workspace.out("cutouts").glob("a_*")} == published  # left alone


def test_a_job_claimed_ahead_of_a_change_or_retried_after_it_runs_under_the_current_rule(workspace):
    """A change applies to every job that starts after it: a job claimed (read ahead) before the change, like a
    queued one, runs under the current version, and so does an old job `assetd retry` queues again (the morning's
    fix to a rule is what the retry is for)."""
    workspace.add_rule("20-cutouts.yaml", WIDE)
    config, rules = workspace.load()
    store = Store(config.database)
    intake = Intake(config, rules, store)
    worker = Worker("worker-1", config, store, rules)
    try:
        done = intake.submit(workspace.shot("inbox/misc/a.jpg", seed=1, size=SHOT)).job
        assert worker.process(store.claim_next(worker.owner, 60)).status is JobStatus.DONE
        assert shape(workspace, "a") == "wide"
        before = intake.submit(workspace.shot("inbox/misc/b.jpg", seed=2, size=SHOT)).job
        claimed = store.claim_next(worker.owner, 60, ahead=True)
        assert claimed.id == before.id
        # saved while it was claimed: a square rule writing to a channel that replaces cutouts
        workspace.config_path.write_text(workspace.config_path.read_text().replace(
            "cutouts:   {path: out/cutouts,", "squares:   {path: out/squares,"))
        workspace.add_rule("20-cutouts.yaml", SQUARE.replace("channel: cutouts", "channel: squares"))
        (workspace.root / "rules" / "10-products.yaml").unlink()  # it wrote to cutouts too
        new_config, new_rules = workspace.load()
        worker.offer(new_config, new_rules)
        worker.take_update()  # between jobs, as run_forever does, with this one claimed ahead
        assert worker.process(claimed).status is JobStatus.DONE
        current = {r.name: r.version for r in new_rules}["cutouts"]
        assert store.get(claimed.id).rule_version == current != before.rule_version
        with Image.open(next(workspace.out("squares").glob("b_*.png"))) as im:
            assert im.width == im.height

        assert store.requeue([done.id]) == [done.id]  # the morning: retry the job made under the old rule
        assert worker.process(store.claim_next(worker.owner, 60)).status is JobStatus.DONE
        assert store.get(done.id).rule_version == current
        with Image.open(next(workspace.out("squares").glob("a_*.png"))) as im:
            assert im.width == im.height
    finally:
        worker.close()
        store.close()


def test_a_broken_rule_is_alerted_once_the_last_good_rules_keep_running_and_a_fix_clears_it(workspace, caplog):
    receiver = Receiver()
    try:
        workspace.write_config(urls=[receiver.url])
        caplog.set_level(logging.INFO, logger="assetd")
        with Running(workspace, caplog) as run:
            good = run.drop("a.jpg", seed=1)

            workspace.add_rule("20-cutouts.yaml", BROKEN)
            run.logged("not applied (1 problem(s)); the last good config and rules keep running", logging.ERROR)
            problem = run.logged("ratioz", logging.ERROR)
            assert "20-cutouts.yaml" in problem[0]
            alerts = wait_for(lambda: receiver.messages, "the alert")
            assert "config or rule file broken, not applied" in alerts[0]["message"]
            assert "ratioz" in alerts[0]["message"] and "last good config and rules keep running" in alerts[0]["message"]
            listing = CliRunner().invoke(cli, ["jobs", "--config", str(workspace.config_path)]).output
            assert "problem since" in listing and "paused since" not in listing  # it pauses nothing

            workspace.add_rule("20-cutouts.yaml", BROKEN.replace("ratioz", "ratios_"))  # saved again, still broken
            run.logged("ratios_", logging.ERROR)
            listing = CliRunner().invoke(cli, ["jobs", "--config", str(workspace.config_path)]).output
            assert "ratios_" in listing and "ratioz" not in listing  # the problem says what is broken now
            late = run.drop("b.jpg", seed=2)  # runs under the last good rule
            assert late.status is JobStatus.DONE and late.rule_version == good.rule_version
            assert shape(workspace, "b") == "wide"

            workspace.add_rule("20-cutouts.yaml", SQUARE)
            run.logged("config and rule files load again", logging.WARNING)
            wait_for(lambda: len(receiver.messages) == 2, "the cleared alert")
            fixed = run.drop("c.jpg", seed=3)
            assert fixed.rule_version != good.rule_version and shape(workspace, "c") == "square"
        titles = [m["title"] for m in receiver.messages]
        assert len(titles) == 2, titles  # one on, one off; it paused nothing, so neither says paused/resumed
        assert "problem" in titles[0] and "config" in titles[1] and "cleared" in titles[1], titles
        assert "load again" in receiver.messages[1]["message"]
    finally:
        receiver.close()


def test_a_config_change_adds_a_channel_for_new_jobs_and_a_new_database_waits_for_a_restart(
        workspace, caplog, no_leaked_threads):
    caplog.set_level(logging.INFO, logger="assetd")
    with Running(workspace, caplog) as run:
        run.drop("a.jpg", seed=1)
        text = workspace.config_path.read_text().replace(
            "channels:\n", "channels:\n  thumbs:    {path: out/thumbs, format: jpeg, long_edge: 100, filename: '{stem}.{ext}'}\n")
        workspace.config_path.write_text(text.replace("database: state/assetd.sqlite3", "database: moved/db.sqlite3"))
        run.logged("config: channels changed", logging.INFO)
        notes = run.logged("needs a restart", logging.WARNING)
        assert "database: changed" in notes[0]
        workspace.add_rule("20-cutouts.yaml", CUTOUTS_AND_THUMBS)
        run.logged("rule 'cutouts' changed (version")

        job = run.drop("b.jpg", seed=2)
        assert job.status is JobStatus.DONE
        with Image.open(workspace.out("thumbs") / "b.jpg") as im:
            assert max(im.size) == 100
        assert not (workspace.out("thumbs") / "a.jpg").exists()  # taken before the change
        assert not (workspace.root / "moved").exists()  # the running database stays until a restart


def test_with_on_rule_change_reprocess_an_edited_rule_redoes_the_files_in_the_inbox(workspace, caplog,
                                                                                    no_leaked_threads):
    workspace.write_config(extra="on_rule_change: reprocess\n")
    caplog.set_level(logging.INFO, logger="assetd")
    with Running(workspace, caplog) as run:
        first = run.drop("a.jpg", seed=1)
        workspace.add_rule("20-cutouts.yaml", SQUARE)
        run.logged("on_rule_change is reprocess: the 1 file(s) it took before")
        redone = wait_for(lambda: [j for j in run.daemon.store.jobs() if j.id != first.id
                                   and j.status is JobStatus.DONE], "a.jpg redone")
    assert redone[0].input_path == first.input_path and redone[0].rule_version != first.rule_version
    assert shape(workspace, "a") == "square"  # made again under the edited rule, as a restart would have


def test_workers_added_and_removed_while_running_take_and_finish_the_files(workspace, caplog, no_leaked_threads):
    caplog.set_level(logging.INFO, logger="assetd")
    with Running(workspace, caplog) as run:
        workspace.config_path.write_text(workspace.config_path.read_text().replace("workers: 1", "workers: 3"))
        run.logged("config: workers changed")
        jobs = [run.drop(f"{n}.jpg", seed=n) for n in range(3)]
        workspace.config_path.write_text(workspace.config_path.read_text().replace("workers: 3", "workers: 1"))
        run.logged("config: workers changed")
        jobs += [run.drop("last.jpg", seed=4)]
        # the two extra workers stop by themselves, before the daemon does (each when its job is done: wait for both)
        stopped = wait_for(lambda: len([t for t in run.daemon._threads if not t.is_alive()]) == 2,
                           "the two retired workers")
    assert [j.status for j in jobs] == [JobStatus.DONE] * 4
    assert stopped


def test_an_inbox_added_while_running_is_watched_and_one_that_disappeared_is_not_recreated(workspace, caplog,
                                                                                          no_leaked_threads):
    caplog.set_level(logging.INFO, logger="assetd")
    config = workspace.config_path
    with Running(workspace, caplog) as run:
        config.write_text(config.read_text().replace(
            "inboxes:\n", "inboxes:\n  - {path: second, create: true, settle_seconds: 0.3}\n"))
        run.logged("config: inboxes changed")
        shot = workspace.shot("second/misc/a.jpg", seed=1, size=SHOT)  # created by the reload (create: true)
        job = wait_for(lambda: [j for j in run.daemon.store.jobs() if j.input_path == str(shot)
                                and j.status is JobStatus.DONE], "the new inbox's file")
        assert job and shape(workspace, "a") == "wide"

        for path in sorted((workspace.root / "second").rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        (workspace.root / "second").rmdir()  # the share went away
        config.write_text(config.read_text().replace("rescan_seconds: 30", "rescan_seconds: 40"))
        run.logged("config: rescan_seconds changed")
        run.logged("inbox " + str(workspace.root / "second"), logging.ERROR)  # waited for, once
    assert not (workspace.root / "second").exists()  # never recreated under the mount point


CUTOUTS_AND_THUMBS = WIDE.replace("[{channel: cutouts}]", "[{channel: cutouts}, {channel: thumbs}]")


def test_a_new_step_whose_model_does_not_load_is_refused_like_a_broken_file(workspace, caplog, tmp_path, monkeypatch,
                                                                             no_leaked_threads):
    pytest.importorskip("rembg")
    workspace.write_config(extra=f"models: {{cache_dir: {tmp_path / 'empty-cache'}}}\n")
    caplog.set_level(logging.INFO, logger="assetd")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with Running(workspace, caplog) as run:
        workspace.add_rule("05-gpu.yaml", "name: gpu\nmatch: {folder: 'gpu/**'}\n"
                                          "steps: [{remove_background: {backend: rembg, model: u2net}}]\n"
                                          "outputs: [{channel: cutouts}]\n")
        run.logged("not applied", logging.ERROR)
        assert run.logged("u2net", logging.ERROR)
        job = run.drop("a.jpg", seed=1)  # the running rules still take files
        assert job.status is JobStatus.DONE and job.rule == "cutouts"


def assetd(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("broken", ["config", "rule", "folder"])
def test_assetd_run_on_a_broken_file_exits_2_listing_the_problems_without_usage(workspace, broken):
    config = workspace.config_path
    if broken == "config":
        config.write_text(config.read_text() + "workerz: 3\ninboxes: [\n")
        expected = f"{config}: not valid YAML"
    elif broken == "rule":
        workspace.add_rule("20-cutouts.yaml", BROKEN)
        workspace.add_rule("30-more.yaml", "name: more\nsteps: [{upscale: {factor: -1}}]\n")
        expected = "20-cutouts.yaml: steps[0].crops.ratioz"
    else:  # a folder given as the config file (a unit file pointing at the wrong path)
        config = workspace.root / "rules"
        expected = f"{config}: cannot read config file"
    out = assetd("run", "--config", config)
    assert out.returncode == 2, out.stderr
    assert expected in out.stderr and "assetd: error:" in out.stderr
    assert "Usage:" not in out.stderr and "Traceback" not in out.stderr
    if broken == "rule":
        assert "30-more.yaml" in out.stderr  # every problem listed, not just the first


def test_the_systemd_unit_does_not_restart_a_daemon_that_exited_on_a_broken_config():
    unit = (Path(__file__).parent.parent / "docs" / "assetd.service").read_text()
    settings = [line.strip() for line in unit.splitlines() if line.strip() and not line.startswith("#")]
    assert "RestartPreventExitStatus=2" in settings
    # systemd tests RestartPreventExitStatus against the main process only: a failing ExecStartPre restarts it
    assert not [s for s in settings if s.startswith("ExecStartPre=")]
