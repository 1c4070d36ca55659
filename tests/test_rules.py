"""Rules: loading, validation messages, matching in file-name order, versions."""
from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.rules import folder_matches, load_rules, match_rule, parse_ratio

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("pattern, folder, expected", [
    ("**", "", True),
    ("**", "a/b", True),
    ("", "", True),
    ("products/**", "products", True),
    ("products/**", "products/shoes/red", True),
    ("products/**", "product", False),
    ("products/**", "other/products", False),
    ("products/*", "products/shoes", True),
    ("products/*", "products/shoes/red", False),
    ("*/raw", "client1/raw", True),
    ("**/raw", "a/b/raw", True),
    ("**/raw", "raw", True),
    ("**/raw", "a/raw/x", False),
    ("shoot-2026-??", "shoot-2026-11", True),
])
def test_folder_globs(pattern, folder, expected):
    assert folder_matches(pattern, folder) is expected


def test_example_rules_load_with_the_example_config():
    config = load_config(ROOT / "config.example.yaml")
    rules = load_rules(config)
    assert [r.name for r in rules] == ["products", "cutouts"]
    products = rules[0]
    assert [s.step for s in products.steps] == ["remove_background", "place_in_scene", "crops", "upscale"]
    assert [s.backend for s in products.steps] == ["studio", "composite", "geometry", "lanczos"]


def test_first_match_wins_and_why_not_explains(workspace):
    config, rules = workspace.load()
    assert match_rule(rules, PurePosixPath("products/shoes/a.jpg")).name == "products"
    assert match_rule(rules, PurePosixPath("misc/a.jpg")).name == "cutouts"
    assert match_rule(rules, PurePosixPath("misc/a.gif")) is None
    products = rules[0]
    assert "folder 'misc' does not match 'products/**'" in products.why_not(PurePosixPath("misc/a.jpg"))
    assert "extension .gif" in products.why_not(PurePosixPath("products/a.gif"))


def _problems(workspace, text: str) -> list[str]:
    for f in (workspace.root / "rules").iterdir():
        f.unlink()
    workspace.add_rule("bad.yaml", text)
    config = load_config(workspace.config_path)
    with pytest.raises(ConfigError) as info:
        load_rules(config)
    return info.value.problems


@pytest.mark.parametrize("body, expected", [
    ("steps: [{cartoonify: {}}]\noutputs: [{channel: cutouts}]", "unknown step 'cartoonify'"),
    ("steps: [{remove_background: {backend: magic}}]\noutputs: [{channel: cutouts}]",
     "unknown backend 'magic' for remove_background (known:"),
    ("steps: [{crops: {}}, {remove_background: {}}]\noutputs: [{channel: cutouts}]", "must run in the order"),
    ("steps: [{remove_background: {}}]\noutputs: [{channel: tiktok}]", "'tiktok' is not a configured channel"),
    ("steps: [{remove_background: {}}]\noutputs: [{channel: cutouts, from: crops}]", "'crops' is not a step"),
    ("steps: [{crops: {ratios: ['1:1']}}]\noutputs: [{channel: webshop, from: crops, ratios: ['4:5']}]",
     "'4:5' is not one of the crops step's ratios"),
    ("steps: [{remove_background: {trim: maybe}}]\noutputs: [{channel: cutouts}]",
     "steps[0].remove_background.trim: expected true or false"),
    ("steps: [{remove_background: {}}]\noutputs: [{channel: cutouts}]\nmatch: {folders: x}", "match.folders: unknown key"),
    ("steps: []\noutputs: [{channel: cutouts}]", "steps: expected a list of steps"),
    ("steps: [{remove_background: {}}]", "outputs: expected a list"),
])
def test_rule_problems_name_the_file_and_key(workspace, body, expected):
    found = _problems(workspace, "name: bad\n" + body + "\n")
    assert any(expected in p for p in found), found
    assert all("bad.yaml" in p for p in found)


def test_duplicate_rule_names_are_rejected(workspace):
    workspace.add_rule("30-again.yaml", "name: cutouts\nsteps: [remove_background]\noutputs: [{channel: cutouts}]\n")
    config = load_config(workspace.config_path)
    with pytest.raises(ConfigError, match="already used"):
        load_rules(config)


def test_version_changes_when_the_rule_or_its_channel_changes(workspace):
    config, rules = workspace.load()
    before = {r.name: r.version for r in rules}
    assert {r.name: r.version for r in load_rules(config)} == before
    workspace.add_rule("20-cutouts.yaml", "name: cutouts\nsteps: [{remove_background: {trim: true}}]\n"
                                          "outputs: [{channel: cutouts}]\n")
    after = {r.name: r.version for r in load_rules(config)}
    assert after["cutouts"] != before["cutouts"] and after["products"] == before["products"]
    config.channels["webshop"].quality = 70
    assert load_rules(config)[0].version != before["products"]


def test_parse_ratio():
    assert parse_ratio("16:9") == (16, 9)
    assert parse_ratio("0:9") is None and parse_ratio("wide") is None
