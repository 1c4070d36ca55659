"""The command line as a studio uses it: process --json, check, explain, jobs, retry, exit codes."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import cli
from tinymodels import needs

RATIOS = {"1:1": 1.0, "4:5": 0.8, "9:16": 9 / 16, "16:9": 16 / 9}


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def batch(workspace):
    folder = workspace.root / "batch"
    workspace.shot("batch/products/good.jpg", "grey", seed=4, subject="box")
    workspace.shot("batch/other/cut.jpg", "white", seed=5, subject="mug")
    (folder / "products" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (folder / "products" / "readme.txt").write_text("hello")
    return folder


def test_process_json_reports_every_input(workspace, batch):
    result = invoke("process", batch, "--config", workspace.config_path, "--json")
    assert result.exit_code == 1  # one input failed
    doc = json.loads(result.stdout)
    by_name = {Path(r["input"]).name: r for r in doc["results"]}
    assert set(by_name) == {"good.jpg", "cut.jpg", "broken.png", "readme.txt"}
    good = by_name["good.jpg"]
    assert good["status"] == "done" and good["rule"] == "products" and good["error"] is None
    assert {o["channel"] for o in good["outputs"]} == {"cutouts", "webshop", "instagram", "banners"}
    for o in good["outputs"]:
        assert set(o) == {"channel", "path", "step", "ratio", "width", "height"}
        with Image.open(o["path"]) as im:
            assert im.size == (o["width"], o["height"])
        if o["ratio"]:
            assert abs(o["width"] / o["height"] - RATIOS[o["ratio"]]) < 0.01
    assert by_name["cut.jpg"]["rule"] == "cutouts" and by_name["cut.jpg"]["status"] == "done"
    broken = by_name["broken.png"]
    assert broken["status"] == "failed" and "broken.png" in broken["error"] and broken["outputs"] == []
    assert by_name["readme.txt"]["status"] == "skipped" and "no rule matches" in by_name["readme.txt"]["error"]
    assert not list(workspace.out("cutouts").glob("broken*"))

    # a single file outside the inboxes is matched by its name alone, so name the rule
    again = json.loads(invoke("process", batch / "products" / "good.jpg", "--config", workspace.config_path,
                              "--rule", "products", "--json").stdout)["results"][0]
    assert again["status"] == "skipped" and "already done" in again["error"] and again["outputs"]
    forced = json.loads(invoke("process", batch / "products" / "good.jpg", "--config", workspace.config_path,
                               "--rule", "products", "--json", "--force").stdout)["results"][0]
    assert forced["status"] == "done"
    assert sorted(o["path"] for o in forced["outputs"]) == sorted(o["path"] for o in good["outputs"])


def test_process_with_a_named_rule_and_exit_zero(workspace, batch):
    result = invoke("process", batch / "other" / "cut.jpg", "--config", workspace.config_path, "--rule", "products")
    assert result.exit_code == 0, result.output
    assert (workspace.out("webshop") / "cut_1x1.jpg").exists()


def test_usage_and_config_errors_exit_2(workspace, tmp_path):
    assert invoke("process", tmp_path / "nope.jpg", "--config", workspace.config_path).exit_code == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("workers: none\n")
    result = invoke("process", tmp_path, "--config", bad)
    assert result.exit_code == 2 and "workers: expected an integer" in result.output
    assert invoke("process", tmp_path, "--config", workspace.config_path, "--rule", "nope").exit_code == 2


def test_check_passes_on_a_good_workspace_and_lists_problems(workspace, tmp_path):
    result = invoke("check", "--config", workspace.config_path)
    assert result.exit_code == 0, result.output
    assert "2 rule(s): products, cutouts" in result.output
    (workspace.root / "scenes" / "marble.jpg").unlink()
    workspace.add_rule("30-bad.yaml", "name: bad\nsteps: [{upscale: {factor: -1}}]\noutputs: [{channel: nowhere}]\n")
    result = invoke("check", "--config", workspace.config_path)
    assert result.exit_code == 1
    assert "marble.jpg" in result.output and "'nowhere' is not a configured channel" in result.output


def test_check_of_the_shipped_example_config():
    root = Path(__file__).resolve().parents[1]
    result = invoke("check", "--config", root / "config.example.yaml")
    assert result.exit_code == 0, result.output


def test_explain_says_why(workspace):
    result = invoke("explain", workspace.shot("inbox/misc/a.jpg"), "--config", workspace.config_path)
    assert result.exit_code == 0
    assert "✗ products" in result.output and "does not match 'products/**'" in result.output
    assert "✓ cutouts" in result.output
    result = invoke("explain", workspace.inbox / "a.gif", "--config", workspace.config_path)
    assert result.exit_code == 1 and "no rule takes this file" in result.output
    assert "ignores this name" in invoke("explain", workspace.inbox / "x.jpg.part", "--config",
                                         workspace.config_path).output


def test_jobs_and_retry(workspace, batch):
    processed = invoke("process", batch, "--config", workspace.config_path)
    (line,) = [ln for ln in processed.output.splitlines() if ln.startswith("✗")]
    assert line.count("broken.png") == 1 and "(" in line  # the file once, then why it failed
    listing = json.loads(invoke("jobs", "--config", workspace.config_path, "--json").stdout)["jobs"]
    assert {j["status"] for j in listing} == {"done", "failed"}
    failed = [j for j in listing if j["status"] == "failed"]
    assert len(failed) == 1 and "broken.png" in failed[0]["error"]
    table = invoke("jobs", "--config", workspace.config_path, "--status", "failed")
    assert "broken.png" in table.output and "1 failed" in table.output
    result = invoke("retry", "--config", workspace.config_path, "--failed")
    assert result.exit_code == 0 and f"queued again: {failed[0]['id']}" in result.output
    assert invoke("retry", "--config", workspace.config_path, "999").exit_code == 1
    assert invoke("retry", "--config", workspace.config_path).exit_code == 2


def test_console_script_and_module_entry_points():
    exe = shutil.which("assetd", path=str(Path(sys.executable).parent))
    assert exe, "the assetd console script is not installed"
    for cmd in ([exe, "--help"], [sys.executable, "-m", "pipeline", "--help"]):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "process" in out.stdout and "run" in out.stdout


def test_demo_setup_only_writes_a_valid_workspace(tmp_path):
    result = invoke("demo", tmp_path / "demo", "--setup-only", "--shots", "2")
    assert result.exit_code == 0, result.output
    assert invoke("check", "--config", tmp_path / "demo" / "config.yaml").exit_code == 0
    assert len(list((tmp_path / "demo" / "to-drop").glob("*.jpg"))) == 3


def test_run_refuses_to_start_when_a_configured_model_is_missing(workspace, tmp_path):
    workspace.write_config(extra=f"models: {{cache_dir: {tmp_path / 'empty-cache'}}}\n")
    workspace.add_rule("05-gpu.yaml", "name: gpu\nmatch: {folder: 'gpu/**'}\n"
                                      "steps: [{remove_background: {backend: rembg, model: u2net}}]\n"
                                      "outputs: [{channel: cutouts}]\n")
    env = dict(__import__("os").environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-m", "pipeline", "run", "--config", str(workspace.config_path)],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 2
    assert "u2net" in out.stderr and "assetd models pull --config" in out.stderr
    assert not (workspace.root / "state" / "assetd.sqlite3").exists()
    # `assetd jobs` makes an empty database: still no earlier run, so still refused at once (not paused and waiting)
    assert invoke("jobs", "--config", workspace.config_path).exit_code == 0
    assert (workspace.root / "state" / "assetd.sqlite3").exists()
    again = subprocess.run([sys.executable, "-m", "pipeline", "run", "--config", str(workspace.config_path)],
                           capture_output=True, text=True, timeout=120, env=env)
    assert again.returncode == 2 and "assetd models pull --config" in again.stderr


@needs("rembg")
def test_check_reports_device_and_missing_models(workspace, tmp_path):
    workspace.write_config(extra=f"device: cuda\nmodels: {{cache_dir: {tmp_path / 'cache'}}}\n")
    workspace.add_rule("05-gpu.yaml", "name: gpu\nmatch: {folder: 'gpu/**'}\n"
                                      "steps: [{remove_background: {backend: rembg, model: isnet-general-use}}]\n"
                                      "outputs: [{channel: cutouts}]\n")
    result = invoke("check", "--config", workspace.config_path)
    assert result.exit_code == 1
    assert "device: 'cuda' asked for, but no CUDA GPU is usable" in result.output
    assert "isnet-general-use" in result.output and "assetd models pull --config" in result.output


def test_demo_run_again_says_its_results_are_from_the_earlier_run(tmp_path):
    from pipeline.store import Store

    root = tmp_path / "demo"
    assert invoke("demo", root, "--setup-only", "--shots", "2").exit_code == 0
    store = Store(root / "state" / "assetd.sqlite3")
    job, _ = store.enqueue(input_hash="h", rule="products", rule_version="v", input_path=str(root / "inbox" / "a.jpg"),
                           rel_path="products/a.jpg", max_attempts=1)
    store.claim_next("w", 60)
    store.finish(job.id, [], 1.0)
    store.close()
    result = invoke("demo", root, "--shots", "2")
    assert result.exit_code == 0, result.output
    assert "was already run as a demo" in result.output and f"rm -rf {root}" in result.output
    assert "earlier run: 1 done" in result.output and "queue drained" not in result.output
    assert not (root / "daemon.log").exists()  # no daemon was started for nothing


def test_jobs_fit_an_80_column_terminal_one_line_each(workspace, batch, monkeypatch):
    invoke("process", batch, "--config", workspace.config_path)
    monkeypatch.setenv("COLUMNS", "80")
    table = invoke("jobs", "--config", workspace.config_path)
    lines = table.output.splitlines()
    assert max(len(line) for line in lines) <= 80, table.output
    ids = [j["id"] for j in json.loads(invoke("jobs", "--config", workspace.config_path, "--json").stdout)["jobs"]]
    rows = [line for line in lines if line.split(" ")[0].isdigit() and line.split()[1] in ("done", "failed")]
    assert [int(r.split()[0]) for r in rows] == ids  # one line per job
    failed = next(r for r in rows if " failed " in r)
    assert "not a readabl" in failed and failed.endswith("…")  # the error, shortened
    assert "broken.png:" not in failed  # not the input path again
    monkeypatch.setenv("COLUMNS", "200")
    wide = invoke("jobs", "--config", workspace.config_path).output
    assert "PNG header is damaged" in wide and "products/broken.png" in wide


def test_jobs_and_retry_read_the_store_while_a_rule_file_is_broken(workspace, batch):
    """A rule saved broken while the daemon runs (it keeps the last good rules) must not lock the studio out of
    `assetd jobs` and `assetd retry`: they read the job store and the config only."""
    invoke("process", batch, "--config", workspace.config_path)
    workspace.add_rule("30-broken.yaml", "name: broken\nmatch: [\n")
    assert invoke("check", "--config", workspace.config_path).exit_code != 0  # the rule is broken indeed
    table = invoke("jobs", "--config", workspace.config_path)
    assert table.exit_code == 0, table.output
    assert "done" in table.output.splitlines()[-1]
    assert invoke("retry", "--failed", "--config", workspace.config_path).exit_code == 0


def test_jobs_says_which_running_jobs_belong_to_an_assetd_that_has_stopped(workspace):
    """After a kill -9 the store still says running; the listing says whose they are and how to queue them again."""
    import subprocess
    import sys

    from pipeline.config import load_config
    from pipeline.owners import HOST
    from pipeline.store import Store

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    config = load_config(workspace.config_path)
    store = Store(config.database)
    job, _ = store.enqueue(input_hash="h", rule="products", rule_version="v", input_path=str(workspace.inbox / "a.jpg"),
                           rel_path="a.jpg", max_attempts=3)
    store.claim_next(f"process pid {dead} on {HOST}", 3600)
    store.close()
    result = invoke("jobs", "--config", workspace.config_path)
    assert f"job(s) {job.id} marked running belong to an assetd that has stopped" in result.output
    assert f"assetd retry {job.id} --config" in result.output
    assert invoke("retry", job.id, "--config", workspace.config_path).exit_code == 0
    assert "marked running" not in invoke("jobs", "--config", workspace.config_path).output


def test_retry_leaves_a_job_whose_file_ran_again_to_done_since(workspace):
    """A failed shot replaced by a good one under the same name ran again as a later job and is done: retrying
    the failed job would only end it superseded, so retry says which job did the file and queues nothing."""
    folder = workspace.root / "batch"
    (folder / "products").mkdir(parents=True)
    shot = folder / "products" / "shot.png"
    shot.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    assert invoke("process", folder, "--config", workspace.config_path).exit_code == 1
    workspace.shot("batch/products/shot.png", "grey", seed=4, subject="box")  # the studio drops a good one
    assert invoke("process", folder, "--config", workspace.config_path).exit_code == 0
    jobs = json.loads(invoke("jobs", "--config", workspace.config_path, "--json").stdout)["jobs"]
    assert [(j["id"], j["status"]) for j in jobs] == [(1, "failed"), (2, "done")]

    result = invoke("retry", "1", "--config", workspace.config_path)
    assert result.exit_code == 1, result.output  # the job named was not queued: a script must see it
    assert result.stdout.splitlines() == ["queued again: none"]
    assert result.stderr.splitlines() == [
        "job 1: its file ran again as job 2 (done); not queued (to run it once more: assetd retry 2)"]
    assert "queued again: none" in invoke("retry", "--failed", "--config", workspace.config_path).output
    jobs = json.loads(invoke("jobs", "--config", workspace.config_path, "--json").stdout)["jobs"]
    assert [(j["id"], j["status"]) for j in jobs] == [(1, "failed"), (2, "done")]


def test_jobs_lists_a_job_only_read_ahead_as_next_not_running(workspace):
    """A worker claims the job after the one it runs, to read it ahead: `assetd jobs` lists it as "next" and counts
    it apart, so 2 actors never read as "4 running"."""
    from pipeline.config import load_config
    from pipeline.store import Store

    config = load_config(workspace.config_path)
    store = Store(config.database)
    for name in ("a.jpg", "b.jpg"):
        store.enqueue(input_hash=name, rule="products", rule_version="v", input_path=str(workspace.inbox / name),
                      rel_path=name, max_attempts=3)
    running = store.claim_next("worker-1 pid 1 on elsewhere", 3600)
    ahead = store.claim_next("worker-1 pid 1 on elsewhere", 3600, ahead=True)
    store.close()
    lines = invoke("jobs", "--config", workspace.config_path).output.splitlines()
    status = {line.split()[0]: line.split()[1] for line in lines if line.split()[:1] in ([str(running.id)],
                                                                                       [str(ahead.id)])}
    assert status == {str(running.id): "running", str(ahead.id): "next"}
    assert "0 queued, 1 running, 1 next (read ahead, not started), 0 done, 0 failed" in lines[-1]


def test_a_job_that_fails_on_its_input_says_where_it_ran(workspace, batch):
    """ran_on is recorded for a failed run too (the job page's "ran on"; `assetd jobs --json`)."""
    from pipeline.owners import HOST

    invoke("process", batch / "products" / "broken.png", "--config", workspace.config_path)
    (doc,) = json.loads(invoke("jobs", "--config", workspace.config_path, "--json").stdout)["jobs"]
    assert doc["status"] == "failed" and doc["ran_on"] == f"process on {HOST}"
