"""The retouch step removes dust on the backdrop and what a retoucher painted, and changes no other pixel."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import cli
from pipeline.errors import ConfigError
from pipeline.schema import build
from pipeline.stages.base import Asset, StageContext, stage_class
from pipeline.stages.masks import MaskError
from pipeline.stages.retouch import ClassicalRetouch, LamaRetouch, find_spots, subject_zone
from pipeline.synth import studio_shot
from tinymodels import make_config, netguard, skip_without, tiny_esrgan_x4  # noqa: F401
from webcases import only_job_page

MIN_CONTRAST = 12.0
MAX_SPOT = 32


def stage(tmp_path: Path, backend: str = "classical", **options: object):
    cls = stage_class("retouch", backend)
    errors: list[str] = []
    opts = build(cls.Options, options, "retouch", errors, base=tmp_path)
    assert errors == []
    return cls(opts, StageContext(config=make_config(tmp_path)))


def plant_dust(rgb: np.ndarray, allowed: np.ndarray, n: int,
               seed: int) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
    """``rgb`` with ``n`` soft-edged specks (radius 1.5-6 px, 25-70 levels darker or, a fifth of them, 25-40
    brighter where the paper leaves room: all well above the threshold) where ``allowed``; and where they are
    (x, y, radius)."""
    rng = np.random.default_rng(seed)
    h, w = rgb.shape[:2]
    out = rgb.astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    spots: list[tuple[int, int, float]] = []
    while len(spots) < n:
        x, y = int(rng.integers(8, w - 8)), int(rng.integers(8, h - 8))
        r = float(rng.uniform(1.5, 6.0))
        if not allowed[y, x] or any(np.hypot(x - a, y - b) < 3 * (r + c) for a, b, c in spots):
            continue
        bright = rng.random() < 0.2 and int(rgb[y, x].max()) <= 255 - 40  # white paper leaves no room above it
        level = -float(rng.uniform(25, 40)) if bright else float(rng.uniform(25, 70))
        out -= level * np.clip(r + 1 - np.hypot(yy - y, xx - x), 0, 1)[..., None]
        spots.append((x, y, r))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), spots


def near(spots: list[tuple[int, int, float]], shape: tuple[int, int], extra: float) -> np.ndarray:
    """Pixels within each spot's radius plus ``extra``."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    out = np.zeros(shape, bool)
    for x, y, r in spots:
        out |= np.hypot(yy - y, xx - x) <= r + extra
    return out


@pytest.fixture(scope="module")
def dusty():
    """A grey-paper studio shot with 25 specks planted on the backdrop well clear of the subject."""
    shot = studio_shot("grey", size=(640, 480), seed=3, subject="bottle")
    subject = (shot.alpha * 255).astype(np.uint8)
    allowed = ~subject_zone(subject, 60) & (shot.shadow < 0.02)
    rgb, spots = plant_dust(shot.rgb, allowed, 25, seed=5)
    return shot, rgb, spots


def test_planted_dust_is_gone_and_nothing_else_changed(tmp_path, dusty):
    shot, rgb, spots = dusty
    out = stage(tmp_path, backdrop_spots=True).run(Asset(rgb))[0]

    note = out.notes["retouch"]
    # specks close together may count as one
    assert len(spots) - 3 <= note["backdrop_spots"]["spots"] <= len(spots)
    assert note["backdrop_spots"]["subject"] == "estimated"
    # no spot above the threshold is left, by the same measure that found them
    backdrop = ~subject_zone((shot.alpha * 255).astype(np.uint8), 16)
    left = find_spots(out.pixels, backdrop, max_spot=MAX_SPOT, min_contrast=MIN_CONTRAST)
    assert left.count == 0, np.argwhere(left.mask)[:5]
    # each speck is back to the paper the shot had there (within its grain)
    for x, y, r in spots:
        assert np.abs(out.pixels[y, x].astype(int) - shot.rgb[y, x].astype(int)).max() < MIN_CONTRAST
    # the subject's pixels are the input's, and so is everything away from the specks
    changed = (out.pixels != rgb).any(axis=2)
    assert not (changed & (shot.alpha > 0)).any()
    assert not (changed & ~near(spots, rgb.shape[:2], 4)).any()
    assert out.pixels.dtype == np.uint8 and out.matte is None


