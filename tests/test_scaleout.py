"""executor: ray: the chain on Ray actors, the job store still the only record of work (one local Ray instance,
shared: tests/raycluster.py)."""
from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import pytest

from tests.raycluster import needs_ray

needs_ray()

from pipeline.daemon import Daemon  # noqa: E402
from pipeline.errors import ConfigError  # noqa: E402
from pipeline.oneshot import run_once  # noqa: E402
from pipeline.store import JobStatus  # noqa: E402
from tests.daemons import run_until_idle  # noqa: E402

# cheap and deterministic: the classical cut-out, then crops, into a PNG and a JPEG channel
SHOP = """\
name: shop
steps:
  - remove_background: {}
  - crops: {ratios: ["1:1", "4:5"]}
outputs:
  - {channel: cutouts, from: remove_background}
  - {channel: webshop, from: crops}
"""
PER_SHOT = 3  # one cut-out, two crops

RAY = """\
executor: ray
ray:
  actors: 2
  gpus_per_actor: 0
  cpus_per_actor: 0.5
  max_restarts: 3
"""


def _studio(workspace, shots: list[str], *, ray: bool) -> None:
    for rule in (workspace.root / "rules").glob("*.yaml"):
        rule.unlink()
    workspace.add_rule("10-shop.yaml", SHOP)
    workspace.write_config(settle=0.1, extra=RAY if ray else "")
    for i, name in enumerate(shots):
        workspace.shot(workspace.inbox / name, size=(320, 240), seed=i, subject="box" if i % 2 else None)


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _wait(predicate, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_batch_through_two_actors_gives_the_local_outputs_byte_for_byte(workspace, ray_cluster):
    shots = [f"shot-{i}.jpg" for i in range(6)]
    _studio(workspace, shots, ray=False)
    jobs = run_until_idle(*workspace.load(), expected_jobs=6)
    assert [j.status for j in jobs] == [JobStatus.DONE] * 6
    local = _hashes(workspace.root / "out")
    assert len(local) == 6 * PER_SHOT
    assert {j.ran_on.split(" on ")[0] for j in jobs} == {"worker-1"}

    shutil.rmtree(workspace.root / "out")
    shutil.rmtree(workspace.root / "state")
    _studio(workspace, shots, ray=True)
    jobs = run_until_idle(*workspace.load(), expected_jobs=6)
    assert [j.status for j in jobs] == [JobStatus.DONE] * 6
    assert _hashes(workspace.root / "out") == local
    assert {j.ran_on.split(" on ")[0] for j in jobs} <= {"actor-1", "actor-2"}
    manifest = workspace.manifest("shop", "shot-0").read_text()
    assert '"remove_background"' in manifest  # the step notes came back from the actor


def test_assetd_process_runs_through_an_actor(workspace, ray_cluster):
    _studio(workspace, ["a.jpg", "b.jpg"], ray=True)
    config, rules = workspace.load()
    results = run_once(config, rules, [workspace.inbox])
    assert [r["status"] for r in results] == ["done", "done"]
    assert all(Path(o["path"]).is_file() for r in results for o in r["outputs"])


def test_an_actor_killed_mid_job_charges_that_job_alone(workspace, ray_cluster, monkeypatch):
    """The actor running slow.jpg is killed (a GPU box lost): that job counts one crash and is redone once Ray
    restarted the actor; nothing is lost, nothing is written twice, no other job is charged."""
    monkeypatch.setenv("ASSETD_FAULTS", "stage=sleep:1.5@name:slow*")  # the actors' failpoints (runtime_env)
    shots = ["slow.jpg"] + [f"shot-{i}.jpg" for i in range(4)]
    _studio(workspace, shots, ray=True)
    daemon = Daemon(*workspace.load())
    daemon.start()
    try:
        store = daemon.store

        def slow_running():
            return [j for j in store.jobs(status="running") if j.input_path.endswith("slow.jpg")
                    and j.chain_started_at is not None]

        _wait(lambda: slow_running(), what="slow.jpg to run")
        owner = slow_running()[0].worker
        worker = next(w for w in daemon.workers if w.owner == owner)
        ray_cluster.kill(worker.actor, no_restart=False)
        _wait(lambda: len(store.jobs()) == 5 and daemon.idle(), timeout=60, what="the batch to finish")
        jobs = {Path(j.input_path).name: j for j in store.jobs()}
    finally:
        daemon.stop()
    assert {name: j.status for name, j in jobs.items()} == {name: JobStatus.DONE for name in shots}
    assert jobs["slow.jpg"].crashes == 1 and jobs["slow.jpg"].attempts == 2
    assert all(j.crashes == 0 and j.attempts <= 1 for name, j in jobs.items() if name != "slow.jpg")
    files = _hashes(workspace.root / "out")
    assert len(files) == 5 * PER_SHOT  # every output once: no duplicate names (-hash suffixes), none missing


def test_stopping_and_restarting_mid_batch_finishes_every_job_once(workspace, ray_cluster):
    shots = [f"shot-{i}.jpg" for i in range(6)]
    _studio(workspace, shots, ray=True)
    daemon = Daemon(*workspace.load())
    daemon.start()
    try:
        _wait(lambda: len(daemon.store.jobs(status="done")) >= 2, what="two jobs done")
    finally:
        daemon.stop()
    jobs = run_until_idle(*workspace.load(), expected_jobs=6)
    assert [j.status for j in jobs] == [JobStatus.DONE] * 6
    assert all(j.crashes == 0 for j in jobs)
    assert len(_hashes(workspace.root / "out")) == 6 * PER_SHOT


def test_a_model_missing_on_an_actor_fails_the_start_naming_its_node(workspace, ray_cluster, tmp_path):
    pytest.importorskip("rembg")
    _studio(workspace, [], ray=True)
    workspace.add_rule("20-rembg.yaml", "name: rembg\nsteps:\n  - remove_background: {backend: rembg, "
                                        "model: u2net}\noutputs:\n  - {channel: cutouts, from: remove_background}\n")
    workspace.write_config(settle=0.1, extra=RAY + f"models:\n  cache_dir: {tmp_path / 'no-models'}\n")
    import socket

    daemon = Daemon(*workspace.load())
    with pytest.raises(ConfigError) as refused:
        daemon.start()
    daemon.stop()
    problems = refused.value.problems
    assert len(problems) == 2  # each actor says it
    assert all(p.startswith(f"actor-{i} on {socket.gethostname()}: ") and "u2net" in p
               for i, p in enumerate(problems, 1))
