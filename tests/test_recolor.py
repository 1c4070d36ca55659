"""Stage recolor (backend lch): colourways of one shot. Only the leather's hue and chroma move: its lightness per
pixel, the stitching, the hardware, the highlights and everything outside the subject stay the shot's."""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFilter

from fixtures_images import delta_e2000, srgb_to_lab
from pipeline.config import Config
from pipeline.errors import ConfigError, PermanentError
from pipeline.schema import build
from pipeline.stages.base import Asset, StageContext, stage_class
from pipeline.stages.recolor import EDGE, LchRecolor, RecolorOptions

SHARED = Path("/work/shared/data/u2net-dev")
TAN = (150, 110, 75)
COLOURWAYS = [{"name": "green", "colour": "#1f4d3a"}, {"name": "burgundy", "colour": "#5a1a24"}]


def bag(dtype: type = np.uint8) -> dict[str, np.ndarray]:
    """A tan leather bag as a cut-out: shaded, grainy leather; a cream stitching line; a chrome buckle; a
    specular glint; transparency around it. Returns the RGBA and the masks of each part (bool)."""
    h, w = 240, 320
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    shade = 0.65 + 0.45 * (1 - ((xx - 110) ** 2 + (yy - 80) ** 2) / 300 ** 2)  # light from the top left
    grain = rng.normal(1.0, 0.04, (h, w)).astype(np.float32)
    rgb = np.clip(np.array(TAN, np.float32) * (shade * grain)[..., None], 0, 255)
    body = np.zeros((h, w), np.uint8)
    cv2.rectangle(body, (30, 30), (290, 215), 255, -1)
    stitch = np.zeros((h, w), np.uint8)
    cv2.rectangle(stitch, (42, 42), (278, 203), 255, 2)
    buckle = np.zeros((h, w), np.uint8)
    cv2.rectangle(buckle, (140, 100), (180, 140), 255, -1)
    glint = np.zeros((h, w), np.uint8)
    cv2.circle(glint, (230, 70), 6, 255, -1)
    rgb[stitch > 0] = (232, 226, 210)  # cream thread
    metal = np.linspace(90, 235, 40, dtype=np.float32)[None, :, None]  # chrome: grey, strong gradient
    rgb[100:141, 140:181] = np.broadcast_to(np.concatenate([metal, metal[:, :1]], axis=1), (41, 41, 3))
    rgb[glint > 0] = (252, 250, 246)
    alpha = cv2.GaussianBlur(body, (0, 0), 1.0)  # an anti-aliased outline
    rgba = np.dstack([np.rint(rgb).astype(np.uint8), alpha])
    rgba[alpha == 0, :3] = 0
    if dtype == np.uint16:
        rgba = rgba.astype(np.uint16) * 257 + rng.integers(0, 200, rgba.shape, dtype=np.uint16)
        rgba[..., 3] = alpha.astype(np.uint16) * 257
    leather = (body > 0) & (stitch == 0) & (buckle == 0) & (glint == 0)
    leather = cv2.erode(leather.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0  # sure leather, off the seams
    return {"rgba": rgba, "leather": leather, "stitch": stitch > 0, "buckle": buckle > 0, "glint": glint > 0,
            "outside": alpha == 0}


def make_stage(**options: object) -> LchRecolor:
    errors: list[str] = []
    opts = build(RecolorOptions, options, "recolor", errors)
    assert errors == []
    assert LchRecolor.validate(opts, "recolor", Config()) == []
    return LchRecolor(opts, StageContext(config=Config()))


def problems(**options: object) -> list[str]:
    errors: list[str] = []
    opts = build(RecolorOptions, options, "recolor", errors)
    return errors + LchRecolor.validate(opts, "recolor", Config())


def lab8(pixels: np.ndarray) -> np.ndarray:
    rgb = pixels[..., :3]
    return srgb_to_lab(rgb / 257.0 if rgb.dtype == np.uint16 else rgb)


def hue_distance(out: np.ndarray, where: np.ndarray, colour: str) -> float:
    """ΔE2000 between the mean colour of ``where`` and ``colour`` at that mean's own lightness: the hue and chroma
    of the region against the target's (the lightness is the shot's on purpose)."""
    mean = lab8(out)[where].mean(axis=0)
    target = srgb_to_lab(np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)], np.float64))
    return float(delta_e2000(mean, np.array([mean[0], target[1], target[2]])))