def test_a_speck_next_to_the_subject_is_left_alone(tmp_path, dusty):
    shot, rgb, _ = dusty
    subject = shot.alpha > 0.5
    ring = subject_zone((shot.alpha * 255).astype(np.uint8), 6) & ~subject_zone((shot.alpha * 255).astype(np.uint8), 3)
    close, spots = plant_dust(rgb, ring & (shot.shadow < 0.02), 3, seed=9)
    out = stage(tmp_path, backdrop_spots=True, subject_margin=16).run(Asset(close))[0]
    assert np.array_equal(out.pixels[near(spots, subject.shape, 1)], close[near(spots, subject.shape, 1)])


@pytest.mark.parametrize("paper, subject, size", [
    ("grey", "box", (480, 360)),
    # the tail of the contact shadow was taken for a spot and cut off on these
    ("white", "shoe", (1200, 800)), ("grey", "mug", (1200, 800)), ("white", "box", (1200, 800)),
])
def test_clean_paper_is_bit_identical(tmp_path, paper, subject, size):
    shot = studio_shot(paper, size=size, seed=2 if size[0] > 480 else 1, subject=subject)
    out = stage(tmp_path, backdrop_spots=True).run(Asset(shot.rgb))[0]
    assert out.notes["retouch"]["removed_pixels"] == 0
    assert np.array_equal(out.pixels, shot.rgb)


