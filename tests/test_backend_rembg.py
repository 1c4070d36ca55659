"""remove_background backend rembg: a tiny ONNX segmentation model through rembg's custom session."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.stages.base import Asset, StageContext
from pipeline.stages.rembg_backend import RembgBackground, RembgOptions
from tinymodels import make_config, needs, netguard, tiny_dark_subject_onnx  # noqa: F401

pytestmark = [pytest.mark.usefixtures("netguard"), needs("rembg")]


@pytest.fixture
def rembg_home(tmp_path, monkeypatch):
    home = tmp_path / "rembg-home"
    home.mkdir()
    monkeypatch.setenv("REMBG_HOME", str(home))
    monkeypatch.delenv("U2NET_HOME", raising=False)
    return home


def product_shot(h: int = 120, w: int = 160) -> np.ndarray:
    """A dark, textured product on a white backdrop."""
    img = np.full((h, w, 3), 250, np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    inside = (np.abs(xx - w / 2) < w / 5) & (np.abs(yy - h / 2) < h / 4)
    img[inside] = np.stack([20 + xx % 30, 30 + yy % 20, 25 + (xx + yy) % 25], -1)[inside]
    return img


def stage_for(tmp_path, **opts) -> RembgBackground:
    config = make_config(tmp_path)
    options = RembgOptions(**{"model": str(tiny_dark_subject_onnx()), **opts})
    return RembgBackground(options, StageContext(config))


def test_cutout_keeps_opaque_pixels_and_reuses_the_session(tmp_path, rembg_home):
    stage = stage_for(tmp_path)
    stage.prepare()
    src = product_shot()
    (out,) = stage.run(Asset(src))
    (again,) = stage.run(Asset(src))
    assert stage.ctx.models.loaded() == [("rembg", str(tiny_dark_subject_onnx()))]
    assert out.pixels.shape == (120, 160, 4) and out.pixels.dtype == np.uint8
    alpha = out.pixels[..., 3]
    opaque = alpha == 255
    assert opaque[50:70, 70:90].all() and (alpha[:10, :10] == 0).all()
    np.testing.assert_array_equal(out.pixels[..., :3][opaque], src[opaque])
    np.testing.assert_array_equal(out.matte, alpha)
    np.testing.assert_array_equal(again.pixels, out.pixels)
    assert out.notes["remove_background"]["backend"] == "rembg"
    # rembg refuses model paths outside its home: the file was linked inside it
    assert list((rembg_home / "models" / "custom").iterdir())


def test_uint16_trim_and_matting(tmp_path, rembg_home):
    stage = stage_for(tmp_path, trim=True, trim_margin=2, alpha_matting=True, alpha_matting_erode=3)
    src = product_shot().astype(np.uint16) * 257
    (out,) = stage.run(Asset(src))
    assert out.pixels.dtype == np.uint16
    x0, y0, x1, y1 = out.notes["remove_background"]["trim"]
    assert out.pixels.shape[:2] == (y1 - y0, x1 - x0) < (120, 160)
    opaque = out.pixels[..., 3] == 65535
    assert opaque.any()
    np.testing.assert_array_equal(out.pixels[..., :3][opaque], src[y0:y1, x0:x1][opaque])


def test_missing_models_are_config_errors(tmp_path, rembg_home):
    config = make_config(tmp_path)
    problems = RembgBackground.validate(RembgOptions(model="models/missing.onnx"), "steps[0].remove_background",
                                        config)
    assert "missing.onnx" in problems[0]
    stage = RembgBackground(RembgOptions(model="isnet-general-use"), StageContext(config))
    with pytest.raises(ConfigError, match="assetd models pull --config"):
        stage.prepare()  # not downloaded: fails fast, never downloads
    bad = RembgBackground(RembgOptions(model="no-such-model"), StageContext(config))
    with pytest.raises(ConfigError, match="birefnet-general"):
        bad.prepare()


def soft_disk_shot(h: int = 900, w: int = 1200) -> tuple[np.ndarray, np.ndarray]:
    """A dark disk with a 2-px soft edge on a light, slightly graded backdrop, and its true alpha."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    alpha = np.clip((300.0 - np.hypot(xx - w / 2, yy - h / 2)) / 2.0 + 0.5, 0.0, 1.0)
    backdrop = np.dstack([np.full_like(xx, 235), 232 - yy / h * 10, np.full_like(xx, 228)])
    fg = np.array([30, 40, 90], np.float32)
    rgb = alpha[..., None] * fg + (1 - alpha[..., None]) * backdrop
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8), alpha


def test_edge_is_refined_at_full_resolution(tmp_path, rembg_home):
    """The model sees 320 px; the cut-out's edge follows the real one at full size."""
    rgb, alpha = soft_disk_shot()
    band = (alpha > 0) & (alpha < 1)
    band = np.asarray(band)
    near = np.zeros_like(band)
    ys, xs = np.nonzero(band)
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            near[np.clip(ys + dy, 0, 899), np.clip(xs + dx, 0, 1199)] = True
    errors = {}
    for refine in (False, True):
        (out,) = stage_for(tmp_path, refine_edge=refine).run(Asset(rgb))
        a = out.pixels[..., 3].astype(np.float32) / 255
        errors[refine] = float(np.abs(a - alpha)[near].mean())
        opaque = out.pixels[..., 3] == 255
        np.testing.assert_array_equal(out.pixels[..., :3][opaque], rgb[opaque])
        assert not out.pixels[..., :3][out.pixels[..., 3] == 0].any()  # clean transparent pixels
        assert out.notes["remove_background"]["edge"] == ("full resolution" if refine else "model mask")
    assert errors[True] < 0.1 and errors[True] < errors[False] / 2, errors


def test_pull_fetches_into_the_configured_cache_dir(tmp_path, rembg_home, monkeypatch):
    """models pull puts a rembg model where the stage then looks for it (models.cache_dir/rembg)."""
    import os

    from pipeline.stages import rembg_backend

    config = make_config(tmp_path, cache_dir=str(tmp_path / "cache"))
    session = rembg_backend._rembg_session_class("u2netp")
    seen = []
    monkeypatch.setattr(session, "download_models", classmethod(lambda cls, *a, **k: seen.append(
        os.environ["U2NET_HOME"]) or os.path.join(cls.u2net_home(), "u2netp.onnx")))
    rembg_backend.RembgModel.pull(config, "u2netp")
    assert seen == [str(tmp_path / "cache" / "rembg")]
