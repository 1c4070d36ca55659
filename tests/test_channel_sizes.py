"""Channel sizes: every deliverable at its channel's exact pixels (``size``, one or per ratio) or long edge at
least (``min_long_edge``); the upscale step enlarges each ratio only as far as its channels need, the output
fits once (a shrink or a rounding pixel), and what cannot be given is refused when rules load or fails the job,
naming the channel, the ratio and both sizes, with none of its outputs published."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import cli
from pipeline.config import ChannelConfig, load_config
from pipeline.errors import ConfigError
from pipeline.outputs import OutputSizeError, render_for_channel
from pipeline.rules import load_rules
from pipeline.sizes import fit_problem, output_size
from pipeline.stages.base import Asset
from pipeline.stages.subject import aimed_factor
from pipeline.stages.upscale import LanczosUpscale, UpscaleOptions
from pipeline.store import JobStatus, Store
from pipeline.synth import studio_shot

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def decoded_size(path: str) -> tuple[int, int]:
    with Image.open(path) as im:
        im.load()
        return im.size


# --- end to end: the shipped config and rules --------------------------------------------------

def test_the_example_config_and_rules_give_every_channel_its_exact_size(tmp_path):
    """A shot through `assetd process` with config.example.yaml and rules/ as shipped: each deliverable decodes
    at its channel's size, enlarged by the upscale step (its factor in the manifest), print at least 2400 px."""
    studio = tmp_path / "studio"
    studio.mkdir()
    shutil.copy(ROOT / "config.example.yaml", studio / "config.yaml")
    shutil.copytree(ROOT / "rules", studio / "rules")
    shutil.copytree(ROOT / "scenes", studio / "scenes")
    shot = studio / "inbox" / "products" / "bottle.jpg"
    shot.parent.mkdir(parents=True)
    Image.fromarray(studio_shot("white", size=(1600, 1200), seed=1, subject="bottle").rgb).save(shot, quality=92)

    result = invoke("process", shot, "--config", studio / "config.yaml", "--json")
    assert result.exit_code == 0, result.output
    (doc,) = json.loads(result.stdout)["results"]
    assert doc["status"] == "done", doc
    sizes = {(o["channel"], o["ratio"]): decoded_size(o["path"]) for o in doc["outputs"]}
    assert sizes == {
        ("cutouts", None): (1600, 1200),
        ("webshop", "1:1"): (2000, 2000),
        ("instagram", "4:5"): (1080, 1350),
        ("instagram", "9:16"): (1080, 1920),
        ("banners", "16:9"): (1920, 1080),
        ("print", "4:5"): (1920, 2400),
    }
    manifest = json.loads((studio / "state" / "manifests" / "products" / "bottle.assetd.json").read_text())
    for output in manifest["outputs"]:
        if output["channel"] == "cutouts":
            assert "upscale" not in output["steps"] and output["scale"] == 1.0
            continue
        upscale, crop = output["steps"]["upscale"], output["steps"]["crops"]
        assert upscale["from"] == crop["size"] and upscale["factor"] > 1  # these crops were smaller: enlarged
        assert output["scale"] == pytest.approx(output["width"] / crop["size"][0], abs=0.01)
    by_ratio = {o["ratio"]: o["steps"]["upscale"]["to"] for o in manifest["outputs"] if o["ratio"]}
    assert by_ratio["1:1"] == [2000, 2000] and by_ratio["9:16"] == [1080, 1920]  # only as far as needed
    assert by_ratio["4:5"] == [1920, 2400]  # print's floor; instagram's 4:5 is shrunk from it
    assert "failed" not in manifest


# --- refused when the rule loads -------------------------------------------------------------

CHANNELS = """\
  cutouts:   {path: out/cutouts,   format: png}
  webshop:   {path: out/webshop,   format: jpeg, size: 600x600}
  instagram: {path: out/instagram, format: jpeg, size: {"4:5": 400x500, "9:16": 360x640}}
  banners:   {path: out/banners,   format: webp, size: 640x360}
  print:     {path: out/print,     format: png, min_long_edge: 900}
"""


def studio_with(workspace, rule: str, channels: str = CHANNELS) -> Path:
    text = workspace.config_path.read_text()
    start, end = text.index("channels:\n"), text.index("notify:")
    workspace.config_path.write_text(text[:start] + "channels:\n" + channels + text[end:])
    for f in (workspace.root / "rules").iterdir():
        f.unlink()
    workspace.add_rule("shop.yaml", "name: shop\n" + rule)
    return workspace.config_path


def load_problems(workspace, rule: str, channels: str = CHANNELS) -> list[str]:
    config = load_config(studio_with(workspace, rule, channels))
    with pytest.raises(ConfigError) as info:
        load_rules(config)
    return info.value.problems


CROPS = "steps: [{crops: {ratios: ['1:1', '4:5', '9:16', '16:9'], fill: pad}}, upscale]\n"


