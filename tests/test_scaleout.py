"""executor: ray: the chain on Ray actors, the job store still the only record of work (one local Ray instance,
shared: tests/raycluster.py)."""
from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import pytest

from tests.raycluster import needs_ray, ray_settings

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

RAY = ray_settings(max_restarts=3, actors=2)


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
    monkeypatch.setenv("ASSETD_FAULTS", "stage=sleep:2@name:slow*")  # the actors' failpoints (runtime_env)
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
        time.sleep(1.0)  # its call reaches the actor, whose first step sleeps 2 s: the kill lands mid-job
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


def test_an_actor_ray_gave_up_on_is_replaced_by_a_fresh_one(workspace, ray_cluster, monkeypatch):
    """max_restarts: 0 (or out of restarts): the job it ran is charged its crash, the worker starts a fresh actor
    and the batch goes on. One lost between jobs (a GPU box gone while idle) charges no job: the next one finds it
    gone before it is sent there and runs on a fresh actor."""
    monkeypatch.setenv("ASSETD_FAULTS", "stage=sleep:2@name:slow*")
    _studio(workspace, ["slow.jpg", "shot-1.jpg"], ray=True)
    workspace.write_config(settle=0.1, extra=RAY.replace("actors: 2", "actors: 1").replace("max_restarts: 3",
                                                                                             "max_restarts: 0"))
    daemon = Daemon(*workspace.load())
    daemon.start()
    try:
        store = daemon.store
        _wait(lambda: any(j.chain_started_at and j.input_path.endswith("slow.jpg")
                          for j in store.jobs(status="running")), what="slow.jpg to run")
        time.sleep(1.0)  # its call reaches the actor, whose first step sleeps 2 s: the kill lands mid-job
        (worker,) = daemon.workers
        first = worker.actor
        ray_cluster.kill(first, no_restart=True)
        _wait(lambda: len(store.jobs()) == 2 and daemon.idle(), timeout=60, what="the batch to finish")
        assert worker.actor is not first
        second = worker.actor
        ray_cluster.kill(second, no_restart=True)  # idle
        workspace.shot(workspace.inbox / "later.jpg", size=(320, 240), seed=9)
        _wait(lambda: len(store.jobs(status="done")) == 3, timeout=60, what="the job after the idle death")
        jobs = {Path(j.input_path).name: j for j in store.jobs()}
        assert worker.actor is not second
    finally:
        daemon.stop()
    assert {name: (j.status, j.crashes, j.attempts) for name, j in jobs.items()} == {
        "slow.jpg": (JobStatus.DONE, 1, 2), "shot-1.jpg": (JobStatus.DONE, 0, 1), "later.jpg": (JobStatus.DONE, 0, 1)}


def test_stopping_and_restarting_mid_batch_finishes_every_job_once(workspace, ray_cluster):
    shots = [f"shot-{i}.jpg" for i in range(5)]
    _studio(workspace, shots, ray=True)
    daemon = Daemon(*workspace.load())
    daemon.start()
    try:
        _wait(lambda: len(daemon.store.jobs(status="done")) >= 2, what="two jobs done")
    finally:
        daemon.stop()
    jobs = run_until_idle(*workspace.load(), expected_jobs=5)
    assert [j.status for j in jobs] == [JobStatus.DONE] * 5
    assert all(j.crashes == 0 and j.attempts == 1 for j in jobs)  # a job stopped mid-run was handed back uncharged
    assert len(_hashes(workspace.root / "out")) == 5 * PER_SHOT


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


def test_the_actor_body_uses_the_masks_sent_and_errors_keep_their_class(workspace):
    """No Ray needed: ``ChainRunner`` is the actor's body. A sidecar mask travels as bytes (worker machines do not
    see the share) and the stage finds it; a bad input fails with the class ``classify`` goes by."""
    import io
    import pickle

    import numpy as np
    from PIL import Image

    from pipeline.errors import InputError
    from pipeline.scaleout import ChainRunner, RemoteModelLoadError, portable
    from pipeline.chain import ModelLoadError

    workspace.add_rule("05-clean.yaml", "name: clean\nsteps:\n  - retouch: {remove_mask: sidecar}\n"
                                        "outputs:\n  - {channel: cutouts, from: retouch}\n")
    config, rules = workspace.load()
    rule = next(r for r in rules if r.name == "clean")
    shot = workspace.shot("elsewhere/shot.jpg", size=(160, 120))
    mask = np.zeros((120, 160), np.uint8)
    mask[10:30, 10:30] = 255
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, "PNG")
    runner = ChainRunner(config, rules, "actor-1")
    result = runner.run(config, rule, str(shot), shot.read_bytes(), {"remove": buf.getvalue()}, False)
    (out,) = result.rendered
    assert out.notes["retouch"]["remove_mask"]["file"] == "shot.remove.png"
    assert not list(workspace.root.rglob("*.remove.png"))  # nothing written beside the input
    without = runner.run(config, rule, str(shot), shot.read_bytes(), {}, False).rendered[0]
    assert without.notes["retouch"]["remove_mask"] == "none beside the shot" and without.data != out.data

    with pytest.raises(InputError):
        runner.run(config, rule, str(shot), b"not an image", {}, False)
    failed = ModelLoadError("upscale", "spandrel", OSError("gone"))
    failed.__cause__ = OSError("gone")  # as Chain.prepare raises it
    travelled = pickle.loads(pickle.dumps(portable(failed)))
    assert isinstance(travelled, RemoteModelLoadError) and isinstance(travelled, ModelLoadError)
    assert travelled.step == "upscale" and isinstance(travelled.__cause__, OSError)
