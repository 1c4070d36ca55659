"""Config loading: defaults, relative paths, and errors that name the file, the key and what was expected."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.rules import load_rules
from pipeline.config import Config, load_config
from pipeline.errors import ConfigError
from pipeline.schema import build, opt

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "assetd.yaml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return info.value.problems


def test_example_config_loads_and_resolves_paths_against_its_folder():
    config = load_config(ROOT / "config.example.yaml")
    assert config.database == ROOT / "state" / "assetd.sqlite3"
    assert config.inboxes[0].path == ROOT / "inbox"
    assert config.channels["webshop"].path == ROOT / "out" / "webshop"
    assert config.channels["webshop"].size == "2000x2000"
    assert config.channels["instagram"].size == {"4:5": "1080x1350", "9:16": "1080x1920"}
    assert config.channels["print"].bits == 16


def test_empty_config_gives_the_documented_defaults(tmp_path):
    config = load_config(write(tmp_path, ""))
    assert config.workers == 1 and config.device == "auto"
    assert config.notify.digest_after_idle_seconds == 60
    assert config.input.max_pixels == 250_000_000
    assert config.rules_dir == tmp_path / "rules"


@pytest.mark.parametrize("text, expected", [
    ("workerz: 2", "workerz: unknown key"),
    ("workers: 0", "workers: expected at least 1, got 0"),
    ("workers: two", "workers: expected an integer, got 'two'"),
    ("device: gpu", "device: expected auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("inboxes: [{path: in, settle_seconds: soon}]", "inboxes[0].settle_seconds: expected a number, got 'soon'"),
    ("inboxes: [{recursive: true}]", "inboxes[0].path: required"),
    ("channels: {web: {path: out, format: gif}}", "channels.web.format: expected one of 'jpeg', 'png', 'webp', 'tiff'"),
    ("channels: {web: {path: out, format: jpeg, bits: 16}}", "channels.web.bits: 16 bits needs format png or tiff"),
    ("channels: {web: {path: out, background: white}}", "channels.web.background: expected a colour like '#ffffff'"),
    ("channels: {web: {path: out, filename: '../{stem}.{ext}'}}", "channels.web.filename: expected a file name"),
    ("channels: {web: {path: out, quality: 101}}", "channels.web.quality: expected at most 100"),
    ("notify: {urls: 5}", "notify.urls: expected a list of strings, got 5"),
    ("input: {colour_intent: saturation}", "input.colour_intent: expected one of 'perceptual', 'relative'"),
    ("inboxes: [{path: in}]\nchannels: {web: {path: in/out}}", "channels.web.path: "),
    ("channels: {web: {path: out, filename: '{sku}_{ratio}.{ext}'}}",
     "channels.web.filename: unknown field {sku} (known: stem, folder, ratio, variant, step, rule, channel, ext, hash8)"),
    ("channels: {web: {path: out, filename: '{stem:d}.{ext}'}}", "channels.web.filename: Unknown format code 'd'"),
    ("channels: {web: {path: out, web_safe_names: maybe}}", "channels.web.web_safe_names: expected true or false"),
    ("inboxes: [{path: in}, {path: ./in}]", "inboxes[1].path: "),
])
def test_bad_values_name_file_key_and_expectation(tmp_path, text, expected):
    found = problems(tmp_path, text)
    assert any(expected in p for p in found), found
    assert all(p.startswith(str(tmp_path / "assetd.yaml")) for p in found)


def test_every_problem_is_reported_at_once(tmp_path):
    found = problems(tmp_path, "workers: 0\ndevice: tpu\nbogus: 1\n")
    assert len(found) == 3


def test_unreadable_and_invalid_yaml_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    assert "not valid YAML" in problems(tmp_path, "workers: [1,\n")[0]
    assert "expected a mapping" in problems(tmp_path, "- just\n- a list\n")[0]
    (broken,) = problems(tmp_path, "workers: [1,\n")
    assert "not valid YAML at line 2, column 1" in broken and "\n" not in broken and "unicode string" not in broken


def test_a_key_given_twice_is_an_error_not_a_silent_last_one_wins(tmp_path, workspace):
    """YAML lets the last of two equal keys win in silence: `workers: 2` ... `workers: 0` must be an error, in the
    config, in a nested section and in a rule (a second `match:` made every JPEG match nothing)."""
    (found,) = problems(tmp_path, "workers: 2\nlog_level: info\nworkers: 0\n")
    assert "line 3, column 1: key 'workers' is given twice (first at line 1)" in found
    (nested,) = problems(tmp_path, "problems:\n  min_free: 99%\n  min_free: 2%\n")
    assert "key 'min_free' is given twice (first at line 2)" in nested
    workspace.add_rule("30-twice.yaml", "name: twice\nmatch: {extensions: [jpg]}\nmatch: {extensions: [png]}\n"
                                        "outputs: [{channel: cutouts}]\n")
    config = load_config(workspace.config_path)
    with pytest.raises(ConfigError, match=r"30-twice.yaml: not valid YAML at line 3, column 1: key 'match' is given"):
        load_rules(config)


def test_absolute_paths_stay_absolute(tmp_path):
    config = load_config(write(tmp_path, f"database: {tmp_path}/db/x.sqlite3\n"))
    assert config.database == tmp_path / "db" / "x.sqlite3"
    assert isinstance(config, Config)


def test_the_same_inbox_twice_is_refused(tmp_path):
    found = problems(tmp_path, "inboxes: [{path: in}, {path: in/../in, recursive: false}]")
    assert found == [f"{tmp_path / 'assetd.yaml'}: inboxes[1].path: {tmp_path / 'in/../in'} is inboxes[0] "
                     f"({tmp_path / 'in'}) again"]


def test_an_inbox_may_lie_inside_another(tmp_path):
    config = load_config(write(tmp_path, "inboxes: [{path: in}, {path: in/rush, settle_seconds: 0.5}]"))
    assert [i.path for i in config.inboxes] == [tmp_path / "in", tmp_path / "in" / "rush"]


def test_done_and_error_folders_must_be_nobody_elses(tmp_path):
    source = tmp_path / "assetd.yaml"
    found = problems(tmp_path, "inboxes: [{path: a, after: move, done_folder: b, error_folder: b/errors}, {path: b}]")
    assert found == [
        f"{source}: inboxes[0].done_folder: {tmp_path / 'b'} is or holds inboxes[1] ({tmp_path / 'b'}); inputs would "
        "be moved into a watched folder",
        f"{source}: inboxes[0].error_folder: {tmp_path / 'b' / 'errors'} lies inside inboxes[1] ({tmp_path / 'b'}), "
        "which would take the moved files as new inputs"]
    found = problems(tmp_path, "inboxes: [{path: in, after: move}, {path: in/done}]")
    assert found == [f"{source}: inboxes[0].done_folder: {tmp_path / 'in' / 'done'} is or holds inboxes[1] "
                     f"({tmp_path / 'in' / 'done'}); inputs would be moved into a watched folder"]
    found = problems(tmp_path, "inboxes: [{path: in, after: move, error_folder: out/failed}]\n"
                               "channels: {web: {path: out}}")
    assert found == [f"{source}: inboxes[0].error_folder: {tmp_path / 'out' / 'failed'} is, holds or lies inside "
                     f"channel web ({tmp_path / 'out'}); inputs and deliverables would mix"]


def test_done_and_error_folders_default_inside_the_inbox_or_lie_beside_it(tmp_path):
    config = load_config(write(tmp_path, "inboxes: [{path: in}, {path: in/rush, after: move},"
                                         " {path: share/in, after: move, done_folder: share/done}]"))
    outer, rush, share = config.inboxes
    assert (rush.done, rush.error) == (tmp_path / "in" / "rush" / "done", tmp_path / "in" / "rush" / "error")
    assert share.done == tmp_path / "share" / "done"
    assert rush.sets_aside(tmp_path / "in" / "rush" / "error" / "sub" / "x.jpg")
    assert not rush.sets_aside(tmp_path / "in" / "rush" / "x.jpg") and not outer.sets_aside(tmp_path / "in" / "done")
    assert config.inboxes[0].create is False and config.inboxes[0].after == "keep"


def test_channel_naming_defaults(tmp_path):
    channel = load_config(write(tmp_path, "channels: {web: {path: out}}")).channels["web"]
    assert channel.filename == "{stem}_{ratio}.{ext}" and channel.web_safe_names is False


def test_path_fields_resolve_once_as_the_schema_builds_them(tmp_path):
    """Every Path field (config or stage options), from the YAML or its default, resolves against the base."""
    @dataclass
    class Options:
        file: Path | None = opt(None)
        files: list[Path] = opt([])
        folder: Path = opt(Path("here"))

    errors: list[str] = []
    options = build(Options, {"file": "a/b.png", "files": ["/abs.png", "~/x"]}, "o", errors, base=tmp_path)
    assert errors == []
    assert options.file == tmp_path / "a" / "b.png" and options.folder == tmp_path / "here"
    assert options.files == [Path("/abs.png"), Path.home() / "x"]
    config = load_config(write(tmp_path, "models: {cache_dir: models}\nmanifests: {folder: ~/m}\n"))
    assert config.models.cache_dir == tmp_path / "models" and config.manifests.folder == Path.home() / "m"