def test_registered_and_in_the_manual_order() -> None:
    assert stage_class("recolor", None) is LchRecolor


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_two_colourways_move_only_the_leather_and_keep_its_lightness(dtype: type) -> None:
    shot = bag(dtype)
    rgba = shot["rgba"]
    outs = make_stage(variants=COLOURWAYS).run(Asset(rgba.copy()))
    assert [o.variant for o in outs] == ["green", "burgundy"]
    before = lab8(rgba)
    for out, way in zip(outs, COLOURWAYS):
        px = out.pixels
        assert px.dtype == rgba.dtype and px.shape == rgba.shape
        assert np.abs(lab8(px)[..., 0] - before[..., 0])[~shot["outside"]].max() <= 0.5  # L* per pixel
        assert hue_distance(px, shot["leather"], way["colour"]) <= 3.0
        for part in ("stitch", "buckle", "glint", "outside"):  # bit-identical
            assert np.array_equal(px[shot[part]], rgba[shot[part]]), part
        assert np.array_equal(px[..., 3], rgba[..., 3])
        notes = out.notes["recolor"]
        assert notes["variant"] == way["name"] and notes["colour"] == way["colour"] and notes["delta_e"] <= 3.0
        assert notes["region"] == "cluster" and 0.5 < notes["share"] <= 1.0
        # both swatches are much darker than the tan (L* 29 and 20 against 51): kept lightness is worth a look
        assert len(out.review) == 1 and out.review[0].startswith(f"recolor {way['name']}: the swatch {way['colour']} "
                                                                 "is L* "), out.review


def test_the_edge_between_leather_and_thread_blends() -> None:
    """A ramp from tan leather to cream thread: the leather end moves in full, the thread end not at all, the
    pixels between part of the way, in order (no hard seam in the colourway)."""
    rgba = bag()["rgba"]
    ramp = np.linspace(0.0, 1.0, 60, dtype=np.float32)[None, :, None]
    row = np.array(TAN, np.float32) * (1 - ramp) + np.array((232, 226, 210), np.float32) * ramp
    rgba[170:180, 60:120, :3] = np.rint(np.broadcast_to(row, (10, 60, 3))).astype(np.uint8)
    (out,) = make_stage(variants=COLOURWAYS[:1]).run(Asset(rgba.copy()))
    moved = np.hypot(*np.moveaxis(lab8(out.pixels)[175, 60:120, 1:] - lab8(rgba)[175, 60:120, 1:], -1, 0))
    assert moved[0] > 20 and moved[-1] == 0
    partly = (moved > 1) & (moved < 0.9 * moved[0])
    assert partly.sum() >= 3
    assert np.all(np.diff(moved) <= 1.0)  # falls off along the ramp, never jumps back up


def test_a_deeper_shade_turns_with_the_material_brass_does_not() -> None:
    """Real fur and leather have deeper patches: darker and about twice as colourful, of nearly the same hue (the
    ginger in tan fur). They are the material and turn with it: no blotch of the old colour. Brass beside the leather
    is more colourful too, but lighter and yellower: another material, kept bit for bit; the leather in a brighter
    light is lighter and more colourful in proportion, and turns."""
    shot = bag()
    rgba = shot["rgba"]
    rng = np.random.default_rng(5)
    ginger = np.zeros(rgba.shape[:2], bool)
    ginger[150:190, 60:120] = True  # a deep patch, its grain the leather's
    rgba[ginger, :3] = np.clip(rng.normal(1.0, 0.04, (int(ginger.sum()), 1)) * (130, 72, 25), 0, 255).astype(np.uint8)
    sunlit = np.zeros(rgba.shape[:2], bool)
    sunlit[150:190, 200:260] = True  # in a brighter light: lighter and more colourful in proportion
    rgba[sunlit, :3] = np.clip(rng.normal(1.0, 0.04, (int(sunlit.sum()), 1)) * (184, 135, 92), 0, 255).astype(np.uint8)
    brass = np.zeros(rgba.shape[:2], bool)
    brass[60:80, 200:260] = True
    rgba[brass, :3] = (190, 150, 45)
    (out,) = make_stage(variants=COLOURWAYS[:1]).run(Asset(rgba.copy()))
    assert np.array_equal(out.pixels[brass], rgba[brass])
    green = hue_of(lab8(np.array([[[0x1f, 0x4d, 0x3a]]]))[0, 0])
    for patch in (ginger, sunlit):
        inner = cv2.erode(patch.astype(np.uint8), np.ones((2 * EDGE + 1,) * 2, np.uint8)) > 0
        before, after = lab8(rgba)[inner], lab8(out.pixels)[inner]
        assert (hue_apart(hue_of(after), green) < hue_apart(hue_of(before), green) - 60).all()  # every pixel turned
        assert np.abs(after[:, 0] - before[:, 0]).max() <= 0.5


