"""upscale backend spandrel: tiny ESRGAN/SPAN weights detected by spandrel, tiled in bounded memory."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.stages.base import Asset, StageContext
from pipeline.stages.spandrel_upscale import (SpandrelOptions, SpandrelUpscale, TileOutOfMemory, feather, tile_starts,
                                              tiled_upscale)
from pipeline.stages.subject import requested_factor, target_size
from tinymodels import make_config, netguard, tiny_esrgan_x4, tiny_span_x2  # noqa: F401

pytestmark = pytest.mark.usefixtures("netguard")


def photo(h: int, w: int, channels: int = 3) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([(xx * 7) % 256, (yy * 5) % 256, ((xx + yy) * 3) % 256], -1).astype(np.uint8)
    if channels == 4:
        alpha = np.where((xx > w // 4) & (yy > h // 4), 255, 0).astype(np.uint8)
        return np.dstack([rgb, alpha])
    return rgb


def stage_for(tmp_path, weights, **opts) -> SpandrelUpscale:
    config = make_config(tmp_path, spandrel=str(weights))
    return SpandrelUpscale(SpandrelOptions(**opts), StageContext(config))


@pytest.mark.parametrize("length, tile, overlap", [(10, 64, 8), (100, 32, 8), (129, 64, 16), (64, 64, 8)])
def test_tiles_cover_everything_with_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s:s + tile] = True
    assert covered.all() and starts[0] == 0 and min(length, starts[-1] + tile) == length
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def spandrel_size(width, height, long_edge, factor, model_scale):
    wanted = requested_factor(width, height, long_edge, factor)
    return target_size(width, height, model_scale if wanted is None else wanted)


def test_target_size_and_feather():
    assert spandrel_size(100, 50, None, None, 4) == (400, 200)
    assert spandrel_size(100, 50, 300, None, 4) == (300, 150)
    assert spandrel_size(100, 50, None, 2.5, 4) == (250, 125)
    w = feather(10, 4, start=True, end=False)
    assert w[0] < w[3] < w[4] == 1.0 and w[-1] == 1.0 and (w > 0).all()


def test_upscale_x4_keeps_alpha_and_records_scale(tmp_path):
    stage = stage_for(tmp_path, tiny_esrgan_x4(), tile=64, overlap=16)
    stage.prepare()
    src = photo(40, 56, 4)
    matte = src[..., 3].copy()
    (out,) = stage.run(Asset(src, matte=matte, scale=0.5))
    assert out.pixels.shape == (160, 224, 4)
    assert out.matte.shape == (160, 224)
    assert out.scale == pytest.approx(2.0)
    assert set(np.unique(out.pixels[..., 3][::8, ::8])) <= set(range(256))
    assert out.pixels[..., 3][150, 220] == 255 and out.pixels[..., 3][5, 5] == 0
    note = out.notes["upscale"]
    assert note["architecture"] == "ESRGAN" and note["model_scale"] == 4 and note["factor"] == pytest.approx(4.0)


def test_long_edge_not_matching_model_scale_is_resampled(tmp_path):
    stage = stage_for(tmp_path, tiny_span_x2(), long_edge=150, tile=64, overlap=8)
    (out,) = stage.run(Asset(photo(60, 100)))
    assert out.pixels.shape == (90, 150, 3)
    assert out.notes["upscale"]["architecture"] == "SPAN"


def test_size_keeps_the_crop_ratio_and_max_factor_like_lanczos(tmp_path):
    # a crop's pixels round off its ratio (57 px for 100 × 9/16): the enlargement restores the exact ratio
    (out,) = stage_for(tmp_path, tiny_span_x2(), factor=3.0).run(Asset(photo(57, 100), ratio="16:9"))
    assert out.pixels.shape == (169, 300, 3)
    # a long edge 10× the image is capped at max_factor (default 4), and the cap is recorded
    (out,) = stage_for(tmp_path, tiny_span_x2(), long_edge=300).run(Asset(photo(20, 30)))
    assert out.pixels.shape == (80, 120, 3)
    assert out.notes["upscale"]["capped"] == {"requested": 10.0, "max_factor": 4.0}


def test_uint16_stays_uint16(tmp_path):
    stage = stage_for(tmp_path, tiny_span_x2())
    src = photo(24, 20).astype(np.uint16) * 257
    (out,) = stage.run(Asset(src))
    assert out.pixels.dtype == np.uint16 and out.pixels.shape == (48, 40, 3)


def test_tiled_equals_untiled_away_from_the_border(tmp_path):
    stage = stage_for(tmp_path, tiny_esrgan_x4())
    model = stage._model()
    run = stage._runner(model)
    src = photo(96, 112)
    whole = tiled_upscale(src, run, 4, (448, 384), tile=512, overlap=0)
    tiled = tiled_upscale(src, run, 4, (448, 384), tile=48, overlap=16)
    inner = (slice(16, -16), slice(16, -16))
    diff = np.abs(whole[inner].astype(int) - tiled[inner].astype(int))
    assert diff.mean() < 0.5 and diff.max() <= 8


def test_out_of_memory_halves_the_tile(tmp_path):
    stage = stage_for(tmp_path, tiny_span_x2(), tile=256, overlap=8)
    real = stage._runner(stage._model())
    seen = []

    def flaky(piece):
        seen.append(piece.shape[0])
        if piece.shape[0] > 64:
            raise TileOutOfMemory()
        return real(piece)

    stage._runner = lambda model: flaky
    (out,) = stage.run(Asset(photo(100, 80)))
    assert out.pixels.shape == (200, 160, 3)
    assert stage._tile == 64 and out.notes["upscale"]["tile"] == 64


def test_validate_reports_missing_weights(tmp_path):
    config = make_config(tmp_path)
    problems = SpandrelUpscale.validate(SpandrelOptions(model=tmp_path / "nope.pth"), "steps[3].upscale", config)
    assert problems and "nope.pth" in problems[0] and "not found" in problems[0]
    assert "required" in SpandrelUpscale.validate(SpandrelOptions(), "steps[3].upscale", config)[0]
