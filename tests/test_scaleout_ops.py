"""executor: ray seen from outside: `assetd check` reports the cluster it would use and refuses what could never run
there; /metrics counts each actor's jobs (the shared local Ray instance: tests/raycluster.py)."""
from __future__ import annotations

import socket
import sys
import time

from click.testing import CliRunner

from tests.raycluster import needs_ray

needs_ray()

from pipeline.cli import cli  # noqa: E402
from pipeline.metrics import exposition  # noqa: E402
from pipeline.oneshot import run_once  # noqa: E402
from pipeline.store import JobStatus, Store  # noqa: E402

SHOP = """\
name: shop
steps:
  - remove_background: {}
  - crops: {ratios: ["1:1"]}
outputs:
  - {channel: webshop, from: crops}
"""


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
