"""executor: ray, what the coordinator records and logs: where a failed or quarantined job ran, and what the actors'
stages said, with the job and the actor (the shared local Ray instance: tests/raycluster.py)."""
from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tests.raycluster import needs_ray, ray_settings

needs_ray()

from pipeline.daemon import Daemon  # noqa: E402
from pipeline.store import JobStatus  # noqa: E402
from tests.daemons import run_until_idle  # noqa: E402

CROP = """\
name: crop
steps:
  - crops: {ratios: ["1:1"]}
outputs:
  - {channel: webshop, from: crops}
"""

RAY = ray_settings(max_restarts=3)

HOST = socket.gethostname()


def _studio(workspace, extra: str = RAY) -> None:
    for rule in (workspace.root / "rules").glob("*.yaml"):
        rule.unlink()
    workspace.add_rule("10-crop.yaml", CROP)
    workspace.write_config(settle=0.1, extra=extra)


def _wait(predicate, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_failed_job_says_which_actor_ran_it_and_the_actors_lines_come_back_with_the_job(workspace, ray_cluster,
                                                                                          caplog):
    """A damaged file fails on the actor: the job records ``actor-1 on HOST`` (the job page's "ran on"). A stage's
    line on the actor (crops finding no subject in a grey gradient) is logged here by the stage's own logger,
    naming the actor, its node and the job, before the job's end; no ANSI colour, no "(ChainRunner pid=…)"."""
    _studio(workspace)
    (workspace.inbox / "damaged.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all" * 10)
    noise = np.random.default_rng(0).normal(0, 6, (240, 320, 3))
    grey = (np.linspace(90, 160, 320)[None, :, None] + noise).clip(0, 255).astype(np.uint8)
    Image.fromarray(grey).save(workspace.inbox / "plain.jpg", quality=95)
    with caplog.at_level(logging.INFO, logger="assetd"):
        jobs = {Path(j.input_path).name: j for j in run_until_idle(*workspace.load(), expected_jobs=2)}
    assert jobs["damaged.jpg"].status is JobStatus.FAILED
    assert jobs["damaged.jpg"].ran_on == f"actor-1 on {HOST}"
    assert jobs["plain.jpg"].status is JobStatus.DONE and jobs["plain.jpg"].ran_on == f"actor-1 on {HOST}"
    plain = jobs["plain.jpg"].id
    relogged = [r for r in caplog.records if r.name == "assetd.stage"
                and r.getMessage().startswith(f"actor-1 on {HOST}: job {plain}: crops: ")]
    assert relogged and "no subject found" in relogged[0].getMessage(), [r.getMessage() for r in caplog.records]
    assert relogged[0].levelno == logging.INFO
    done = next(i for i, r in enumerate(caplog.records) if f"job {plain} done" in r.getMessage())
    assert caplog.records.index(relogged[0]) < done  # said before the job's end, not after it
    assert not any("\x1b[" in r.getMessage() for r in caplog.records)


def test_a_quarantined_job_names_the_actor_and_node_it_stopped(workspace, ray_cluster, monkeypatch, caplog):
    """max_attempts 5, quarantine after 2 crashes: killing the actor under the same job twice quarantines it; its
    note and its ``ran_on`` name the actor and the node, and say what to do."""
    monkeypatch.setenv("ASSETD_FAULTS", "stage=sleep:3@name:slow*")
    _studio(workspace)
    config = workspace.config_path.read_text()
    workspace.config_path.write_text(config.replace("max_attempts: 2", "max_attempts: 5"))
    workspace.shot(workspace.inbox / "slow.jpg", size=(320, 240), seed=1)
    caplog.set_level(logging.INFO, logger="assetd")
    daemon = Daemon(*workspace.load())
    daemon.start()
    try:
        store = daemon.store
        (worker,) = daemon.workers
        for crashes in (1, 2):
            _wait(lambda: any(j.chain_started_at for j in store.jobs(status="running")), what="slow.jpg to run")
            if crashes == 2:  # the job's run starts, then waits for the restarted actor: kill that one mid-job
                _wait(lambda: any("actor-1 is back on" in r.getMessage() for r in caplog.records), timeout=60,
                      what="the actor to restart")
            time.sleep(1.0)  # its call reaches the actor, whose first step sleeps: the kill lands mid-job
            ray_cluster.kill(worker.actor, no_restart=False)
            _wait(lambda: store.jobs()[0].crashes == crashes, timeout=60, what=f"crash {crashes} charged")
        _wait(lambda: store.jobs()[0].status is JobStatus.FAILED, timeout=30, what="the quarantine")
        (job,) = store.jobs()
    finally:
        daemon.stop()
    assert job.ran_on == f"actor-1 on {HOST}"
    assert "quarantined: it stopped a Ray actor 2 times" in job.error
    assert f"(last: actor-1 on {HOST})" in job.error and f"assetd retry {job.id}" in job.error


def test_check_says_whether_token_auth_is_on_instead_of_rays_warning(workspace):
    """`assetd check` with its own local instance (address: null): one line says token authentication is on;
    Ray's own "Token authentication is enabled… Set RAY_AUTH_MODE=disabled to opt out" is not printed."""
    import os
    import subprocess
    import sys

    _studio(workspace, RAY + "  address: null\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]),
                                                    env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-m", "pipeline", "check", "--config", str(workspace.config_path)],
                          capture_output=True, text=True, timeout=120, env=env)
    said = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 0, said
    assert "executor: ray: token authentication: on" in said
    assert "Token authentication is enabled for this Ray cluster" not in said


def test_an_actors_unexpected_error_carries_its_traceback_and_what_was_said_before(workspace, monkeypatch):
    """No Ray needed (``ChainRunner`` is the actor's body): an unexpected error keeps its class, carries the actor's
    traceback as a note (the coordinator's log of the crash prints it; the actor's stderr is not shown there) and
    what assetd's loggers said before it, which the coordinator logs with the job."""
    import pickle
    import traceback

    import pytest

    from pipeline.chain import Chain
    from pipeline.scaleout import ChainRunner

    def broken(self, asset, **kwargs):
        logging.getLogger("assetd.stage").warning("crops: about to divide")
        return 1 / 0

    monkeypatch.setattr(Chain, "run", broken)
    _studio(workspace, extra="")
    config, rules = workspace.load()
    shot = workspace.shot("elsewhere/shot.jpg", size=(160, 120))
    runner = ChainRunner(config, rules, "actor-1")
    with pytest.raises(ZeroDivisionError) as raised:
        runner.run(config, rules[0], str(shot), shot.read_bytes(), {}, False)
    travelled = pickle.loads(pickle.dumps(raised.value))
    assert travelled.actor_node == HOST
    assert (logging.WARNING, "assetd.stage", "crops: about to divide") in travelled.actor_logs
    shown = "".join(traceback.format_exception(travelled))
    assert f"(raised on actor-1 on {HOST})" in shown and "in broken" in shown and "1 / 0" in shown
