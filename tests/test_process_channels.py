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
