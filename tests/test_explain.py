"""`assetd explain` takes the daemon's own path to a rule: the same inbox, the same relative path, the same rule."""
from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config import load_config
from pipeline.intake import Intake
from pipeline.rules import load_rules
from pipeline.store import Store


def explain(workspace, path: Path):
    return CliRunner().invoke(cli, ["explain", str(path), "--config", str(workspace.config_path)],
                              catch_exceptions=False)


def explained_rule(output: str) -> str | None:
    m = re.search(r"✓ (\S+) \(", output)
    return m.group(1) if m else None


def test_explain_and_the_daemon_pick_the_same_rule(workspace):
    # the products folder is an inbox of its own inside the inbox: the innermost inbox owns a file
    text = workspace.config_path.read_text().replace("  - path: inbox\n", "  - path: inbox\n  - path: inbox/products\n")
    workspace.config_path.write_text(text)
    config = load_config(workspace.config_path)
    rules = load_rules(config)
    intake = Intake(config, rules, Store(config.database))
    inner = workspace.inbox / "products"
    cases = {  # file → the inbox the watcher hands it over with (the innermost inbox holding it)
        workspace.shot("inbox/a.jpg"): workspace.inbox,
        workspace.shot("inbox/products/b.jpg"): inner,
        workspace.shot("inbox/products/products/c.jpg"): inner,
        workspace.shot("inbox/products/shoes/d.jpg"): inner,
    }
    picked = {}
    for path, inbox in cases.items():
        daemon = intake.submit(path, inbox).rule
        result = explain(workspace, path)
        assert result.exit_code == 0, result.output
        assert explained_rule(result.output) == daemon.name, (path, result.output)
        assert intake.submit(path).rule.name == daemon.name  # `assetd process FILE` as well
        picked[path.name] = daemon.name
    assert picked == {"a.jpg": "cutouts", "b.jpg": "cutouts", "c.jpg": "products", "d.jpg": "cutouts"}


def test_explain_a_missing_file_says_so_and_fails(workspace):
    path = workspace.inbox / "products" / "nope.jpg"
    result = explain(workspace, path)
    assert result.exit_code == 1
    assert f"{path} does not exist" in result.output
    assert "✓ products (10-products.yaml): would take a file of this name" in result.output
    assert "takes it" not in result.output


def test_explain_a_file_in_a_sub_folder_of_a_non_recursive_inbox(workspace):
    text = workspace.config_path.read_text().replace("  - path: inbox\n", "  - path: inbox\n    recursive: false\n")
    workspace.config_path.write_text(text)
    path = workspace.shot("inbox/products/a.jpg")
    result = explain(workspace, path)
    assert f"the daemon never sees this file: inbox {workspace.inbox} does not watch sub-folders (recursive: false)" \
        in result.output
    assert "✓ products" in result.output and result.exit_code == 0  # `assetd process` would still take it


def test_explain_an_output_says_no_one_takes_it_like_process(workspace):
    output = workspace.shot("out/cutouts/a.jpg", "white", seed=1)  # a file in a channel folder
    result = explain(workspace, output)
    assert result.exit_code == 1
    assert "inside the folder of channel 'cutouts'" in result.output and "never an input" in result.output
    assert "✓" not in result.output
    refused = CliRunner().invoke(cli, ["process", str(output), "--config", str(workspace.config_path)])
    assert refused.exit_code == 2 and "channel 'cutouts'" in refused.output
