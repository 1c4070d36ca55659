"""remove_background backend ``studio`` on synthetic studio shots with known alpha."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.config import config_from_dict
from pipeline.errors import PermanentError
from pipeline.schema import build
from pipeline.stages.base import Asset, StageContext, stage_class
from pipeline.stages.remove_background import (
    StudioBackground,
    decontaminate_edges,
    estimate_subject_matte,
    trim_box,
)
from pipeline.synth import BACKDROPS, SUBJECTS, scene_image, studio_shot


def make_stage(**options: object) -> StudioBackground:
    ctx = StageContext(config=config_from_dict({}, Path("/tmp/x.yaml")))
    return StudioBackground(StudioBackground.Options(**options), ctx)


def cut(pixels: np.ndarray, **options: object) -> Asset:
    (out,) = make_stage(**options).run(Asset(pixels))
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


SIZES = [(320, 240), (400, 300), (640, 480)]
CASES = [(b, s, SIZES[(i + j) % 3], 4 * i + j) for i, b in enumerate(BACKDROPS) for j, s in enumerate(SUBJECTS)]


@pytest.mark.parametrize("backdrop,subject,size,seed", CASES)
def test_cut_out_matches_ground_truth_and_keeps_opaque_pixels_exact(backdrop, subject, size, seed) -> None:
    shot = studio_shot(backdrop, size, seed=seed, subject=subject)
    out = cut(shot.rgb)
    w, h = size
    assert out.pixels.shape == (h, w, 4) and out.pixels.dtype == np.uint8
    assert out.matte is not None and out.matte.shape == (h, w) and out.matte.dtype == np.uint8
    alpha = out.pixels[..., 3]
    assert np.array_equal(out.matte, alpha)  # no shadow kept: the alpha is the subject's matte
    est = alpha.astype(np.float32) / 255.0
    assert iou(est > 0.5, shot.alpha > 0.5) >= 0.95
    assert float(np.abs(est - shot.alpha).mean()) <= 0.01
    # THE PROMISE: opaque output pixels carry the input's RGB bit for bit
    opaque = alpha == 255
    assert opaque.sum() > 0.9 * (shot.alpha >= 1).sum()
    assert np.array_equal(out.pixels[..., :3][opaque], shot.rgb[opaque])
    notes = out.notes["remove_background"]
    assert notes["backend"] == "studio" and notes["shadow"] == "removed"
    assert notes["backdrop"]["colour"].startswith("#")


def test_table_mean_meets_targets() -> None:
    scores, errors = [], []
    for backdrop in BACKDROPS:
        for seed, subject in enumerate(SUBJECTS):
            shot = studio_shot(backdrop, (400, 300), seed=100 + seed, subject=subject)
            est = cut(shot.rgb).matte.astype(np.float32) / 255.0
            scores.append(iou(est > 0.5, shot.alpha > 0.5))
            errors.append(float(np.abs(est - shot.alpha).mean()))
    assert np.mean(scores) >= 0.97
    assert np.mean(errors) <= 0.02


def test_trim_crops_to_subject_with_margin() -> None:
    shot = studio_shot("grey", (400, 300), seed=5, subject="bottle")
    full = cut(shot.rgb)
    trimmed = cut(shot.rgb, trim=True)
    x0, y0, x1, y1 = box_of(full.pixels[..., 3] > 0)
    assert trimmed.pixels.shape[:2] == (y1 - y0, x1 - x0)
    assert trimmed.matte.shape == trimmed.pixels.shape[:2]
    assert trimmed.notes["remove_background"]["trim"] == [x0, y0, x1, y1]
    assert np.array_equal(trimmed.pixels, full.pixels[y0:y1, x0:x1])
    tx0, ty0, tx1, ty1 = box_of(shot.alpha > 0.5)
    assert abs(tx0 - x0) <= 3 and abs(ty0 - y0) <= 3 and abs(tx1 - x1) <= 3 and abs(ty1 - y1) <= 3
    margined = cut(shot.rgb, trim=True, trim_margin=10)
    assert margined.pixels.shape[:2] == (y1 - y0 + 20, x1 - x0 + 20)
    huge = cut(shot.rgb, trim=True, trim_margin=5000)  # clamped to the canvas
    assert huge.pixels.shape[:2] == (300, 400)


def test_trim_box_geometry() -> None:
    a = np.zeros((10, 20), np.uint8)
    assert trim_box(a, 3) is None
    a[2:5, 6:9] = 1
    assert trim_box(a, 0) == (6, 2, 9, 5)
    assert trim_box(a, 4) == (2, 0, 13, 9)


def test_keep_shadow_adds_faint_dark_pixels_below_subject_only_when_asked() -> None:
    shot = studio_shot("white", (480, 360), seed=3, subject="box")
    rows = np.flatnonzero((shot.alpha > 0.5).any(axis=1))
    below = slice(rows[-1] + 3, None)
    without = cut(shot.rgb)
    assert not without.pixels[below, :, 3].any()
    kept = cut(shot.rgb, keep_shadow=True)
    a = kept.pixels[below, :, 3]
    faint = (a > 0) & (a < 160)
    assert faint.sum() > 100 and not (a >= 160).any()
    assert kept.pixels[below][faint][:, :3].max() <= 10  # shadow is stored as black at low alpha
    # the matte stays the subject only, and subject pixels stay exact
    assert iou(kept.matte > 127, without.matte > 127) > 0.99
    assert not kept.matte[below].any()
    opaque = kept.pixels[..., 3] == 255
    assert np.array_equal(kept.pixels[..., :3][opaque], shot.rgb[opaque])
    assert kept.notes["remove_background"]["shadow"]["pixels"] > 100


def _local_mean(img: np.ndarray, weight: np.ndarray, sigma: float = 3.0) -> np.ndarray:
    wf = weight.astype(np.float32)
    num = cv2.GaussianBlur(img.astype(np.float32) * wf[..., None], (0, 0), sigma)
    return num / np.maximum(cv2.GaussianBlur(wf, (0, 0), sigma), 1e-6)[..., None]


def _spill(rgb: np.ndarray, subject: np.ndarray, backdrop: np.ndarray, where: np.ndarray) -> float:
    """Mean position of pixels on the line from the local subject colour (0) to the local paper colour (1)."""
    d = backdrop[where] - subject[where]
    t = ((rgb[where].astype(np.float32) - subject[where]) * d).sum(1) / np.maximum((d * d).sum(1), 1.0)
    return float(t.mean())


def test_decontamination_removes_backdrop_colour_from_edges() -> None:
    shot = studio_shot("coloured", (480, 360), seed=11, subject="box", noise=False)
    raw = cut(shot.rgb, decontaminate=False)
    clean = cut(shot.rgb, decontaminate=True)
    a = clean.pixels[..., 3]
    assert np.array_equal(raw.pixels[..., 3], a)
    # only partially transparent pixels may change
    changed = np.any(raw.pixels[..., :3] != clean.pixels[..., :3], axis=2)
    assert changed.any() and not (changed & ((a == 0) | (a == 255))).any()
    # spill measured against the colours just inside and just outside the outline
    subject = _local_mean(shot.rgb, a == 255)
    paper = _local_mean(shot.rgb, a == 0)
    edge = (a > 25) & (a < 230)
    assert edge.sum() > 100
    before = _spill(raw.pixels[..., :3], subject, paper, edge)
    after = _spill(clean.pixels[..., :3], subject, paper, edge)
    assert before > 0.25  # the raw edge really is tinted by the paper
    assert after < 0.1 and after < before / 3, (before, after)


def test_uint16_input_keeps_the_promise_in_16_bit() -> None:
    shot = studio_shot("gradient", (400, 300), seed=2, subject="mug")
    px16 = shot.rgb.astype(np.uint16) * 257 + np.uint16(100)  # fine values an 8-bit path would lose
    out = cut(px16)
    assert out.pixels.dtype == np.uint16 and out.pixels.shape == (300, 400, 4)
    assert out.matte.dtype == np.uint8
    alpha = out.pixels[..., 3]
    opaque = alpha == 65535
    assert opaque.sum() > 1000
    assert np.array_equal(out.pixels[..., :3][opaque], px16[opaque])
    assert np.array_equal(out.matte == 255, opaque)  # 255 in the matte means exactly "opaque"
    ref = cut(shot.rgb).matte
    assert iou(out.matte > 127, ref > 127) > 0.98
    assert iou(alpha > 32767, shot.alpha > 0.5) >= 0.95


def test_rgba_input_with_transparency_is_respected_and_opaque_rgba_is_cut() -> None:
    shot = studio_shot("white", (320, 240), seed=1, subject="bottle")
    alpha = np.rint(shot.alpha * 255).astype(np.uint8)
    rgba = np.dstack([shot.rgb, alpha])
    out = cut(rgba)
    assert np.array_equal(out.pixels, rgba)
    assert np.array_equal(out.matte, alpha)
    assert out.notes["remove_background"]["kept_input_alpha"] is True
    opaque_rgba = np.dstack([shot.rgb, np.full_like(alpha, 255)])
    out2 = cut(opaque_rgba)
    assert np.array_equal(out2.pixels, cut(shot.rgb).pixels)


def test_no_plain_backdrop_or_no_subject_fail_permanently() -> None:
    with pytest.raises(PermanentError, match="backdrop"):
        cut(scene_image((320, 240), seed=0, kind="wood"))
    empty = studio_shot("white", (320, 240), seed=0, shadow=False).rgb.copy()
    empty[:] = empty[5:6, 5:6]  # only paper
    with pytest.raises(PermanentError, match="no subject"):
        cut(empty)


def test_estimate_subject_matte_frames_the_subject() -> None:
    shot = studio_shot("vignette", (640, 480), seed=9, subject="shoe")
    matte = estimate_subject_matte(shot.rgb)
    assert matte is not None and matte.shape == (480, 640) and matte.dtype == np.uint8
    got = box_of(matte > 127)
    want = box_of(shot.alpha > 0.5)
    assert all(abs(g - w) <= 4 for g, w in zip(got, want)), (got, want)
    assert estimate_subject_matte(scene_image((320, 240), kind="marble")) is None
    noise = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    assert estimate_subject_matte(noise) is None


def test_decontaminate_edges_recovers_foreground_colour_over_any_background() -> None:
    h, w = 200, 300
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dist = np.hypot(xx - 150, yy - 100)
    alpha = np.clip((60.0 - dist) / 3.0, 0.0, 1.0)  # a 3-pixel soft edge
    fg = np.array([200, 40, 30], np.float32)
    bg = np.dstack([xx / w * 255, np.full_like(xx, 90), 255 - yy / h * 200])  # not a plain colour
    rgb = np.clip(np.rint(alpha[..., None] * fg + (1 - alpha[..., None]) * bg), 0, 255).astype(np.uint8)
    a8 = np.rint(alpha * 255).astype(np.uint8)
    out = decontaminate_edges(rgb, a8)
    partial = (a8 > 0) & (a8 < 255)
    assert np.array_equal(out[~partial], rgb[~partial])
    solid = (a8 > 80) & (a8 < 255)
    err_before = np.abs(rgb[solid].astype(np.float32) - fg).mean()
    err_after = np.abs(out[solid].astype(np.float32) - fg).mean()
    assert err_after < 12 and err_after < err_before / 3
    # a known backdrop given as an image works the same; float alpha is accepted
    out2 = decontaminate_edges(rgb, alpha.astype(np.float32), backdrop=np.clip(bg, 0, 255).astype(np.uint8))
    assert np.abs(out2[solid].astype(np.float32) - fg).mean() < 6


def test_registered_and_options_are_documented_and_validated() -> None:
    assert stage_class("remove_background", "studio") is StudioBackground
    assert stage_class("remove_background", None) is StudioBackground
    for f in dataclasses.fields(StudioBackground.Options):
        assert f.metadata.get("doc"), f.name
    errors: list[str] = []
    build(StudioBackground.Options, {"tolerance": 9.0, "work_size": 10, "trim_margin": -1, "keep_shadow": "yes"},
          "rules.x.remove_background", errors)
    assert len(errors) == 4 and all(e.startswith("rules.x.remove_background.") for e in errors)
    errors = []
    opts = build(StudioBackground.Options, {"keep_shadow": True, "trim": True, "trim_margin": 8}, "r", errors)
    assert not errors and opts.keep_shadow and opts.trim and opts.trim_margin == 8