def jaw(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An A-clamp's jaw over the sweep's top edge, as a camera sees it: a dark, soft-edged body with a narrower tip
    below it, a highlight and a rivet on its metal; and where it is."""
    h, w = rgb.shape[:2]
    s = min(w, h) / 400
    x0 = int(0.7 * w)
    body = np.zeros((h, w), np.uint8)
    cv2.rectangle(body, (x0, 0), (x0 + int(30 * s), int(22 * s)), 255, -1)
    cv2.rectangle(body, (x0 + int(11 * s), int(22 * s)), (x0 + int(18 * s), int(34 * s)), 255, -1)  # the tip
    m = cv2.GaussianBlur(body, (0, 0), 0.8 * s).astype(np.float32)[..., None] / 255
    metal = np.linspace(55, 95, w, dtype=np.float32)[None, :, None] * np.array([1, 0.98, 0.95], np.float32)
    marks = np.zeros((h, w), np.float32)
    cv2.line(marks, (x0 + int(5 * s), int(4 * s)), (x0 + int(5 * s), int(12 * s)), 120.0, max(1, int(1.5 * s)))
    cv2.circle(marks, (x0 + int(22 * s), int(10 * s)), max(1, int(2 * s)), -70.0, -1)
    out = rgb.astype(np.float32) * (1 - m) + (metal + marks[..., None]) * m
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), m[..., 0] > 0.01


def test_a_clamp_entering_the_frame_is_no_spot_and_is_named(tmp_path, caplog):
    """backdrop_spots leaves the whole clamp as it is (its tip, its rivet: no smear), still removes the dust, and
    says what it left and why."""
    shot = studio_shot("white", size=(1200, 800), seed=2, subject="shoe")  # at 1200×800 the tip and the rivet
    subject = (shot.alpha * 255).astype(np.uint8)  # were taken for spots and smeared
    rgb, clamp = jaw(shot.rgb)
    allowed = ~subject_zone(subject, 60) & (shot.shadow < 0.02) & ~subject_zone(clamp.astype(np.uint8) * 255, 40)
    rgb, spots = plant_dust(rgb, allowed, 6, seed=4)
    caplog.set_level("INFO", logger="assetd.stage")

    out = stage(tmp_path, backdrop_spots=True).run(Asset(rgb, source="shot.png"))[0]

    near_clamp = subject_zone(clamp.astype(np.uint8) * 255, 12)
    assert np.array_equal(out.pixels[near_clamp], rgb[near_clamp])
    for x, y, _r in spots:
        assert np.abs(out.pixels[y, x].astype(int) - shot.rgb[y, x].astype(int)).max() < MIN_CONTRAST
    skipped = out.notes["retouch"]["backdrop_spots"]["too_large"]
    assert skipped["why"] == "too large for a spot (use remove_mask: sidecar)" and skipped["marks"] == 1
    x0, y0, x1, y1 = skipped["boxes"][0]
    ys, xs = np.nonzero(clamp)
    assert xs.min() - 2 <= x0 and x1 <= xs.max() + 3 and y1 <= ys.max() + 3  # within the clamp
    assert "shot.png: a mark on the backdrop left as it is, too large for a spot (use remove_mask: sidecar)" in (
        caplog.text)


def write_shot(folder: Path, rgb: np.ndarray, name: str = "shot.png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(folder / name)
    return folder / name


def paint(path: Path, kind: str, boxes: list[tuple[int, int, int, int]], size: tuple[int, int]) -> np.ndarray:
    """``NAME.<kind>.png`` beside ``path`` painting ``boxes`` (x0, y0, x1, y1) white on black; the mask."""
    mask = np.zeros((size[1], size[0]), np.uint8)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = 255
    Image.fromarray(mask).save(path.with_name(f"{path.stem}.{kind}.png"))
    return mask > 0


def with_clamp(rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A dark clamp biting into the right edge of the sweep, and its box."""
    h, w = rgb.shape[:2]
    out = rgb.copy()
    box = (w - 50, h // 4, w, h // 4 + 40)
    out[box[1]:box[3], box[0]:box[2]] = (52, 54, 58)
    return out, box


@pytest.mark.parametrize("method, margin", [("telea", 4), ("ns", 4), ("telea", 0)])
def test_the_painted_clamp_is_removed_and_only_it(tmp_path, method, margin):
    """Painted with a margin or exactly (the subject finder's soft outline of the clamp then pokes out of the
    paint): the clamp is a thing removed, no subject touched."""
    shot = studio_shot("white", size=(480, 360), seed=2, subject="mug")
    rgb, (x0, y0, x1, y1) = with_clamp(shot.rgb)
    path = write_shot(tmp_path / "inbox", rgb)
    painted = paint(path, "remove", [(x0 - margin, y0 - margin, x1, y1 + margin)], (480, 360))

    out = stage(tmp_path, remove_mask="sidecar", method=method).run(Asset(rgb, source=str(path)))[0]

    assert np.array_equal(out.pixels[~painted], rgb[~painted])
    paper = shot.rgb[painted].astype(np.float32).mean(axis=0)
    assert np.abs(out.pixels[painted].astype(np.float32).mean(axis=0) - paper).max() < 6  # no dark clamp left
    assert out.notes["retouch"]["remove_mask"] == {"file": "shot.remove.png", "pixels": int(painted.sum())}
    assert "subject_pixels" not in out.notes["retouch"] and out.review == []


def sweep(w: int, h: int) -> np.ndarray:
    """Grey paper darkening toward the top (150 to 240 levels), with a little grain."""
    g = 150 + 90 * np.mgrid[0:h, 0:w][0].astype(np.float32) / h
    grain = np.random.default_rng(0).normal(0, 1.5, (h, w, 3))
    return np.clip(np.rint(np.dstack([g, 0.98 * g, 0.96 * g]) + grain), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("method", ["telea", "ns"])
@pytest.mark.parametrize("where", ["inside", "at the top edge"])
def test_a_filled_area_is_as_light_as_the_paper_around_it(tmp_path, method, where):
    """On a gradient the fill's mean is the paper's there (Telea came out 1.5-3 levels lighter): within one level
    of the paper the shot had under the hole, and of the band around it when the band surrounds it."""
    rgb = sweep(640, 480)
    path = write_shot(tmp_path / "inbox", rgb)
    box = (300, 150, 380, 220) if where == "inside" else (300, 0, 380, 70)
    hole = paint(path, "remove", [box], (640, 480))

    out = stage(tmp_path, remove_mask="sidecar", method=method).run(Asset(rgb, source=str(path)))[0].pixels

    filled = out[hole].astype(np.float32).mean(axis=0)
    assert np.abs(filled - rgb[hole].astype(np.float32).mean(axis=0)).max() <= 1.0
    if where == "inside":
        ring = subject_zone(hole.astype(np.uint8) * 255, 8) & ~hole
        assert np.abs(filled - out[ring].astype(np.float32).mean(axis=0)).max() <= 1.0


def test_the_subject_changes_only_where_the_mask_paints_it(tmp_path):
    shot = studio_shot("white", size=(480, 360), seed=2, subject="mug")
    path = write_shot(tmp_path / "inbox", shot.rgb)
    ys, xs = np.nonzero(shot.alpha > 0.99)
    cx, cy = int(xs.mean()), int(ys.mean())
    painted = paint(path, "remove", [(cx - 10, cy - 10, cx + 10, cy + 10)], (480, 360))  # a logo on the mug

    out = stage(tmp_path, remove_mask="sidecar", backdrop_spots=True).run(Asset(shot.rgb, source=str(path)))[0]

    changed = (out.pixels != shot.rgb).any(axis=2)
    assert changed[painted].any() and not changed[~painted].any()
    covered = int((painted & (shot.alpha * 255 > 25)).sum())
    assert out.notes["retouch"]["subject_pixels"] == covered
    assert out.review == [f"retouch: the painted removal covers {covered:,} px of the subject; a fill there is a "
                          "guess: look at it, or use backend: lama"]


def test_a_removal_across_the_subjects_outline_counts_the_subject_it_covered(tmp_path):
    """The trial's ear: a disc painted half over the subject. The figure is the subject the paint covered in the
    shot, whatever the fill made of it (it was counted on the filled image: 6,155 px after Telea, 6,521 after NS,
    5,946 under the paint), and the job is marked for review."""
    shot = studio_shot("white", size=(480, 360), seed=2, subject="mug")
    path = write_shot(tmp_path / "inbox", shot.rgb)
    ys, xs = np.nonzero(shot.alpha > 0.99)
    x, y = int(xs.max()), int(ys.mean())  # on the mug's right outline
    yy, xx = np.mgrid[0:360, 0:480]
    disc = np.hypot(yy - y, xx - x) <= 30
    Image.fromarray(np.where(disc, 255, 0).astype(np.uint8)).save(path.with_name("shot.remove.png"))

    outs = [stage(tmp_path, remove_mask="sidecar", method=method).run(Asset(shot.rgb, source=str(path)))[0]
            for method in ("telea", "ns")]

    figures = {out.notes["retouch"]["subject_pixels"] for out in outs}
    assert len(figures) == 1, figures  # the fill does not change what the paint covered
    covered = int((disc & (shot.alpha * 255 > 25)).sum())
    assert abs(figures.pop() - covered) <= 0.2 * covered  # the subject is estimated: its outline is soft
    for out in outs:
        assert out.review == [f"retouch: the painted removal covers {out.notes['retouch']['subject_pixels']:,} px "
                              "of the subject; a fill there is a guess: look at it, or use backend: lama"]


def mask_image(paint: np.ndarray, form: str) -> Image.Image:
    """``paint`` (H×W bool) saved as a retoucher's tools save a mask: ``form`` names the mode and where the paint is."""
    white = np.where(paint, 255, 0).astype(np.uint8)
    full = np.full(paint.shape, 255, np.uint8)
    if form == "L":
        return Image.fromarray(white)
    if form == "1":
        return Image.fromarray(white).convert("1")
    if form == "I;16":
        return Image.fromarray(white.astype(np.uint16) * 257)
    if form == "RGBA opaque":  # Image.open("x.remove.png").convert("RGBA").save(...): alpha 255 everywhere
        return Image.fromarray(np.dstack([white, white, white, full]))
    if form == "RGBA layer":  # white paint on a transparent layer, the colour white everywhere
        return Image.fromarray(np.dstack([full, full, full, white]))
    if form == "LA opaque":
        return Image.fromarray(np.dstack([white, full]), "LA")
    if form == "LA layer":
        return Image.fromarray(np.dstack([np.zeros_like(white), white]), "LA")  # black paint on transparency
    if form == "P":
        return Image.fromarray(white).convert("P")
    if form == "P transparent":  # red paint, the rest the palette's transparent entry
        im = Image.fromarray(np.where(paint, 1, 0).astype(np.uint8), "P")
        im.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
        im.info["transparency"] = 0
        return im
    raise ValueError(form)


@pytest.mark.parametrize("form", ["L", "1", "I;16", "RGBA opaque", "RGBA layer", "LA opaque", "LA layer", "P",
                                  "P transparent"])
def test_a_mask_paints_the_same_pixels_whatever_mode_it_is_saved_in(tmp_path, form):
    """Alpha is the paint when it carries any; opaque (or fully transparent) alpha says nothing, and the paint is
    in the colour. The trial's opaque RGBA mask was read as "remove the whole frame"."""
    from pipeline.stages.masks import read_sidecar

    shot = studio_shot("white", size=(480, 360), seed=2, subject="mug")
    rgb, (x0, y0, x1, y1) = with_clamp(shot.rgb)
    path = write_shot(tmp_path / "inbox", rgb)
    painted = np.zeros((360, 480), bool)
    painted[y0 - 4:y1 + 4, x0 - 4:x1] = True
    mask_image(painted, form).save(path.with_name("shot.remove.png"))

    assert np.array_equal(read_sidecar(path, "remove", (480, 360)) >= 128, painted)
    out = stage(tmp_path, remove_mask="sidecar").run(Asset(rgb, source=str(path)))[0]
    changed = (out.pixels != rgb).any(axis=2)
    assert not changed[~painted].any() and changed[painted].mean() > 0.9
    assert out.notes["retouch"]["removed_pixels"] == int(painted.sum()) and out.review == []


@pytest.mark.parametrize("form, share", [("L", 100), ("RGBA opaque", 100), ("inverted", 98)])
def test_a_mask_marking_nearly_the_whole_frame_is_refused(tmp_path, form, share):
    """A white layer saved over the paint, or an inverted mask, is refused naming the file: filling the whole frame
    from nothing changed nothing, while the manifest said it removed 6,000,000 px."""
    shot = studio_shot("white", size=(480, 360), seed=2, subject="mug")
    path = write_shot(tmp_path / "inbox", shot.rgb)
    everything = np.ones((360, 480), bool)
    if form == "inverted":
        everything[100:120, 200:250] = everything[300:320, 10:60] = False
        form = "L"
    mask_image(everything, form).save(path.with_name("shot.remove.png"))
    with pytest.raises(MaskError, match=rf"shot\.remove\.png: the remove mask marks {share}% of the frame: paint only "
                                        r"what to remove \(white\) on black or transparent"):
        stage(tmp_path, remove_mask="sidecar").run(Asset(shot.rgb, source=str(path)))


def test_the_protect_mask_wins_over_the_remove_mask(tmp_path):
    shot = studio_shot("white", size=(480, 360), seed=2, subject="mug")
    rgb, (x0, y0, x1, y1) = with_clamp(shot.rgb)
    path = write_shot(tmp_path / "inbox", rgb)
    painted = paint(path, "remove", [(x0, y0, x1, y1)], (480, 360))
    protected = paint(path, "protect", [(x0, y0, x1, (y0 + y1) // 2)], (480, 360))

    out = stage(tmp_path, remove_mask="sidecar").run(Asset(rgb, source=str(path)))[0]

    changed = (out.pixels != rgb).any(axis=2)
    assert not changed[protected].any() and changed[painted & ~protected].any()
    assert out.notes["retouch"]["protected"]["pixels"] == int(protected.sum())


def test_a_shot_without_a_mask_is_kept_and_a_mask_of_another_size_fails(tmp_path):
    shot = studio_shot("white", size=(480, 360), seed=2, subject="mug")
    path = write_shot(tmp_path / "inbox", shot.rgb)
    out = stage(tmp_path, remove_mask="sidecar").run(Asset(shot.rgb, source=str(path)))[0]
    assert np.array_equal(out.pixels, shot.rgb) and out.notes["retouch"]["remove_mask"] == "none beside the shot"

    paint(path, "remove", [(0, 0, 10, 10)], (240, 180))
    with pytest.raises(Exception, match=r"shot\.remove\.png: the remove mask is 240×180, the shot 480×360"):
        stage(tmp_path, remove_mask="sidecar").run(Asset(shot.rgb, source=str(path)))


def test_a_symlinked_mask_is_refused_naming_it(tmp_path):
    """A symbolic link is never followed, for masks as for inputs (it is not part of the job's identity either): the
    job fails saying so instead of using a mask whose changes would go unnoticed."""
    shot = studio_shot("white", size=(480, 360), seed=2, subject="mug")
    path = write_shot(tmp_path / "inbox", shot.rgb)
    elsewhere = tmp_path / "masks" / "shot.remove.png"
    elsewhere.parent.mkdir()
    mask_image(np.zeros((360, 480), bool), "L").save(elsewhere)
    path.with_name("shot.remove.png").symlink_to(elsewhere)
    with pytest.raises(MaskError, match=r"shot\.remove\.png: the remove mask is a symbolic link, which assetd never "
                                        "follows; put the mask file itself beside the shot"):
        stage(tmp_path, remove_mask="sidecar").run(Asset(shot.rgb, source=str(path)))


def test_sixteen_bit_stays_sixteen_bit(tmp_path, dusty):
    shot, rgb, spots = dusty
    rgb, (x0, y0, x1, y1) = with_clamp(rgb)
    rgb16 = rgb.astype(np.uint16) * 257
    path = write_shot(tmp_path / "inbox", rgb)
    painted = paint(path, "remove", [(x0 - 4, y0 - 4, x1, y1 + 4)], (640, 480))

    out = stage(tmp_path, remove_mask="sidecar", backdrop_spots=True).run(Asset(rgb16, source=str(path)))[0]

    assert out.pixels.dtype == np.uint16
    kept = ~painted & ~near(spots, painted.shape, 4)
    assert np.array_equal(out.pixels[kept], rgb16[kept])
    assert out.pixels[painted].mean() > shot.rgb[painted].mean() * 257 - 6 * 257  # no dark clamp left
    for x, y, _r in spots:
        assert np.abs(out.pixels[y, x].astype(int) - shot.rgb[y, x].astype(int) * 257).max() < MIN_CONTRAST * 257


def test_rules_place_it_before_crops_and_need_something_to_remove(workspace):
    workspace.write_config()
    ok = ("name: clean\nsteps:\n  - retouch: {backdrop_spots: true, remove_mask: sidecar}\n"
          "  - remove_background: {}\n  - crops: {ratios: ['1:1']}\noutputs:\n  - {channel: cutouts, from: retouch}\n")
    workspace.add_rule("10-clean.yaml", ok)
    workspace.load()
    workspace.add_rule("10-clean.yaml", ok.replace("{backdrop_spots: true, remove_mask: sidecar}", "{}"))
    with pytest.raises(ConfigError, match="nothing to remove"):
        workspace.load()
    late = ("name: clean\nsteps:\n  - crops: {ratios: ['1:1']}\n  - retouch: {backdrop_spots: true}\n"
            "outputs:\n  - {channel: cutouts, from: retouch}\n")
    workspace.add_rule("10-clean.yaml", late)
    with pytest.raises(ConfigError, match="retouch"):
        workspace.load()


def test_process_finds_the_painted_mask_beside_the_shot_and_the_review_page_says_so(workspace):
    """End to end: the inbox takes the shot, not its mask; the output lacks the clamp and the painted part of the
    mug's logo, keeps every other pixel, and the review page says the subject was changed on purpose."""
    workspace.write_config()
    workspace.add_rule("05-clean.yaml", "name: clean\nsteps:\n  - retouch: {remove_mask: sidecar}\n"
                                        "outputs:\n  - {channel: cutouts, from: retouch}\n")
    shot = studio_shot("white", size=(480, 360), seed=2, subject="mug")
    rgb, (x0, y0, x1, y1) = with_clamp(shot.rgb)
    path = write_shot(workspace.inbox, rgb)
    ys, xs = np.nonzero(shot.alpha > 0.99)
    cx, cy = int(xs.mean()), int(ys.mean())
    painted = paint(path, "remove", [(x0 - 4, y0 - 4, x1, y1 + 4), (cx - 6, cy - 6, cx + 6, cy + 6)], (480, 360))

    result = CliRunner().invoke(cli, ["process", str(workspace.inbox), "--config", str(workspace.config_path),
                                      "--json"], catch_exceptions=False)

    assert result.exit_code == 0, result.output
    (doc,) = json.loads(result.stdout)["results"]
    assert doc["input"].endswith("shot.png") and doc["status"] == "done", doc
    (png,) = workspace.out("cutouts").rglob("*.png")
    out = np.asarray(Image.open(png).convert("RGB"))
    assert np.array_equal(out[~painted], rgb[~painted]) and out[y0:y1, x0:x1].mean() > 200
    page = only_job_page(workspace.config_path)
    assert 'data-purpose="changed on purpose by retouch (144 px removed as painted in shot.remove.png)"' in page


# ------------------------------------------------------------------------------------------- LaMa


def build_lama(out: Path) -> Path:
    """A random LaMa that spandrel detects. spandrel's LaMa has big-lama's fixed size (51 M parameters): it
    cannot be made tiny, so it is saved in float16 (102 MB) and built once per module (~1 s)."""
    skip_without("torch", "spandrel", "safetensors")
    from pipeline.torchcompat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import torch
    from safetensors.torch import save_file
    from spandrel.architectures.LaMa import LaMa

    torch.manual_seed(0)
    net = LaMa(in_nc=4, out_nc=3)
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in net.state_dict().items()},
              str(out))
    return out


@pytest.fixture(scope="module")
def random_lama(tmp_path_factory) -> Path:
    return build_lama(tmp_path_factory.mktemp("lama") / "big-lama.safetensors")


@pytest.mark.parametrize("work_size", [1024, 64])  # 64: the window is filled smaller and enlarged back
def test_lama_fills_only_the_painted_pixels(tmp_path, random_lama, netguard, work_size):
    shot = studio_shot("white", size=(128, 96), seed=2, subject="mug")
    path = write_shot(tmp_path / "inbox", shot.rgb)
    painted = paint(path, "remove", [(100, 20, 128, 44)], (128, 96))
    retouch = stage(tmp_path, "lama", remove_mask="sidecar", model=str(random_lama), work_size=work_size)
    assert isinstance(retouch, LamaRetouch)

    out = retouch.run(Asset(shot.rgb, source=str(path)))[0]

    assert np.array_equal(out.pixels[~painted], shot.rgb[~painted])
    assert out.notes["retouch"]["architecture"] == "LaMa"
    assert netguard.attempts == []


def test_lama_refuses_weights_that_are_not_an_inpainting_model(tmp_path):
    weights = tiny_esrgan_x4()
    retouch = stage(tmp_path, "lama", remove_mask="sidecar", model=str(weights))
    with pytest.raises(ConfigError, match="not an inpainting model"):
        retouch.prepare()


def test_lama_needs_its_model_named(tmp_path):
    errors = LamaRetouch.validate(build(LamaRetouch.Options, {"remove_mask": "sidecar"}, "r", []), "r",
                                  make_config(tmp_path))
    assert errors == ["r.model: required: a LaMa .pth/.safetensors file (big-lama)"]
    assert ClassicalRetouch.validate(build(ClassicalRetouch.Options, {}, "r", []), "r", None) == [
        "r: nothing to remove: set backdrop_spots: true, remove_mask: sidecar, or both"]
