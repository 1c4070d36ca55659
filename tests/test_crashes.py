"""Crash attribution and deliverables: when assetd dies, only the job whose run was going is charged (the one read
ahead goes back untouched); a job that kills the process again is quarantined while its neighbours finish; a
job's outputs are published together or not at all; temporary files a dead assetd left are removed at start."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.daemon import Daemon
from pipeline.intake import Intake
from pipeline.outputs import TEMP_SUFFIX, Publisher, write_temp
from pipeline.rules import load_rules
from pipeline.config import load_config
from pipeline.stages.base import registered
from pipeline.store import JobStatus, Store
from pipeline.worker import Worker

from conftest import Workspace
from crashing import KillerUpscale

TESTS = Path(__file__).resolve().parent


def sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "jobs.sqlite3")
    yield s
    s.close()


def enqueue(store: Store, h: str, path: str = "/in/a.jpg", attempts: int = 3):
    return store.enqueue(input_hash=h, rule="r", rule_version="v1", input_path=path, rel_path=Path(path).name,
                         max_attempts=attempts)[0]


# --- the store: what a claim, a run and a crash charge ------------------------------------------

def test_a_job_claimed_ahead_is_charged_only_when_its_run_begins(store):
    job = enqueue(store, "h1")
    claimed = store.claim_next("worker-1 pid 1 on h", 60, ahead=True)
    assert claimed.id == job.id and claimed.attempts == 0 and claimed.chain_started_at is None
    assert store.begin(job.id, "worker-1 pid 1 on h") == 1
    assert store.begin(job.id, "worker-1 pid 1 on h") == 1  # once per claim
    assert store.begin(job.id, "worker-2 pid 1 on h") is None  # not its claim
    assert store.release(job.id, owner="worker-1 pid 1 on h")  # handed back: the run does not count
    back = store.get(job.id)
    assert back.attempts == 0 and back.chain_started_at is None


def test_a_crash_counts_for_the_running_job_only_and_quarantines_it_the_second_time(store):
    poison, neighbour = enqueue(store, "h1", "/in/poison.jpg"), enqueue(store, "h2", "/in/b.jpg")
    for crash in (1, 2):
        owner = f"worker-1 pid {crash} on h"
        running = store.claim_next(owner, 3600, ahead=True)
        ahead = store.claim_next(owner, 3600, ahead=True)
        assert running.id == poison.id
        assert ahead is None if crash == 2 else ahead.id == neighbour.id  # a job with a crash runs alone
        if ahead is not None:
            store.read_ahead_done(ahead.id, owner)  # its decode ended before the crash
        store.begin(poison.id, owner)
        found = store.recover()  # assetd started again
        assert found.started == [poison.id] and found.ahead == ([neighbour.id] if crash == 1 else [])
    j = store.get(poison.id)
    assert j.status is JobStatus.FAILED and j.crashes == 2
    assert j.error == ("/in/poison.jpg: quarantined: assetd stopped 2 times while running this job (crash or kill); "
                       "its other jobs went on")
    n = store.get(neighbour.id)
    assert n.status is JobStatus.QUEUED and n.attempts == 0 and n.crashes == 0


def test_a_job_with_a_crash_waits_until_nothing_else_of_its_process_runs(store):
    suspect, other = enqueue(store, "h1", "/in/a.jpg"), enqueue(store, "h2", "/in/b.jpg")
    store.claim_next("worker-1 pid 1 on h", 3600)
    store.recover()
    busy = enqueue(store, "h3", "/in/c.jpg")
    assert store.claim_next("worker-1 pid 7 on h", 3600, only=[busy.id]).id == busy.id
    assert store.claim_next("worker-2 pid 7 on h", 3600) is None  # its turn: it waits for worker-1's job
    assert store.claim_next("process pid 8 on h", 3600, only=[other.id]).id == other.id  # another process
    store.finish(busy.id, [], 1.0)
    assert store.claim_next("worker-2 pid 7 on h", 3600).id == suspect.id
    assert store.get(suspect.id).crashes == 1


# --- real processes: `assetd run` killed mid-chain ---------------------------------------------

def killer_studio(workspace: Workspace, names: list[str], times: int) -> tuple[Path, list[int]]:
    """A workspace whose rule kills assetd on inputs named *poison* (``times`` in all, 0: always; once no decode
    ahead is going, so the death is that stage's), with a job already queued for each of ``names`` (in this
    order)."""
    text = workspace.config_path.read_text().replace("max_attempts: 2", "max_attempts: 3")
    workspace.config_path.write_text(text)
    for f in (workspace.root / "rules").iterdir():
        f.unlink()
    killer = f"backend: killer, kill_if: poison, times: {times}, tally: {workspace.root / 'kills'}, quiet: true"
    workspace.add_rule("killer.yaml", "name: killer\nsteps: [{upscale: {" + killer + "}}]\n"
                                      "outputs: [{channel: cutouts, from: upscale}]\n")
    with registered(KillerUpscale):
        config = load_config(workspace.config_path)
        store = Store(config.database)
        intake = Intake(config, load_rules(config), store)
        ids = [intake.submit(workspace.shot(f"inbox/{name}.jpg", "white", size=(160, 120), seed=i)).job.id
               for i, name in enumerate(names)]
        store.close()
    return config.database, ids


def start(workspace: Workspace) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), str(TESTS)]))
    return subprocess.Popen([sys.executable, str(TESTS / "crashing.py"), "run", "--config", str(workspace.config_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


def jobs_in(db: Path) -> dict[int, object]:
    store = Store(db)
    try:
        return {j.id: j for j in store.jobs()}
    finally:
        store.close()


def run_until(proc: subprocess.Popen, db: Path, done: callable, timeout: float = 60) -> tuple[int, str]:
    """Until the process dies (a crash) or ``done(jobs)``; then SIGTERM. Returns (exit code, its output)."""
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if done(jobs_in(db)):
                proc.send_signal(signal.SIGTERM)
                break
            time.sleep(0.1)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out.decode(errors="replace")


def all_finished(jobs) -> bool:
    return all(j.status in (JobStatus.DONE, JobStatus.FAILED) for j in jobs.values())


def test_the_job_read_ahead_is_not_charged_when_assetd_is_killed(workspace):
    db, (poison, ahead) = killer_studio(workspace, ["a-poison", "b"], times=1)
    code, out = run_until(start(workspace), db, all_finished)
    assert code == -signal.SIGKILL, out[-2000:]
    jobs = jobs_in(db)
    assert jobs[poison].status is JobStatus.RUNNING and jobs[poison].chain_started_at is not None
    assert jobs[ahead].status is JobStatus.RUNNING and jobs[ahead].chain_started_at is None  # claimed, not run

    code, out = run_until(start(workspace), db, all_finished)
    assert code == 0, out[-2000:]
    assert ("1 job(s) were running when assetd last stopped (a crash counted for each): 1 queued again; "
            "1 claimed ahead went back to the queue untouched") in out
    jobs = jobs_in(db)
    assert jobs[ahead].status is JobStatus.DONE and (jobs[ahead].attempts, jobs[ahead].crashes) == (1, 0)
    assert jobs[poison].status is JobStatus.DONE and (jobs[poison].attempts, jobs[poison].crashes) == (2, 1)


def test_a_job_that_kills_assetd_again_is_quarantined_and_its_neighbours_finish(workspace):
    db, (first, poison, last) = killer_studio(workspace, ["a", "poison", "c"], times=0)
    outs = []
    for _ in range(4):
        code, out = run_until(start(workspace), db, all_finished)
        outs.append(out)
        if code == 0:
            break
        assert code == -signal.SIGKILL, out[-2000:]
    assert len(outs) == 3, "\n---\n".join(o[-1500:] for o in outs)  # killed twice, then it finished the rest
    jobs = jobs_in(db)
    assert jobs[poison].status is JobStatus.FAILED and jobs[poison].crashes == 2
    assert jobs[poison].error == (f"{workspace.inbox / 'poison.jpg'}: quarantined: assetd stopped 2 times while "
                                  "running this job (crash or kill); its other jobs went on")
    for job_id in (first, last):
        assert jobs[job_id].status is JobStatus.DONE and (jobs[job_id].attempts, jobs[job_id].crashes) == (1, 0)
    assert (workspace.out("cutouts") / "c.png").is_file() and not (workspace.out("cutouts") / "poison.png").exists()
    assert "1 job(s) were running when assetd last stopped (a crash counted for each): 0 queued again, " \
           "1 failed for good" in outs[2]
    assert "quarantined" in outs[2]  # its own line, and the alert


# --- temporary files ---------------------------------------------------------------------------

def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_start_removes_only_the_temporary_files_of_a_dead_assetd(workspace, caplog):
    config, rules = workspace.load()
    cutouts, manifests = workspace.out("cutouts"), config.manifest_folder / "products"
    ours = write_temp(cutouts / "a.png", b"half")  # the pattern assetd writes, from this (live) process
    assert ours.name.startswith(".a.png.") and ours.name.endswith(TEMP_SUFFIX) and ours.stat().st_mode & 0o777 == 0o644
    tag = ours.name[: -len(TEMP_SUFFIX)].rpartition(".")[2].rpartition("-")[0]
    ours.unlink()
    pid = dead_pid()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # an assetd still writing
    left = [cutouts / f".b.png.x1y2.{tag}-{pid}{TEMP_SUFFIX}", manifests / f".b.assetd.json.q9.{tag}-{pid}{TEMP_SUFFIX}"]
    kept = [cutouts / f".a.png.x1y2.{tag}-{alive.pid}{TEMP_SUFFIX}",
            cutouts / f".c.png.x1y2.otherhost-{pid}{TEMP_SUFFIX}",  # another machine's: not ours to judge
            cutouts / ".c001_bottle_white.png.8xo9cbu_.tmp", cutouts / f"notes{TEMP_SUFFIX}", cutouts / "d.png"]
    for path in left + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    caplog.set_level(logging.INFO)
    daemon = Daemon(config, rules)
    try:
        daemon.start()
        daemon.stop()
        assert [p for p in left if p.exists()] == []
        assert [p for p in kept if not p.exists()] == []
        assert f"{cutouts}: removed 1 temporary file(s) left by an assetd that stopped while writing" in caplog.text
        assert f"{manifests}: removed 1 temporary file(s)" in caplog.text

        left[0].write_bytes(b"x")  # `assetd process` cleans up too
        (workspace.root / "nothing").mkdir()
        result = CliRunner().invoke(cli, ["process", str(workspace.root / "nothing"), "--config",
                                          str(workspace.config_path)])
        assert result.exit_code == 0, result.output
        assert not left[0].exists() and [p for p in kept if not p.exists()] == []
    finally:
        alive.kill()
        alive.wait()


# --- a job's outputs: all published, or none ---------------------------------------------------

def test_a_job_that_cannot_write_one_output_publishes_none(workspace):
    config, rules = workspace.load()
    banners = workspace.out("banners")
    banners.parent.mkdir(parents=True, exist_ok=True)
    banners.write_text("a file where the banners folder should be")  # writing there fails
    store = Store(config.database)
    job = Intake(config, rules, store).submit(workspace.shot("inbox/products/a.jpg", seed=3, subject="box")).job
    worker = Worker("w1", config, store, rules)
    try:
        first = worker.run_next()
        assert first.status is JobStatus.QUEUED and str(banners) in first.error  # a write error: retried
        time.sleep(config.retry_delay_seconds + 0.05)
        assert worker.run_next().status is JobStatus.FAILED
        assert store.outputs(job.id) == [] and store.manifests(job.id) == []
    finally:
        worker.close()
        store.close()
    published = [p for p in (workspace.root / "out").rglob("*") if p.is_file() and p != banners]
    assert published == []  # nothing in cutouts, webshop, instagram; no temporary file either
    assert not list((config.manifest_folder).rglob("*.json"))


def test_a_job_failed_for_good_withdraws_only_the_files_it_published(workspace, store):
    config, _ = workspace.load()
    out = workspace.out("cutouts")
    out.mkdir(parents=True)
    job = enqueue(store, "h1", "/in/a.jpg")
    store.claim_next("worker-1 pid 1 on h", 3600)
    files = {"published": b"ours", "not-renamed": b"never renamed", "edited": b"ours too", "taken": b"ours 3"}
    for name, data in files.items():
        store.reserve_output(job.id, str(out / f"{name}.png"), "cutouts", "upscale", sha(data), len(data))
    (out / "published.png").write_bytes(b"ours")
    (out / "edited.png").write_bytes(b"a retoucher's version")
    (out / "taken.png").write_bytes(b"ours 3")
    later = enqueue(store, "h2", "/in/b.jpg")
    store.reserve_output(later.id, str(out / "taken.png"), "cutouts", "upscale", sha(b"ours 3"), 6)
    store.recover()  # assetd died between the renames...
    store.claim_next("worker-1 pid 2 on h", 3600, only=[job.id])
    store.fail(job.id, "/in/a.jpg: damaged")  # ...and the redo failed for good
    publisher = Publisher("w1", config, store, pool=None)
    assert publisher.withdraw_failed() == 1
    assert sorted(p.name for p in out.iterdir()) == ["edited.png", "taken.png"]
    assert store.get(job.id).error == "/in/a.jpg: damaged; removed the 1 file it had published"
    assert publisher.withdraw_failed() == 0  # recorded: not done twice
