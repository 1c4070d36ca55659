"""Variants: one input, several images to choose from (a scene each of place_in_scene's ``scenes``, a seed each of
the diffusers backend's ``variations``): real runs through the worker (``assetd process``), every channel getting
one file per variant and ratio named by its ``{variant}``, the subject's pixels the same in all of them."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import cli
from pipeline.config import load_config
from pipeline.oneshot import run_once
from pipeline.store import Store
from pipeline.synth import scene_image
from pipeline.web.app import create_app
from conftest import decode, ratio_of
from tinymodels import netguard, skip_without, tiny_sd_inpaint  # noqa: F401

SCENES_RULE = """\
name: scenes
steps:
  - place_in_scene: {scenes: [scenes/marble.jpg, scenes/linen.jpg], scale: 0.6, anchor: bottom}
  - crops: {ratios: ["1:1", "4:5"]}
outputs:
  - {channel: cutouts, from: crops}
  - {channel: instagram, from: crops, ratios: ["4:5"]}
  - {channel: chooser, from: crops}
"""

ONE_SCENE_RULE = """\
name: one
steps:
  - place_in_scene: {scene: scenes/marble.jpg, scale: 0.6, anchor: bottom}
  - crops: {ratios: ["1:1", "4:5"]}
outputs:
  - {channel: cutouts, from: crops}
  - {channel: chooser, from: crops}
"""

CHOOSER = '  chooser:   {path: out/chooser, format: png, filename: "{stem}-{variant}-{ratio}.{ext}"}\n'


def cutout_png(path: Path, size: tuple[int, int] = (300, 380)) -> np.ndarray:
    """A product already cut out (PNG with transparency): a textured, fully opaque body with hard edges, standing
    on the canvas's bottom third. Returns its RGBA pixels."""
    w, h = size
    rng = np.random.default_rng(11)
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., :3] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    body = ((xx - w / 2) / (0.35 * w)) ** 2 + ((yy - h / 2) / (0.42 * h)) ** 2 <= 1.0
    rgba[..., 3] = np.where(body, 255, 0)
    rgba[~body, :3] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgba, "RGBA").save(path)
    return rgba


def studio(workspace, rule: str, extra_channels: str = CHOOSER, config_extra: str = "") -> None:
    """The workspace with only ``rule``, a second scene (linen, unlike marble everywhere) and ``extra_channels``."""
    text = workspace.config_path.read_text().replace("notify:\n", extra_channels + "notify:\n") + config_extra
    workspace.config_path.write_text(text)
    linen = 255 - scene_image((900, 600), seed=3)  # the same size as marble: the same framing on both
    Image.fromarray(linen).save(workspace.root / "scenes" / "linen.jpg", quality=92)
    for f in (workspace.root / "rules").iterdir():
        f.unlink()
    workspace.add_rule("10-rule.yaml", rule)


def manifest_outputs(workspace, rule: str, stem: str) -> dict[str, dict]:
    doc = json.loads(workspace.manifest(rule, stem).read_text())
    return {Path(o["path"]).name: o for o in doc["outputs"]}