def test_pale_shades_fade_instead_of_a_hard_edge() -> None:
    """A ramp from the leather to a pale shade of it (its hue, chroma falling to a grey): the turn fades with the
    chroma, never jumps, and the grey end is kept bit for bit (pale fur left peach beside green fur is a hard
    edge)."""
    rgba = bag()["rgba"]
    lab = srgb_to_lab(np.array(TAN, np.float64))
    ramp = np.linspace(1.0, 0.0, 80)  # the chroma's share
    row = np.array([[lab[0], lab[1] * k, lab[2] * k] for k in ramp])
    from pipeline.stages.recolor import lab_to_linear, srgb_encode
    rgb = np.rint(srgb_encode(lab_to_linear(row)) * 255).astype(np.uint8)
    rgba[160:170, 60:140, :3] = rgb[None]
    (out,) = make_stage(variants=COLOURWAYS[:1]).run(Asset(rgba.copy()))
    moved = np.hypot(*np.moveaxis(lab8(out.pixels)[165, 60:140, 1:] - lab8(rgba)[165, 60:140, 1:], -1, 0))
    chroma = np.hypot(*np.moveaxis(lab8(rgba)[165, 60:140, 1:], -1, 0))
    assert moved[0] > 20 and moved[-1] == 0
    pale = (chroma > 4) & (chroma < 8)  # below min_chroma (8): moved, the less the paler
    assert pale.sum() >= 5 and (moved[pale] > 0.5).all()
    assert np.all(np.abs(np.diff(moved)) <= 2.5)  # no step between neighbours


