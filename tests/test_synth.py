"""Synthetic studio shots: deterministic, physically composed, with the shadow kept out of the subject."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.synth import BACKDROPS, SCENES, SUBJECTS, Shot, scene_image, studio_shot


@pytest.mark.parametrize("backdrop", BACKDROPS)
@pytest.mark.parametrize("subject", SUBJECTS)
def test_every_kind_renders_a_subject_inside_the_frame(backdrop: str, subject: str) -> None:
    shot = studio_shot(backdrop, (320, 240), seed=3, subject=subject)
    assert isinstance(shot, Shot)
    assert shot.rgb.shape == (240, 320, 3) and shot.rgb.dtype == np.uint8
    assert shot.alpha.shape == (240, 320) and shot.alpha.dtype == np.float32
    assert float(shot.alpha.min()) >= 0.0 and float(shot.alpha.max()) <= 1.0
    assert (shot.backdrop, shot.subject) == (backdrop, subject)
    covered = shot.alpha > 0.5
    assert 0.03 < covered.mean() < 0.5
    # anti-aliased: there are partial pixels along the outline
    assert ((shot.alpha > 0.05) & (shot.alpha < 0.95)).sum() > 50
    # the subject stays clear of the border (a studio product shot)
    assert not covered[:3].any() and not covered[-3:].any() and not covered[:, :3].any() and not covered[:, -3:].any()


def test_same_seed_same_shot_and_other_seed_differs() -> None:
    a = studio_shot("gradient", (320, 240), seed=7)
    b = studio_shot("gradient", (320, 240), seed=7)
    c = studio_shot("gradient", (320, 240), seed=8)
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.alpha, b.alpha) and a.subject == b.subject
    assert not np.array_equal(a.rgb, c.rgb)


def test_shadow_darkens_backdrop_under_the_base_but_is_not_subject() -> None:
    lit = studio_shot("white", (400, 300), seed=2, subject="box", shadow=False, noise=False)
    shaded = studio_shot("white", (400, 300), seed=2, subject="box", shadow=True, noise=False)
    assert not lit.shadow.any()
    assert float(shaded.shadow.max()) > 0.2
    assert np.array_equal(lit.alpha, shaded.alpha)  # the shadow is not part of the subject
    opaque = shaded.alpha >= 1.0
    assert np.array_equal(lit.rgb[opaque], shaded.rgb[opaque])  # and does not touch the subject's pixels
    rows = np.flatnonzero(shaded.alpha.max(axis=1) > 0.5)
    cols = np.flatnonzero(shaded.alpha.max(axis=0) > 0.5)
    below = (slice(rows[-1] + 2, rows[-1] + 6), slice(cols[0], cols[-1]))
    assert shaded.rgb[below].mean() < lit.rgb[below].mean() - 20


def test_composite_is_alpha_blend_of_subject_over_backdrop() -> None:
    shot = studio_shot("coloured", (320, 240), seed=1, subject="box", shadow=False, noise=False)
    clear = shot.alpha == 0.0
    # away from the subject the image is the smooth paper colour
    centre_row = shot.rgb[10, :, :].astype(int)
    assert np.abs(np.diff(centre_row, axis=0)).max() <= 2
    # partial pixels lie between the subject's and the paper's colours
    partial = (shot.alpha > 0.3) & (shot.alpha < 0.7)
    bg = np.array(shot.backdrop_colour) * 255
    assert clear.any() and partial.any()
    d_partial = np.linalg.norm(shot.rgb[partial] - bg, axis=1).mean()
    d_opaque = np.linalg.norm(shot.rgb[shot.alpha >= 1.0] - bg, axis=1).mean()
    assert 0.2 * d_opaque < d_partial < 0.9 * d_opaque


def test_noise_is_seeded_and_small() -> None:
    clean = studio_shot("grey", (320, 240), seed=4, noise=False)
    noisy = studio_shot("grey", (320, 240), seed=4, noise=True)
    diff = noisy.rgb.astype(int) - clean.rgb.astype(int)
    assert 0.5 < diff.std() < 4.0


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="backdrop"):
        studio_shot("plaid", (64, 48))
    with pytest.raises(ValueError, match="subject"):
        studio_shot("white", (64, 48), subject="teapot")
    with pytest.raises(ValueError, match="scene"):
        scene_image((64, 48), kind="beach")


@pytest.mark.parametrize("kind", SCENES)
def test_scene_image_is_deterministic_and_textured(kind: str) -> None:
    a = scene_image((320, 200), seed=1, kind=kind)
    b = scene_image((320, 200), seed=1, kind=kind)
    assert a.shape == (200, 320, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, scene_image((320, 200), seed=2, kind=kind))
    # a wall above and a table below that look different
    assert np.abs(a[:60].reshape(-1, 3).mean(0) - a[-60:].reshape(-1, 3).mean(0)).max() > 5
    assert a[-60:].std() > 3
