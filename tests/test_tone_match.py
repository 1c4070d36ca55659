"""Step tone_match: the one step that changes the subject on purpose, within its bound and nowhere else.

Measured with the tests' own CIELAB and CIEDE2000 (``fixtures_images``), not the step's."""
from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from browser import ARGS, CHROMIUM, ServedDaemon, needs_browser, screenshot
from fixtures_images import delta_e2000, srgb_to_lab
from pipeline.cli import cli
from pipeline.config import Config
from pipeline.schema import build
from pipeline.stages.base import Asset, StageContext, stage_class
from pipeline.stages.crops import CropsOptions
from pipeline.stages.place_in_scene import CompositePlace, PlaceOptions
from pipeline.stages.tone_match import GlobalToneMatch, ToneOptions
from pipeline.store import JobStatus
from pipeline.synth import scene_image, studio_shot
from webcases import only_job_page

LAB_SLACK = 0.02  # the tests' Lab (primaries → matrix) and the step's (the IEC matrix) differ by about 0.01


def cutout(dtype: type = np.uint8, seed: int = 4) -> np.ndarray:
    """A real-looking cut-out: a synthetic studio product (grey bottle, shaded, noisy) with its true alpha."""
    shot = studio_shot("white", size=(360, 300), seed=seed, subject="bottle")
    alpha = np.rint(shot.alpha * 255).astype(np.uint8)
    rgba = np.dstack([shot.rgb, alpha])
    if dtype == np.uint16:
        rgba = rgba.astype(np.uint16) * 257
        rgba[..., :3] += np.random.default_rng(seed).integers(0, 200, rgba.shape[:2] + (3,), dtype=np.uint16)
    return rgba


def options(cls: type, root: Path, **values: object) -> object:
    errors: list[str] = []
    built = build(cls, values, "step", errors, base=root)
    assert errors == []
    return built