def soft_disc(tan: tuple[int, int, int] = TAN, size: int = 200,
              paper: tuple[int, int, int] = (255, 255, 255)) -> tuple[np.ndarray, np.ndarray]:
    """A tan disc with grainy shading on paper (white unless told), its outline anti-aliased over about 4 px: mixed
    with the paper in linear light as a lens and a sensor mix them. Returns the RGB and the disc's coverage."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    coverage = np.clip(0.5 - (np.hypot(xx - size / 2, yy - size / 2) - 0.3 * size) / 4.0, 0.0, 1.0)
    grain = np.random.default_rng(3).normal(1.0, 0.03, (size, size)) * (1.05 - 0.1 * yy / size)
    leather = np.clip(np.array(tan, np.float64)[None, None] * grain[..., None], 0, 255) / 255
    linear = lambda v: np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)  # noqa: E731
    mixed = coverage[..., None] * linear(leather) + (1 - coverage[..., None]) * linear(np.array(paper) / 255)
    encoded = np.where(mixed <= 0.0031308, mixed * 12.92, 1.055 * mixed ** (1 / 2.4) - 0.055)
    return np.rint(encoded * 255).astype(np.uint8), coverage


def hue_of(lab: np.ndarray) -> np.ndarray:
    return np.degrees(np.arctan2(lab[..., 2], lab[..., 1])) % 360


def hue_apart(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs((a - b + 180) % 360 - 180)


@pytest.mark.parametrize("cut_out, paper", [(True, (255, 255, 255)), (False, (255, 255, 255)), (False, (70, 110, 180))],
                         ids=["cut-out", "shot-on-white", "shot-on-blue"])
def test_no_rim_of_the_old_colour_along_a_soft_outline(cut_out: bool, paper: tuple[int, int, int]) -> None:
    """The outline's pixels are tan mixed with the paper: they become green mixed with the paper, not a tan halo
    (the cut-out's edge as it came from the shot, or the shot itself with the subject found on the paper); on blue
    paper the blue part of them stays blue (turned with the tan, it would be a pink line)."""
    rgb, coverage = soft_disc(paper=paper)
    pixels = np.dstack([rgb, np.rint(coverage * 255).astype(np.uint8)]) if cut_out else rgb
    (out,) = make_stage(variants=COLOURWAYS[:1]).run(Asset(pixels.copy()))
    before, after = lab8(pixels), lab8(out.pixels)
    tan, green = hue_of(srgb_to_lab(np.array(TAN, np.float64))), hue_of(lab8(np.array([[[0x1f, 0x4d, 0x3a]]]))[0, 0])
    edge = (coverage > 0) & (coverage < 1)
    coloured = edge & (np.hypot(after[..., 1], after[..., 2]) > 2.0)
    assert coloured.sum() > 0.5 * edge.sum()  # most of the edge is colour, not paper
    hues = hue_of(after)
    old_rim = coloured & (hue_apart(hues, tan) <= hue_apart(hues, green))
    assert old_rim.sum() == 0, f"{old_rim.sum()} of {coloured.sum()} edge pixels still read as the tan"
    assert np.abs(after[..., 0] - before[..., 0]).max() <= 0.5  # L* per pixel, the edge's too
    paper = coverage == 0
    if not cut_out:  # the paper a few pixels off the disc was never the region's
        paper = cv2.erode(paper.astype(np.uint8), np.ones((2 * EDGE + 1,) * 2, np.uint8)) > 0
    assert np.array_equal(out.pixels[paper], pixels[paper])
    # the leather inside moved in full, as before
    assert hue_distance(out.pixels, coverage == 1, "#1f4d3a") <= 3.0


def test_the_rim_along_protected_hardware_turns_with_the_leather(tmp_path: Path) -> None:
    """A chrome plate painted in NAME.protect.png: the plate stays bit for bit; the leather's pixels mixed with it
    along its anti-aliased edge (just outside the paint) turn green with the leather, no tan line around it."""
    rgb, coverage = soft_disc()
    plate = np.zeros(coverage.shape, np.float32)
    cv2.rectangle(plate, (80, 85), (120, 115), 1.0, -1)
    plate = cv2.GaussianBlur(plate, (0, 0), 1.2)  # its edge mixes over 3-4 px
    chrome = np.array((228, 228, 230), np.float64)  # polished: brighter than any leather
    rgb = np.rint(rgb * (1 - plate[..., None]) + chrome * plate[..., None]).astype(np.uint8)
    protect = (plate > 0.95).astype(np.uint8) * 255  # the retoucher paints the plate, not its soft edge
    Image.fromarray(rgb).save(tmp_path / "bag.png")
    Image.fromarray(protect).save(tmp_path / "bag.protect.png")
    pixels = np.dstack([rgb, np.rint(coverage * 255).astype(np.uint8)])
    (out,) = make_stage(variants=COLOURWAYS[:1]).run(Asset(pixels.copy(), source=str(tmp_path / "bag.png")))
    assert np.array_equal(out.pixels[protect > 0], pixels[protect > 0])
    after = lab8(out.pixels)
    tan, green = hue_of(srgb_to_lab(np.array(TAN, np.float64))), hue_of(lab8(np.array([[[0x1f, 0x4d, 0x3a]]]))[0, 0])
    rim = (protect == 0) & (plate > 0.05) & (np.hypot(after[..., 1], after[..., 2]) > 2.0)
    hues = hue_of(after)
    assert rim.sum() > 50 and (hue_apart(hues, tan) <= hue_apart(hues, green))[rim].sum() == 0


def oklab_hue_of(rgb8: np.ndarray) -> float:
    from pipeline.lab import oklab_hue, srgb_decode
    return float(oklab_hue(srgb_decode(np.asarray(rgb8, np.float64) / 255.0)))


def test_a_dark_swatch_keeps_its_hue_and_asks_for_review() -> None:
    """Navy #1f2a44 (L* 17) on light tan leather (L* about 65): the lightness stays the leather's, so it is a
    lighter blue, but a blue: the swatch's hue as seen (Oklab), not CIELAB's angle, which at L* 65 is lavender. The
    job is marked for review, and the manifest says by how much it misses the swatch."""
    rgb, coverage = soft_disc(tan=(196, 150, 108))
    navy = "#1f2a44"
    (out,) = make_stage(variants=[{"name": "navy", "colour": navy}]).run(Asset(rgb.copy()))
    sure = coverage == 1
    mean_rgb = out.pixels[sure].astype(np.float64).mean(axis=0)
    swatch = np.array([0x1f, 0x2a, 0x44], np.float64)
    assert hue_apart(oklab_hue_of(mean_rgb), oklab_hue_of(swatch)) <= 2.0
    notes = out.notes["recolor"]
    assert notes["swatch_lightness"] == pytest.approx(17.3, abs=0.2)
    assert notes["region_lightness"] == pytest.approx(lab8(rgb)[sure][:, 0].mean(), abs=1.0)
    assert notes["delta_e_swatch"] > 15 and notes["delta_e"] <= 3.0
    (reason,) = out.review
    assert re.match(rf"recolor navy: the swatch {navy} is L\* 17, the region L\* 6\d; lightness is kept, so it reads "
                    r"lighter than the swatch \(ΔE2000 \d+\); a darker base shot may be needed", reason), reason
    # a swatch of about the leather's lightness needs no look
    (near,) = make_stage(variants=[{"name": "sage", "colour": "#8fa58a"}]).run(Asset(rgb.copy()))
    assert near.review == [] and near.notes["recolor"]["delta_e_swatch"] < 5


def test_hue_shift_and_chroma_scale_without_names_edit_the_one_image() -> None:
    shot = bag()
    rgba = shot["rgba"]
    (turned,) = make_stage(hue_shift=120.0).run(Asset(rgba.copy()))
    assert turned.variant is None
    before, after = lab8(rgba)[shot["leather"]].mean(axis=0), lab8(turned.pixels)[shot["leather"]].mean(axis=0)
    turn = np.degrees(np.arctan2(after[2], after[1]) - np.arctan2(before[2], before[1])) % 360
    assert abs(turn - 120) < 2
    assert np.hypot(*after[1:]) == pytest.approx(np.hypot(*before[1:]), rel=0.05)
    (grey,) = make_stage(chroma_scale=0.0).run(Asset(rgba.copy()))
    assert np.hypot(*lab8(grey.pixels)[shot["leather"]].mean(axis=0)[1:]) < 1.5
    assert np.array_equal(grey.pixels[shot["stitch"]], rgba[shot["stitch"]])


def test_a_colourway_named_in_words_gets_its_slug_in_file_names() -> None:
    """A name as the studio writes it ("Coral Red", "Bleu Nuit") is accepted; its outputs' {variant} is the slug,
    as a scene's file name gives one."""
    outs = make_stage(variants=[{"name": "Coral Red", "colour": "#e0533d"}], original="Tan (as shot)").run(
        Asset(bag()["rgba"]))
    assert [o.variant for o in outs] == ["tan-as-shot", "coral-red"]
    assert outs[1].notes["recolor"]["variant"] == "coral-red"
    opts = build(RecolorOptions, {"variants": [{"name": "Bleu Nuit", "colour": "#1f2a44"}]}, "recolor", [])
    assert LchRecolor.variants(opts) == ["bleu-nuit"]  # what assetd check sees of the rule's file names


def test_the_original_passes_on_as_a_variant_when_named() -> None:
    rgba = bag()["rgba"]
    outs = make_stage(variants=COLOURWAYS[:1], original="tan").run(Asset(rgba.copy(), variant="marble"))
    assert [o.variant for o in outs] == ["marble-tan", "marble-green"]
    assert np.array_equal(outs[0].pixels, rgba)


def test_a_protect_mask_beside_the_shot_keeps_what_it_paints(tmp_path: Path) -> None:
    shot = bag()
    rgba = shot["rgba"]
    source = tmp_path / "bag.png"
    Image.fromarray(rgba).save(source)
    protect = np.zeros(rgba.shape[:2], np.uint8)
    protect[150:200, 40:120] = 255  # a logo patch of the leather the brand wants as shot
    Image.fromarray(protect).save(tmp_path / "bag.protect.png")
    (out,) = make_stage(variants=COLOURWAYS[:1]).run(Asset(rgba.copy(), source=str(source)))
    assert np.array_equal(out.pixels[protect > 0], rgba[protect > 0])
    rest = shot["leather"] & (protect == 0)
    assert hue_distance(out.pixels, rest, "#1f4d3a") <= 3.0
    assert out.notes["recolor"]["protect"] == "sidecar"


def test_a_painted_region_is_recoloured_even_without_a_subject(tmp_path: Path) -> None:
    """A plain RGB shot with NAME.recolor.png: what is painted moves (a cushion on a grey sofa), nothing else."""
    rng = np.random.default_rng(2)
    rgb = np.clip(rng.normal(128, 6, (120, 160, 3)), 0, 255).astype(np.uint8)  # grey sofa
    rgb[30:90, 40:120] = np.clip(rng.normal(0, 4, (60, 80, 3)) + (60, 90, 160), 0, 255).astype(np.uint8)
    painted = np.zeros((120, 160), np.uint8)
    painted[30:90, 40:120] = 255
    Image.fromarray(rgb).save(tmp_path / "sofa.jpg")
    Image.fromarray(painted).save(tmp_path / "sofa.recolor.png")
    (out,) = make_stage(region="sidecar", variants=[{"name": "ochre", "colour": "#c08a2a"}]).run(
        Asset(rgb.copy(), source=str(tmp_path / "sofa.jpg")))
    assert out.notes["recolor"]["region"] == "sidecar"
    assert np.array_equal(out.pixels[painted == 0], rgb[painted == 0])
    assert hue_distance(out.pixels, painted > 0, "#c08a2a") <= 3.0
    assert np.abs(lab8(out.pixels)[..., 0] - lab8(rgb)[..., 0]).max() <= 0.5


def sail(tmp_path: Path) -> tuple[np.ndarray, Path, dict[str, np.ndarray]]:
    """A sail: a yellow-green band on bluish-white cloth, a blue mast and a blue eyelet in the band, all grainy;
    painted roughly as a retoucher does: the brush overshoots onto the cloth and the mast, the eyelet inside it."""
    rng = np.random.default_rng(4)
    h, w = 160, 240
    rgb = np.empty((h, w, 3), np.float64)
    rgb[:] = (200, 205, 222)  # bluish-white cloth
    rgb[90:140] = (150, 160, 40)  # the band
    rgb[90:140, 140:200] = (190, 203, 51)  # its sunlit end: lighter and more colourful in proportion
    rgb[:, 200:215] = (30, 60, 150)  # the mast
    cv2.circle(rgb, (170, 115), 8, (40, 70, 160), -1)  # an eyelet in the band
    rgb = np.clip(rgb * rng.normal(1.0, 0.03, (h, w, 1)), 0, 255).astype(np.uint8)
    painted = np.zeros((h, w), np.uint8)
    painted[78:150, 10:225] = 255  # over the band, 12 px of cloth above it, 10 below, and the mast
    rgb = np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(0.8)))  # a lens's soft edges
    Image.fromarray(rgb).save(tmp_path / "sail.jpg")
    Image.fromarray(painted).save(tmp_path / "sail.recolor.png")
    band = np.zeros((h, w), bool)
    band[93:137, 13:197] = True
    cv2.circle(band.view(np.uint8), (170, 115), 12, 0, -1)
    eyelet = np.zeros((h, w), np.uint8)
    cv2.circle(eyelet, (170, 115), 6, 1, -1)
    cloth = np.zeros((h, w), bool)  # off the band's outline, where cloth and band mix (a few pixels)
    cloth[78:90 - 2 * EDGE, 10:195] = cloth[140 + 2 * EDGE:150, 10:195] = True
    mast = np.zeros((h, w), bool)
    mast[78:150, 203:212] = True
    return rgb, tmp_path / "sail.jpg", {"band": band, "eyelet": eyelet > 0, "cloth": cloth, "mast": mast,
                                        "painted": painted > 0}


