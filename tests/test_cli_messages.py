"""What the command line says when something is wrong: configuration errors without click's usage banner,
and the exit codes; ``jobs`` listing the newest jobs with their inbox and time; ``models check`` without models."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime

from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.daemon import InstanceLock
from pipeline.store import Store


def invoke(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assetd(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real command, as a studio runs it."""
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, **(env or {})))


def assert_config_error(out: str, *expected: str) -> None:
    assert "Usage:" not in out and "--help" not in out, out
    assert "assetd: error:" in out, out
    for text in expected:
        assert text in out, out


def test_a_broken_config_is_an_error_not_a_usage_message(workspace, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("workers: none\nlog_level: loud\n")
    out = assetd("process", tmp_path, "--config", bad)
    assert out.returncode == 2
    assert_config_error(out.stderr, f"{bad}: workers: expected an integer", "log_level")
    for command in (["run"], ["jobs"], ["explain", tmp_path / "a.jpg"], ["retry", "--failed"],
                    ["models", "check"], ["models", "pull"]):
        result = invoke(*command, "--config", bad)
        assert result.exit_code == 2, (command, result.output)
        assert_config_error(result.output, "workers: expected an integer")


def test_jobs_with_a_broken_config_lists_the_jobs_of_the_database_it_names(workspace, tmp_path):
    """config.yaml saved broken while the daemon runs on its last good version: `assetd jobs` still shows the
    night's jobs, after one warning; with no database to read, the problems as before."""
    good = workspace.config_path.read_text()
    store = Store(workspace.load()[0].database)
    store.enqueue(input_hash="h1", rule="cutouts", rule_version="v1", input_path=str(workspace.inbox / "shoe.jpg"),
                  rel_path="shoe.jpg", max_attempts=2)
    store.close()
    config = workspace.config_path
    config.write_text(good.replace("workers: 1", "workers: none"))
    out = assetd("jobs", "--config", config, "--json")
    assert out.returncode == 0, out.stderr
    assert [j["input_path"] for j in json.loads(out.stdout)["jobs"]] == [str(workspace.inbox / "shoe.jpg")]
    assert out.stderr == (f"assetd: warning: {config} is broken (workers: expected an integer, got 'none'); "
                          f"showing the jobs in {workspace.root / 'state' / 'assetd.sqlite3'}\n")
    config.write_text(good.replace("workers: 1", "workers: x\nlog_level: loud"))
    result = invoke("jobs", "--config", config)
    assert result.exit_code == 0 and "shoe.jpg" in result.output
    assert f"got 'x'; 1 more: assetd check --config {config}); showing the jobs in" in result.output
    config.write_text(good + "channels: [oops\n")  # not YAML at all: the default database beside it
    result = invoke("jobs", "--config", config)
    assert result.exit_code == 0 and "shoe.jpg" in result.output and "not valid YAML at line" in result.output
    config.write_text(good.replace("database: state/", "database: elsewhere/").replace("workers: 1", "workers: x"))
    result = invoke("jobs", "--config", config)  # the database it names is not there: nothing to list
    assert result.exit_code == 2
    assert_config_error(result.output, "workers: expected an integer")
    assert not (workspace.root / "elsewhere").exists()


def test_a_broken_rule_and_an_unknown_rule_name_are_configuration_errors(workspace):
    workspace.add_rule("30-bad.yaml", "name: bad\nsteps: [{upscale: {factor: -1}}]\n")
    result = invoke("process", workspace.inbox, "--config", workspace.config_path)  # jobs/retry read the config only
    assert result.exit_code == 2
    assert_config_error(result.output, "30-bad.yaml")
    (workspace.root / "rules" / "30-bad.yaml").unlink()
    result = invoke("process", workspace.inbox, "--config", workspace.config_path, "--rule", "nope")
    assert result.exit_code == 2
    assert_config_error(result.output, "no rule named 'nope'")


def test_a_bad_command_line_still_shows_usage(workspace):
    result = invoke("jobs", "--config", workspace.config_path, "--no-such-option")
    assert result.exit_code == 2 and "Usage:" in result.output


def test_a_runtime_failure_exits_1_with_its_message(monkeypatch, tmp_path):
    from pipeline import demo
    from pipeline.errors import TransientError

    def full_disk(*args, **kwargs):
        raise TransientError(f"{tmp_path}: no space left on device")

    monkeypatch.setattr(demo, "run_demo", full_disk)
    result = invoke("demo", tmp_path / "demo", "--setup-only")
    assert result.exit_code == 1
    assert "Usage:" not in result.output and "Traceback" not in result.output
    assert f"assetd: error: {tmp_path}: no space left on device" in result.output


def test_a_second_daemon_is_refused_without_a_usage_message(workspace):
    config = workspace.load()[0]
    lock = InstanceLock(config.database)
    lock.acquire()
    try:
        out = assetd("run", "--config", workspace.config_path)
    finally:
        lock.release()
    assert out.returncode == 2
    assert_config_error(out.stderr, "already running", f"(pid {os.getpid()})")
    assert "assetd stopped" not in out.stderr and "model" not in out.stderr  # it never started: nothing loaded


def test_a_model_that_does_not_load_is_a_configuration_error(workspace, tmp_path):
    workspace.write_config(extra=f"models: {{cache_dir: {tmp_path / 'empty-cache'}}}\n")
    workspace.add_rule("05-gpu.yaml", "name: gpu\nmatch: {folder: 'gpu/**'}\n"
                                      "steps: [{remove_background: {backend: rembg, model: u2net}}]\n"
                                      "outputs: [{channel: cutouts}]\n")
    shot = workspace.shot("inbox/gpu/a.jpg", seed=3, subject="box")
    out = assetd("process", shot, "--config", workspace.config_path, env={"HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2
    assert_config_error(out.stderr, "u2net", "assetd models pull --config")


def make_jobs(config, names: list[str]) -> list[int]:
    store = Store(config.database)
    ids = []
    for i, name in enumerate(names):
        job, _ = store.enqueue(input_hash=f"h{i}", rule="cutouts", rule_version="1",
                               input_path=str(config.inboxes[0].path / "misc" / name), rel_path=f"misc/{name}",
                               max_attempts=1)
        ids.append(job.id)
    for job_id in ids[:-1]:
        assert store.claim_next("w", 60).id == job_id
        store.finish(job_id, [], 0.5)
    return ids


def test_jobs_limit_shows_the_newest(workspace):
    config = workspace.load()[0]
    ids = make_jobs(config, [f"shot{i}.jpg" for i in range(6)])
    listing = json.loads(invoke("jobs", "--config", workspace.config_path, "--limit", "3", "--json").stdout)["jobs"]
    assert [j["id"] for j in listing] == ids[-3:]  # the newest three, oldest first
    table = invoke("jobs", "--config", workspace.config_path, "--limit", "2").output
    assert "shot5.jpg" in table and "shot4.jpg" in table and "shot0.jpg" not in table
    assert table.index("shot4.jpg") < table.index("shot5.jpg")
    done = json.loads(invoke("jobs", "--config", workspace.config_path, "--status", "done", "--limit", "2",
                             "--json").stdout)["jobs"]
    assert [j["id"] for j in done] == ids[3:5]
    assert invoke("jobs", "--config", workspace.config_path, "--limit", "0").exit_code == 2  # a bad command line


def test_jobs_show_the_inbox_and_the_time(workspace, tmp_path):
    config = workspace.load()[0]
    make_jobs(config, ["a.jpg", "b.jpg"])
    outside = tmp_path / "elsewhere" / "c.jpg"
    workspace.shot(outside, seed=2)
    invoke("process", outside, "--config", workspace.config_path, "--rule", "cutouts")
    store = Store(config.database)
    listing = json.loads(invoke("jobs", "--config", workspace.config_path, "--json").stdout)["jobs"]
    assert [j["inbox"] for j in listing] == [str(workspace.inbox)] * 2 + [str(outside.parent)]
    for doc in listing:
        job = store.get(doc["id"])
        stamp = datetime.fromisoformat(doc["time"])
        assert stamp.tzinfo is not None
        assert abs(stamp.timestamp() - (job.finished_at or job.created_at)) < 1
    table = invoke("jobs", "--config", workspace.config_path).output
    header = table.splitlines()[0]
    assert "inbox" in header and "time" in header
    local = datetime.fromtimestamp(store.get(listing[0]["id"]).finished_at).strftime("%Y-%m-%d %H:%M")
    assert local in table


def test_models_check_without_model_backed_steps(workspace, tmp_path):
    workspace.write_config(extra=f"models: {{cache_dir: {tmp_path / 'empty-cache'}}}\n")
    result = invoke("models", "check", "--config", workspace.config_path)
    assert result.exit_code == 0, result.output
    assert "no rule uses a model-backed step" in result.output
    assert "every configured model loads offline" not in result.output
    assert "every required model loads offline" not in result.output
    assert "studio runs without its subject prior" in result.output  # the optional prior: still reported

    for name in ("10-products.yaml", "20-cutouts.yaml"):
        path = workspace.root / "rules" / name
        path.write_text(path.read_text().replace("remove_background: {}", "remove_background: {prior: 'off'}"))
    result = invoke("models", "check", "--config", workspace.config_path)
    assert result.exit_code == 0, result.output
    assert "no rule uses a model-backed step" in result.output
    assert "no rule uses the studio backend's subject prior" in result.output
    assert "loads offline" not in result.output


def test_models_check_with_only_the_prior(workspace, tmp_path):
    """The default rules (studio, prior: auto) with the prior in the cache: it loads; nothing else to load."""
    import shutil

    from pipeline.prior import prior_file
    from tinymodels import tiny_dark_subject_onnx

    workspace.write_config(extra=f"models: {{cache_dir: {tmp_path / 'cache'}}}\n")
    target = prior_file(workspace.load()[0])
    target.parent.mkdir(parents=True)
    shutil.copyfile(tiny_dark_subject_onnx(), target)
    result = invoke("models", "check", "--config", workspace.config_path)
    assert result.exit_code == 0, result.output
    assert f"prior model u2netp loads offline ({target})" in result.output
    assert "no rule uses a model-backed step" in result.output
    assert "every configured model loads offline" not in result.output
