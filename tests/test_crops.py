"""Stage crops (backend geometry): exact ratios, untouched originals, seamless outpainting."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.config import Config
from pipeline.schema import build
from pipeline.stages.base import Asset, StageContext, backends, registered, stage_class
from pipeline.stages.crops import (CropsOptions, Fill, GeometryCrops, PadFill, build_canvas, fill_class, frame_matte,
                                  outpaint)
from pipeline.stages.diffusion import GenerateFill
from pipeline.stages.framing import Box, Zones, frame_for_ratio, ratio_error, subject_box

RATIOS = ["1:1", "4:5", "9:16", "16:9"]


def studio_shot(w: int = 600, h: int = 400, *, noise: float = 3.0, seed: int = 0,
                dtype: type = np.uint8) -> tuple[np.ndarray, np.ndarray]:
    """A tall red ellipse (bottle) on a noisy grey gradient backdrop, and its matte."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    backdrop = 210.0 - 50.0 * y + np.zeros((1, w, 3), np.float32) + rng.normal(0, noise, (h, w, 3))
    img = np.clip(np.rint(backdrop), 0, 255).astype(np.uint8)
    matte = np.zeros((h, w), np.uint8)
    cv2.ellipse(matte, (w // 2, h // 2), (w // 12, int(h * 0.42)), 0, 0, 360, 255, -1)
    subject = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # textured, so copies are checkable
    subject[..., 0] = 200
    img[matte > 0] = subject[matte > 0]
    if dtype == np.uint16:
        img = img.astype(np.uint16) * 257 + rng.integers(0, 200, img.shape, dtype=np.uint16)
    return img, matte


def make_stage(tmp_path: Path, **options: object) -> GeometryCrops:
    errors: list[str] = []
    opts = build(CropsOptions, options, "crops", errors)
    assert errors == []
    return GeometryCrops(opts, StageContext(config=Config(source=tmp_path / "config.yaml")))


def test_registered_as_default_backend() -> None:
    assert stage_class("crops", None) is GeometryCrops


@pytest.mark.parametrize("fill", ["outpaint", "pad", "crop"])
def test_every_ratio_is_exact_and_the_original_is_untouched(tmp_path: Path, fill: str) -> None:
    img, matte = studio_shot()
    stage = make_stage(tmp_path, fill=fill)
    outs = stage.run(Asset(img, matte))
    assert [o.ratio for o in outs] == RATIOS
    box = subject_box(matte)
    for out in outs:
        note = out.notes["crops"]
        frame_box = Box(*note["box"])
        assert out.pixels.dtype == np.uint8 and out.pixels.shape == (frame_box.height, frame_box.width, 3)
        assert out.matte is not None and out.matte.shape == out.pixels.shape[:2]
        rw, rh = map(int, out.ratio.split(":"))
        assert ratio_error(out.width, out.height, (rw, rh)) < 1
        inside = frame_box.intersect(Box(0, 0, img.shape[1], img.shape[0]))
        known = inside.shift(-frame_box.x0, -frame_box.y0)
        assert np.array_equal(out.pixels[known.y0:known.y1, known.x0:known.x1],
                              img[inside.y0:inside.y1, inside.x0:inside.x1]), "original pixels altered"
        # the matte follows the pixels: same subject, moved into frame coordinates
        assert np.array_equal(out.matte[known.y0:known.y1, known.x0:known.x1],
                              matte[inside.y0:inside.y1, inside.x0:inside.x1])
        if fill == "crop":
            assert note["extended"] is None and out.width <= img.shape[1] and out.height <= img.shape[0]
        else:
            assert frame_box.contains(box), "the subject is never cut when canvas can be added"
            assert subject_box(out.matte) == box.shift(-frame_box.x0, -frame_box.y0)
            assert out.matte.sum(dtype=np.int64) == matte.sum(dtype=np.int64)
    # the bottle (tall) into 16:9 with margins needs more canvas than the 600×400 image has
    wide = outs[3].notes["crops"]
    if fill == "crop":
        assert wide["cut_margin"] is True and wide["fill"] == "none"
    else:
        assert wide["extended"]["left"] > 0 and wide["extended"]["right"] > 0 and wide["fill"] == fill


def test_crop_mode_cuts_and_says_so(tmp_path: Path) -> None:
    img, matte = studio_shot(400, 600)  # portrait: the tall bottle cannot fit 16:9 without cutting
    out = make_stage(tmp_path, fill="crop", ratios=["16:9"]).run(Asset(img, matte))[0]
    note = out.notes["crops"]
    assert note["cut_subject"] is True and note["extended"] is None
    assert out.width == 400 and out.height == 225
    assert np.array_equal(out.pixels, img[note["box"][1]:note["box"][3], :])


def _seam_stats(canvas: np.ndarray, x: int) -> tuple[float, float, float]:
    """Mean |difference| between neighbouring columns across the seam at x, and well on each side."""
    def step(a: int) -> float:
        return float(np.abs(canvas[:, a].astype(np.int32) - canvas[:, a - 1].astype(np.int32)).mean())
    return step(x), step(x + 10), step(x - 10)


def test_outpaint_seam_is_invisible(tmp_path: Path) -> None:
    img, matte = studio_shot(600, 400, noise=3.0)
    out = make_stage(tmp_path, ratios=["16:9"]).run(Asset(img, matte))[0]
    left = out.notes["crops"]["extended"]["left"]
    right = out.notes["crops"]["extended"]["right"]
    assert left > 20 and right > 20
    canvas = out.pixels
    for seam in (left, canvas.shape[1] - right):
        across, inside, outside = _seam_stats(canvas, seam)
        within = max(inside, outside)
        assert across < 1.5 * within, f"hard edge at x={seam}: {across:.2f} vs {within:.2f} within"
        # no step in level: the bands each side of the seam average the same
        a = canvas[:, seam - 8:seam].astype(np.float32).mean(axis=(1, 2))
        b = canvas[:, seam:seam + 8].astype(np.float32).mean(axis=(1, 2))
        assert np.abs(a - b).mean() < 2.5
    # the extension carries grain like the backdrop's, not a suspiciously smooth fill
    band = canvas[20:120, left - 20:left].astype(np.float32)
    real = canvas[20:120, left:left + 20].astype(np.float32)
    grain = (band - cv2.GaussianBlur(band, (0, 0), 2)).std()
    real_grain = (real - cv2.GaussianBlur(real, (0, 0), 2)).std()
    assert 0.6 * real_grain < grain < 1.5 * real_grain
    # far from the image the fill keeps the backdrop's vertical gradient (its low frequencies)
    far = canvas[:, :5].astype(np.float32).mean(axis=(1, 2))
    assert far[:40].mean() - far[-40:].mean() > 25


def test_outpaint_on_a_flat_noiseless_backdrop_stays_flat() -> None:
    canvas = np.zeros((100, 300, 3), np.uint8)
    canvas[:, 100:200] = (30, 120, 240)
    outpaint(canvas, Box(100, 0, 200, 100))
    assert np.array_equal(np.unique(canvas.reshape(-1, 3), axis=0), [[30, 120, 240]])


def test_pad_colour(tmp_path: Path) -> None:
    img, matte = studio_shot()
    out = make_stage(tmp_path, fill="pad", pad_colour="#102030", ratios=["16:9"]).run(Asset(img, matte))[0]
    left = out.notes["crops"]["extended"]["left"]
    assert (out.pixels[:, :left] == (16, 32, 48)).all()
    white = make_stage(tmp_path, fill="pad", ratios=["16:9"]).run(Asset(img, matte))[0]
    assert (white.pixels[:, :left] == 255).all()


def rgba_cutout(w: int = 600, h: int = 400) -> np.ndarray:
    img, matte = studio_shot(w, h)
    return np.dstack([img, matte])


@pytest.mark.parametrize("fill", ["outpaint", "pad"])
def test_rgba_extension_is_transparent(tmp_path: Path, fill: str) -> None:
    rgba = rgba_cutout()
    out = make_stage(tmp_path, fill=fill, ratios=["16:9"]).run(Asset(rgba, None))[0]
    note = out.notes["crops"]
    assert note["subject"] == "alpha"
    ext = note["extended"]
    left, right, top, bottom = ext["left"], ext["right"], ext["top"], ext["bottom"]
    assert out.pixels.shape[2] == 4 and left > 0 and right > 0
    assert (out.pixels[:, :left, 3] == 0).all() and (out.pixels[:, out.width - right:, 3] == 0).all()
    assert (out.pixels[:top, :, 3] == 0).all() and (out.pixels[out.height - bottom:, :, 3] == 0).all()
    box = Box(*note["box"])
    inside = box.intersect(Box(0, 0, rgba.shape[1], rgba.shape[0]))
    assert np.array_equal(out.pixels[top:out.height - bottom, left:out.width - right],
                          rgba[inside.y0:inside.y1, inside.x0:inside.x1])
    assert np.array_equal(out.matte, out.pixels[..., 3]), "alpha of a cut-out is its matte"
    opaque = make_stage(tmp_path, fill="pad", pad_colour="#ff000080", ratios=["16:9"]).run(Asset(rgba, None))[0]
    assert (opaque.pixels[:, :opaque.notes["crops"]["extended"]["left"]] == (255, 0, 0, 128)).all()


def test_sixteen_bit_input_keeps_dtype_and_exact_pixels(tmp_path: Path) -> None:
    img, matte = studio_shot(dtype=np.uint16)
    outs = make_stage(tmp_path, ratios=["16:9", "1:1"]).run(Asset(img, matte))
    out = outs[0]
    assert out.pixels.dtype == np.uint16
    box = Box(*out.notes["crops"]["box"])
    known = make_stage(tmp_path).frame(600, 400, subject_box(matte), "16:9").known
    inside = box.intersect(Box(0, 0, 600, 400))
    assert out.notes["crops"]["extended"]["left"] == known.x0 > 0
    assert np.array_equal(out.pixels[known.y0:known.y1, known.x0:known.x1],
                          img[inside.y0:inside.y1, inside.x0:inside.x1])
    ext = out.pixels[:, :known.x0].astype(np.float32)
    assert abs(ext.mean() - img[:, :20].astype(np.float32).mean()) < 3 * 257


def test_generate_fill_result_never_overwrites_the_original(tmp_path: Path) -> None:
    seen = {}

    class Scribble(Fill):  # stands in for the model-backed fill
        backend = "generate"
        Options = GenerateFill.Options

        def fill(self, canvas: np.ndarray, known: Box, matte: object) -> np.ndarray:
            seen["known"] = np.zeros(canvas.shape[:2], bool)
            seen["known"][known.y0:known.y1, known.x0:known.x1] = True
            seen["prompt"] = self.options.prompt
            return np.full_like(canvas, 7)  # a careless model repaints everything

    img, matte = studio_shot()
    with registered(Scribble):
        stage = make_stage(tmp_path, fill="generate", prompt="marble table", ratios=["16:9"])
        assert GeometryCrops.validate(stage.options, "crops", stage.ctx.config) == []
        out = stage.run(Asset(img, matte))[0]
    box = Box(*out.notes["crops"]["box"])
    inside = box.intersect(Box(0, 0, 600, 400))
    known = seen["known"]
    assert seen["prompt"] == "marble table"
    assert known.sum() == inside.width * inside.height
    assert np.array_equal(out.pixels[known].reshape(inside.height, inside.width, 3),
                          img[inside.y0:inside.y1, inside.x0:inside.x1])
    assert (out.pixels[~known] == 7).all()


def test_each_fill_reads_only_its_own_options() -> None:
    options = CropsOptions(fill="generate", prompt="marble", pad_colour="#000000", seed=4)
    generate = fill_class("generate").Options.of(options)
    assert (generate.prompt, generate.seed, generate.steps) == ("marble", 4, 30)
    assert not hasattr(generate, "pad_colour") and not hasattr(generate, "ratios")
    assert vars(fill_class("pad").Options.of(options)) == {"pad_colour": "#000000"}
    assert backends("fill") == ["crop", "generate", "outpaint", "pad"]


@pytest.mark.parametrize("options, problem", [
    ({"ratios": ["16x9"]}, "expected a ratio like '4:5'"),
    ({"ratios": ["0:1"]}, "expected a ratio like '4:5'"),
    ({"ratios": []}, "at least one ratio"),
    ({"ratios": ["1:1", "1:1"]}, "may appear once"),
    ({"fill": "stretch"}, "expected one of"),
    ({"pad_colour": "white"}, "expected a colour"),
    ({"margin": -0.1}, "at least 0.0"),
])
def test_option_problems(options: dict, problem: str) -> None:
    errors: list[str] = []
    build(CropsOptions, options, "crops", errors)
    assert len(errors) == 1 and problem in errors[0]


def test_build_canvas_and_frame_matte_helpers() -> None:
    img = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    frame = frame_for_ratio(6, 4, None, (1, 1))  # whole image → 6×6, one row above and below
    canvas, known = build_canvas(img, frame, PadFill(PadFill.Options(pad_colour="#000000"), None))
    assert canvas.shape == (6, 6, 3) and known == Box(0, 1, 6, 5)
    assert np.array_equal(canvas[1:5], img) and (canvas[0] == 0).all() and (canvas[5] == 0).all()
    matte = np.full((4, 6), 9, np.uint8)
    assert np.array_equal(frame_matte(matte, frame)[:, 0], [0, 9, 9, 9, 9, 0])
    inside = frame_for_ratio(6, 4, Box(1, 1, 3, 3), (1, 1), margin=0.0)
    cut, _ = build_canvas(img, inside, fill_class("outpaint")(fill_class("outpaint").Options(), None))
    assert np.array_equal(cut, img[inside.box.y0:inside.box.y1, inside.box.x0:inside.box.x1])
    assert not np.shares_memory(cut, img)


def test_rgb_without_matte_uses_the_estimate(tmp_path: Path) -> None:
    rb = pytest.importorskip("pipeline.stages.remove_background")
    if not hasattr(rb, "estimate_subject_matte"):
        pytest.skip("remove_background.estimate_subject_matte is not written yet")
    img, matte = studio_shot()
    out = make_stage(tmp_path, ratios=["16:9"]).run(Asset(img, None))[0]
    note = out.notes["crops"]
    assert note["subject"] in ("estimated", "whole image")
    if note["subject"] == "estimated":
        found = subject_box(out.matte)
        true = subject_box(matte).shift(-note["box"][0], -note["box"][1])
        assert found is not None and abs(found.x0 - true.x0) < 15 and abs(found.x1 - true.x1) < 15


# --- outpaint continues texture, never the subject ----------------------------------------------

SUBJECT_COLOUR = (255, 0, 255)  # appears nowhere in the textured backdrop


def stone(w: int, h: int, seed: int = 0) -> np.ndarray:
    """Stationary 'stone' texture: wavy diagonal veins + blotches + grain."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    blotch = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 6) * 12
    veins = np.exp(-np.abs(np.sin((xs + 0.6 * ys) / 9.0 + blotch / 6.0)) * 4.0)
    grey = 200.0 - 60.0 * veins + 4.0 * blotch + rng.normal(0, 2.0, (h, w))
    return np.clip(np.rint(np.dstack([grey, grey * 0.98, grey * 0.95])), 0, 255).astype(np.uint8)


def textured_backdrop(w: int = 640, h: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The stone texture with a magenta block on its bottom edge (the subject), and its matte."""
    img = stone(w, h, seed)
    matte = np.zeros((h, w), np.uint8)
    matte[h - 90:h, w // 2 - 80:w // 2 + 80] = 255  # touches the edge that is extended
    img[matte > 0] = SUBJECT_COLOUR
    return img, matte


def _extend_down(img: np.ndarray, matte: np.ndarray | None, depth: int, seed: int = 0) -> np.ndarray:
    h, w = img.shape[:2]
    canvas = np.zeros((h + depth, w, 3), img.dtype)
    canvas[:h] = img
    full = None
    if matte is not None:
        full = np.zeros((h + depth, w), np.uint8)
        full[:h] = matte
    outpaint(canvas, Box(0, 0, w, h), seed=seed, matte=full)
    return canvas


def _detail(a: np.ndarray) -> float:
    """High-frequency energy: mean |Laplacian| of the grey image."""
    grey = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float(np.abs(cv2.Laplacian(grey, cv2.CV_32F, ksize=3)).mean())


def test_outpaint_carries_the_texture_on_and_keeps_the_original() -> None:
    img, matte = textured_backdrop()
    canvas = _extend_down(img, matte, 240)
    assert np.array_equal(canvas[:240], img), "original pixels altered"
    backdrop_cols = np.r_[0:220, 420:640]  # away from the subject's columns
    known = _detail(img[120:240, backdrop_cols])
    near, far = _detail(canvas[240:360, backdrop_cols]), _detail(canvas[360:, backdrop_cols])
    # the old smooth continuation gave ~0.43 of the known energy (grain only); copied texture keeps
    # most of it: feathered patch overlaps and the mirror's fade lose some, never make it up
    assert 0.6 * known < near < 1.3 * known, (near, known)
    assert 0.6 * known < far < 1.3 * known, (far, known)


def test_outpaint_seam_stays_invisible_on_texture() -> None:
    img, matte = textured_backdrop()
    canvas = _extend_down(img, matte, 160).astype(np.int32)
    cols = np.r_[0:220, 420:640]
    step = np.abs(np.diff(canvas[:, cols], axis=0)).mean(axis=(1, 2))  # step[y]: row y+1 minus row y
    inside = float(np.median(step[200:238]))
    outside = float(np.median(step[241:300]))
    assert step[239] < 1.5 * inside, f"seam {step[239]:.2f} vs {inside:.2f} inside"
    assert 0.5 * inside < outside < 1.5 * inside
    # no step in level either: the rows either side of the seam average the same
    assert abs(canvas[236:240, cols].mean() - canvas[240:244, cols].mean()) < 3


@pytest.mark.parametrize("depth", [30, 240])
def test_outpaint_never_copies_the_subject(depth: int) -> None:
    img, matte = textured_backdrop()
    band = _extend_down(img, matte, depth)[240:].astype(np.int32)
    magenta = (band[..., 0] - band[..., 1] > 40) & (band[..., 2] - band[..., 1] > 40)
    assert not magenta.any(), f"{int(magenta.sum())} subject-coloured pixels in the new canvas"
    # without the matte the subject is just backdrop to outpaint, and is copied: the check can fail
    free = _extend_down(img, None, depth)[240:].astype(np.int32)
    assert ((free[..., 0] - free[..., 1] > 40) & (free[..., 2] - free[..., 1] > 40)).any()


def test_outpaint_is_deterministic_per_seed() -> None:
    img, matte = textured_backdrop()
    a = _extend_down(img, matte, 200, seed=5)
    assert np.array_equal(a, _extend_down(img, matte, 200, seed=5))
    assert not np.array_equal(a, _extend_down(img, matte, 200, seed=6))


def test_stage_threads_the_matte_into_outpaint(tmp_path: Path) -> None:
    img = stone(640, 240)
    matte = np.zeros((240, 640), np.uint8)
    matte[150:232, 240:400] = 255  # just above the bottom edge (one the photo cuts is not extended at all)
    img[matte > 0] = SUBJECT_COLOUR
    # a wide margin: the frame's band beside the subject is mostly backdrop, so outpaint may continue the
    # texture a little (seams.seamless_depth); the pad fallback fills the rest
    out = make_stage(tmp_path, ratios=["9:16"], anchor="top", margin=0.8, fallback="pad",
                     subject_fill=None).run(Asset(img, matte))[0]
    note = out.notes["crops"]
    assert note["extended"]["bottom"] > 50 and note["fill"] == "outpaint + pad"
    assert note["texture"] == {"bottom": "textured"} and note["fallback"]["to"] == "pad"
    new = out.pixels[out.height - note["extended"]["bottom"]:].astype(np.int32)
    assert not ((new[..., 0] - new[..., 1] > 40) & (new[..., 2] - new[..., 1] > 40)).any()
    assert new[:5].std() > 5, "the first rows continue the texture"
    # no matte at all (subject unknown): cut inside the image, no smeared band
    blind = make_stage(tmp_path, ratios=["9:16"], anchor="top").run(Asset(img, None))[0]
    if blind.notes["crops"]["subject"] == "whole image":
        assert blind.notes["crops"]["fill"] == "none (subject unknown: cut)"
        assert blind.notes["crops"]["extended"] is None


# --- outpaint only as far as it stays seamless; the fallback does the rest ---------------------
# (the largest frame, subject_fill: null, so each case reaches past the image where it is meant to)

def tall_on_stone(w: int = 400, h: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """A tall magenta subject (not touching the edges) on the stone texture: 16:9 needs wide new canvas."""
    img = stone(w, h)
    matte = np.zeros((h, w), np.uint8)
    matte[20:h - 20, w // 2 - 50:w // 2 + 50] = 255
    img[matte > 0] = SUBJECT_COLOUR
    return img, matte


def _magenta(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.int32)
    return (a[..., 0] - a[..., 1] > 40) & (a[..., 2] - a[..., 1] > 40)


def test_textured_border_falls_back_to_a_tighter_frame(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    img = stone(400, 400)  # a subject a tighter 16:9 frame still holds (one it would cut: see below)
    matte = np.zeros((400, 400), np.uint8)
    matte[80:320, 150:250] = 255
    img[matte > 0] = SUBJECT_COLOUR
    stage = make_stage(tmp_path, ratios=["16:9"], subject_fill=None)
    with caplog.at_level("INFO", logger="assetd.stage"):
        out = stage.run(Asset(img, matte, source="shots/stone.jpg"))[0]
    note = out.notes["crops"]
    wide = frame_for_ratio(400, 400, subject_box(matte), (16, 9))  # what outpaint alone would have made
    assert wide.outside[0] > 40
    assert note["texture"]["left"] == note["texture"]["right"] == "textured"
    assert note["fallback"]["to"] == "crop" and "left: textured border" in note["fallback"]["why"]
    ext = note["extended"]
    assert out.width < wide.box.width and ratio_error(out.width, out.height, (16, 9)) < 1
    assert 0 < ext["left"] <= 0.12 * 400 and 0 < ext["right"] <= 0.12 * 400, ext
    assert note["fill"] == "outpaint" and note["cut_margin"] is True
    assert max(note["seam_score"].values()) <= 1.2, note["seam_score"]
    box = Box(*note["box"])
    inside = box.intersect(Box(0, 0, 400, 400))
    known = inside.shift(-box.x0, -box.y0)
    assert np.array_equal(out.pixels[known.y0:known.y1, known.x0:known.x1],
                          img[inside.y0:inside.y1, inside.x0:inside.x1])
    assert not _magenta(out.pixels[:, :ext["left"]]).any()
    assert not _magenta(out.pixels[:, out.width - ext["right"]:]).any()
    (line,) = [r.getMessage() for r in caplog.records if "seamless" in r.getMessage()]
    assert "shots/stone.jpg" in line and "16:9" in line and "crop" in line


@pytest.mark.parametrize("fallback", ["pad", "generate"])
def test_textured_border_keeps_the_frame_and_the_fallback_fills_the_rest(tmp_path: Path, fallback: str) -> None:
    img, matte = tall_on_stone()

    class Scribble(Fill):  # stands in for the model-backed fill
        backend = "generate"
        Options = GenerateFill.Options

        def fill(self, canvas: np.ndarray, known: Box, matte: object) -> np.ndarray:
            return np.full_like(canvas, 7)

    with registered(Scribble):
        out = make_stage(tmp_path, ratios=["16:9"], subject_fill=None, fallback=fallback, pad_colour="#102030").run(Asset(img, matte))[0]
    note = out.notes["crops"]
    wide = frame_for_ratio(400, 400, subject_box(matte), (16, 9))
    assert note["box"] == wide.box.as_list(), "the frame is the one outpaint alone would have made"
    assert note["fill"] == f"outpaint + {fallback}" and note["fallback"]["to"] == fallback
    left = note["extended"]["left"]
    rest = (16, 32, 48) if fallback == "pad" else (7, 7, 7)
    # outpaint continued the stone for a few dozen pixels, the fallback's colour begins beyond that
    filled = [x for x in range(left) if not (out.pixels[:, x] == rest).all()]
    assert filled == list(range(left - len(filled), left)) and 0 < len(filled) <= 0.12 * 400
    assert (out.pixels[:, :left - len(filled)] == rest).all()
    assert not _magenta(out.pixels[:, :left]).any()
    assert note["seam_score"]["left"] <= 1.2
    box = Box(*note["box"])
    inside = box.intersect(Box(0, 0, 400, 400))
    known = inside.shift(-box.x0, -box.y0)
    assert np.array_equal(out.pixels[known.y0:known.y1, known.x0:known.x1],
                          img[inside.y0:inside.y1, inside.x0:inside.x1])


def test_plain_border_extends_as_far_as_needed(tmp_path: Path) -> None:
    img, matte = studio_shot(400, 400)
    out = make_stage(tmp_path, ratios=["16:9"], subject_fill=None).run(Asset(img, matte))[0]
    note = out.notes["crops"]
    assert note["fill"] == "outpaint" and note["fallback"] is None
    assert set(note["texture"].values()) <= {"plain", "smooth"} and note["extended"]["left"] > 100
    assert max(note["seam_score"].values()) <= 1.2, note["seam_score"]


def test_new_canvas_never_copies_pixels_from_near_the_subject() -> None:
    """A subject with a coloured fringe outside its matte (a halo, spill): outpaint copies neither."""
    img, matte = textured_backdrop()
    halo = cv2.dilate(matte, np.ones((9, 9), np.uint8)) & ~matte  # 4 px around the subject, not in the matte
    img[halo > 0] = (0, 255, 0)
    for depth in (30, 240):
        band = _extend_down(img, matte, depth)[240:].astype(np.int32)
        green = (band[..., 1] - band[..., 0] > 60) & (band[..., 1] - band[..., 2] > 60)
        assert not green.any(), f"{int(green.sum())} halo-coloured pixels in the new canvas (depth {depth})"
        assert not _magenta(band).any()


def test_no_subject_is_cut_inside_the_image_and_said_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    img = stone(600, 400)  # a photo with no plain backdrop: no subject is found
    with caplog.at_level("INFO", logger="assetd.stage"):
        outs = make_stage(tmp_path).run(Asset(img, None, source="street.jpg"))
    for out in outs:
        note = out.notes["crops"]
        assert note["subject"] == "whole image" and note["fill"] == "none (subject unknown: cut)"
        assert note["extended"] is None and out.width <= 600 and out.height <= 400
        box = Box(*note["box"])
        assert np.array_equal(out.pixels, img[box.y0:box.y1, box.x0:box.x1])
    lines = [r.getMessage() for r in caplog.records if "no subject" in r.getMessage()]
    assert len(lines) == 1 and "street.jpg" in lines[0]
    # pad and generate still frame the whole photo when asked to
    padded = make_stage(tmp_path, fill="pad", ratios=["9:16"]).run(Asset(img, None))[0]
    assert padded.notes["crops"]["fill"] == "pad" and padded.notes["crops"]["extended"] is not None


def test_generate_fallback_needs_the_diffusers_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from pipeline import models
    from pipeline.rules import MatchSpec, Rule, StepSpec

    options = CropsOptions(fallback="generate")
    config = Config(source=tmp_path / "config.yaml")
    assert GeometryCrops.runs_model(options) and not GeometryCrops.runs_model(CropsOptions())
    assert GeometryCrops.model_ref(options, config) == GenerateFill.model_ref(GenerateFill.Options.of(options), config)
    assert GeometryCrops.model_ref(CropsOptions(), config) is None
    monkeypatch.setitem(sys.modules, "diffusers", None)  # the models extra not installed
    rule = Rule(name="shop", path=Path("shop.yaml"), match=MatchSpec(), outputs=[],
                steps=[StepSpec("crops", "geometry", options)])
    (problem,) = models.check_models(config, [rule]).problems
    assert problem.startswith("rule shop, step crops: ") and "[models]" in problem


def test_fallback_option_problems() -> None:
    errors: list[str] = []
    build(CropsOptions, {"fallback": "stretch"}, "crops", errors)
    assert len(errors) == 1 and "fallback" in errors[0]


def test_no_new_canvas_where_the_photo_cuts_the_subject(tmp_path: Path) -> None:
    img, bottle = studio_shot(600, 400)
    img[bottle > 0] = 185
    matte = np.zeros_like(bottle)
    matte[150:, 150:450] = 255  # a wide product the photo cuts at the bottom, on a plain backdrop
    img[matte > 0] = (200, 30, 30)
    out = make_stage(tmp_path, ratios=["9:16"], subject_fill=None).run(Asset(img, matte))[0]
    note = out.notes["crops"]
    assert note["texture"] == {"top": "smooth", "bottom": "smooth"}
    assert note["fallback"]["to"] == "crop" and "the photo's edge cuts the subject" in note["fallback"]["why"]
    assert "top:" not in note["fallback"]["why"], "a plain top extends as far as needed"
    assert note["extended"] is None or note["extended"]["bottom"] == 0
    assert out.notes["crops"]["cut_margin"] or out.height <= 400


def test_a_side_whose_seam_still_shows_is_done_again_without_outpaint(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    img, matte = tall_on_stone()
    img[:, 396:399] = 40  # a dark line along the right edge (a mount, a frame): mirrored, it shows as a seam
    with caplog.at_level("INFO", logger="assetd.stage"):
        out = make_stage(tmp_path, ratios=["16:9"], subject_fill=None).run(Asset(img, matte))[0]
    note = out.notes["crops"]
    assert "right: the extension's seam showed (score" in note["fallback"]["why"]
    assert note["extended"]["right"] == 0 and note["extended"]["left"] > 0
    assert set(note["seam_score"]) == {"left"} and note["seam_score"]["left"] <= 1.2
    assert len([r for r in caplog.records if "seam showed" in r.getMessage()]) == 1, "one line per fallback"


# --- framing by subject fill, in the stage ------------------------------------------------------

def test_each_crop_records_its_fill_and_new_canvas(tmp_path: Path) -> None:
    img, matte = studio_shot(1200, 800)
    outs = make_stage(tmp_path).run(Asset(img, matte))
    box = subject_box(matte)
    for out in outs:
        note = out.notes["crops"]
        frame = Box(*note["box"])
        assert note["target_fill"] == 0.8 and note["framing"] in ("framed", "tightened", "loosened", "capped")
        achieved = max(box.width / frame.width, box.height / frame.height)
        assert note["subject_fill"] == round(achieved, 3)
        inside = frame.intersect(Box(0, 0, 1200, 800))
        assert note["new_canvas"] == round(1 - inside.width * inside.height / (frame.width * frame.height), 3)
        if note["framing"] == "framed":
            assert abs(achieved - 0.8) * max(frame.size) <= 1
        assert note["new_canvas"] <= 0.25 or note["framing"] == "capped"
    # the tall bottle: the same presence in 1:1, 4:5 and 9:16 (16:9 would need too much canvas at 0.8)
    fills = [o.notes["crops"]["subject_fill"] for o in outs[:3]]
    assert max(fills) - min(fills) < 0.01, fills


def test_largest_frame_is_kept_with_subject_fill_null(tmp_path: Path) -> None:
    img, matte = studio_shot()
    outs = make_stage(tmp_path, subject_fill=None).run(Asset(img, matte))
    for out, ratio in zip(outs, RATIOS):
        rw, rh = map(int, ratio.split(":"))
        assert Box(*out.notes["crops"]["box"]) == frame_for_ratio(600, 400, subject_box(matte), (rw, rh)).box
        assert out.notes["crops"]["framing"] == "largest"


def test_safe_zones_and_copy_space_keep_the_subject_out(tmp_path: Path) -> None:
    img, matte = studio_shot(2400, 1200)
    stage = make_stage(tmp_path, ratios=["9:16", "16:9"], subject_fill={"9:16": 0.7, "default": 0.8},
                       copy_space={"16:9": {"side": "left", "fraction": 0.4}})
    stage.options.safe_zones = {"9:16": Zones(top=0.14, bottom=0.2)}  # what resolve folds in from the channels
    story, banner = stage.run(Asset(img, matte))
    sub = subject_box(story.matte)
    assert sub.y0 >= 0.14 * story.height and story.height - sub.y1 >= 0.2 * story.height
    sub = subject_box(banner.matte)
    assert sub.x0 >= 0.4 * banner.width
    assert banner.notes["crops"]["subject_fill"] == pytest.approx(0.8, abs=1.5 / (0.6 * banner.width))
    assert story.notes["crops"]["target_fill"] == 0.7
    for out in (story, banner):  # the subject's pixels exact, wherever the framing put it
        box = Box(*out.notes["crops"]["box"])
        inside = box.intersect(Box(0, 0, 2400, 1200))
        known = inside.shift(-box.x0, -box.y0)
        assert np.array_equal(out.pixels[known.y0:known.y1, known.x0:known.x1],
                              img[inside.y0:inside.y1, inside.x0:inside.x1])


def test_framing_by_fill_then_seams_a_textured_border_is_not_smeared(tmp_path: Path) -> None:
    """The default framing (subject_fill 0.8) asks for new canvas on a textured stone border: outpaint only goes
    as far as it stays seamless and the default fallback (crop) takes a tighter frame, recorded as such."""
    img, matte = tall_on_stone()
    out = make_stage(tmp_path, ratios=["16:9"]).run(Asset(img, matte))[0]
    note = out.notes["crops"]
    assert note["target_fill"] == 0.8
    # a tighter frame would cut this tall subject: the frame holds it, outpainted, and the job asks for a review
    assert note["framing"] == "seam" and note["cut_subject"] is False
    assert note["fallback"]["to"] == "smooth (review)" and note["fill"] == "outpaint + smooth"
    assert out.review and "would cut the subject" in out.review[0]
    box = Box(*note["box"])
    inside = box.intersect(Box(0, 0, 400, 400))
    known = inside.shift(-box.x0, -box.y0)
    assert np.array_equal(out.pixels[known.y0:known.y1, known.x0:known.x1],
                          img[inside.y0:inside.y1, inside.x0:inside.x1])
    new = np.ones(out.pixels.shape[:2], bool)
    new[known.y0:known.y1, known.x0:known.x1] = False
    assert not _magenta(out.pixels)[new].any()  # no copy of the subject in the new canvas