def test_a_rough_painted_region_turns_only_its_colour(tmp_path: Path) -> None:
    """Inside NAME.recolor.png only the painted pixels' dominant colour turns: the cloth the brush went over, the
    blue mast and the eyelet inside the paint stay bit for bit (turned, they came out cyan and maroon). Where band
    and cloth mix along the band's edge, the band's share turns: no line of the old colour along it."""
    rgb, source, part = sail(tmp_path)
    for way in ({"name": "coral", "colour": "#e0533d"}, {"name": "teal", "colour": "#1e8a8a"}):
        (out,) = make_stage(variants=[way]).run(Asset(rgb.copy(), source=str(source)))
        assert out.notes["recolor"]["region"] == "sidecar"
        for kept in ("eyelet", "cloth", "mast"):
            assert np.array_equal(out.pixels[part[kept]], rgb[part[kept]]), (way["name"], kept)
        assert np.array_equal(out.pixels[~part["painted"]], rgb[~part["painted"]])
        assert hue_distance(out.pixels, part["band"], way["colour"]) <= 3.0
        before, after = lab8(rgb), lab8(out.pixels)
        old, new = hue_of(before[100, 50]), hue_of(srgb_to_lab(np.array([int(way["colour"][i:i + 2], 16)
                                                                          for i in (1, 3, 5)], np.float64)))
        sunlit = part["band"] & (np.arange(rgb.shape[1]) >= 140)[None, :]
        assert (hue_apart(hue_of(after[sunlit]), new) < 15).all()
        edge = (part["painted"] & ~part["band"] & ~part["cloth"])[:, 20:190]
        hues, coloured = hue_of(after[:, 20:190]), np.hypot(after[:, 20:190, 1], after[:, 20:190, 2]) > 6
        assert (edge & coloured & (hue_apart(hues, old) < hue_apart(hues, new))).sum() == 0
    # region: mask: the paint is exact, all of it turns (the cloth too, as painted)
    (out,) = make_stage(region="mask", variants=[{"name": "teal", "colour": "#1e8a8a"}]).run(
        Asset(rgb.copy(), source=str(source)))
    assert not np.array_equal(out.pixels[part["mast"]], rgb[part["mast"]])
    assert np.array_equal(out.pixels[~part["painted"]], rgb[~part["painted"]])
    # every painted colour lands on the target's hue (the blue mast teal, not turned by the band's turn to maroon)
    after, teal = lab8(out.pixels), hue_of(srgb_to_lab(np.array([0x1e, 0x8a, 0x8a], np.float64)))
    for where in ("mast", "band"):
        assert (hue_apart(hue_of(after[part[where]]), teal) < 10).all(), where
    assert np.abs(after[..., 0] - lab8(rgb)[..., 0]).max() <= 0.5


