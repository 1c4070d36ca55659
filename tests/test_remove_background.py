"""remove_background backend ``studio`` on synthetic studio shots with known alpha."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.config import config_from_dict
from pipeline.errors import ConfigError, PermanentError
from pipeline.prior import prior_file
from pipeline.schema import build
from pipeline.stages.base import Asset, StageContext, stage_class
from pipeline.stages.remove_background import StudioBackground, cut_out, estimate_subject_matte
from pipeline.stages.subject import _unmix, decontaminate_edges, trim_box
from pipeline.synth import BACKDROPS, SUBJECTS, label_shot, scene_image, studio_shot


_CTX: StageContext | None = None


def make_stage(**options: object) -> StudioBackground:
    """A stage in this module's one StageContext, as a worker's stages share theirs: the subject prior (an
    onnxruntime session) is loaded once for the module, not once per cut-out."""
    global _CTX
    if _CTX is None:
        _CTX = StageContext(config=config_from_dict({}, Path("/tmp/x.yaml")))
    return StudioBackground(StudioBackground.Options(**options), _CTX)


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


@pytest.mark.parametrize("backdrop", BACKDROPS)
def test_table_mean_meets_targets(backdrop: str) -> None:
    """The table's targets, met by each backdrop's shots on their own (so by the whole table too)."""
    scores, errors = [], []
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
    build(StudioBackground.Options, {"prior": False}, "r", errors)  # `prior: off` unquoted in YAML
    assert errors == ["r.prior: expected a string, got False (YAML reads an unquoted on, off, yes or no as false: "
                      "put the word in quotes)"]
    errors = []
    opts = build(StudioBackground.Options, {"keep_shadow": True, "trim": True, "trim_margin": 8}, "r", errors)
    assert not errors and opts.keep_shadow and opts.trim and opts.trim_margin == 8


# --- the learned subject prior, openings, near-white product areas, edges, clean files -------------

def coarse_prior(alpha: np.ndarray, cells: int = 80) -> np.ndarray:
    """A stand-in for U²-Netp: the true subject seen at about ``cells`` pixels and blurred back up, so thin
    gaps and small openings are filled in, as a 320-px network fills them."""
    h, w = alpha.shape
    small = cv2.resize(alpha.astype(np.float32), (max(2, cells * w // max(h, w)), max(2, cells * h // max(h, w))),
                       interpolation=cv2.INTER_AREA)
    return np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) * 1.3, 0.0, 1.0)


def prior_from(truth: np.ndarray, **kw: object):
    """A prior callable for cut_out: maps the working-size image to the coarse truth at that size."""
    def predict(small: np.ndarray) -> np.ndarray:
        return cv2.resize(coarse_prior(truth, **kw), (small.shape[1], small.shape[0]), interpolation=cv2.INTER_LINEAR)
    return predict


class FakePrior:
    def __init__(self, predict):
        self.predict = predict


def with_prior(stage: StudioBackground, predict) -> StudioBackground:
    stage._prior = lambda: FakePrior(predict) if predict is not None else None  # type: ignore[method-assign]
    return stage


def comb_shot(size: tuple[int, int] = (900, 600)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A dark comb on white paper: 10-px teeth with 8-px gaps (too narrow for the flood from the border to
    pass), and a small window in its spine. Returns (rgb uint8, true alpha, the openings' paper)."""
    w, h = size
    rng = np.random.default_rng(4)
    paper = np.full((h, w, 3), 0.93, np.float32)
    alpha = np.zeros((h, w), np.float32)
    alpha[200:260, 150:750] = 1.0  # spine
    for x in range(150, 750, 18):
        alpha[260:420, x:x + 10] = 1.0  # teeth
    alpha[215:245, 400:430] = 0.0  # a window in the spine
    alpha = cv2.GaussianBlur(alpha, (0, 0), 0.6)
    fg = np.array([0.15, 0.12, 0.1], np.float32)
    img = alpha[..., None] * fg + (1 - alpha[..., None]) * paper
    img += rng.standard_normal(img.shape).astype(np.float32) * 0.006
    rgb = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    openings = np.zeros((h, w), bool)
    openings[262:418, 150:750] = True
    openings[217:243, 402:428] = True
    openings &= alpha < 0.01
    return rgb, alpha, openings


def test_openings_show_the_backdrop_with_the_prior_and_not_without() -> None:
    rgb, alpha, openings = comb_shot()
    without = cut_out(rgb, prior=None)
    assert (without.pixels[..., 3][openings] == 255).mean() > 0.5  # the flood cannot reach them: paper kept
    cut = cut_out(rgb, prior=prior_from(alpha))
    a = cut.pixels[..., 3]
    assert (a[openings] > 127).mean() <= 0.01  # paper between the teeth and in the window is gone
    assert iou(a > 127, alpha > 0.5) >= 0.98
    opaque = a == 255
    assert np.array_equal(cut.pixels[..., :3][opaque], rgb[opaque])


