"""`assetd check` refuses what would fail every job: template fields, unresolvable defaults, colliding names."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config import config_from_dict
from pipeline.errors import ConfigError
from pipeline.health import format_bytes


def check(workspace):
    return CliRunner().invoke(cli, ["check", "--config", str(workspace.config_path)], catch_exceptions=False)


def test_check_refuses_an_unknown_filename_field(workspace):
    text = workspace.config_path.read_text().replace("format: png}", 'format: png, filename: "{sku}_{ratio}.{ext}"}')
    workspace.config_path.write_text(text)
    result = check(workspace)
    assert result.exit_code == 1
    assert ("channels.cutouts.filename: unknown field {sku} (known: stem, folder, ratio, variant, step, rule, channel, "
            "ext, hash8)") in result.output
    assert "Traceback" not in result.output


def test_check_refuses_upscale_with_nothing_to_aim_at(workspace):
    workspace.add_rule("30-big.yaml", "name: big\nmatch: {folder: big}\nsteps: [{upscale: {}}]\n"
                                      "outputs: [{channel: cutouts}]\n")
    result = check(workspace)
    assert result.exit_code == 1
    assert ("30-big.yaml: steps[0].upscale: no long_edge or factor, and none of channels cutouts sets long_edge"
            in result.output)


def test_check_refuses_two_ratios_with_one_name(workspace):
    text = workspace.config_path.read_text().replace("long_edge: 500}", 'long_edge: 500, filename: "{stem}.{ext}"}')
    workspace.config_path.write_text(text)
    result = check(workspace)
    assert result.exit_code == 1
    assert ("10-products.yaml: outputs: upscale 4:5 and upscale 9:16 would both be named 'shot.jpg' in channel "
            "instagram") in result.output


def test_check_refuses_safe_zones_the_subject_cannot_fit_between(workspace):
    text = workspace.config_path.read_text().replace("long_edge: 500}", "long_edge: 500, safe_zone: {'9:16': {top: 0.3, bottom: 0.35}}}")
    workspace.config_path.write_text(text)
    result = check(workspace)
    assert result.exit_code == 1
    assert ("10-products.yaml: steps[2].crops: ratio 9:16: the safe_zone of channel instagram (top 0.3, bottom 0.35) "
            "leaves 0.35 of the height to the subject, which needs 0.6 at fill 0.6") in result.output
    assert "Traceback" not in result.output


def test_check_reports_a_missing_inbox_it_will_not_create(workspace):
    workspace.inbox.rmdir()
    result = check(workspace)
    assert result.exit_code == 1
    assert (f"inboxes[0].path: {workspace.inbox} does not exist and will not be created (create: false); the daemon "
            "waits for it") in result.output
    text = workspace.config_path.read_text().replace("  - path: inbox\n", "  - path: inbox\n    create: true\n")
    workspace.config_path.write_text(text)
    result = check(workspace)
    assert result.exit_code == 0, result.output
    assert f"inboxes[0]: {workspace.inbox} does not exist yet; the daemon creates it at its first start" in result.output
    assert not workspace.inbox.exists()  # check changes nothing


def test_check_warns_of_a_volume_already_below_min_free(workspace):
    """A watermark above what the disk has free: the daemon would pause at once, and check says so beforehand."""
    workspace.config_path.write_text(workspace.config_path.read_text() + "problems: {min_free: 100%}\n")
    result = check(workspace)
    assert result.exit_code == 0, result.output  # a warning: space may be freed before the night
    assert "below problems.min_free 100%" in result.output and "pauses the rules writing there" in result.output


def run_daemon(workspace) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "run", "--config", str(workspace.config_path)],
                          capture_output=True, text=True, timeout=120)


def test_a_min_free_larger_than_its_volume_is_refused_by_check_and_run(workspace):
    """A watermark the volume can never reach (500GB on a 252 GB disk): the daemon would stay paused for good."""
    total = shutil.disk_usage(workspace.root).total
    workspace.config_path.write_text(workspace.config_path.read_text() + f"problems: {{min_free: {total * 2}}}\n")
    result = check(workspace)
    assert result.exit_code == 1, result.output
    line = next(ln for ln in result.output.splitlines() if "problems.min_free" in ln)
    assert "is more than the volume at" in line and format_bytes(total) in line and "paused for good" in line
    started = run_daemon(workspace)
    assert started.returncode == 2 and "problems.min_free" in started.stderr and "paused for good" in started.stderr


def test_a_resume_free_below_min_free_is_refused(workspace, tmp_path):
    """resume_free under min_free would pause and resume every check: refused at load in the same units, by
    check and run against the volume when a percentage meets bytes."""
    with pytest.raises(ConfigError) as same_units:
        config_from_dict({"problems": {"min_free": "3MB", "resume_free": "1MB"}}, tmp_path / "c.yaml")
    assert "problems.resume_free: 1.0 MB is below problems.min_free 3.0 MB" in str(same_units.value)
    with pytest.raises(ConfigError, match="problems.resume_free: 2% is below problems.min_free 3%"):
        config_from_dict({"problems": {"min_free": "3%", "resume_free": "2%"}}, tmp_path / "c.yaml")
    config_from_dict({"problems": {"min_free": "3MB", "resume_free": "3MB"}}, tmp_path / "c.yaml")  # equal: fine
    workspace.config_path.write_text(workspace.config_path.read_text()
                                     + "problems: {min_free: 50%, resume_free: 1MB}\n")
    result = check(workspace)
    assert result.exit_code == 1, result.output
    assert "problems.resume_free: 1.0 MB is below problems.min_free 50% (" in result.output
    started = run_daemon(workspace)
    assert started.returncode == 2 and "problems.resume_free: 1.0 MB" in started.stderr


def test_check_says_what_a_yes_or_no_in_an_edit_step_was_read_as(workspace):
    """YAML reads an unquoted yes/no/on/off as true/false: the message says so, and what to write instead where
    quoting the word would not help (``remove_mask: yes`` wants 'sidecar')."""
    workspace.add_rule("05-clean.yaml", "name: clean\nsteps:\n  - retouch: {remove_mask: yes}\n"
                                        "  - remove_background: {}\n  - place_in_scene: {scene: marble.jpg, shadow: no}\n"
                                        "outputs:\n  - {channel: cutouts, from: retouch}\n")
    result = check(workspace)
    assert result.exit_code == 1, result.output
    assert ("05-clean.yaml: steps[0].retouch.remove_mask: expected 'sidecar' (the mask beside the shot, "
            "NAME.remove.png) or nothing, got True (YAML reads an unquoted on, off, yes or no as true)"
            in result.output)
    assert ("05-clean.yaml: steps[2].place_in_scene.shadow: expected one of 'soft', 'none', got False (YAML reads an "
            "unquoted on, off, yes or no as false)" in result.output)
