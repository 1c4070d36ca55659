"""The review page's subject check tells a change a step made on purpose (tone match, recolor), as its manifest
records it, from an unexpected one: the first in amber with "equal except the recorded tone match", magenta only for
what no recorded step explains; and the contact sheet files full-frame outputs under the step that made them."""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image
from starlette.testclient import TestClient

from pipeline import previews
from pipeline.cli import cli
from pipeline.config import Config, load_config
from pipeline.schema import build
from pipeline.stages.base import Asset, StageContext, stage_class
from pipeline.store import Store
from pipeline.synth import scene_image
from pipeline.web.app import create_app
from webcases import only_job_page

TONE = {"tone_match": {"changes_subject": True, "gains": [1.08, 1.0, 0.9], "max_delta_e": 5}}


def tan_disc(size: tuple[int, int] = (240, 180)) -> tuple[np.ndarray, np.ndarray]:
    """A textured tan disc on white paper (8-bit RGB), and its matte (0..1)."""
    w, h = size
    yy, xx = np.mgrid[:h, :w]
    disc = (xx - w / 2) ** 2 + (yy - h / 2) ** 2 < (min(w, h) * 0.35) ** 2
    rng = np.random.default_rng(3)
    rgb = np.full((h, w, 3), 245, np.float64)
    rgb[disc] = np.array([190, 140, 90]) + rng.normal(0, 6, (int(disc.sum()), 1))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8), disc.astype(np.float32)