@pytest.mark.parametrize("rule, expected", [
    ("steps: [{remove_background: {}}]\noutputs: [{channel: webshop}]",
     "outputs[0]: channel webshop has a size, but remove_background's image has no fixed ratio: take it from "
     "crops (or a later step), or give the channel min_long_edge or long_edge instead"),
    (CROPS + "outputs: [{channel: webshop, from: upscale, ratios: ['1:1', '4:5']}]",
     "outputs[0]: channel webshop takes 4:5, but its size 600x600 is not 4:5 (the largest 4:5 in it is 480x600): "
     "give a size per ratio"),
    (CROPS + "outputs: [{channel: instagram, from: upscale, ratios: ['4:5', '16:9']}]",
     "outputs[0]: channel instagram has no size for 16:9 (sizes for 4:5, 9:16): add one, or leave 16:9 out of "
     "this output's ratios"),
    (CROPS + "outputs: [{channel: instagram, from: upscale}]",  # every ratio of crops: 1:1 and 16:9 have none
     "outputs[0]: channel instagram has no size for 1:1"),
    (CROPS + "outputs: [{channel: webshop, from: crops, ratios: ['1:1']}]",
     "outputs[0]: channel webshop needs 600x600 px, but takes crops, which the upscale step does not enlarge: "
     "take it from upscale"),
    ("steps: [upscale, {crops: {ratios: ['1:1'], fill: pad}}]\n"
     "outputs: [{channel: print, from: input}, {channel: cutouts, from: upscale}]",
     "outputs[0]: channel print needs a long edge of at least 900 px (min_long_edge), but takes input, which the "
     "upscale step does not enlarge: take it from upscale"),
    ("steps: [{crops: {ratios: ['4:5'], fill: pad}}, {upscale: {long_edge: 400}}]\n"
     "outputs: [{channel: instagram, from: upscale}]",
     "steps[1].upscale.long_edge: 400 is less than the 500 px long edge channel instagram needs: leave it out"),
])
def test_a_size_the_rule_cannot_give_is_refused_when_it_loads(workspace, rule, expected):
    problems = load_problems(workspace, rule)
    assert any(expected in p for p in problems), problems


def test_an_image_no_upscale_step_gives_is_warned_about_not_refused(workspace):
    """A cut-out (before crops) cannot come from a later upscale step: like a rule without one, `check` warns."""
    rule = (CROPS.replace("steps: [", "steps: [{remove_background: {}}, ") +
            "outputs: [{channel: print, from: remove_background}, {channel: webshop, from: upscale, ratios: ['1:1']}]")
    checked = invoke("check", "--config", studio_with(workspace, rule))
    assert checked.exit_code == 0, checked.output
    assert ("rule shop sends channel print remove_background, which no upscale step enlarges: an image smaller "
            "than channel print needs (a long edge of at least 900 px (min_long_edge)) is not written and fails "
            "its job") in checked.output
    assert "channel webshop" not in checked.output  # taken from upscale: enlarged as far as it needs


@pytest.mark.parametrize("channel, expected", [
    ("size: 1080by1350", "channels.c.size: expected a size like '1080x1350' (width x height in pixels), got "
                         "'1080by1350'"),
    ("size: {'4:5': 1080x1080}", "channels.c.size: '4:5': 1080x1080 is not 4:5 (the largest 4:5 in it is 864x1080)"),
    ("size: {4:5: 1080x1350}", "(YAML reads an unquoted 4:5 as a number: put ratios in quotes)"),
    ("size: 1080x1350, long_edge: 2000", "channels.c.size: set size (exact pixels) or long_edge (a ceiling), not both"),
    ("size: 1080x1350, min_long_edge: 2000", "channels.c.min_long_edge: size already gives the exact pixels"),
    ("min_long_edge: 3000, long_edge: 2000", "channels.c.min_long_edge: 3000 is more than long_edge 2000"),
])
def test_channel_size_keys_are_checked_when_the_config_loads(workspace, channel, expected):
    text = workspace.config_path.read_text().replace("channels:\n", f"channels:\n  c: {{path: out/c, {channel}}}\n")
    workspace.config_path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(workspace.config_path)
    assert any(expected in p for p in info.value.problems), info.value.problems


def test_one_size_serves_every_ratio_of_its_shape_and_check_accepts_the_example_config():
    config = load_config(ROOT / "config.example.yaml")
    assert [r.name for r in load_rules(config)] == ["products", "cutouts"]
    upscale = load_rules(config)[0].step("upscale").options
    assert upscale.long_edge is None and upscale.targets == {"1:1": 2000, "4:5": 2400, "9:16": 1920, "16:9": 1920}


# --- fails the job, publishing nothing, when it comes ---------------------------------------------------

