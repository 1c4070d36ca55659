"""The manual stays in sync with the code: README reference blocks, config.example.yaml, --help."""
from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config import Config
from pipeline.docs import GENERATORS, generated_blocks, render
from pipeline.schema import documented_keys

ROOT = Path(__file__).resolve().parents[1]


def test_readme_reference_blocks_are_current():
    text = (ROOT / "README.md").read_text()
    blocks = generated_blocks(text)
    assert set(blocks) == set(GENERATORS), "README lacks a generated block"
    assert render(text) == text, "README is stale: run `python -m pipeline.docs`"


def test_every_config_key_is_in_the_example_with_a_comment():
    example_text = (ROOT / "config.example.yaml").read_text()
    example = yaml.safe_load(example_text)
    for key in documented_keys(Config):
        node = example
        for part in key.split("."):
            if isinstance(node, list):
                node = node[0]
            elif part != key.split(".")[0] and key.startswith("channels.") and "path" in node.get("cutouts", {}):
                node = node["cutouts"]
            assert isinstance(node, dict) and part in node, f"config.example.yaml lacks {key}"
            node = node[part]
    for line in example_text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not stripped.startswith("- path") and ":" in stripped \
                and not stripped.endswith(":") and "{" not in stripped:
            assert "#" in line, f"config.example.yaml: no comment on {line!r}"


def test_every_command_is_in_help_and_readme():
    readme = (ROOT / "README.md").read_text()
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name, command in cli.commands.items():
        assert name in result.output
        assert f"assetd {name}" in readme
        for sub in getattr(command, "commands", {}):
            assert f"assetd {name} {sub}" in readme


def test_readme_quick_start_has_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start")[1].split("##")[0]
    assert "make demo" in quick and "make test" in quick
    makefile = (ROOT / "Makefile").read_text()
    assert "\ndemo:" in makefile and "\ntest:" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()