def test_a_lighter_seam_of_the_material_turns_and_the_paint_edge_leaves_no_line(tmp_path: Path) -> None:
    """A seam of the sail's own yellow, a little lighter and as colourful, is the sail, not a highlight: it turns
    (kept, it was a thin yellow line across the coral); a white glint stays. Where the paint fades out across the
    same yellow, the colour goes over smoothly from the new to the old: no line of a third hue along it."""
    rng = np.random.default_rng(5)
    h, w = 120, 160
    rgb = np.empty((h, w, 3), np.float64)
    rgb[:] = (205, 180, 40)  # yellow sail
    rgb[55:] = (160, 158, 55)  # in its shade, greener: the paint fades out there
    rgb[:, 70:73] = (235, 212, 70)  # a seam: lighter, as colourful
    cv2.circle(rgb, (120, 30), 4, (252, 251, 246), -1)  # a glint
    rgb = np.clip(rgb * rng.normal(1.0, 0.02, (h, w, 1)), 0, 255).astype(np.uint8)
    painted = np.zeros((h, w), np.float32)
    painted[:70] = 255
    painted[70:115] = 255 * np.exp(-(np.arange(45) / 18.0) ** 2)[:, None]  # a soft brush's fall-off, over yellow
    Image.fromarray(rgb).save(tmp_path / "sail.jpg")
    Image.fromarray(np.rint(painted).astype(np.uint8)).save(tmp_path / "sail.recolor.png")
    (out,) = make_stage(region="sidecar", variants=[{"name": "coral", "colour": "#e0533d"}]).run(
        Asset(rgb.copy(), source=str(tmp_path / "sail.jpg")))
    before, after = lab8(rgb), lab8(out.pixels)
    coral = hue_of(srgb_to_lab(np.array([0xe0, 0x53, 0x3d], np.float64)))
    assert (hue_apart(hue_of(after[5:60, 70:73]), coral) < 15).all()  # the seam turned
    glint = np.zeros((h, w), np.uint8)
    cv2.circle(glint, (120, 30), 2, 1, -1)
    assert (np.hypot(after[glint > 0, 1], after[glint > 0, 2]) < 6).all()  # still white
    # down the paint's fall-off, the hue goes from coral to yellow without a dip or a bump: per row, the median
    # hue only rises
    rows = np.median(hue_of(after[60:105, 10:60]), axis=1)
    assert (np.diff(rows) > -1.0).all(), np.round(rows, 1)
    assert np.abs(after[..., 0] - before[..., 0]).max() <= 0.5