def test_a_channel_below_its_minimum_without_upscale_fails_the_job_and_publishes_none_of_its_outputs(workspace):
    """A job never publishes part of its deliverables: one output too small for its channel fails the job, whose
    error names it, and none of its outputs (nor a manifest) is written. (Until issue 11 the others were written.)"""
    rule = ("steps: [{crops: {ratios: ['1:1', '16:9'], fill: pad}}]\n"
            "outputs: [{channel: print, from: crops, ratios: ['1:1']}, {channel: cutouts, from: crops}]\n")
    config_path = studio_with(workspace, rule)
    checked = invoke("check", "--config", config_path)
    assert checked.exit_code == 0, checked.output  # not knowable before the file comes: a warning
    assert ("rule shop has no upscale step: an image smaller than channel print needs (a long edge of at least "
            "900 px (min_long_edge)) is not written and fails its job") in checked.output
    shot = workspace.shot("batch/small.jpg", "grey", size=(480, 360), seed=2, subject="box")

    result = invoke("process", shot, "--config", config_path, "--json")
    assert result.exit_code == 1, result.output
    (doc,) = json.loads(result.stdout)["results"]
    assert doc["status"] == "failed"
    assert doc["error"].startswith(f"{shot}: channel print 1:1: needs a long edge of at least 900 px "
                                   "(min_long_edge), the image has ")
    assert doc["error"].endswith("(rule shop has no upscale step to enlarge it); none of its 3 outputs were published")
    assert doc["outputs"] == []
    left = [p for c in ("print", "cutouts") if workspace.out(c).exists() for p in workspace.out(c).iterdir()]
    assert left == []  # no output, no temporary file
    assert not workspace.manifest("shop", "small").exists()
    store = Store(load_config(config_path).database)
    try:
        (job,) = store.jobs()
        assert job.status is JobStatus.FAILED and job.error == doc["error"]
        assert store.outputs(job.id) == [] and store.manifests(job.id) == []
        assert [j.id for j in store.jobs(status="failed")] == [job.id]
    finally:
        store.close()


# --- the pieces: the upscale step's aim, and the one fit when an output renders ----------------

def test_the_upscale_step_enlarges_each_ratio_only_as_far_as_its_channels_need():
    options = UpscaleOptions(targets={"4:5": 1350, "9:16": 1920})
    assert aimed_factor(options, 577, 721, "4:5") == pytest.approx(1350 / 721)
    assert aimed_factor(options, 400, 711, "9:16") == pytest.approx(1920 / 711)
    assert aimed_factor(options, 500, 500, "1:1") == 1.0  # no channel needs more of 1:1
    assert aimed_factor(UpscaleOptions(targets={"*": 800, "1:1": 2000}), 500, 500, "1:1") == 4.0
    assert aimed_factor(UpscaleOptions(), 500, 500, "1:1") is None  # nothing to aim at: the backend decides
    stage = LanczosUpscale(options, None)
    crop = Asset(np.zeros((721, 577, 3), np.uint8), ratio="4:5")
    (out,) = stage.run(crop)
    assert (out.width, out.height) == (1080, 1350) and out.notes["upscale"]["factor"] == pytest.approx(1350 / 721)
    square = Asset(np.zeros((500, 500, 3), np.uint8), ratio="1:1")
    (same,) = stage.run(square)
    assert same.pixels is square.pixels and same.notes["upscale"]["factor"] == 1.0


SIZED = ChannelConfig(name="instagram", path=None, format="png", size={"4:5": "1080x1350", "9:16": "1080x1920"})


@pytest.mark.parametrize("size, ratio, expected, problem", [
    ((1080, 1350), "4:5", (1080, 1350), None),  # exact: untouched
    ((2400, 3000), "4:5", (1080, 1350), None),  # larger: shrunk to it
    ((1079, 1350), "4:5", (1080, 1350), None),  # a pixel of rounding
    ((1079, 1919), "9:16", (1080, 1920), None),
    ((1080, 1918), "9:16", None, "needs 1080x1920 px, the image has 1080x1918"),
    ((1000, 1250), "4:5", None, "needs 1080x1350 px, the image has 1000x1250"),  # never enlarged here
    ((1350, 1350), "4:5", None, "needs 1080x1350 px, the image has 1350x1350, another shape"),  # never distorted
])
def test_an_output_is_fitted_to_its_exact_size_once_by_a_shrink_or_rounding(size, ratio, expected, problem):
    w, h = size
    assert fit_problem(w, h, SIZED, ratio) == problem
    asset = Asset(np.full((h, w, 4), 255, np.uint8), ratio=ratio)
    if problem is None:
        assert output_size(w, h, SIZED, ratio) == expected
        assert render_for_channel(asset, SIZED).shape == (expected[1], expected[0], 4)
    else:
        with pytest.raises(OutputSizeError, match=problem):
            render_for_channel(asset, SIZED)


def test_min_long_edge_and_long_edge_together_shrink_and_refuse_but_never_enlarge():
    channel = ChannelConfig(name="print", path=None, format="png", long_edge=4000, min_long_edge=3000)
    assert fit_problem(2400, 3000, channel, "4:5") is None and output_size(2400, 3000, channel, "4:5") == (2400, 3000)
    assert output_size(4800, 6000, channel, "4:5") == (3200, 4000)
    assert fit_problem(2000, 2500, channel, None) == ("needs a long edge of at least 3000 px (min_long_edge), "
                                                      "the image has 2000x2500")
