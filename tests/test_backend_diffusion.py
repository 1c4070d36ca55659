"""place_in_scene backend diffusers and the crops fill generate, on tiny saved pipelines (CPU, offline)."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import PermanentError
from pipeline.stages.base import Asset, StageContext
from pipeline.stages.crops import fill_class
from pipeline.stages.diffusion import (DiffusersScene, DiffusersSceneOptions, GenerateFill, generate_fill, generation_size,
                                       seam_corrected)
from pipeline.stages.framing import place_subject
from scenecases import cutout, placed
from tinymodels import make_config, netguard, tiny_flux_fill, tiny_sd_inpaint  # noqa: F401

pytestmark = pytest.mark.usefixtures("netguard")


def scene_stage(tmp_path, model, **opts) -> DiffusersScene:
    config = make_config(tmp_path, diffusers=str(model))
    options = DiffusersSceneOptions(**{"prompt": "on the sand", "steps": 2, "seed": 7, **opts})
    return DiffusersScene(options, StageContext(config))


def test_generation_size_keeps_aspect_at_native_area():
    assert generation_size(6000, 4000, 1024, 64) == (1280, 832)
    assert generation_size(1000, 1000, 512, 64) == (512, 512)
    w, h = generation_size(1080, 1920, 1024, 16)
    assert w % 16 == 0 and h % 16 == 0 and abs(w / h - 1080 / 1920) < 0.03


def test_scene_keeps_subject_pixels_exactly(tmp_path):
    stage = scene_stage(tmp_path, tiny_sd_inpaint(), scale=0.9, anchor="center", margin=0.0)
    stage.prepare()
    src = cutout()
    (out,) = stage.run(Asset(src))
    expected = place_subject(32, 33, 80 / 96, 0.9, 0.0, "center")
    assert out.pixels.shape == (expected.out_h, expected.out_w, 3)
    region, subject, opaque = placed(out, src)
    np.testing.assert_array_equal(region[opaque], subject[opaque])
    assert not np.array_equal(region[~opaque], subject[~opaque])  # the soft edge is composited
    assert out.matte.max() == 255 and (out.matte > 0).sum() == (src[..., 3] > 0).sum()
    note = out.notes["place_in_scene"]
    assert note["seed"] == 7 and note["pipeline"] == "StableDiffusionInpaintPipeline"


def test_fill_is_registered_with_crops():
    assert fill_class("generate") is GenerateFill


def test_scene_same_seed_same_output_and_variations_differ(tmp_path):
    stage = scene_stage(tmp_path, tiny_sd_inpaint(), variations=2)
    first = stage.run(Asset(cutout()))
    again = stage.run(Asset(cutout()))
    assert len(first) == 2
    np.testing.assert_array_equal(first[0].pixels, again[0].pixels)
    assert not np.array_equal(first[0].pixels, first[1].pixels)
    assert [a.notes["place_in_scene"]["seed"] for a in first] == [7, 8]


def test_scene_16bit_subject_exact(tmp_path):
    stage = scene_stage(tmp_path, tiny_sd_inpaint(), scale=0.5, anchor="bottom", margin=0.0)
    src = cutout(dtype=np.uint16)
    (out,) = stage.run(Asset(src))
    assert out.pixels.dtype == np.uint16
    region, subject, opaque = placed(out, src)
    np.testing.assert_array_equal(region[opaque], subject[opaque])


def test_scene_needs_a_cutout(tmp_path):
    stage = scene_stage(tmp_path, tiny_sd_inpaint())
    with pytest.raises(PermanentError, match="RGBA"):
        stage.run(Asset(np.zeros((32, 32, 3), np.uint8)))


def test_flux_fill_pipeline_loads_and_keeps_subject(tmp_path):
    stage = scene_stage(tmp_path, tiny_flux_fill(), negative_prompt="ignored by flux", scale=0.8)
    src = cutout(64, 64)
    (out,) = stage.run(Asset(src))
    assert out.notes["place_in_scene"]["pipeline"] == "FluxFillPipeline"
    region, subject, opaque = placed(out, src)
    np.testing.assert_array_equal(region[opaque], subject[opaque])


class FillOptions:
    """The generation fields the crops step's options carry."""

    def __init__(self, model, **kw):
        self.model = str(model)
        self.prompt = kw.get("prompt")
        self.negative_prompt = None
        self.seed = kw.get("seed", 3)
        self.steps = 2
        self.guidance = None