def test_a_missing_sidecar_or_a_colourless_subject_fails_naming_the_file(tmp_path: Path) -> None:
    rgba = bag()["rgba"]
    with pytest.raises(PermanentError, match=r"bag.recolor.png is missing \(region: sidecar\)"):
        make_stage(region="sidecar", variants=COLOURWAYS).run(Asset(rgba, source=str(tmp_path / "bag.png")))
    with pytest.raises(PermanentError, match=r"bag.recolor.png is missing \(region: mask\)"):
        make_stage(region="mask", variants=COLOURWAYS).run(Asset(rgba, source=str(tmp_path / "bag.png")))
    grey = rgba.copy()
    grey[..., :3] = grey[..., :1]
    with pytest.raises(PermanentError, match=r"grey.png: the subject has no colour above min_chroma 8"):
        make_stage(variants=COLOURWAYS).run(Asset(grey, source=str(tmp_path / "grey.png")))


@pytest.mark.parametrize("options, expected", [
    ({}, "recolor: set either variants (colourways, each its own output) or hue_shift/chroma_scale (one edit), got "
         "neither"),
    ({"variants": COLOURWAYS, "hue_shift": 30}, "got both"),
    ({"variants": [{"name": "green", "colour": "#1f4d3a"}, {"name": "green", "colour": "#00ff00"}]},
     "recolor.variants: the name 'green' is given twice"),
    ({"variants": [{"name": "green", "colour": "green"}]}, "recolor.variants[0].colour: expected a colour like"),
    ({"variants": [{"name": "???", "colour": "#1f4d3a"}]}, "recolor.variants[0].name: expected a name with a letter"),
    ({"variants": [{"name": "Coral Red", "colour": "#e0533d"}, {"name": "coral-red", "colour": "#1f4d3a"}]},
     "recolor.variants: 'Coral Red' and 'coral-red' give the same variant name (coral-red)"),
    ({"variants": [{"name": "x", "colour": "#1f4d3a", "hue_shift": 10}]},
     "recolor.variants[0]: set either colour or hue_shift/chroma_scale, got both"),
    ({"variants": [{"colour": "#1f4d3a"}]}, "recolor.variants[0].name: required"),
    ({"hue_shift": 200}, "recolor.hue_shift: expected at most 180.0"),
    ({"chroma_scale": 1.2, "tolerance": 0}, "recolor.tolerance: expected at least 1.0"),
    ({"hue_shift": 10, "original": "tan"}, "recolor.original: only with variants"),
])
def test_options_are_checked_when_rules_load(options: dict, expected: str) -> None:
    assert any(expected in p for p in problems(**options)), problems(**options)


def test_a_rule_with_colourways_loads(workspace) -> None:
    workspace.add_rule("30-colourways.yaml",
                       "name: colourways\nmatch: {folder: bags}\nsteps: [remove_background, {recolor: {variants: "
                       "[{name: green, colour: '#1f4d3a'}, {name: burgundy, colour: '#5a1a24'}]}}, crops]\n"
                       "outputs: [{channel: webshop, ratios: ['1:1']}]\n")
    _config, rules = workspace.load()
    rule = next(r for r in rules if r.name == "colourways")
    assert [s.step for s in rule.steps] == ["remove_background", "recolor", "crops"]
    workspace.add_rule("31-bad.yaml", "name: bad\nsteps: [crops, {recolor: {hue_shift: 30}}]\n"
                                      "outputs: [{channel: webshop, ratios: ['1:1']}]\n")
    with pytest.raises(ConfigError, match="recolor: needs the whole image"):
        workspace.load()


