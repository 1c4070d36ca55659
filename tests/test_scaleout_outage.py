"""executor: ray when the cluster, or one actor's node, goes away: a problem process, never a job's crash; work
resumes when it is back (the shared local Ray instance, tests/raycluster.py; the cluster's absence is simulated
through ``scaleout.cluster_away`` and ``ClusterWatch.answers``, since stopping the shared instance would end it for
every Ray test)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

from tests.raycluster import SHOP, needs_ray, ray_settings

needs_ray()

from pipeline import scaleout  # noqa: E402
from pipeline.daemon import Daemon  # noqa: E402
from pipeline.store import DAEMON_STARTED, JobStatus, Store  # noqa: E402

RAY = ray_settings(max_restarts=0) + "problems:\n  check_seconds: 0.2\n"


def _studio(workspace, shots: list[str]) -> None:
    for rule in (workspace.root / "rules").glob("*.yaml"):
        rule.unlink()
    workspace.add_rule("10-shop.yaml", SHOP)
    workspace.write_config(settle=0.1, extra=RAY)
    for i, name in enumerate(shots):
        workspace.shot(workspace.inbox / name, size=(320, 240), seed=i)


def _wait(predicate, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _active(daemon) -> set[str]:
    return {p.key for p in daemon.problems.active()} if daemon.problems is not None else set()


def test_the_cluster_going_away_charges_no_job_and_assetd_restarts_to_wait(workspace, ray_cluster, monkeypatch,
                                                                          caplog):
    """Mid-batch the cluster's head stops answering and the actor dies with it: no job is charged an attempt or a
    crash (the one running and the one read ahead go back to the queue), the ``ray`` problem is raised once, and
    the daemon stops to restart itself (here: recorded instead of exec'ing the test run)."""
    monkeypatch.setenv("ASSETD_FAULTS", "stage=sleep:2@name:slow*")
    monkeypatch.setattr(scaleout, "WATCH_SECONDS", 0.2)
    _studio(workspace, ["slow-1.jpg", "slow-2.jpg", "slow-3.jpg"])
    restarts: list[bool] = []
    monkeypatch.setattr(Daemon, "_restart", lambda self: restarts.append(True))
    daemon = Daemon(*workspace.load())
    daemon.start()
    try:
        store = daemon.store
        _wait(lambda: any(j.chain_started_at for j in store.jobs(status="running")), what="a job to run")
        time.sleep(0.5)  # its call is on the actor, in its 2 s step
        (worker,) = daemon.workers
        monkeypatch.setattr(scaleout.ClusterWatch, "answers", lambda self: False)
        ray_cluster.kill(worker.actor, no_restart=True)
        _wait(lambda: daemon.stop_event.is_set(), what="the daemon to notice the cluster away")
    finally:
        daemon.stop()
    assert restarts == [True]
    jobs = {Path(j.input_path).name: j for j in store_jobs(workspace)}
    assert {name: (j.status, j.attempts, j.crashes) for name, j in jobs.items()} == {
        name: (JobStatus.QUEUED, 0, 0) for name in ("slow-1.jpg", "slow-2.jpg", "slow-3.jpg")}
    started = [r.getMessage() for r in caplog.records if r.getMessage().startswith("paused: ray: ")]
    assert len(started) == 1 and "cannot be reached" in started[0]


def store_jobs(workspace):
    config, _ = workspace.load()
    store = Store(config.database, config.quarantine_after_crashes)
    try:
        return store.jobs()
    finally:
        store.close()


def test_a_start_while_the_cluster_is_away_waits_for_it(workspace, ray_cluster, monkeypatch):
    """``assetd run`` with the cluster away (a daemon that ran before: the head reboots, or assetd restarted itself
    after the cluster went away) neither exits nor takes jobs: the ``ray`` problem is active until the cluster
    answers, then the actors start and the waiting files are processed."""
    _studio(workspace, ["a.jpg"])
    config, _ = workspace.load()
    earlier = Store(config.database)  # it ran before (a first start with the cluster away is refused at once)
    earlier.set_state(DAEMON_STARTED, time.time())
    earlier.close()
    away = threading.Event()
    away.set()
    monkeypatch.setattr(scaleout, "cluster_away", lambda config, timeout=5.0: "refused" if away.is_set() else None)
    daemon = Daemon(*workspace.load())
    starting = threading.Thread(target=daemon.start)
    starting.start()
    try:
        _wait(lambda: "ray" in _active(daemon), what="the ray problem")
        assert daemon.workers == [] and daemon.pool is None
        away.clear()
        starting.join(30)
        assert not starting.is_alive()
        assert "ray" not in _active(daemon) and len(daemon.workers) == 1
        _wait(lambda: [j.status for j in daemon.store.jobs()] == [JobStatus.DONE], what="a.jpg to be done")
    finally:
        daemon.stop_event.set()
        starting.join(30)
        daemon.stop()


def test_a_worker_whose_actor_left_takes_jobs_again_when_it_answers(workspace, ray_cluster, monkeypatch):
    """The actor's node leaves (the actor dies, Ray does not restart it, and a fresh one cannot be placed): the
    worker holds no job and its ``ray:actor-1`` problem stays active; once a fresh actor answers, the problem
    clears and the waiting job runs there, charged nothing."""
    monkeypatch.setattr(scaleout, "ACTOR_RETRY_SECONDS", 0.5)
    _studio(workspace, [])
    daemon = Daemon(*workspace.load())
    node_gone = threading.Event()
    make = daemon_make = None

    def make_actor(name):  # while the node is gone, a fresh actor dies before it answers
        actor = make(name)
        if node_gone.is_set():
            ray_cluster.kill(actor, no_restart=True)
        return actor

    daemon.start()
    try:
        (worker,) = daemon.workers
        make, daemon_make = worker.make_actor, make_actor
        worker.make_actor = daemon_make
        node_gone.set()
        ray_cluster.kill(worker.actor, no_restart=True)  # idle
        workspace.shot(workspace.inbox / "later.jpg", size=(320, 240), seed=3)
        _wait(lambda: "ray:actor-1" in _active(daemon), what="the actor's problem")
        store = daemon.store
        _wait(lambda: [j.status for j in store.jobs()] == [JobStatus.QUEUED], what="the job to wait in the queue")
        time.sleep(1.0)  # two looks at the actor: still none
        assert [j.status for j in store.jobs()] == [JobStatus.QUEUED] and "ray:actor-1" in _active(daemon)
        node_gone.clear()
        _wait(lambda: [j.status for j in store.jobs()] == [JobStatus.DONE], what="the job on the fresh actor")
        (job,) = store.jobs()
        assert (job.attempts, job.crashes) == (1, 0)
        assert "ray:actor-1" not in _active(daemon)
    finally:
        daemon.stop()
