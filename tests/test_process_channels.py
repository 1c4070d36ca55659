"""`assetd process` never takes its own outputs as inputs: a path inside a channel folder is a usage error,
and a folder that holds a channel folder is processed without it."""
from __future__ import annotations

import json
import logging

from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.store import Store


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def shoot_with_channels_inside(workspace):
    """A shoot folder whose channel folders live inside it (shoot/out/<channel>), as studios often set it up."""
    text = workspace.config_path.read_text().replace("path: out/", "path: shoot/out/")
    workspace.config_path.write_text(text)
    workspace.shot("shoot/products/a.jpg", "grey", seed=4, subject="box")
    return workspace.root / "shoot"


def jobs(workspace) -> list:
    store = Store(workspace.load()[0].database)
    try:
        return store.jobs()
    finally:
        store.close()


def test_a_folder_holding_channel_folders_skips_them_with_a_note(workspace, caplog):
    shoot = shoot_with_channels_inside(workspace)
    first = invoke("process", shoot, "--config", workspace.config_path, "--json")
    assert first.exit_code == 0, first.output
    assert len(list((shoot / "out").rglob("a*.*"))) >= 5  # the outputs landed inside the shoot folder

    with caplog.at_level(logging.WARNING, logger="assetd"):
        again = invoke("process", shoot, "--config", workspace.config_path, "--json")
    assert again.exit_code == 0, again.output
    (doc,) = json.loads(again.stdout)["results"]  # the outputs are not inputs
    assert doc["input"].endswith("a.jpg") and doc["status"] == "skipped"
    assert len(jobs(workspace)) == 1
    notes = [r.getMessage() for r in caplog.records if "channel" in r.getMessage()]
    assert any("'webshop'" in n and str(shoot / "out" / "webshop") in n for n in notes), notes


def test_a_path_inside_a_channel_folder_is_a_usage_error(workspace):
    shoot = shoot_with_channels_inside(workspace)
    assert invoke("process", shoot, "--config", workspace.config_path).exit_code == 0
    for path in (shoot / "out" / "cutouts", shoot / "out" / "cutouts" / "a.png", shoot / "out"):
        result = invoke("process", path, "--config", workspace.config_path)
        if path.name == "out":  # holds channel folders but is not inside one: nothing left to process
            assert result.exit_code == 0 and result.output.strip() == "", result.output
            continue
        assert result.exit_code == 2, result.output
        assert "channel 'cutouts'" in result.output and str(path) in result.output
    assert len(jobs(workspace)) == 1


def test_the_studio_folder_with_a_forced_rule_takes_only_images_outside_what_assetd_writes(workspace, caplog):
    """`assetd process . --rule cutouts` in the studio folder: the database, the manifests, the config and rule
    files and the logs are not inputs (with --rule they failed one by one and counted as files the rule took)."""
    first = invoke("process", workspace.root / "inbox", "--config", workspace.config_path)
    workspace.shot("inbox/misc/a.jpg", "white", seed=1)
    assert invoke("process", workspace.root / "inbox", "--config", workspace.config_path).exit_code == 0, first.output
    (workspace.root / "assetd.log").write_text("a log\n")
    manifests = workspace.root / "state" / "manifests"
    assert list(manifests.rglob("*.assetd.json"))
    with caplog.at_level(logging.WARNING, logger="assetd"):
        result = invoke("process", workspace.root, "--config", workspace.config_path, "--rule", "cutouts", "--json")
    assert result.exit_code in (0, 1), result.output  # 1: the scene photo is an image the cut-out rule refuses
    docs = json.loads(result.stdout)["results"]
    taken = {d["input"] for d in docs if d["status"] != "skipped"}
    assert all(p.endswith((".jpg", ".png")) for p in taken), taken
    skipped = {d["input"]: d["error"] for d in docs if d["status"] == "skipped"}
    db = str(workspace.root / "state" / "assetd.sqlite3")
    assert "is not an image type assetd reads" in skipped[db] and str(workspace.config_path) in skipped
    assert not any(str(manifests) in p for p in skipped) and not any(str(manifests) in p for p in taken)
    assert any("the manifests" in r.getMessage() for r in caplog.records)
    assert all(j.input_path.endswith((".jpg", ".png")) for j in jobs(workspace))