@pytest.fixture
def scenes(tmp_path: Path) -> Path:
    """A warm scene (a wooden table), a cool one (the wood's colours turned blue) and a neutral grey one."""
    wood = scene_image((640, 420), seed=2, kind="wood")
    Image.fromarray(wood).save(tmp_path / "warm.png")
    Image.fromarray(np.ascontiguousarray(wood[..., ::-1])).save(tmp_path / "cool.png")
    grey = np.full((420, 640, 3), 118, np.uint8) + np.random.default_rng(1).integers(0, 20, (420, 640, 1), np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    return tmp_path


def place(root: Path, scene: str, rgba: np.ndarray) -> Asset:
    ctx = StageContext(config=Config(source=root / "config.yaml"))
    return CompositePlace(options(PlaceOptions, root, scene=scene, scale=0.5), ctx).run(Asset(rgba))[0]


def tone(root: Path, asset: Asset, **values: object) -> Asset:
    ctx = StageContext(config=Config(source=root / "config.yaml"))
    out = GlobalToneMatch(options(ToneOptions, root, **values), ctx).run(asset)
    assert len(out) == 1
    return out[0]


def subject_delta_e(before: Asset, after: Asset) -> np.ndarray:
    top = 65535.0 if before.pixels.dtype == np.uint16 else 255.0
    inside = before.matte > 0
    return delta_e2000(srgb_to_lab(before.pixels[inside] / top * 255), srgb_to_lab(after.pixels[inside] / top * 255))


def warmth(asset: Asset) -> float:
    """The opaque subject's mean b* (yellow-blue): higher is warmer."""
    top = 65535.0 if asset.pixels.dtype == np.uint16 else 255.0
    return float(srgb_to_lab(asset.pixels[asset.matte == 255] / top * 255)[:, 2].mean())


def test_registered_after_place_in_scene() -> None:
    assert stage_class("tone_match", None) is GlobalToneMatch


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("bound", [1.0, 3.0, 8.0])
def test_never_exceeds_its_delta_e_bound_and_never_touches_the_scene(scenes: Path, dtype: type,
                                                                     bound: float) -> None:
    placed = place(scenes, "warm.png", cutout(dtype))
    out = tone(scenes, placed, strength=1.0, max_delta_e=bound, max_stops=1.0)
    notes = out.notes["tone_match"]
    de = subject_delta_e(placed, out)
    assert de.max() <= bound + LAB_SLACK
    assert notes["delta_e_max"] <= bound and notes["changes_subject"] is True
    assert de.max() >= 0.7 * bound  # bounded, not shrunk to nothing: the scene asked for more than any bound here
    assert notes["share_applied"] < 1 and len(notes["asked_gains"]) == 3
    outside = placed.matte == 0
    assert np.array_equal(out.pixels[outside], placed.pixels[outside])  # the scene is the input's, bit for bit
    assert np.array_equal(out.matte, placed.matte) and out.pixels.dtype == dtype


def test_strength_zero_is_the_identity(scenes: Path) -> None:
    placed = place(scenes, "warm.png", cutout())
    out = tone(scenes, placed, strength=0.0)
    assert np.array_equal(out.pixels, placed.pixels)
    assert out.notes["tone_match"]["changes_subject"] is False
    assert out.backdrop is placed.backdrop  # crops still composes frames anew on the scene


def test_a_warm_scene_warms_the_subject_and_a_cool_one_cools_it(scenes: Path) -> None:
    rgba = cutout()
    warm_in, cool_in, grey_in = (place(scenes, s, rgba) for s in ("warm.png", "cool.png", "grey.png"))
    warm, cool, grey = (tone(scenes, a, strength=0.5, max_delta_e=6) for a in (warm_in, cool_in, grey_in))
    assert warmth(warm) > warmth(warm_in) + 1.0
    assert warmth(cool) < warmth(cool_in) - 1.0
    r, g, b = warm.notes["tone_match"]["gains"]
    assert r > g > b
    assert abs(warmth(grey) - warmth(grey_in)) < 0.5  # a neutral scene: no colour cast to take


def test_a_subject_that_fills_the_frame_has_no_scene_to_match(scenes: Path) -> None:
    pixels = np.full((60, 80, 3), 120, np.uint8)
    asset = Asset(pixels, matte=np.full((60, 80), 255, np.uint8))
    out = tone(scenes, asset)
    assert np.array_equal(out.pixels, pixels)
    assert out.notes["tone_match"]["changes_subject"] is False
    assert "too little scene" in out.notes["tone_match"]["skipped"]


def test_a_frame_composed_anew_on_the_scene_shows_the_toned_subject(scenes: Path) -> None:
    """crops composes a frame reaching past the composite from place_in_scene's backdrop: the subject there is the
    one tone_match left, not the untoned cut-out."""
    placed = place(scenes, "warm.png", cutout())
    toned = tone(scenes, placed, strength=0.6, max_delta_e=5)
    ctx = StageContext(config=Config(source=scenes / "config.yaml"))
    crops = stage_class("crops", None)(options(CropsOptions, scenes, ratios=["9:16"], subject_fill=0.4), ctx)
    [framed] = crops.run(toned)
    assert framed.notes["crops"]["fill"] == "scene"  # composed anew, past the composite
    solid = Counter(map(tuple, framed.pixels[framed.matte == 255]))
    assert solid == Counter(map(tuple, toned.pixels[toned.matte == 255]))
    assert solid != Counter(map(tuple, placed.pixels[placed.matte == 255]))


def rule(scene: str, before: str = "", after: str = "") -> str:
    return f"""\
name: warm
match: {{folder: "products/**"}}
steps:
  - remove_background: {{}}
{before}  - place_in_scene: {{scene: scenes/{scene}, scale: 0.6}}
  - tone_match: {{strength: 0.5, max_delta_e: 4}}
  - crops: {{ratios: ["1:1", "4:5"]}}
{after}outputs:
  - {{channel: cutouts, from: remove_background}}
  - {{channel: webshop, from: crops, ratios: ["1:1"]}}
  - {{channel: instagram, from: crops, ratios: ["4:5"]}}
"""


def test_check_refuses_it_before_place_in_scene_or_after_crops(workspace) -> None:
    (workspace.root / "rules" / "10-products.yaml").unlink()
    text = rule("marble.jpg").replace("  - tone_match: {strength: 0.5, max_delta_e: 4}\n", "")
    early = text.replace("  - remove_background: {}\n", "  - remove_background: {}\n  - tone_match: {}\n")
    workspace.add_rule("05-warm.yaml", early)
    result = CliRunner().invoke(cli, ["check", "--config", str(workspace.config_path)])
    assert result.exit_code != 0
    assert ("steps[1].tone_match: needs the subject placed on a scene, a colour or a gradient (what is around it is "
            "that scene): put place_in_scene before it") in result.output
    late = text.replace('  - crops: {ratios: ["1:1", "4:5"]}\n', '  - crops: {ratios: ["1:1", "4:5"]}\n'
                                                                  "  - tone_match: {}\n")
    workspace.add_rule("05-warm.yaml", late)
    result = CliRunner().invoke(cli, ["check", "--config", str(workspace.config_path)])
    assert result.exit_code != 0
    assert "steps[3].tone_match: needs the whole image (not yet cropped to ratios), which crops takes away: " \
           "must run in the order tone_match → crops" in result.output
    workspace.add_rule("05-warm.yaml", rule("marble.jpg"))
    result = CliRunner().invoke(cli, ["check", "--config", str(workspace.config_path)])
    assert result.exit_code == 0, result.output


def test_a_real_run_records_it_in_the_manifest_and_the_review_page_says_so(workspace) -> None:
    (workspace.root / "rules" / "10-products.yaml").unlink()
    Image.fromarray(scene_image((900, 600), seed=1, kind="wood")).save(workspace.root / "scenes" / "wood.jpg")
    workspace.add_rule("05-warm.yaml", rule("wood.jpg"))
    workspace.shot("inbox/products/bottle.jpg", "grey", seed=3, subject="bottle")
    result = CliRunner().invoke(cli, ["process", str(workspace.inbox), "--config", str(workspace.config_path)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = json.loads(workspace.manifest("warm", "bottle").read_text())
    by_channel = {Path(o["path"]).parent.name: o["steps"] for o in manifest["outputs"]}
    assert set(by_channel) == {"cutouts", "webshop", "instagram"}
    assert "tone_match" not in by_channel["cutouts"]  # taken before it: the cut-out is the input's
    for channel in ("webshop", "instagram"):
        notes = by_channel[channel]["tone_match"]
        assert notes["changes_subject"] is True and 0 < notes["delta_e_max"] <= 4 and notes["max_delta_e"] == 4
        assert len(notes["gains"]) == 3 and notes["gains"][0] > notes["gains"][2]  # the wood warms it
    page = only_job_page(workspace.config_path)
    flagged = {channel: purpose for purpose, channel in
               re.findall(r'<option value="\d+"(?: data-purpose="([^"]*)")?>(\w+)', page)}
    assert flagged == {"cutouts": "", "webshop": "changed on purpose by tone_match (ΔE ≤ 4)",
                       "instagram": "changed on purpose by tone_match (ΔE ≤ 4)"}
    assert 'id="check-purpose" hidden' in page
    assert "tone_match:</span> gains" in page  # the output's notes say what it did


def test_the_review_page_says_which_outputs_it_changed_in_a_browser(workspace) -> None:
    """The subject check of a toned output differs on purpose, and the legend says so; the cut-out's does not."""
    needs_browser()
    from playwright.sync_api import expect, sync_playwright

    (workspace.root / "rules" / "10-products.yaml").unlink()
    Image.fromarray(scene_image((900, 600), seed=1, kind="wood")).save(workspace.root / "scenes" / "wood.jpg")
    workspace.add_rule("05-warm.yaml", rule("wood.jpg"))
    with ServedDaemon(workspace) as served, sync_playwright() as p:
        workspace.shot("inbox/products/bottle.jpg", "grey", seed=3, subject="bottle")
        deadline = time.monotonic() + 60
        while not any(j.status is JobStatus.DONE for j in served.store.jobs()):
            assert time.monotonic() < deadline, "the shot was not processed within a minute"
            time.sleep(0.1)
        [job] = served.store.jobs()
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{served.url}/jobs/{job.id}")
            page.select_option("#after-choice", label=page.locator("#after-choice option", has_text="webshop")
                               .text_content())
            page.check("#check-toggle")
            expect(page.locator("#check-figure")).to_contain_text("% of the subject equals the input",
                                                                  timeout=30_000)
            expect(page.locator("#check-purpose")).to_be_visible()
            expect(page.locator("#check-legend")).to_contain_text("changed on purpose by tone_match (ΔE ≤ 4)")
            screenshot(page, "review-job-tone-match")
            page.select_option("#after-choice", label=page.locator("#after-choice option", has_text="cutouts")
                               .text_content())
            expect(page.locator("#check-purpose")).to_be_hidden()
        finally:
            browser.close()


def test_each_scene_variant_is_matched_to_its_own_scene(scenes: Path) -> None:
    """place_in_scene with several scenes gives one variant per scene: each is toned toward its own light."""
    ctx = StageContext(config=Config(source=scenes / "config.yaml"))
    placed = CompositePlace(options(PlaceOptions, scenes, scenes=["warm.png", "cool.png"], scale=0.5),
                            ctx).run(Asset(cutout()))
    toned = {a.variant: tone(scenes, a, strength=0.5, max_delta_e=6) for a in placed}
    assert set(toned) == {"warm", "cool"}
    before = {a.variant: a for a in placed}
    assert warmth(toned["warm"]) > warmth(before["warm"]) + 1.0
    assert warmth(toned["cool"]) < warmth(before["cool"]) - 1.0
    assert toned["warm"].notes["tone_match"]["gains"] != toned["cool"].notes["tone_match"]["gains"]
