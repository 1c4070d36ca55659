"""pipeline.stages.seams: border texture, how far a classical extension stays seamless, the seam score."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.stages.crops import outpaint
from pipeline.stages.framing import Box
from pipeline.stages.seams import (REACH_MAX, REACH_MIN, SEAMLESS_SCORE, BandTexture, band_texture, seam_score,
                                   seamless_depth)

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "u2net-dev"
W, H = 480, 320


def _rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(np.clip(np.rint(grey), 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def _grid() -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    return ys, xs


def flat(noise: float = 0.0, seed: int = 0) -> np.ndarray:
    return _rgb(150.0 + np.random.default_rng(seed).normal(0, noise, (H, W)) if noise else np.full((H, W), 150.0))


def gradient(seed: int = 0) -> np.ndarray:
    ys, xs = _grid()
    return _rgb(90.0 + 0.25 * xs + 0.2 * ys + np.random.default_rng(seed).normal(0, 2.5, (H, W)))


def grain(seed: int = 0) -> np.ndarray:
    """Heavy sensor noise on a flat backdrop: grain, not structure."""
    return _rgb(150.0 + np.random.default_rng(seed).normal(0, 8.0, (H, W)))


def stripes(period: float = 16.0) -> np.ndarray:
    ys, xs = _grid()
    return _rgb(140.0 + 40.0 * np.sin(2 * np.pi * (xs + ys) / (period * np.sqrt(2))))


def checker(square: int = 12) -> np.ndarray:
    ys, xs = _grid()
    return _rgb(np.where(((ys // square) + (xs // square)) % 2 == 0, 90.0, 190.0))


def wood(seed: int = 0) -> np.ndarray:
    """Wood-grain-like: wavy vertical rings with blotches and grain."""
    rng = np.random.default_rng(seed)
    ys, xs = _grid()
    wobble = cv2.GaussianBlur(rng.normal(0, 1, (H, W)).astype(np.float32), (0, 0), 20) * 400
    rings = np.sin(2 * np.pi * (xs + 6.0 * np.sin(ys / 37.0) + wobble) / 11.0)
    return _rgb(120.0 + 30.0 * rings + rng.normal(0, 2.0, (H, W)))


def photo(name: str) -> np.ndarray:
    path = PHOTOS / name
    if not path.is_file():
        pytest.skip(f"{path} is not here")
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


SMOOTH = {"plain", "smooth"}  # both extend as far as needed


@pytest.mark.parametrize("make, kinds", [
    (lambda: flat(), {"plain"}),
    (lambda: flat(noise=3.0), {"plain"}),
    (gradient, {"smooth"}),
    (grain, {"smooth"}),
    (stripes, {"textured"}),
    (checker, {"textured"}),
    (wood, {"textured"}),
    (lambda: photo("sailboat3.jpg")[330:440, 0:330], {"textured"}),  # the trees on the far shore
    (lambda: photo("sailboat3.jpg")[0:200, 0:300], SMOOTH),  # the sky above them
], ids=["flat", "flat-noisy", "gradient", "grain", "stripes", "checker", "wood", "photo-trees", "photo-sky"])
def test_band_texture_classes(make, kinds: set[str]) -> None:
    image = make()
    for side in ("left", "top", "right", "bottom"):
        texture = band_texture(image, side)
        assert texture.kind in kinds, (side, texture)


@pytest.mark.parametrize("period", [8.0, 16.0, 32.0])
def test_band_texture_measures_the_period(period: float) -> None:
    texture = band_texture(stripes(period), "top")
    assert 0.75 * period < texture.period < 1.3 * period, texture


def test_band_texture_measures_at_work_resolution() -> None:
    """A 4× larger image of the same scene: the same class, the period in full-size pixels."""
    small = stripes(16.0)
    big = cv2.resize(small, (4 * W, 4 * H), interpolation=cv2.INTER_CUBIC)
    a, b = band_texture(small, "left"), band_texture(big, "left")
    assert a.kind == b.kind == "textured"
    assert 0.75 * 4 * a.period < b.period < 1.3 * 4 * a.period


def test_the_subject_does_not_count_as_backdrop() -> None:
    """A textured product on a plain sweep: the band is plain once the matte says where the product is."""
    image = flat(noise=2.0)
    matte = np.zeros((H, W), np.uint8)
    matte[100:H, 160:320] = 255  # stands on the bottom edge
    image[matte > 0] = checker()[matte > 0]
    assert band_texture(image, "bottom").kind == "textured"
    with_matte = band_texture(image, "bottom", matte)
    assert with_matte.kind == "plain"
    # half the bottom edge or less is subject: most of it has the full height of clean backdrop
    assert with_matte.clear is not None and with_matte.clear > 0.5 * H
    assert band_texture(image, "top", matte).clear is not None
    assert with_matte.cut == pytest.approx(160 / W) and band_texture(image, "top", matte).cut == 0


def _texture(kind: str, period: float = 16.0, clear: int | None = None) -> BandTexture:
    return BandTexture("top", kind, 20.0 if kind == "textured" else 0.5, 1.0, 50.0, period, clear)


@pytest.mark.parametrize("texture, extent, depth", [
    (_texture("plain"), 1000, None),  # plain and smooth: as far as needed
    (_texture("smooth"), 1000, None),
    (_texture("textured", period=16.0), 1000, 48),  # three periods
    (_texture("textured", period=2.0), 1000, int(REACH_MIN * 1000)),  # fine grain: at least REACH_MIN
    (_texture("textured", period=200.0), 1000, int(REACH_MAX * 1000)),  # coarse: at most REACH_MAX
    (_texture("textured", period=16.0, clear=40), 1000, 40),  # never deeper than the clean backdrop
    (_texture("textured", period=16.0, clear=20), 1000, 0),  # under two periods of it: nothing to copy
    (_texture("textured", period=16.0, clear=0), 1000, 0),  # the subject sits on the edge
    (_texture("plain", clear=0), 1000, None),  # a plain band only continues colour and grain
    (BandTexture("bottom", "plain", 0.5, 1.0, 5.0, 0.0, 0, cut=0.3), 1000, 0),  # the photo cuts the subject here
    (BandTexture("bottom", "plain", 0.5, 1.0, 5.0, 0.0, 0, cut=0.01), 1000, None),  # a wisp touching the edge
])
def test_seamless_depth(texture: BandTexture, extent: int, depth: int | None) -> None:
    assert seamless_depth(texture, extent) == depth


def _cut(image: np.ndarray, known: Box, fill: np.ndarray | None = None) -> np.ndarray:
    """``image`` with everything outside ``known`` replaced by ``fill`` (None: left as it is)."""
    out = image.copy()
    if fill is not None:
        mask = np.ones(image.shape[:2], bool)
        mask[known.y0:known.y1, known.x0:known.x1] = False
        out[mask] = fill
    return out


KNOWN = Box(60, 40, W - 60, H - 40)


@pytest.mark.parametrize("make", [lambda: flat(noise=3.0), gradient, stripes, wood, lambda: photo("boat.jpg")[:H, :W]],
                         ids=["flat-noisy", "gradient", "stripes", "wood", "photo"])
def test_seam_score_of_the_real_continuation_is_about_one(make) -> None:
    """The 'new canvas' is the scene itself: no seam, whatever the texture."""
    scores = seam_score(make(), KNOWN)
    assert set(scores) == {"left", "top", "right", "bottom"}
    assert max(scores.values()) <= SEAMLESS_SCORE, scores


@pytest.mark.parametrize("make", [lambda: flat(noise=3.0), gradient, stripes, wood], ids=["flat", "gradient",
                                                                                          "stripes", "wood"])
def test_seam_score_sees_a_pad(make) -> None:
    scores = seam_score(_cut(make(), KNOWN, fill=255), KNOWN)
    assert min(scores.values()) > 3 * SEAMLESS_SCORE, scores


def test_seam_score_sees_a_level_step_and_only_on_its_side() -> None:
    image = gradient().astype(np.int32)
    image[:, KNOWN.x1:] += 25  # the right-hand new canvas is 25 levels too bright
    scores = seam_score(np.clip(image, 0, 255).astype(np.uint8), KNOWN)
    assert scores["right"] > 3 * SEAMLESS_SCORE and scores["left"] <= SEAMLESS_SCORE


def test_seam_score_of_a_flat_noiseless_band_stays_finite() -> None:
    assert seam_score(flat(), KNOWN) == {"left": 0.0, "top": 0.0, "right": 0.0, "bottom": 0.0}
    assert seam_score(_cut(flat(), KNOWN, fill=151), KNOWN)["top"] == pytest.approx(1 / 0.5)


def test_seam_score_only_scores_sides_with_new_canvas() -> None:
    assert set(seam_score(flat(noise=2.0), Box(0, 40, W, H))) == {"top"}
    assert seam_score(flat(noise=2.0), Box(0, 0, W, H)) == {}


@pytest.mark.parametrize("make", [lambda: flat(noise=3.0), gradient, stripes, wood],
                         ids=["flat", "gradient", "stripes", "wood"])
def test_classical_outpaint_is_seamless_at_the_seam(make) -> None:
    image = make()
    canvas = np.zeros((H + 80, W + 120, 3), np.uint8)
    known = Box(60, 40, 60 + W, 40 + H)
    canvas[40:40 + H, 60:60 + W] = image
    outpaint(canvas, known)
    scores = seam_score(canvas, known)
    assert max(scores.values()) <= SEAMLESS_SCORE, scores


def test_seam_score_leaves_out_where_the_subject_reaches_the_seam() -> None:
    image = _cut(flat(noise=3.0), KNOWN, fill=None)
    matte = np.zeros((H, W), np.uint8)
    matte[KNOWN.y1 - 60:KNOWN.y1, 200:280] = 255  # a subject standing on the bottom edge of the photo
    image[matte > 0] = 20
    image[KNOWN.y1:, 200:280] = 150  # the backdrop continues under it
    assert seam_score(image, KNOWN)["bottom"] > 3 * SEAMLESS_SCORE
    assert seam_score(image, KNOWN, matte)["bottom"] <= SEAMLESS_SCORE
    all_subject = np.ones((H, W), np.uint8)
    assert seam_score(image, KNOWN, all_subject) == {}