def test_generate_fill_keeps_known_pixels_and_is_deterministic(tmp_path):
    ctx = StageContext(make_config(tmp_path))
    rng = np.random.default_rng(0)
    canvas = np.zeros((72, 128, 3), np.uint8)
    canvas[:, 32:96] = rng.integers(90, 160, (72, 64, 3), dtype=np.uint8)
    known = np.zeros((72, 128), bool)
    known[:, 32:96] = True
    opts = FillOptions(tiny_sd_inpaint())
    out = generate_fill(canvas, known, opts, ctx)
    assert out.shape == canvas.shape and out.dtype == canvas.dtype
    np.testing.assert_array_equal(out[known], canvas[known])
    assert out[~known].std() > 0  # something was generated
    np.testing.assert_array_equal(generate_fill(canvas, known, opts, ctx), out)
    rgba = np.dstack([canvas, np.where(known, 255, 0).astype(np.uint8)])
    out4 = generate_fill(rgba, known, opts, ctx)
    assert (out4[..., 3] == 255).all()


def test_seam_correction_meets_the_original_at_the_seam():
    known = np.zeros((32, 64), bool)
    known[:, :32] = True
    original = np.full((32, 64, 3), 0.6, np.float32)
    gen = np.full((32, 64, 3), 0.2, np.float32)  # the model got the brightness wrong
    out = seam_corrected(gen, original, known, feather=8.0)
    assert abs(out[16, 32, 0] - 0.6) < 0.12  # next to the seam: close to the original
    assert abs(out[16, 63, 0] - 0.2) < 0.05  # far away: the model's own colour


def test_crops_generate_fallback_fills_beyond_the_seamless_outpaint(tmp_path):
    """fill: outpaint with fallback: generate on a textured photo: outpaint near the image, the model beyond."""
    from pipeline.stages.crops import CropsOptions, GeometryCrops

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:128, 0:128].astype(np.float32)
    grey = 140 + 45 * np.sin((xx + 0.6 * yy) / 3.0) + rng.normal(0, 2, (128, 128))  # fine stone veins
    img = np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    matte = np.zeros((128, 128), np.uint8)
    matte[12:116, 52:76] = 255  # a tall product, clear of the edges
    img[matte > 0] = (255, 0, 255)
    ctx = StageContext(make_config(tmp_path, diffusers=str(tiny_sd_inpaint())))
    options = CropsOptions(ratios=["16:9"], fallback="generate", steps=2, seed=3, subject_fill=None)
    stage = GeometryCrops(options, ctx)
    stage.prepare()
    (out,) = stage.run(Asset(img, matte))
    note = out.notes["crops"]
    assert note["fill"] == "outpaint + generate" and note["fallback"]["to"] == "generate"
    left = note["extended"]["left"]
    x0, y0, x1, y1 = note["box"]
    assert left > 40 and x0 == -left
    np.testing.assert_array_equal(out.pixels[:, left:left + 128], img[y0:y1])
    assert out.pixels[:, :left - 20].std() > 0  # the model's part is not a pad


def test_a_broken_weights_file_under_a_path_with_local_in_it_is_not_called_missing(tmp_path):
    """diffusers' "no file named ..." is a pipeline missing files (pull it); a weights file that does not load is
    broken, whatever the folder is called. A folder under /usr/local/... was reported as "missing files"."""
    import shutil

    from pipeline.errors import ConfigError
    from pipeline.models import ModelManager
    from pipeline.stages.diffusion import DiffusersModel

    missing, broken = tmp_path / "usr" / "local" / "sd-missing", tmp_path / "usr" / "local" / "sd-broken"
    for folder in (missing, broken):
        shutil.copytree(tiny_sd_inpaint(), folder)
    for weights in (missing / "unet").glob("*.safetensors"):
        weights.unlink()
    for weights in (broken / "unet").glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    manager = ModelManager(make_config(tmp_path))
    with pytest.raises(ConfigError, match=r"diffusers model '.*sd-missing' is missing files; "):
        DiffusersModel.unplaced(manager, str(missing))
    with pytest.raises(ConfigError, match=r"diffusers model '.*sd-broken' \(.*\) cannot be loaded: OSError: Unable to "
                                          r"load weights"):
        DiffusersModel.unplaced(manager, str(broken))