def subject_in(output: dict, rgba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where the cut-out's opaque pixels land in an output of crops (its manifest entry): rows and columns."""
    ys, xs = np.nonzero(rgba[..., 3] == 255)
    placed = output["steps"]["place_in_scene"]["subject_box"]  # x0, y0, x1, y1 in the composite
    frame = output["steps"]["crops"]["box"]  # the crop's frame in the composite
    return ys - ys.min() + placed[1] - frame[1], xs - xs.min() + placed[0] - frame[0]


def test_two_scenes_give_one_file_per_scene_channel_and_ratio_named_by_variant(workspace):
    studio(workspace, SCENES_RULE)
    rgba = cutout_png(workspace.root / "inbox" / "bag.png")
    config, rules = workspace.load()
    (result,) = run_once(config, rules, [workspace.root / "inbox" / "bag.png"])
    assert result["status"] == "done", result

    # without {variant} in the template: _{variant} before the extension; with it, where the template says
    assert sorted(p.name for p in workspace.out("cutouts").iterdir()) == [
        "bag_1x1_linen.png", "bag_1x1_marble.png", "bag_4x5_linen.png", "bag_4x5_marble.png"]
    assert sorted(p.name for p in workspace.out("instagram").iterdir()) == ["bag_4x5_linen.jpg", "bag_4x5_marble.jpg"]
    assert sorted(p.name for p in workspace.out("chooser").iterdir()) == [
        "bag-linen-1x1.png", "bag-linen-4x5.png", "bag-marble-1x1.png", "bag-marble-4x5.png"]
    for channel, long_edge in (("cutouts", None), ("instagram", 500), ("chooser", None)):
        for path in workspace.out(channel).iterdir():
            pixels = decode(path)
            assert abs(ratio_of(path) - (1.0 if "1x1" in path.name else 0.8)) < 0.01, path.name
            assert long_edge is None or max(pixels.shape[:2]) <= long_edge

    # each output's record, the manifest and process --json say which variant it is
    by_name = {Path(o["path"]).name: o for o in result["outputs"]}
    assert {n: o["variant"] for n, o in by_name.items() if o["channel"] == "cutouts"} == {
        "bag_1x1_linen.png": "linen", "bag_1x1_marble.png": "marble", "bag_4x5_linen.png": "linen",
        "bag_4x5_marble.png": "marble"}
    outputs = manifest_outputs(workspace, "scenes", "bag")
    assert {n: o["variant"] for n, o in outputs.items()} == {
        n: ("linen" if "linen" in n else "marble") for n in outputs}
    assert outputs["bag_4x5_linen.png"]["steps"]["place_in_scene"]["scene"] == "scenes/linen.jpg"
    store = Store(config.database)
    try:
        (job,) = store.jobs()
        assert sorted({r.variant for r in store.outputs(job.id)}) == ["linen", "marble"]
    finally:
        store.close()

    # the subject is the cut-out's pixels, exactly, on both scenes; the scenes around it differ
    for ratio in ("1x1", "4x5"):
        marble, linen = (decode(workspace.out("cutouts") / f"bag_{ratio}_{v}.png") for v in ("marble", "linen"))
        ys, xs = subject_in(outputs[f"bag_{ratio}_marble.png"], rgba)
        assert all(map(np.array_equal, (ys, xs), subject_in(outputs[f"bag_{ratio}_linen.png"], rgba)))
        subject = rgba[rgba[..., 3] == 255][:, :3]
        assert np.array_equal(marble[ys, xs, :3], subject) and np.array_equal(linen[ys, xs, :3], subject)
        background = np.ones(marble.shape[:2], bool)
        background[ys, xs] = False
        assert np.mean(np.any(marble[background] != linen[background], axis=-1)) > 0.95


def test_a_renamed_copy_gets_its_twins_variants_under_its_own_names(workspace):
    studio(workspace, SCENES_RULE.replace("  - {channel: instagram, from: crops, ratios: [\"4:5\"]}\n", ""))
    cutout_png(workspace.root / "inbox" / "bag.png")
    (workspace.root / "inbox" / "SKU-1.png").write_bytes((workspace.root / "inbox" / "bag.png").read_bytes())
    config, rules = workspace.load()
    results = run_once(config, rules, [workspace.root / "inbox" / "bag.png", workspace.root / "inbox" / "SKU-1.png"])
    assert [r["status"] for r in results] == ["done", "done"], results
    names = sorted(p.name for p in workspace.out("cutouts").iterdir())
    assert names == sorted(f"{stem}_{r}_{v}.png" for stem in ("bag", "SKU-1") for r in ("1x1", "4x5")
                           for v in ("linen", "marble"))
    assert json.loads(workspace.manifest("scenes", "SKU-1").read_text())["copied_from"]  # not run again
    copied = manifest_outputs(workspace, "scenes", "SKU-1")
    assert all(o["variant"] in n for n, o in copied.items())
    for name in names[:4]:  # the copy's files are the twin's bytes
        assert (workspace.out("cutouts") / name).read_bytes() == (workspace.out("cutouts") /
                                                                  name.replace("SKU-1", "bag")).read_bytes()


def test_the_job_page_captions_each_output_with_its_variant(workspace):
    from starlette.testclient import TestClient

    studio(workspace, SCENES_RULE)
    cutout_png(workspace.root / "inbox" / "bag.png")
    config, rules = workspace.load()
    assert run_once(config, rules, [workspace.root / "inbox" / "bag.png"])[0]["status"] == "done"
    store = Store(config.database)
    try:
        (job,) = store.jobs()
        with TestClient(create_app(load_config(workspace.config_path), store)) as client:
            page = client.get(f"/jobs/{job.id}").text
        for record in store.outputs(job.id):
            figure = re.search(rf'<figure class="out" data-output="{record.id}"[^>]*>(.*?)</figure>', page, re.S)
            caption = re.search(r"<figcaption>(.*?)</figcaption>", figure.group(1), re.S).group(1)
            assert f'<span class="variant" title="variant">{record.variant}</span>' in caption, caption
            assert f"{record.channel} {record.ratio} {record.variant} · " in page  # the compare menu's entry
    finally:
        store.close()


def test_a_rule_without_variants_names_its_files_as_before(workspace):
    studio(workspace, ONE_SCENE_RULE)
    cutout_png(workspace.root / "inbox" / "bag.png")
    config, rules = workspace.load()
    (result,) = run_once(config, rules, [workspace.root / "inbox" / "bag.png"])
    assert result["status"] == "done", result
    assert sorted(p.name for p in workspace.out("cutouts").iterdir()) == ["bag_1x1.png", "bag_4x5.png"]
    # an empty {variant} vanishes with one separator beside it, as an empty {ratio} does
    assert sorted(p.name for p in workspace.out("chooser").iterdir()) == ["bag-1x1.png", "bag-4x5.png"]
    assert all("variant" not in o for o in result["outputs"])
    assert {o["variant"] for o in manifest_outputs(workspace, "one", "bag").values()} == {None}


@pytest.mark.parametrize("template, web_safe, ratio, variant, name", [
    ("{stem}_{ratio}.{ext}", False, "4:5", "linen", "bag_4x5_linen.png"),
    ("{stem}_{ratio}.{ext}", False, None, "linen", "bag_linen.png"),  # a cut-out: no ratio, still a variant
    ("{stem}.{ext}", False, None, "green-linen", "bag_green-linen.png"),  # two steps' variants joined
    ("{variant}_{stem}.{ext}", False, "4:5", "v2", "v2_bag.png"),
    ("{stem}_{ratio}_{variant}.{ext}", False, "1:1", None, "bag_1x1.png"),  # the only one: {variant} vanishes
    ("{stem}_{ratio}.{ext}", True, "4:5", "Linen Café", "bag_4x5_linen-cafe.png"),
])
def test_variant_names(template, web_safe, ratio, variant, name):
    from pipeline.config import ChannelConfig
    from pipeline.outputs import output_name

    channel = ChannelConfig(name="c", path=Path("/out/c"), format="png", filename=template, web_safe_names=web_safe)
    assert output_name(channel, stem="bag", rel_path="bag.png", ratio=ratio, step="crops", rule="r", hash8="0123abcd",
                       variant=variant) == name


def test_check_says_how_variants_are_named_where_the_template_has_no_variant(workspace):
    studio(workspace, SCENES_RULE)
    result = CliRunner().invoke(cli, ["check", "--config", str(workspace.config_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "{variant}" in line]
    assert len(lines) == 2, result.output  # cutouts and instagram; chooser has {variant} in its template
    assert any("channel cutouts" in line and "2 variants" in line and "(marble, linen)" in line
               and line.endswith("shot_1x1_marble.png") for line in lines), lines
    assert any("channel instagram" in line and line.endswith("shot_4x5_marble.jpg") for line in lines), lines


def test_two_scenes_with_one_name_are_refused(workspace):
    studio(workspace, SCENES_RULE.replace("scenes/linen.jpg", "scenes/more/marble.jpg"))
    (workspace.root / "scenes" / "more").mkdir()
    (workspace.root / "scenes" / "more" / "marble.jpg").write_bytes((workspace.root / "scenes" / "marble.jpg")
                                                                    .read_bytes())
    result = CliRunner().invoke(cli, ["check", "--config", str(workspace.config_path)], catch_exceptions=False)
    assert result.exit_code == 1
    assert "place_in_scene.scenes[1]: marble.jpg gives the same variant name (marble) as scenes[0]" in result.output


DIFFUSERS_RULE = """\
name: generated
steps:
  - place_in_scene: {backend: diffusers, prompt: "on the sand", seed: 7, steps: 2, variations: 2, scale: 0.6}
outputs:
  - {channel: cutouts, from: place_in_scene}
"""


@pytest.mark.usefixtures("netguard")
def test_generated_variations_are_variants_and_the_same_seed_gives_the_same_pixels(workspace):
    skip_without("torch", "diffusers", "transformers")
    studio(workspace, DIFFUSERS_RULE, extra_channels="",
           config_extra=f"device: cpu\nmodels: {{diffusers: {tiny_sd_inpaint()}}}\n")
    rgba = cutout_png(workspace.root / "inbox" / "a.png", size=(80, 96))
    # the same pixels in another file (other bytes, so a job of its own that runs the chain, not a copy)
    Image.fromarray(rgba, "RGBA").save(workspace.root / "inbox" / "b.png", compress_level=1)
    assert (workspace.root / "inbox" / "a.png").read_bytes() != (workspace.root / "inbox" / "b.png").read_bytes()
    config, rules = workspace.load()
    results = run_once(config, rules, [workspace.root / "inbox" / "a.png", workspace.root / "inbox" / "b.png"])
    assert [r["status"] for r in results] == ["done", "done"], results
    assert sorted(p.name for p in workspace.out("cutouts").iterdir()) == ["a_v1.png", "a_v2.png", "b_v1.png",
                                                                          "b_v2.png"]
    outputs = manifest_outputs(workspace, "generated", "a")
    assert [(o["variant"], o["steps"]["place_in_scene"]["seed"]) for _, o in sorted(outputs.items())] == [
        ("v1", 7), ("v2", 8)]
    first, second = (decode(workspace.out("cutouts") / f"a_{v}.png") for v in ("v1", "v2"))
    assert np.array_equal(decode(workspace.out("cutouts") / "b_v1.png"), first)  # same seed, same pixels
    assert np.array_equal(decode(workspace.out("cutouts") / "b_v2.png"), second)
    assert not np.array_equal(first, second)  # another seed, another scene
    ys, xs = np.nonzero(rgba[..., 3] == 255)
    x0, y0 = outputs["a_v1.png"]["steps"]["place_in_scene"]["subject_box"][:2]
    for out in (first, second):  # the subject exactly, on both
        assert np.array_equal(out[ys - ys.min() + y0, xs - xs.min() + x0, :3], rgba[ys, xs, :3])


@pytest.mark.parametrize("light", ["front", "left"])
def test_a_wide_contact_shadow_is_the_full_size_blur_within_two_levels(monkeypatch, light):
    """The shadow under a wide product is blurred at a reduced scale (a 24 MP one took 18 s at full size): on
    white paper it darkens every pixel as the full-size blur does, within two levels, the frame's edge included."""
    from pipeline.stages import place_in_scene

    def shadow() -> np.ndarray:
        canvas = np.full((700, 1700, 3), 255, np.uint8)  # with the light from the left, it reaches past the right
        place_in_scene.contact_shadow(canvas, 300, 1500, 600, 0.35, light)  # edge
        return canvas.astype(int)

    reduced = shadow()
    monkeypatch.setattr(place_in_scene, "SOFT_SIGMA", 1e9)  # never reduced: the blur at full size
    full = shadow()
    assert full.min() < 255 - 60
    assert np.abs(reduced - full).max() <= 2


def tan_cutout(path: Path, size: tuple[int, int] = (300, 380)) -> np.ndarray:
    """A tan leather bag already cut out (PNG with transparency): one colour with a little grain."""
    rgba = cutout_png(path, size)
    body = rgba[..., 3] == 255
    grain = np.random.default_rng(2).normal(0, 4, body.shape + (1,))
    rgba[..., :3] = np.where(body[..., None], np.clip(np.array([176, 128, 80]) + grain, 0, 255), 0).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(path)
    return rgba


COLOURWAYS_ON_SCENES = """\
name: ways
steps:
  - recolor: {variants: [{name: green, colour: "#1f4d3a"}, {name: burgundy, colour: "#5a1a24"}]}
  - place_in_scene: {scenes: ["scenes/Morning Kitchen.jpg", scenes/marble.jpg], scale: 0.6}
outputs:
  - {channel: cutouts, from: place_in_scene}
"""


def test_scene_variants_are_slugs_and_an_enlarged_scene_is_said_once_per_job(workspace, caplog):
    """A scene file's name becomes a slug in the file names ("Morning Kitchen.jpg": morning-kitchen); a scene
    enlarged for every colourway is one warning per job and scene in the log, and stays in each output's
    manifest."""
    studio(workspace, COLOURWAYS_ON_SCENES, extra_channels="")
    small = scene_image((160, 120), seed=4)  # far smaller than the outputs: enlarged for each colourway
    Image.fromarray(small).save(workspace.root / "scenes" / "Morning Kitchen.jpg", quality=92)
    tan_cutout(workspace.root / "inbox" / "bag.png")
    tan_cutout(workspace.root / "inbox" / "tote.png", (310, 380))  # another job, on the same worker
    config, rules = workspace.load()
    caplog.set_level("WARNING", logger="assetd.stage")

    results = run_once(config, rules, [workspace.root / "inbox" / "bag.png", workspace.root / "inbox" / "tote.png"])

    assert [r["status"] for r in results] == ["done", "done"], results
    assert sorted(p.name for p in workspace.out("cutouts").iterdir() if p.name.startswith("bag")) == [
        "bag_burgundy-marble.png", "bag_burgundy-morning-kitchen.png", "bag_green-marble.png",
        "bag_green-morning-kitchen.png"]
    outputs = manifest_outputs(workspace, "ways", "bag")
    kitchen = [o for n, o in outputs.items() if "kitchen" in n]
    assert len(kitchen) == 2 and all(o["steps"]["place_in_scene"]["scene_enlarged"] > 1.25 for o in kitchen)
    said = [r.getMessage() for r in caplog.records if "Morning Kitchen.jpg enlarged" in r.getMessage()]
    assert len(said) == 2 and "bag.png" in said[0] and "tote.png" in said[1], said


def test_scene_files_named_alike_as_slugs_are_refused(workspace):
    studio(workspace, SCENES_RULE.replace("scenes/linen.jpg", '"scenes/Marble .jpg"'))
    (workspace.root / "scenes" / "Marble .jpg").write_bytes((workspace.root / "scenes" / "marble.jpg").read_bytes())
    result = CliRunner().invoke(cli, ["check", "--config", str(workspace.config_path)], catch_exceptions=False)
    assert result.exit_code == 1
    assert "place_in_scene.scenes[1]: Marble .jpg gives the same variant name (marble) as scenes[0]" in result.output


def test_colourways_and_scenes_whose_combinations_give_one_name_are_refused(workspace):
    """The trial's rule: green and green-morning on Morning Kitchen.jpg and Kitchen.jpg are both
    green-morning-kitchen; both combinations are named and the rule is refused (not a hash-suffixed second file)."""
    rule = SCENES_RULE.replace(
        "  - place_in_scene: {scenes: [scenes/marble.jpg, scenes/linen.jpg]",
        "  - recolor: {variants: [{name: green, colour: '#1f4d3a'}, {name: green-morning, colour: '#2f5d4a'}]}\n"
        "  - place_in_scene: {scenes: ['scenes/Morning Kitchen.jpg', scenes/Kitchen.jpg]")
    studio(workspace, rule)
    for name in ("Morning Kitchen.jpg", "Kitchen.jpg"):
        (workspace.root / "scenes" / name).write_bytes((workspace.root / "scenes" / "marble.jpg").read_bytes())
    result = CliRunner().invoke(cli, ["check", "--config", str(workspace.config_path)], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    assert ("steps: recolor green × place_in_scene 'Morning Kitchen.jpg' and recolor green-morning × "
            "place_in_scene Kitchen.jpg both make the variant green-morning-kitchen" in result.output), result.output
    workspace.add_rule("10-rule.yaml", rule.replace("name: green-morning,", "name: green-dawn,"))
    result = CliRunner().invoke(cli, ["check", "--config", str(workspace.config_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
