"""executor: ray seen from outside: `assetd check` reports the cluster it would use and refuses what could never run
there; /metrics counts each actor's jobs (the shared local Ray instance: tests/raycluster.py)."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from click.testing import CliRunner

from tests.raycluster import SHOP, needs_ray

needs_ray()

from pipeline.cli import cli  # noqa: E402
from pipeline.metrics import exposition  # noqa: E402
from pipeline.oneshot import run_once  # noqa: E402
from pipeline.store import JobStatus, Store  # noqa: E402


def _studio(workspace, ray: str) -> None:
    for rule in (workspace.root / "rules").glob("*.yaml"):
        rule.unlink()
    workspace.add_rule("10-shop.yaml", SHOP)
    workspace.write_config(extra="executor: ray\nray:\n" + "".join(f"  {line}\n" for line in ray.splitlines()))


def check(workspace):
    return CliRunner().invoke(cli, ["check", "--config", str(workspace.config_path)], catch_exceptions=False)


def test_check_reports_the_cluster_and_the_actors_it_would_start(workspace, ray_cluster):
    _studio(workspace, "actors: 2\ngpus_per_actor: 0\ncpus_per_actor: 0.5")
    result = check(workspace)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps long lines
    assert "executor: ray: a local instance: 1 node(s) alive:" in text
    assert "(2 CPUs, 0 GPUs)" in text
    assert "would start 2 chain actor(s), 0 GPU and 0.5 CPU each (namespace assetd)" in text


def test_check_refuses_actors_no_node_can_hold(workspace, ray_cluster):
    _studio(workspace, "actors: per_gpu")
    result = check(workspace)
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "ray.actors: per_gpu, but no node of the cluster has a GPU" in text

    _studio(workspace, "actors: 1\ngpus_per_actor: 1")
    result = check(workspace)
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "ray.gpus_per_actor: 1, but no node has more than 0 GPU(s): no actor could start" in text

    _studio(workspace, "actors: 3\ngpus_per_actor: 0\ncpus_per_actor: 1")
    result = check(workspace)
    assert result.exit_code == 1
    assert "the actors beyond them would never start" in " ".join(result.output.split())


def test_check_names_an_address_that_does_not_answer_at_once(workspace):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _studio(workspace, f"address: 127.0.0.1:{port}\ngpus_per_actor: 0")
    started = time.monotonic()
    result = check(workspace)
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert f"ray.address: 127.0.0.1:{port} does not answer (ConnectionRefusedError" in text
    assert "start the head node there" in text
    assert time.monotonic() - started < 30  # Ray alone would retry such an address for minutes
    assert "Traceback" not in result.output


def test_check_says_how_to_install_ray_when_it_is_missing(workspace, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as without the scale extra: `import ray` fails
    _studio(workspace, "gpus_per_actor: 0")
    result = check(workspace)
    assert result.exit_code == 1
    assert "executor: ray needs Ray, which is not installed here: pip install -e '.[scale]'" in " ".join(
        result.output.split())


def test_metrics_count_each_actors_jobs(workspace, ray_cluster):
    _studio(workspace, "actors: 2\ngpus_per_actor: 0\ncpus_per_actor: 0.5")
    shots = [workspace.shot(f"batch/shot-{i}.jpg", size=(240, 180), seed=i) for i in range(2)]
    config, rules = workspace.load()
    results = run_once(config, rules, shots)
    assert [r["status"] for r in results] == ["done"] * 2, results
    store = Store(config.database)
    jobs = store.jobs()
    assert all(j.status is JobStatus.DONE for j in jobs)
    by_runner: dict[str, int] = {}
    for job in jobs:
        assert job.ran_on.startswith("actor-"), job.ran_on
        by_runner[job.ran_on] = by_runner.get(job.ran_on, 0) + 1
    body, _ = exposition(config, store)
    lines = [line for line in body.decode().splitlines() if line.startswith("assetd_runner_jobs_total{")]
    assert sorted(lines) == sorted(f'assetd_runner_jobs_total{{runner="{runner}"}} {float(n)}'
                                   for runner, n in by_runner.items())
    store.close()


def test_assetd_run_refuses_an_address_that_does_not_answer_instead_of_hanging(workspace):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _studio(workspace, f"address: 127.0.0.1:{port}\ngpus_per_actor: 0")
    result = CliRunner().invoke(cli, ["run", "--config", str(workspace.config_path)], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"ray.address: 127.0.0.1:{port} does not answer (ConnectionRefusedError" in text
    assert "Traceback" not in result.output


def test_assetd_run_refuses_actors_no_node_can_hold_instead_of_waiting_forever(workspace, ray_cluster):
    from pipeline.errors import ConfigError
    from pipeline.scaleout import start_pool

    _studio(workspace, "actors: 1\ngpus_per_actor: 1")  # the test cluster has no GPU
    config, rules = workspace.load()
    try:
        start_pool(config, rules)
    except ConfigError as exc:
        said = " ".join(exc.problems)
    else:
        raise AssertionError("an actor asking for a GPU on a cluster without one was started")
    assert "ray.gpus_per_actor: 1, but no node has more than 0 GPU(s): no actor could start" in said


# -- starting beside another assetd, and stopping a start (issue 14's trial: defects 3 and 4) --------------------
def _free_cpus(ray) -> float:
    return ray.available_resources().get("CPU", 0.0)


def _wait_cpus(ray, cpus: float, timeout: float = 10.0) -> float:
    """Until the shared instance has ``cpus`` CPUs free (actors stopped give theirs back within a moment), or
    ``timeout``; returns what is free then (an actor another test of this session left running holds some)."""
    deadline = time.monotonic() + timeout
    while _free_cpus(ray) < cpus - 1e-6 and time.monotonic() < deadline:
        time.sleep(0.1)
    return _free_cpus(ray)


@contextlib.contextmanager
def another_assetd_holding(ray, cpus: float):
    """An actor of another driver's sort holding ``cpus`` of the shared instance's 2 CPUs, as a running assetd's do
    (less what an actor left by an earlier test of this session holds: 2 - ``cpus`` stay free)."""
    class Holder:
        def ready(self) -> bool:
            return True

    free = _wait_cpus(ray, 2.0)
    holder = ray.remote(num_cpus=free - (2.0 - cpus))(Holder).remote()
    ray.get(holder.ready.remote(), timeout=60)
    try:
        yield
    finally:
        ray.kill(holder, no_restart=True)
        _wait_cpus(ray, free)


def test_actors_the_free_resources_cannot_hold_are_refused_at_once_saying_what_is_free(workspace, ray_cluster,
                                                                                       caplog, monkeypatch):
    from pipeline import scaleout
    from pipeline.errors import ConfigError
    from pipeline.scaleout import start_pool

    monkeypatch.setattr(scaleout, "FREED_SECONDS", 1.0)  # the grace for an assetd that just stopped: none here
    _studio(workspace, "actors: 2\ngpus_per_actor: 0\ncpus_per_actor: 0.5")
    shot = workspace.shot("batch/shot.jpg", size=(240, 180))
    config, rules = workspace.load()
    with another_assetd_holding(ray_cluster, 1.5):
        result = check(workspace)  # the total could hold them: a warning, not a problem
        assert result.exit_code == 0, result.output
        text = " ".join(result.output.split())
        assert "0.5 of the cluster's 2 CPUs and 0 of its 0 GPUs are free now" in text
        assert "ray.actors: 2 actor(s) asking 0.5 CPU each cannot be placed now" in text
        assert "`assetd run` refuses to start until they are free" in text

        started = time.monotonic()
        try:
            start_pool(config, rules)  # what `assetd run` does: refused, instead of waiting for the other assetd
        except ConfigError as exc:
            said = " ".join(exc.problems)
        else:
            raise AssertionError("actors the free CPUs cannot hold were started")
        assert time.monotonic() - started < 30
        assert "ray.actors: 2 actor(s) asking 0.5 CPU each cannot be placed now: 0.5 of the cluster's 2 CPUs" in said
        assert "another assetd (or another Ray job) holds the rest" in said

        # `assetd process` uses one actor and starts only that one: it fits in what is free
        caplog.set_level(logging.INFO, logger="assetd.scaleout")
        results = run_once(config, rules, [shot])
        assert [r["status"] for r in results] == ["done"], results
        assert "executor ray: 1 actor(s) (actor-1 on " in caplog.text

    with another_assetd_holding(ray_cluster, 2.0):
        result = CliRunner().invoke(cli, ["process", str(shot), "--force", "--config", str(workspace.config_path)],
                                    catch_exceptions=False)
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert "ray.actors: 1 actor(s) asking 0.5 CPU each cannot be placed now: 0 of the cluster's 2 CPUs" in text


@contextlib.contextmanager
def signal_when(predicate, signum: int, timeout: float = 60.0):
    """Send this process ``signum`` once ``predicate()`` holds (from a thread: the handlers run in the main one)."""
    sent = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not predicate():
            time.sleep(0.05)
        os.kill(os.getpid(), signum)
        sent.set()

    thread = threading.Thread(target=watch, daemon=True)
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    thread.start()
    try:
        yield sent
    finally:
        thread.join()
        for s, handler in previous.items():
            signal.signal(s, handler)


def test_a_signal_while_the_actors_start_stops_at_once(workspace, ray_cluster, monkeypatch):
    """An actor that takes minutes to get ready (a large model on a cold box; here a failpoint): Ctrl-C or SIGTERM
    stops `assetd process` and `assetd run` at once, and their actors with them."""
    from pipeline.daemon import Daemon
    from pipeline.oneshot import Stopper

    base = _wait_cpus(ray_cluster, 2.0)  # less what an actor an earlier test left holds
    _studio(workspace, "actors: 2\ngpus_per_actor: 0\ncpus_per_actor: 0.5")
    shots = [workspace.shot(f"batch/shot-{i}.jpg", size=(240, 180), seed=i) for i in range(2)]
    config, rules = workspace.load()
    monkeypatch.setenv("ASSETD_FAULTS", "actor-start=sleep:120")  # on the actors only (start_pool hands it over)

    with signal_when(lambda: _free_cpus(ray_cluster) <= base - 0.5, signal.SIGINT) as sent, Stopper() as stopper:
        started = time.monotonic()
        results = run_once(config, rules, shots, stopper=stopper)
    assert sent.is_set() and time.monotonic() - started < 60
    assert [r["status"] for r in results] == ["stopped"] * 2, results
    assert stopper.exit_code == 130
    assert _wait_cpus(ray_cluster, base) >= base - 1e-6  # its actor was stopped with it

    daemon = Daemon(config, rules, reload_seconds=0)
    with signal_when(lambda: _free_cpus(ray_cluster) <= base - 1.0, signal.SIGTERM) as sent:
        assert daemon.run() == 0
    assert sent.is_set()
    assert _wait_cpus(ray_cluster, base) >= base - 1e-6
    assert not Store(config.database).jobs()  # it stopped before taking any file


def test_sigterm_stops_assetd_run_cleanly_under_ray(workspace, ray_cluster, tmp_path):
    """Ray puts its own SIGTERM handler in the driver (exit 15, a C++ stack trace); the daemon keeps its own: a
    SIGTERM is its clean stop, exit 0, as with the local executor."""
    address = ray_cluster.get_runtime_context().gcs_address  # a real `assetd run` joining the shared instance
    _studio(workspace, f"address: {address}\nactors: 1\ngpus_per_actor: 0\ncpus_per_actor: 0.5")
    log = tmp_path / "run.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--config", str(workspace.config_path)],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 90
        while "assetd running" not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text(errors="replace")
    assert code == 0, text[-3000:]
    assert "received SIGTERM: stopping after the current step" in text
    assert "assetd stopped" in text
    assert "SIGTERM received" not in text  # Ray's C++ handler's line