def jpeg(rgb: np.ndarray, quality: int = 90) -> np.ndarray:
    """``rgb`` through a JPEG encode and decode, as a lossy channel writes it."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def colours(png: bytes) -> dict[str, np.ndarray]:
    """Where the overlay marks the subject equal, changed on purpose, differing."""
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    hue = {"equal": previews.EQUAL_COLOUR, "purpose": previews.PURPOSE_COLOUR}
    # equal and on-purpose pixels are shaded by the output's lightness (55..100 % of the colour): compare ratios
    marks = {}
    for name, colour in hue.items():
        c = np.array(colour, float)
        scale = img.sum(axis=2, keepdims=True) / c.sum()
        marks[name] = (np.abs(img - c * scale).max(axis=2) < 6) & (scale[..., 0] > 0.5)
    marks["differs"] = (img == previews.DIFFER_COLOUR).all(axis=2)
    return marks


def test_a_bounded_tone_match_is_not_taken_for_equal_and_an_unexpected_change_still_shows():
    rgb, matte = tan_disc()
    toned = previews.Expected(["tone match"], linear_gains=np.array(TONE["tone_match"]["gains"])).target(
        rgb.astype(np.int16))
    out = jpeg(np.where(matte[..., None] > 0, toned, rgb).astype(np.uint8))
    change = np.abs(toned - rgb)[matte > 0].max(axis=1)
    assert 4 <= np.median(change) and change.max() <= previews.TOLERANCE_LOSSY  # visible, yet within the tolerance

    blind = previews.subject_check(rgb, out, 1.0, matte=matte, tolerance=previews.TOLERANCE_LOSSY)
    assert blind.equal > 0.9  # what the page said before: the codec's tolerance swallows the tone match

    expected = previews.expected_change(TONE)
    seen = previews.subject_check(rgb, out, 1.0, matte=matte, tolerance=previews.TOLERANCE_LOSSY,
                                  expected=expected)
    assert seen.purpose == "tone match" and seen.on_purpose > 0.99 and seen.equal < 0.01
    assert re.match(r"(99\.\d\d|100\.00)% of the subject equals the input except the recorded tone match \(",
                    seen.share_line()), seen.share_line()
    marks = colours(seen.png)
    assert marks["purpose"].sum() > 0.9 * seen.subject_pixels
    assert marks["differs"].sum() < 0.01 * seen.subject_pixels  # the codec's worst pixels at most

    cy, cx = out.shape[0] // 2, out.shape[1] // 2
    painted = out.copy()
    painted[cy - 6:cy + 6, cx - 6:cx + 6] = (40, 90, 200)  # a change no step recorded
    seen = previews.subject_check(rgb, painted, 1.0, matte=matte, tolerance=previews.TOLERANCE_LOSSY,
                                  expected=expected)
    marks = colours(seen.png)
    assert marks["differs"][cy - 5:cy + 5, cx - 5:cx + 5].all()
    assert marks["differs"].sum() < 144 + 0.01 * seen.subject_pixels and "% changed as recorded" in seen.share_line()


def recoloured(rgb: np.ndarray, matte: np.ndarray, tmp_path: Path) -> np.ndarray:
    """The disc recoloured green by the real recolor step (a cut-out: its region is the subject's colour)."""
    cls = stage_class("recolor", "lch")
    errors: list[str] = []
    options = build(cls.Options, {"variants": [{"name": "green", "colour": "#1f4d3a"}], "region": "cluster"},
                    "recolor", errors)
    assert not errors
    cutout = np.dstack([rgb, (matte * 255).astype(np.uint8)])
    [green] = cls(options, StageContext(config=Config(source=tmp_path / "config.yaml"))).run(Asset(cutout))
    return green.pixels[..., :3]


def test_a_recolour_is_on_purpose_where_lightness_is_kept_and_a_darkened_patch_is_not(tmp_path):
    rgb, matte = tan_disc()
    green = recoloured(rgb, matte, tmp_path)
    out = np.where(matte[..., None] > 0, green, rgb).astype(np.uint8)
    steps = {"recolor": {"colour": "#1f4d3a", "variant": "green"}}
    assert previews.subject_check(rgb, out, 1.0, matte=matte).equal < 0.2  # it did change the disc

    seen = previews.subject_check(rgb, out, 1.0, matte=matte, expected=previews.expected_change(steps))
    assert seen.purpose == "recolor" and seen.on_purpose > 0.8 and seen.equal + seen.on_purpose > 0.999
    assert not colours(seen.png)["differs"].any()

    cy, cx = out.shape[0] // 2, out.shape[1] // 2
    out[cy - 6:cy + 6, cx - 6:cx + 6] = out[cy - 6:cy + 6, cx - 6:cx + 6] // 3  # darker: not a recolour
    seen = previews.subject_check(rgb, out, 1.0, matte=matte, expected=previews.expected_change(steps))
    assert colours(seen.png)["differs"][cy - 5:cy + 5, cx - 5:cx + 5].all()
    assert previews.expected_change({"recolor": {"variant": "tan", "untouched": True}}) is None  # the original


WARM = """\
name: warm
match: {folder: "products/**"}
steps:
  - remove_background: {}
  - place_in_scene: {scene: scenes/wood.jpg, scale: 0.6}
  - tone_match: {strength: 0.5, max_delta_e: 4}
  - crops: {ratios: ["1:1"]}
outputs:
  - {channel: cutouts, from: remove_background}
  - {channel: webshop, from: crops}
"""


def test_the_page_says_equal_except_the_recorded_tone_match(workspace):
    """A real run: the toned webshop output's check is amber with "except the recorded tone match", the cut-out's
    is plainly equal; the legend gives on-purpose changes their own colour."""
    (workspace.root / "rules" / "10-products.yaml").unlink()
    Image.fromarray(scene_image((900, 600), seed=1, kind="wood")).save(workspace.root / "scenes" / "wood.jpg")
    workspace.add_rule("05-warm.yaml", WARM)
    workspace.shot("inbox/products/bottle.jpg", "grey", seed=3, subject="bottle")
    result = CliRunner().invoke(cli, ["process", str(workspace.inbox), "--config", str(workspace.config_path)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    config = load_config(workspace.config_path)
    store = Store(config.database)
    try:
        [job] = store.jobs()
        rows = {r["channel"]: r for r in store.output_rows(job.id)}
        with TestClient(create_app(config, store)) as client:
            toned = client.get(f"/files/output/{rows['webshop']['id']}/check")
            cutout = client.get(f"/files/output/{rows['cutouts']['id']}/check")
            page = client.get(f"/jobs/{job.id}").text
    finally:
        store.close()
    assert toned.status_code == 200 and cutout.status_code == 200
    assert "except the recorded tone match" in toned.headers["X-Subject-Share"]
    assert float(toned.headers["X-Subject-On-Purpose"]) > 0.9
    marks = colours(toned.content)
    assert marks["purpose"].sum() > 1000 and marks["differs"].sum() < 0.01 * marks["purpose"].sum()
    assert re.fullmatch(r"\d+\.\d\d% of the subject equals the input", cutout.headers["X-Subject-Share"])
    assert float(cutout.headers["X-Subject-Equal"]) > 0.99 and "X-Subject-On-Purpose" not in cutout.headers
    assert '<span id="check-purpose" hidden> <i class="op"></i>' in page  # amber, not the magenta of "differs"


CLEAN = """\
name: clean
steps:
  - retouch: {backdrop_spots: true}
  - remove_background: {}
outputs:
  - {channel: webshop, from: retouch}
  - {channel: cutouts, from: remove_background}
"""


def test_the_contact_sheet_files_full_frames_under_the_step_that_made_them(workspace):
    workspace.add_rule("05-clean.yaml", CLEAN)
    workspace.shot("inbox/mug.jpg", "white", seed=2, subject="mug")
    result = CliRunner().invoke(cli, ["process", str(workspace.inbox), "--config", str(workspace.config_path)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    page = only_job_page(workspace.config_path)
    assert re.findall(r'<div class="ratio-label">([^<]+)</div>', page) == ["retouch", "cut-out"]
    assert re.findall(r"<summary><b>(\w+)</b> ([\w-]+)", page) == [("webshop", "retouch"), ("cutouts", "cut-out")]