def test_paper_inside_a_mug_handle_goes_even_when_the_prior_fills_it() -> None:
    shot = studio_shot("white", (1200, 800), seed=0, subject="mug")
    subject = (shot.alpha > 0).astype(np.uint8)
    flood = subject.copy()
    cv2.floodFill(flood, np.zeros((802, 1202), np.uint8), (0, 0), 1)
    handle = flood == 0  # paper enclosed by the handle
    assert handle.sum() > 2000
    filled = (shot.alpha > 0.5) | handle  # a prior that calls the handle's inside subject
    cut = cut_out(shot.rgb, prior=prior_from(filled.astype(np.float32), cells=200))
    assert (cut.pixels[..., 3][handle] == 255).mean() <= 0.01


@pytest.mark.parametrize("use_prior", [False, True])
def test_near_white_label_touching_the_paper_stays_opaque(use_prior: bool) -> None:
    for seed in range(3):
        shot, label = label_shot(seed=seed)
        # U²-Netp calls such a label background: the stand-in does too
        prior = prior_from(np.where(label, 0.0, shot.alpha)) if use_prior else None
        a = cut_out(shot.rgb, prior=prior).pixels[..., 3]
        inside = cv2.erode((shot.alpha >= 1).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        assert (a[label & inside] == 255).mean() >= 0.99, seed
        assert iou(a > 127, shot.alpha > 0.5) >= 0.98


def test_transparent_pixels_are_clean_and_opaque_ones_exact() -> None:
    shot = studio_shot("coloured", (640, 480), seed=4, subject="shoe")
    out = cut(shot.rgb).pixels
    clear = out[..., 3] == 0
    assert clear.mean() > 0.5
    assert not out[..., :3][clear].any()  # no backdrop colour hidden under alpha 0
    opaque = out[..., 3] == 255
    assert np.array_equal(out[..., :3][opaque], shot.rgb[opaque])


def test_unmix_stays_within_the_subjects_own_colours() -> None:
    B = np.array([[0.92, 0.92, 0.92]], np.float32)
    F_true = np.array([[0.5, 0.45, 0.4]], np.float32)
    I = 0.8 * F_true + 0.2 * B
    a = np.array([0.5], np.float32)  # underestimated: the plain solution overshoots into a dark rim
    free = _unmix(I, a, B, F_true)
    assert (free < F_true - 0.1).all()
    lo, hi = F_true - 0.05, F_true + 0.05
    bounded = _unmix(I, a, B, F_true, lo, hi, margin=0.02)
    assert (bounded >= lo - 0.02 - 1e-6).all() and (bounded <= hi + 0.02 + 1e-6).all()
    # the backdrop's colour is only ever removed: never pushed back towards it beyond the observed pixel
    assert np.linalg.norm(bounded - B) >= np.linalg.norm(I - B) - 1e-6


def test_decontaminated_edges_are_never_darker_than_the_subject_beside_them() -> None:
    for seed in range(4):
        shot = studio_shot("white", (800, 600), seed=seed)
        out = cut(shot.rgb, prior="off").pixels
        a = out[..., 3]
        opaque = a == 255
        # darkest opaque subject pixel within 12 px of each edge pixel, per channel
        darkest = cv2.erode(np.where(opaque[..., None], shot.rgb, 255).astype(np.uint8), np.ones((25, 25), np.uint8))
        edge = (a > 25) & (a < 230) & (darkest < 255).all(axis=2)
        assert edge.sum() > 50
        below = darkest[edge].astype(np.int32) - out[..., :3][edge].astype(np.int32)
        assert np.percentile(below.max(axis=1), 99) <= 0.03 * 255 + 1, seed


def test_prior_disagreement_is_recorded_and_marks_the_asset_for_review() -> None:
    shot = studio_shot("grey", (640, 480), seed=3, subject="box")
    agree = with_prior(make_stage(), prior_from(shot.alpha, cells=160))
    (out,) = agree.run(Asset(shot.rgb))
    notes = out.notes["remove_background"]
    assert notes["uncertain_outline"] < 0.05 and out.review == []
    assert notes["prior"] == "u2netp"
    # a prior that sees another subject (a box where there is none) disagrees on most of the outline
    elsewhere = np.zeros_like(shot.alpha)
    elsewhere[40:140, 40:200] = 1.0
    doubt = with_prior(make_stage(), prior_from(elsewhere))
    (out,) = doubt.run(Asset(shot.rgb))
    assert out.notes["remove_background"]["uncertain_outline"] > 0.5
    assert len(out.review) == 1 and "outline" in out.review[0] and "review_above 20%" in out.review[0]
    (never,) = with_prior(make_stage(review_above=1.0), prior_from(elsewhere)).run(Asset(shot.rgb))
    assert never.review == []
    # the matte itself still comes from the backdrop model: the prior only informs it
    assert iou(out.matte > 127, shot.alpha > 0.5) > 0.95


def test_without_the_prior_file_the_stage_says_so_and_still_cuts(tmp_path) -> None:
    config = config_from_dict({"models": {"cache_dir": str(tmp_path / "empty")}}, tmp_path / "c.yaml")
    stage = StudioBackground(StudioBackground.Options(), StageContext(config=config))
    shot = studio_shot("white", (400, 300), seed=1, subject="bottle")
    (out,) = stage.run(Asset(shot.rgb))
    notes = out.notes["remove_background"]
    assert notes["prior"].startswith("not in the model cache") and "uncertain_outline" not in notes
    assert iou(out.matte > 127, shot.alpha > 0.5) >= 0.95
    on = StudioBackground(StudioBackground.Options(prior="on"), StageContext(config=config))
    with pytest.raises(ConfigError, match="assetd models pull"):
        on.run(Asset(shot.rgb))


REAL_PRIOR = prior_file(config_from_dict({}, Path("/tmp/x.yaml")))


@pytest.mark.skipif(not REAL_PRIOR.is_file(), reason=f"the real prior is not in the cache ({REAL_PRIOR}); "
                                                       "`assetd models pull` (make test does it) puts it there")
def test_default_cut_out_with_the_real_prior() -> None:
    stage = make_stage()
    (out,) = stage.run(Asset(comb_shot()[0]))
    assert out.notes["remove_background"]["prior"] == "u2netp"
    rgb, alpha, openings = comb_shot()
    assert (out.pixels[..., 3][openings] > 127).mean() <= 0.01
    shot, label = label_shot(seed=1)
    (lab,) = stage.run(Asset(shot.rgb))
    inside = cv2.erode((shot.alpha >= 1).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert (lab.pixels[..., 3][label & inside] == 255).mean() >= 0.99
    for backdrop, subject in (("white", "mug"), ("grey", "shoe"), ("gradient", "bottle")):
        s = studio_shot(backdrop, (800, 600), seed=2, subject=subject)
        (o,) = stage.run(Asset(s.rgb))
        assert iou(o.matte > 127, s.alpha > 0.5) >= 0.98
        opaque = o.pixels[..., 3] == 255
        assert np.array_equal(o.pixels[..., :3][opaque], s.rgb[opaque])


def steep_shadow_shot(colour: tuple[float, float, float], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A product on three thin feet over grey paper with a short, dense contact shadow (a light close to the
    floor), sensor noise and JPEG: noise on the shadow's steep top edge looks like an outline there."""
    rng = np.random.default_rng(seed)
    h, w = 1100, 2000
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paper = np.float32(236 / 255) * (1 - 0.04 * yy[..., None] / h - 0.03 * ((xx[..., None] - w / 2) / w * 2) ** 2)
    alpha = np.zeros((h, w), np.float32)
    alpha[300:800, 700:1300] = 1.0
    for x in (760, 1000, 1200):
        alpha[800:940, x:x + 30] = 1.0
    alpha = cv2.GaussianBlur(alpha, (0, 0), 0.8)
    shadow = np.zeros((h, w), np.float32)
    cv2.ellipse(shadow, (1000, 938), (290, 20), 0, 0, 360, 1.0, -1)
    shadow = cv2.GaussianBlur(shadow, (0, 0), 8)
    backdrop = paper * (1 - 0.35 * shadow[..., None])
    img = alpha[..., None] * np.array(colour, np.float32) + (1 - alpha[..., None]) * backdrop
    img += rng.normal(0, 2 / 255, (h, w, 3))
    ok, data = cv2.imencode(".jpg", np.clip(np.rint(img * 255), 0, 255).astype(np.uint8),
                            [cv2.IMWRITE_JPEG_QUALITY, 92])
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED), alpha


@pytest.mark.parametrize("colour", [(0.25, 0.2, 0.35), (0.8, 0.6, 0.5)])
def test_a_steep_contact_shadow_leaves_no_slab_of_paper_under_the_subject(colour) -> None:
    rgb, alpha = steep_shadow_shot(colour)
    a = cut_out(rgb, prior=prior_from(alpha)).pixels[..., 3]
    outside = (a > 127) & (alpha < 0.01)
    assert outside.sum() <= 0.0015 * (alpha > 0.5).sum(), outside.sum() / (alpha > 0.5).sum()
    assert iou(a > 127, alpha > 0.5) >= 0.99
