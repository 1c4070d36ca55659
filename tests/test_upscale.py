"""Stage upscale (backend lanczos): sizes, recorded factors, no halos, never shrinking."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.config import Config
from pipeline.errors import PermanentError
from pipeline.schema import build
from pipeline.stages.base import Asset, StageContext, stage_class
from pipeline.stages.framing import ratio_error
from pipeline.stages.subject import target_size
from pipeline.stages.upscale import LanczosUpscale, UpscaleOptions


def make_stage(**options: object) -> LanczosUpscale:
    errors: list[str] = []
    opts = build(UpscaleOptions, options, "upscale", errors)
    assert errors == []
    return LanczosUpscale(opts, StageContext(config=Config(source=Path("/nonexistent/config.yaml"))))


def photo(w: int = 120, h: int = 80) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_registered_as_default_backend() -> None:
    assert stage_class("upscale", None) is LanczosUpscale


@pytest.mark.parametrize("options, size, factor", [
    ({"long_edge": 300}, (300, 200), 2.5),
    ({"factor": 2.0}, (240, 160), 2.0),
    ({"factor": 1.5}, (180, 120), 1.5),
])
def test_sizes_and_recorded_factor(options: dict, size: tuple[int, int], factor: float) -> None:
    matte = np.zeros((80, 120), np.uint8)
    matte[20:60, 40:80] = 255
    asset = Asset(photo(), matte, scale=0.5)
    out = make_stage(**options).run(asset)[0]
    assert (out.width, out.height) == size
    assert out.matte is not None and out.matte.shape == (size[1], size[0])
    assert out.scale == pytest.approx(0.5 * factor)
    assert out.notes["upscale"] == {"backend": "lanczos", "factor": pytest.approx(factor), "from": [120, 80],
                                    "to": list(size)}
    # the matte is resized with the pixels: its box scales by the factor
    ys, xs = np.nonzero(out.matte > 127)
    assert abs(xs.min() - 40 * factor) <= 2 and abs(ys.max() + 1 - 60 * factor) <= 2


@pytest.mark.parametrize("options", [{"long_edge": 100}, {"long_edge": 120}, {"factor": 1.0}])
def test_never_downsizes(options: dict) -> None:
    img = photo()
    out = make_stage(**options).run(Asset(img))[0]
    assert np.array_equal(out.pixels, img) and out.scale == 1.0
    assert out.notes["upscale"]["factor"] == 1.0 and out.notes["upscale"]["to"] == [120, 80]


def test_max_factor_caps_and_records() -> None:
    out = make_stage(long_edge=1200, max_factor=4.0).run(Asset(photo()))[0]
    assert (out.width, out.height) == (480, 320)
    note = out.notes["upscale"]
    assert note["factor"] == 4.0 and note["capped"] == {"requested": 10.0, "max_factor": 4.0}


def test_alpha_edges_get_no_dark_halo() -> None:
    # a white disc on transparent black: straight-alpha resizing would darken the rim
    alpha = np.zeros((64, 64), np.uint8)
    cv2.circle(alpha, (32, 32), 20, 255, -1)
    rgba = np.dstack([np.zeros((64, 64, 3), np.uint8), alpha])
    rgba[alpha > 0, :3] = 255
    out = make_stage(factor=3.0, sharpen=0.0).run(Asset(rgba))[0]
    a = out.pixels[..., 3]
    rim = (a > 10) & (a < 245)
    assert rim.sum() > 50
    assert out.pixels[rim][:, :3].min() >= 250, "dark fringe on the cut-out's edge"
    sharpened = make_stage(factor=3.0).run(Asset(rgba))[0]
    rim = (sharpened.pixels[..., 3] > 10) & (sharpened.pixels[..., 3] < 245)
    assert sharpened.pixels[rim][:, :3].min() >= 240


def test_crop_ratio_survives_rounding() -> None:
    img = np.zeros((1350, 1080, 3), np.uint8)
    out = make_stage(long_edge=2047).run(Asset(img, ratio="4:5"))[0]
    assert out.height == 2047 and ratio_error(out.width, out.height, (4, 5)) < 1
    assert target_size(1920, 1080, 1.5, "16:9") == (2880, 1620)


def test_sixteen_bit() -> None:
    img = (photo().astype(np.uint16) * 257)
    out = make_stage(factor=2.0).run(Asset(img))[0]
    assert out.pixels.dtype == np.uint16 and out.pixels.shape == (160, 240, 3)


def test_missing_target_is_a_clear_error() -> None:
    with pytest.raises(PermanentError, match="neither long_edge nor factor"):
        make_stage().run(Asset(photo()))


def test_validate_and_option_problems() -> None:
    opts = UpscaleOptions(long_edge=1000, factor=2.0)
    assert LanczosUpscale.validate(opts, "steps[3].upscale", Config()) == [
        "steps[3].upscale: set long_edge or factor, not both"]
    errors: list[str] = []
    build(UpscaleOptions, {"factor": 0.5, "long_edge": 8}, "upscale", errors)
    assert len(errors) == 2 and "at least 1.0" in errors[1] and "at least 16" in errors[0]


def test_upscale_without_a_size_enlarges_to_its_channels_long_edge(workspace) -> None:
    from pipeline.oneshot import run_once

    for f in (workspace.root / "rules").iterdir():
        f.unlink()
    workspace.add_rule("10-big.yaml", "name: big\nsteps: [{upscale: {}}]\noutputs: [{channel: webshop}]\n")
    config, rules = workspace.load()
    result = run_once(config, rules, [workspace.shot("inbox/a.jpg", size=(480, 360))])[0]
    assert result["status"] == "done", result
    (out,) = result["outputs"]
    assert (out["width"], out["height"]) == (600, 450)  # webshop's long_edge; the shot was 480×360


def test_spandrel_without_a_size_aims_at_the_channels_long_edge_else_its_own_scale(workspace) -> None:
    (workspace.root / "x4.pth").write_bytes(b"weights")  # loading is not needed to resolve the size
    for f in (workspace.root / "rules").iterdir():
        f.unlink()
    workspace.add_rule("10-big.yaml", "name: big\nsteps: [{upscale: {backend: spandrel, model: x4.pth}}]\n"
                                      "outputs: [{channel: webshop}, {channel: instagram}]\n")
    workspace.add_rule("20-raw.yaml", "name: raw\nsteps: [{upscale: {backend: spandrel, model: x4.pth}}]\n"
                                      "outputs: [{channel: cutouts}]\n")
    big, raw = workspace.load()[1]
    assert big.step("upscale").options.long_edge == 600 and big.step("upscale").options.factor is None
    assert raw.step("upscale").options.long_edge is None  # no channel long_edge: the model's own scale


def test_a_large_enlargement_is_marked_for_review() -> None:
    img = np.full((100, 80, 3), 128, np.uint8)
    (soft,) = make_stage(factor=3.0).run(Asset(img, ratio="4:5"))
    assert soft.review == ["upscale 4:5: enlarged 3.00× by Lanczos (review_above 2.5): check the product's sharpness"]
    (fine,) = make_stage(factor=2.0).run(Asset(img, ratio="4:5"))
    assert fine.review == []
    (asked,) = make_stage(factor=3.0, review_above=4.0).run(Asset(img))
    assert asked.review == []
