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


def test_a_run_and_a_decode_ahead_in_flight_together_are_neither_charged_and_each_runs_alone(store):
    running, reading, queued = (enqueue(store, h, f"/in/{h}.jpg") for h in ("h1", "h2", "h3"))
    owner = "worker-1 pid 1 on h"
    store.claim_next(owner, 3600)  # its run begins at once
    assert store.claim_next(owner, 3600, ahead=True).reading_since is not None  # its decode goes on a pool thread
    found = store.recover()  # assetd died: the decoder of h2 or the run of h1, either
    assert found.shared == [[running.id, reading.id]] and found.reading == [reading.id]
    assert found.started == [] and found.failed == [] and found.ids == [running.id, reading.id]
    for job in map(store.get, (running.id, reading.id)):
        assert job.status is JobStatus.QUEUED and (job.attempts, job.crashes, job.alone) == (0, 0, 1)
        assert job.reading_since is None and job.chain_started_at is None
    assert "neither is charged" in store.get(running.id).error and "decoded ahead" in store.get(reading.id).error

    owner = "worker-1 pid 2 on h"
    assert store.claim_next(owner, 3600, only=[queued.id]).id == queued.id
    assert store.claim_next(owner, 3600, ahead=True) is None  # those that run alone are not read ahead beside it
    assert store.claim_next("worker-2 pid 2 on h", 3600) is None  # nor run beside it by another worker
    store.finish(queued.id, [], 1.0)
    assert store.claim_next(owner, 3600).id == running.id
    assert store.claim_next(owner, 3600, ahead=True) is None  # it runs by itself
    store.finish(running.id, [], 1.0)
    assert store.claim_next(owner, 3600).id == reading.id
    assert store.claim_next(owner, 3600, ahead=True) is None
    store.fail(reading.id, "damaged")
    assert [(j.attempts, j.crashes, j.alone) for j in map(store.get, (running.id, reading.id))] == [(1, 0, 0)] * 2


def test_a_decode_ahead_in_flight_with_no_run_beside_it_is_charged(store):
    before, killer, after = (enqueue(store, h, f"/in/{h}.jpg") for h in ("h1", "h2", "h3"))
    owner = "worker-1 pid 1 on h"
    store.claim_next(owner, 3600)
    store.claim_next(owner, 3600, ahead=True)
    store.finish(before.id, [], 1.0)  # the run before it ended; its own has not begun
    found = store.recover()
    assert found.started == [killer.id] and found.reading == [killer.id] and found.shared == []
    job = store.get(killer.id)
    assert job.status is JobStatus.QUEUED and (job.attempts, job.crashes, job.alone) == (0, 1, 0)
    assert job.error == "interrupted (assetd stopped while decoding it ahead); redoing"

    owner = "worker-1 pid 2 on h"
    assert store.claim_next(owner, 3600).id == killer.id
    assert store.claim_next(owner, 3600, ahead=True) is None  # a job with a crash runs alone
    store.recover()
    job = store.get(killer.id)
    assert job.status is JobStatus.FAILED and job.crashes == 2 and "quarantined" in job.error
    assert store.get(after.id).crashes == 0


def test_a_decode_ahead_whose_lease_ran_out_beside_a_held_run_is_not_charged(store):
    running, reading = enqueue(store, "h1", "/in/a.jpg"), enqueue(store, "h2", "/in/b.jpg")
    owner = "worker-1 pid 1 on h"
    store.claim_next(owner, 3600)
    store.claim_next(owner, 0.01, ahead=True)  # a decode longer than its lease, while its neighbour runs
    time.sleep(0.05)
    assert store.reap_expired().ahead == [reading.id]  # taken back untouched
    assert store.claim_next("process pid 9 on h", 3600).id == reading.id
    job = store.get(reading.id)
    assert (job.attempts, job.crashes, job.alone, job.reading_since) == (1, 0, 0, None)
    assert store.get(running.id).status is JobStatus.RUNNING


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


def start(workspace: Workspace, faults: str = "") -> subprocess.Popen:
    """``assetd run`` in its own process; ``faults``: its ``ASSETD_FAULTS`` (failpoints)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), str(TESTS)]), ASSETD_FAULTS=faults)
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


def test_a_file_that_kills_assetd_in_its_decoder_while_read_ahead_is_quarantined_and_no_neighbour_is_charged(
        workspace):
    db, (first, killer, *rest) = killer_studio(workspace, ["a", "killer", "c", "d"], times=0)  # no stage kills
    outs = []
    for _ in range(6):
        code, out = run_until(start(workspace, faults="decode=kill@name:killer*"), db, all_finished)
        outs.append(out)
        if code == 0:
            break
        assert code == -signal.SIGKILL, out[-2000:]
    assert code == 0, "\n---\n".join(o[-1500:] for o in outs)
    # killed while read ahead beside job 1's run: neither charged; then twice while it ran alone: quarantined
    assert (f"job {first} and job {killer} (read ahead, decoding) were both in flight when assetd last stopped; "
            "neither is charged, each runs alone next") in outs[1]
    jobs = jobs_in(db)
    assert jobs[killer].status is JobStatus.FAILED and jobs[killer].crashes == 2
    assert jobs[killer].error == (f"{workspace.inbox / 'killer.jpg'}: quarantined: assetd stopped 2 times while "
                                  "running this job (crash or kill); its other jobs went on")
    for job_id in (first, *rest):
        job = jobs[job_id]
        assert job.status is JobStatus.DONE and (job.attempts, job.crashes, job.alone) == (1, 0, 0), job
        assert (workspace.out("cutouts") / f"{Path(job.input_path).stem}.png").is_file()
    assert not (workspace.out("cutouts") / "killer.png").exists()


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


def test_a_job_of_a_process_that_dies_while_the_daemon_runs_is_failed_and_alerted(workspace, caplog):
    """An `assetd process` beside the running daemon is killed while it holds a job on its last attempt: the daemon
    takes the job back once its lease runs out and fails it for good as at a start, with the log line and the
    alert. Before, ``claim_next`` took it back silently: failed, with no alert and nothing said."""
    from pipeline.owners import HOST
    from webhooks import Receiver

    receiver = Receiver()
    workspace.write_config(urls=[receiver.url])
    config, rules = workspace.load()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # the `assetd process`
    store = Store(config.database)
    job, _ = store.enqueue(input_hash="h", rule="products", rule_version=rules[0].version,
                           input_path=str(workspace.inbox / "products" / "a.jpg"), rel_path="products/a.jpg",
                           max_attempts=1)
    assert store.claim_next(f"process pid {holder.pid} on {HOST}", 1.0).id == job.id  # its run started
    store.close()
    caplog.set_level(logging.INFO)
    daemon = Daemon(config, rules)
    try:
        daemon.start()  # the holder is alive: its job stays its own
        assert daemon.store.get(job.id).status is JobStatus.RUNNING
        holder.kill()
        holder.wait()
        deadline = time.monotonic() + 20
        while not receiver.messages and time.monotonic() < deadline:
            time.sleep(0.1)
        failed = daemon.store.get(job.id)
    finally:
        daemon.stop()
        holder.kill()
        receiver.close()
    assert failed.status is JobStatus.FAILED and "gave up after max_attempts (1 attempts)" in failed.error
    assert [m["type"] for m in receiver.messages] == ["failure"], receiver.messages
    assert "a.jpg" in receiver.messages[0]["title"] and "gave up after max_attempts" in receiver.messages[0]["message"]
    assert f"job {job.id} failed: " in caplog.text and "held by an assetd that stopped" in caplog.text