@pytest.mark.skipif(not (SHARED / "0003.jpg").is_file(), reason="the shared real photos are not on this machine")
def test_a_real_photo_fur_changes_colour_nose_eyes_and_backdrop_do_not() -> None:
    """The alpaca of U-2-Net's test photos (tan fur, one dominant colour) cut out with its published mask."""
    rgb = np.asarray(Image.open(SHARED / "0003.jpg").convert("RGB"))
    mask = np.asarray(Image.open(SHARED / "0003.mask.png").convert("L"))
    rgba = np.dstack([rgb, mask])
    outs = make_stage(variants=COLOURWAYS).run(Asset(rgba.copy()))
    before = lab8(rgba)
    chroma = np.hypot(before[..., 1], before[..., 2])
    for out, way in zip(outs, COLOURWAYS):
        assert np.abs(lab8(out.pixels)[..., 0] - before[..., 0]).max() <= 0.5
        assert np.array_equal(out.pixels[mask == 0], rgba[mask == 0])
        # the grey nose and the dark eyes; not the fur's outline, where grey is the fur mixed with the backdrop and
        # turns with it. The palest fur (C* 2 to min_chroma) fades in: a warm grey moves a little, a grey not at all
        opaque = cv2.erode((mask >= 230).astype(np.uint8), np.ones((4 * EDGE + 3,) * 2, np.uint8)) > 0
        neutral = opaque & (chroma < 2)
        assert neutral.sum() > 1000 and np.array_equal(out.pixels[neutral], rgba[neutral])
        after = lab8(out.pixels)
        moved = np.hypot(*np.moveaxis(after[..., 1:] - before[..., 1:], -1, 0))
        assert moved[opaque & (chroma < 4)].max() <= 2.5
        # no blotch of the old colour: the fur's deeper ginger (C* up to twice the mean) turns with the rest
        tan = out.notes["recolor"]["lch"][2]
        if way["name"] == "green":  # far enough from tan that a pixel left tan shows
            colourful = np.hypot(after[..., 1], after[..., 2]) > 8
            still_tan = (mask >= 230) & (hue_apart(hue_of(after), tan) < 25) & colourful
            assert still_tan.sum() <= 20, still_tan.sum()  # 864 before the ginger counted as the fur
        core = out.notes["recolor"]
        assert core["delta_e"] <= 3.0 and core["share"] > 0.5


def test_each_colourway_is_cropped_like_the_shot(workspace) -> None:
    """Downstream steps see each colourway as its own asset: crops frames each one per ratio, the variant kept."""
    from pipeline.chain import Chain

    workspace.add_rule("30-colourways.yaml",
                       "name: colourways\nmatch: {folder: bags}\nsteps: [{recolor: {variants: "
                       "[{name: green, colour: '#1f4d3a'}, {name: burgundy, colour: '#5a1a24'}]}}, "
                       "{crops: {ratios: ['1:1', '4:5']}}]\noutputs: [{channel: cutouts}]\n")
    config, rules = workspace.load()
    rule = next(r for r in rules if r.name == "colourways")
    kept = Chain(rule, StageContext(config)).run(Asset(bag()["rgba"]))
    assert sorted((a.variant, a.ratio) for a in kept["crops"]) == [
        ("burgundy", "1:1"), ("burgundy", "4:5"), ("green", "1:1"), ("green", "4:5")]


def test_a_sidecar_follows_a_trimmed_cut_out_and_refuses_a_placed_one(tmp_path: Path) -> None:
    shot = bag()
    rgba = shot["rgba"]
    source = tmp_path / "bag.png"
    protect = np.zeros(rgba.shape[:2], np.uint8)
    protect[150:200, 40:120] = 255
    Image.fromarray(protect).save(tmp_path / "bag.protect.png")
    x0, y0, x1, y1 = 20, 20, 300, 225  # remove_background's trim box, in the shot's pixels
    trimmed = Asset(rgba[y0:y1, x0:x1].copy(), source=str(source),
                    notes={"remove_background": {"trim": [x0, y0, x1, y1]}})
    (out,) = make_stage(variants=COLOURWAYS[:1]).run(trimmed)
    kept = protect[y0:y1, x0:x1] > 0
    assert np.array_equal(out.pixels[kept], rgba[y0:y1, x0:x1][kept])
    assert not np.array_equal(out.pixels, trimmed.pixels)
    placed = Asset(rgba.copy(), source=str(source), notes={"place_in_scene": {}})
    with pytest.raises(PermanentError, match=r"bag.protect.png: the protect mask is in the shot's pixels, but recolor "
                                             r"runs after place_in_scene: put recolor before it in the rule"):
        make_stage(variants=COLOURWAYS[:1]).run(placed)
