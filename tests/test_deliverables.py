"""Deliverables a shop can take as they are: a renamed copy gets outputs under its own name without running
the chain again, channel folders hold deliverables only, manifests are named after their outputs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.intake import Intake
from pipeline.store import JobStatus, Store
from pipeline.worker import Worker

RULE = """\
name: shop
steps:
  - crops: {ratios: ["1:1", "4:5"], fill: pad}
outputs:
  - {channel: webshop, ratios: ["1:1"]}
  - {channel: instagram, ratios: ["4:5"]}
"""


def setup(workspace, extra: str = ""):
    for f in (workspace.root / "rules").iterdir():
        f.unlink()
    workspace.add_rule("shop.yaml", RULE)
    workspace.write_config(extra=extra)
    config, rules = workspace.load()
    store = Store(config.database)
    return config, rules, store, Intake(config, rules, store), Worker("w1", config, store, rules)


def test_a_renamed_copy_gets_the_outputs_under_its_own_name_without_running_the_chain(workspace):
    config, rules, store, intake, worker = setup(workspace)
    shot = workspace.shot("staging/IMG_0001.jpg", "white", seed=1)
    first = intake.submit(shot).job
    assert worker.run_next().status == "done"
    copy = workspace.root / "staging" / "SKU-1234.jpg"
    shutil.copyfile(shot, copy)
    sub = intake.submit(copy)
    assert sub.created and sub.job.id != first.id
    result = worker.run_next()
    worker.close()
    assert result.status == "done" and result.copied_from == first.id
    for channel, name in (("webshop", "SKU-1234_1x1.jpg"), ("instagram", "SKU-1234_4x5.jpg")):
        original = workspace.out(channel) / name.replace("SKU-1234", "IMG_0001")
        assert (workspace.out(channel) / name).read_bytes() == original.read_bytes()
    job = store.get(sub.job.id)
    assert job.status is JobStatus.DONE and job.copied_from == first.id
    assert [s["step"] for s in store.steps(job.id)] == []  # the chain did not run again
    assert sorted(o.path for o in store.outputs(job.id)) == sorted(
        str(workspace.out(c) / n) for c, n in (("webshop", "SKU-1234_1x1.jpg"), ("instagram", "SKU-1234_4x5.jpg")))
    manifest = json.loads(workspace.manifest("shop", "SKU-1234").read_text())
    assert manifest["copied_from"] == {"job": first.id, "input": str(shot)}
    assert manifest["input"] == str(copy) and manifest["outputs"][0]["steps"]["crops"]  # the twin's step notes
    again = intake.submit(copy)  # the same file seen again: nothing new
    assert not again.created and again.reason == f"already done as job {job.id}"
    store.close()


def test_a_copy_queued_with_its_twin_waits_for_it_and_a_missing_output_runs_the_chain(workspace):
    config, rules, store, intake, worker = setup(workspace)
    shot = workspace.shot("staging/a.jpg", "white", seed=1)
    first = intake.submit(shot).job
    copy = workspace.root / "staging" / "b.jpg"
    shutil.copyfile(shot, copy)
    second = intake.submit(copy).job
    waited = worker.run_next(only=[second.id])
    job = store.get(second.id)
    assert waited.status == "queued" and job.status is JobStatus.QUEUED and job.attempts == 0
    assert f"waiting for job {first.id}" in job.error and job.next_attempt_at > 0
    assert worker.run_next(only=[first.id]).status == "done"
    (workspace.out("webshop") / "a_1x1.jpg").unlink()  # someone removed a deliverable of the twin
    store.db.conn.execute("UPDATE jobs SET next_attempt_at = 0 WHERE id = ?", [second.id])
    result = worker.run_next(only=[second.id])
    worker.close()
    assert result.status == "done" and result.copied_from is None
    assert [s["step"] for s in store.steps(second.id)][0] == "crops"  # ran the chain itself
    assert (workspace.out("webshop") / "b_1x1.jpg").exists()
    store.close()


def test_process_force_runs_the_chain_and_twins_never_copy_from_each_other(workspace):
    """The trial's loop: the original forced after its renamed copy was done must run its chain, not take the
    copy's outputs (which were its own); the copy still names the original as where its outputs came from."""
    setup(workspace)
    shot = workspace.shot("staging/Sailboat.jpg", "white", seed=1)
    copy = workspace.root / "staging" / "Sailboat-C.jpg"
    shutil.copyfile(shot, copy)

    def process(*args: str) -> dict:
        result = CliRunner().invoke(cli, ["process", *args, "--config", str(workspace.config_path), "--json"],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return {Path(d["input"]).name: d for d in json.loads(result.stdout)["results"]}

    assert {d["status"] for d in process(str(shot), str(copy)).values()} == {"done"}
    (workspace.out("webshop") / "Sailboat_1x1.jpg").unlink()  # what --force is for: the deliverable again
    assert process(str(shot), "--force")["Sailboat.jpg"]["status"] == "done"
    config, _ = workspace.load()
    store = Store(config.database)
    try:
        by_name = {Path(j.input_path).name: j for j in store.jobs()}
        original, twin = by_name["Sailboat.jpg"], by_name["Sailboat-C.jpg"]
        assert original.copied_from is None and twin.copied_from == original.id
        assert "crops" in [s["step"] for s in store.steps(original.id)]  # its chain ran
    finally:
        store.close()
    assert (workspace.out("webshop") / "Sailboat_1x1.jpg").exists()
    manifest = json.loads(workspace.manifest("shop", "Sailboat").read_text())
    assert "copied_from" not in manifest


def test_channel_folders_hold_deliverables_only_unless_asked(workspace):
    config, rules, store, intake, worker = setup(workspace)
    intake.submit(workspace.shot("staging/a.jpg", "white", seed=1))
    worker.run_next()
    worker.close()
    assert sorted(p.name for p in (workspace.root / "out").rglob("*") if p.is_file()) == ["a_1x1.jpg", "a_4x5.jpg"]
    manifest = json.loads(workspace.manifest("shop", "a").read_text())
    assert [o["ratio"] for o in manifest["outputs"]] == ["1:1", "4:5"]
    store.close()


def test_beside_outputs_manifests_follow_the_outputs_name_after_a_clash(workspace):
    config, rules, store, intake, worker = setup(workspace, "manifests: {beside_outputs: true}\n")
    intake.submit(workspace.shot("staging/one/clash.jpg", "white", seed=1))
    other = intake.submit(workspace.shot("staging/two/clash.jpg", "grey", seed=2)).job
    assert worker.run_next().status == "done" and worker.run_next().status == "done"
    worker.close()
    short = other.input_hash[:8]
    web = sorted(p.name for p in workspace.out("webshop").iterdir())
    assert web == sorted(["clash.assetd.json", "clash_1x1.jpg", f"clash-{short}.assetd.json", f"clash_1x1-{short}.jpg"])
    doc = json.loads((workspace.out("webshop") / f"clash-{short}.assetd.json").read_text())
    assert doc["job"] == other.id
    assert workspace.manifest("shop", "clash").exists()  # and the central copy
    store.close()


def test_check_names_a_manifests_folder_that_cannot_be_written(workspace):
    from click.testing import CliRunner

    from pipeline.cli import cli

    (workspace.root / "blocker").write_text("a file, not a folder")
    workspace.write_config(extra="manifests: {folder: blocker/manifests}\n")
    result = CliRunner().invoke(cli, ["check", "--config", str(workspace.config_path)])
    assert result.exit_code == 1
    assert f"manifests.folder: {workspace.root / 'blocker' / 'manifests'} is not writable" in result.output


def test_a_manifest_beside_web_safe_outputs_has_a_web_safe_name(workspace):
    config, rules, store, intake, worker = setup(workspace, "manifests: {beside_outputs: true}\n")
    lines = workspace.config_path.read_text().splitlines()
    workspace.config_path.write_text("\n".join(
        line.replace("}", ", web_safe_names: true}", 1) if line.strip().startswith("webshop:") else line
        for line in lines) + "\n")
    config, rules = workspace.load()
    worker = Worker("w1", config, store, rules)
    Intake(config, rules, store).submit(workspace.shot("staging/Été #1.jpg", "white", seed=1))
    assert worker.run_next().status == "done"
    worker.close()
    assert sorted(p.name for p in workspace.out("webshop").iterdir()) == ["ete-1.assetd.json", "ete-1_1x1.jpg"]
    assert (workspace.out("instagram") / "Été #1.assetd.json").exists()
    store.close()


def test_the_same_pixels_give_the_same_file_in_every_run(workspace):
    """A reprocess that changes nothing must not change the file (a shop sync would upload it again)."""
    import hashlib
    import subprocess
    import sys
    import time

    script = ("import hashlib, numpy as np; from pipeline.config import ChannelConfig; from pipeline.imageio import encode;"
              "px = np.arange(48 * 64 * 3, dtype=np.uint8).reshape(48, 64, 3);"
              "print(*(hashlib.sha256(encode(px, ChannelConfig(path='.', format=f))).hexdigest()"
              " for f in ('jpeg', 'png', 'webp', 'tiff')))")
    runs = []
    for _ in range(2):
        runs.append(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)
        time.sleep(1.1)  # the ICC header's creation date has a resolution of one second
    assert runs[0] == runs[1] and len(runs[0].split()) == 4


def test_a_database_inside_an_inbox_is_refused_by_its_own_name(workspace):
    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    workspace.config_path.write_text(workspace.config_path.read_text().replace(
        "database: state/assetd.sqlite3", "database: inbox/state/assetd.sqlite3"))
    try:
        load_config(workspace.config_path)
    except ConfigError as exc:
        problems = exc.problems
    else:
        raise AssertionError("a database inside an inbox was accepted")
    assert len(problems) == 1 and "database:" in problems[0] and "lies inside inboxes[0]" in problems[0]
